#!/usr/bin/env bash
# Download the wheels of benchmarks/gpu_wheels.txt into .whl/ for the device machine (CPython 3.12, x86-64
# manylinux), as the device tool's notes say: run from the repo root; .whl/ is ignored (.git/info/exclude)
# and travels with `carry: [".whl"]`. Then benchmarks/gpu_server.sh installs them there.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
rm -rf .whl && mkdir .whl
grep -v '^\s*\(#\|$\)' benchmarks/gpu_wheels.txt | xargs python3 -m pip download --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -q -d .whl \
    2> >(grep -v "is ignored: it is neither" >&2)
ls .whl
du -ch .whl/*.whl | tail -1
