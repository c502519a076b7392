#!/usr/bin/env bash
# Train plan entries on the device machine (issues 16 and 17: four-styles, the flagships' longer runs), in
# one bounded call. An H200 trains 3000 steps in about 3 minutes; the 2-core CPU takes 2 hours.
#
#   here:    python benchmarks/gpu_pack.py     # .gpu-pack/: data and VGG weights (23.5 MB); it prints the
#            carry lists when the pack and the checkout exceed one call (then: the first calls `true`, back to back)
#   device:  run: command "bash benchmarks/gpu_train.sh four-styles", carry [".gpu-pack"], timeout_s 560
#            (PLAN=benchmarks/quality-plan.toml bash benchmarks/gpu_train.sh NAME ... for that plan)
#   back:    bash benchmarks/gpu_train.sh --adopt FILES_AT    # into runs/zoo (or the plan's runs), then
#            style-transfer zoo export --only NAME
#
# Every named run starts at once, each its own process on the one GPU, and each is stopped by SIGINT (it
# checkpoints) after LIMIT seconds. Only finished runs are worth bringing back: a resume state (model and
# Adam, ~20 MB) is over what a call returns, so size the runs to LIMIT. At most 3 names: each brings back
# its checkpoint and log (8 files a call). Writes $OUT/NAME.safetensors, $OUT/NAME.log.jsonl, $OUT/train.log.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--adopt" ]; then
    # Here: the fetched files become the runs `zoo status`/`zoo export` read (the run folder's log only;
    # the samples stay on the device).
    from=${2:?usage: gpu_train.sh --adopt FILES_AT}
    runs=${RUNS:-runs/zoo}
    for ckpt in "$from"/*.safetensors; do
        name=$(basename "$ckpt" .safetensors)
        if [ -e "$runs/$name.safetensors" ] || [ -e "$runs/$name.run" ]; then
            echo "$runs/$name.* exists: move it away first" >&2; exit 1
        fi
        mkdir -p "$runs/$name.run"
        cp "$ckpt" "$runs/$name.safetensors"
        cp "$from/$name.log.jsonl" "$runs/$name.run/log.jsonl"
        echo "adopted $name into $runs"
    done
    exit 0
fi

OUT=${OUT:?set OUT to the folder the results go to}
PLAN=${PLAN:-weights/zoo.toml}
LIMIT=${LIMIT:-480}  # seconds of training; the call's own timeout must leave room for set-up and copying
[ $# -ge 1 ] && [ $# -le 3 ] || { echo "name 1 to 3 plan entries" >&2; exit 2; }
[ -d .gpu-pack ] || { echo ".gpu-pack missing: run benchmarks/gpu_pack.py here and carry .gpu-pack" >&2; exit 2; }
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
    python3 benchmarks/gpu_pack.py --install /tmp/site || exit 1
    export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"  # the project is not pip-installed there
    # The plan with its ../shared paths pointing into the pack (plans sit one folder below the root).
    gpu_plan="$(dirname "$PLAN")/.gpu-$(basename "$PLAN")"
    sed 's#\.\./\.\./shared/#../.gpu-pack/#g' "$PLAN" > "$gpu_plan"
    python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'
    pids=()
    for name in "$@"; do
        timeout -s INT -k 60 "$LIMIT" python3 -m style_transfer zoo train --plan "$gpu_plan" --runs /tmp/runs \
            --only "$name" --workers 4 > "/tmp/train-$name.log" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; echo "run $pid exit $?"; done
    for name in "$@"; do
        echo "=== $name"
        tr '\r' '\n' < "/tmp/train-$name.log" | grep -v '^train ' | tail -n 40
        tr '\r' '\n' < "/tmp/train-$name.log" | grep '^train ' | tail -n 2
        cp "/tmp/runs/$name.safetensors" "$OUT/" 2>/dev/null || echo "$name: no checkpoint"
        cp "/tmp/runs/$name.run/log.jsonl" "$OUT/$name.log.jsonl" 2>/dev/null || echo "$name: no log"
    done
    rm -f "$gpu_plan"
} 2>&1 | tee "$OUT/train.log"
