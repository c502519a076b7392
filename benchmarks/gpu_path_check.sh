#!/usr/bin/env bash
# Issue 18, part 2, on a GPU: the server's device JPEG path checked and its codecs timed, in one bounded call
# of the device machine (about 2 minutes; run it before benchmarks/gpu_server.sh, which then measures it):
#     run: command "bash benchmarks/gpu_path_check.sh", carry [".whl"] (benchmarks/fetch_gpu_wheels.sh), timeout_s 300
# Here (no GPU) it runs the same, its CUDA tests skipped and the codec timing on the CPU:
#     OUT=/tmp/gpu_path bash benchmarks/gpu_path_check.sh
#
# 1. the web stack from the carried wheels, when FastAPI is not importable (as gpu_server.sh installs it);
# 2. tests/test_gpu_path.py: on a GPU its CUDA tests run too -- nvJPEG's decode against Pillow's at each EXIF
#    orientation, its encode, every upload of the parity corpus answered alike by the Pillow and the nvJPEG
#    server (statuses and JSON errors byte for byte), pinned staging, concurrent batched requests each
#    answered with its own image, a tiled blend, a batch that runs out of memory (the process capped at 3
#    images' worth) run one image at a time; -s prints the PSNRs, file sizes and memory they measure;
# 3. benchmarks/bench_codecs.py: Pillow against torchvision's codec on the device, per image and in batches.
# Writes $OUT/gpu_path.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder the log goes to}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the project is not pip-installed on the device
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
DEVICE=$("$PYTHON" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
{
    if ! "$PYTHON" -c 'import fastapi, pydantic_settings, multipart' 2>/dev/null; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
    fi
    "$PYTHON" -c 'import torch, torchvision, PIL
print("torch", torch.__version__, "torchvision", torchvision.__version__, "pillow", PIL.__version__,
      "device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")'
    echo "=== tests/test_gpu_path.py"
    timeout 200 "$PYTHON" -m pytest -q -rs -s -p no:cacheprovider tests/test_gpu_path.py
    echo "=== pytest exit $?"
    echo "=== benchmarks/bench_codecs.py on $DEVICE"
    timeout 90 "$PYTHON" benchmarks/bench_codecs.py --device "$DEVICE" --sizes 512,1024,2048 --repeats 20
    echo "=== bench_codecs exit $?"
} 2>&1 | tee "$OUT/gpu_path.log"
