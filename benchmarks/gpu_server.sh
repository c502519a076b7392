#!/usr/bin/env bash
# Issue 18, part 1: the real server on one GPU, measured in one bounded run of the device machine.
#
# On the device machine (its `run` tool, carry [".whl"] filled by benchmarks/fetch_gpu_wheels.sh):
#     bash benchmarks/gpu_server.sh                        # OUT is set there
# Here, as a dry run on the CPU (tiny counts, 1 and 4 clients, 512 px only):
#     QUICK=1 OUT=/tmp/gpu_dry bash benchmarks/gpu_server.sh
#
# Phases, each under its own time limit and recorded even when it fails:
#   wheels   the carried .whl/ installed into $SITE when the web stack is not importable (the device has
#            no FastAPI, uvicorn or pydantic; benchmarks/gpu_wheels.txt lists what travels)
#   env      versions, CPUs, nvidia-smi
#   raw      benchmarks/raw_pipeline.py: the network alone at batch 1, then decode JPEG -> stylize ->
#            encode JPEG without HTTP at 1, 4 and 16 threads (the reference for the server's throughput)
#   ready    `python -m server` on loopback with the shipped models (weights/), waited on /readyz
#   load     benchmarks/load_test.py at each size x clients, JPEG uploads and JPEG output, against that
#            one server (1024 px first: the goals are at 1024 px)
#   compiled the network compiled (torch.compile), timed alone: last, as the least needed
#   summary  benchmarks/gpu_summary.py: tables, issue 18's goals, and where the server's core went
#            (py-spy samples the server during the PROFILE_LEVEL level, default 1024x16)
# A trap stops the server and writes the summary however the script ends (short of SIGKILL; the results
# files are written as each phase ends, so a killed run still returns what it measured). Each phase's
# limit is cut to what is left of BUDGET_S seconds, and a phase is skipped when too little is left.
#
# $OUT receives at most 8 files (the device tool's limit): run.log (this log: versions, nvidia-smi, every
# phase's output and exit status), raw.json, load.jsonl (one JSON line per load level), server.log,
# gpu_dmon.txt (nvidia-smi dmon during the load levels; GPU only), server_profile.txt (py-spy's samples
# of the server, when py-spy is there), summary.txt and summary.json.
#
# Knobs (environment): QUICK=1, ONLY (a subset of "raw server compiled", e.g. ONLY=server for a rerun of
# the HTTP part alone), BUDGET_S, MODEL, SIZES, CLIENTS, LEVEL_S, ONE_CLIENT_S, WARMUP_S, COMPILE=0/1
# (default 1 on a GPU, 0 with QUICK), PYTHON, SITE, and any STYLE_TRANSFER_* server setting (the server
# and raw_pipeline.py both read them).

set -uo pipefail  # no -e: a failed phase is recorded and the next one still runs
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
: "${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    SIZES=${SIZES:-512}; CLIENTS=${CLIENTS:-"1 4"}
    LEVEL_S=${LEVEL_S:-3}; ONE_CLIENT_S=${ONE_CLIENT_S:-3}; WARMUP_S=${WARMUP_S:-1}
    RAW_ARGS=(--threads 1,4 --seconds 2 --repeats 3 --warmup 1)
    BUDGET_S=${BUDGET_S:-600}
else
    # Planned at about 4.5 minutes on an H200 with 16 cores (raw ~50 s, server start ~20 s, 8 load levels of
    # 14-19 s, compile ~50 s); BUDGET_S caps it at 6 so that the device's 15 minutes hold a rerun.
    SIZES=${SIZES:-"1024 512"}; CLIENTS=${CLIENTS:-"1 4 16 64"}
    LEVEL_S=${LEVEL_S:-10}; ONE_CLIENT_S=${ONE_CLIENT_S:-15}; WARMUP_S=${WARMUP_S:-2}
    RAW_ARGS=(--threads 1,4,16 --seconds 5 --repeats 200 --warmup 20)
    BUDGET_S=${BUDGET_S:-360}
fi
MODEL=${MODEL:-starry-night}
PROFILE_LEVEL=${PROFILE_LEVEL:-$([ "$QUICK" = 1 ] && echo 512x4 || echo 1024x16)}
ONLY=${ONLY:-"raw server compiled"}
wanted() { [[ " $ONLY " == *" $1 "* ]]; }
SITE=${SITE:-/tmp/site}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the project is not pip-installed on the device

LOG="$OUT/run.log"
WORK=$(mktemp -d)
PHASES="$WORK/phases"
: >"$LOG"
: >"$PHASES"
rm -f "$OUT/raw.json" "$OUT/load.jsonl" "$OUT/summary.txt" "$OUT/summary.json" "$OUT/gpu_dmon.txt" \
    "$OUT/server_profile.txt"
SERVER_PID=""
DMON_PID=""
PHASE_PID=""
PHASE_NAME=""
PHASE_T0=0
SUMMARIZED=0

say() { echo "$*" | tee -a "$LOG"; }

# phase NAME LIMIT_S NEED_S CMD...: run CMD under a time limit (cut to the budget left; skipped when less
# than NEED_S is left, the least that gives a usable result), its output into the log (then echoed), its
# exit status recorded. It runs in the background and is waited for, so that a signal to this script is
# handled at once (cleanup stops it) rather than after the phase.
phase() {
    local name=$1 limit=$2 need=$3 t0=$SECONDS rc offset
    shift 3
    local left=$((BUDGET_S - SECONDS))
    if [ "$left" -lt "$need" ]; then
        say "=== $name: SKIPPED (budget of ${BUDGET_S} s spent)"
        echo "$name skipped 0" >>"$PHASES"
        return 99
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    say "=== $name (limit ${limit} s, at ${SECONDS} s)"
    offset=$(stat -c %s "$LOG")
    PHASE_NAME=$name
    PHASE_T0=$t0
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1 </dev/null &
    PHASE_PID=$!
    wait "$PHASE_PID"
    rc=$?
    PHASE_PID=""
    tail -c +$((offset + 1)) "$LOG"
    say "=== $name: exit $rc in $((SECONDS - t0)) s$([ "$rc" = 124 ] && echo ' (TIMED OUT)')"
    echo "$name $rc $((SECONDS - t0))" >>"$PHASES"
    return "$rc"
}

server_alive() {
    [ -n "$SERVER_PID" ] &&
        "$PYTHON" -c "import sys; from benchmarks.serving import pid_alive; sys.exit(not pid_alive($SERVER_PID))"
}

stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null
    for _ in $(seq 40); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
    say "server (pid $SERVER_PID) stopped"
    SERVER_PID=""
}

stop_dmon() {
    [ -n "$DMON_PID" ] || return 0
    kill "$DMON_PID" 2>/dev/null
    wait "$DMON_PID" 2>/dev/null
    DMON_PID=""
}

summarize() {
    [ "$SUMMARIZED" = 1 ] && return 0
    SUMMARIZED=1
    say "=== summary"
    timeout 60 "$PYTHON" benchmarks/gpu_summary.py --out "$OUT" --phases "$PHASES" 2>&1 | tee -a "$LOG"
}

cleanup() {
    if [ -n "$PHASE_PID" ]; then  # interrupted inside a phase: timeout passes the TERM on to the command
        kill -TERM "$PHASE_PID" 2>/dev/null
        wait "$PHASE_PID" 2>/dev/null
        echo "$PHASE_NAME interrupted $((SECONDS - PHASE_T0))" >>"$PHASES"
        say "=== $PHASE_NAME: interrupted, stopped"
    fi
    stop_dmon
    stop_server
    summarize
    # Keep server.log under the 16 MiB a returned file may have (the access log grows with the requests).
    if [ -f "$OUT/server.log" ] && [ "$(stat -c %s "$OUT/server.log")" -gt 15000000 ]; then
        tail -c 15000000 "$OUT/server.log" >"$WORK/server.log" && mv "$WORK/server.log" "$OUT/server.log"
    fi
    rm -rf "$WORK"
    say "done in ${SECONDS} s; results in $OUT: $(cd "$OUT" && echo *)"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

say "gpu_server.sh: QUICK=$QUICK ONLY='$ONLY' MODEL=$MODEL SIZES='$SIZES' CLIENTS='$CLIENTS' LEVEL_S=$LEVEL_S" \
    "ONE_CLIENT_S=$ONE_CLIENT_S WARMUP_S=$WARMUP_S BUDGET_S=$BUDGET_S PYTHON=$PYTHON; $(date -u '+%F %T UTC')"

# --- wheels: the web stack, when the machine lacks it ------------------------------------------------
if "$PYTHON" -c 'import fastapi, uvicorn, pydantic_settings, multipart, httptools' 2>/dev/null; then
    say "=== wheels: not needed (the web stack imports)"
elif compgen -G ".whl/*.whl" >/dev/null; then
    phase wheels 120 10 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl
    export PYTHONPATH="$ROOT:$SITE"
    PATH="$PATH:$SITE/bin"  # py-spy's executable
else
    say "=== wheels: the web stack does not import and there is no .whl/ (benchmarks/fetch_gpu_wheels.sh," \
        "then carry .whl): the server phases will fail"
fi

# --- env: what this ran on ------------------------------------------------------------------------------
cat >"$WORK/env.py" <<'EOF'
import importlib.metadata as md
import sys

import torch
from PIL import features

print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      "device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
      "threads", torch.get_num_threads())
print("pillow libjpeg-turbo:", features.check_feature("libjpeg_turbo"))
names = ("torchvision numpy pillow safetensors scipy scikit-image tqdm prometheus-client httpx h11 uvloop click "
         "anyio fastapi starlette uvicorn httptools pydantic pydantic-core pydantic-settings python-dotenv "
         "python-multipart annotated-types annotated-doc typing-inspection typing-extensions opentelemetry-api")
for name in names.split():
    try:
        dist = md.distribution(name)
        print(f"  {name}=={dist.version}  ({dist.locate_file('')})")
    except md.PackageNotFoundError:
        print(f"  {name}: not installed")
EOF
cat >"$WORK/ready.py" <<'EOF'
import sys

import httpx

from benchmarks.serving import pid_alive, wait_ready

base, pid = sys.argv[1], int(sys.argv[2])
print(f"ready after {wait_ready(base, 140, lambda: pid_alive(pid)):.1f} s")
models = httpx.get(base + "/v1/models").json()
print("device", models["device"], "models", [m["name"] for m in models["models"]], "errors", models["errors"])
EOF
phase env 60 5 bash -c 'uname -srm; echo "CPUs: $(nproc)"; free -g | head -2
    if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "no nvidia-smi"; fi
    "$0" "$1"' "$PYTHON" "$WORK/env.py"

SIZES_CSV=$(echo $SIZES | tr ' ' ',')
PYSPY=$(command -v py-spy || true)
[ -z "$PYSPY" ] && [ -x "$(dirname "$PYTHON")/py-spy" ] && PYSPY=$(dirname "$PYTHON")/py-spy
say "py-spy: ${PYSPY:-not found (no server profile)}; profiled level: $PROFILE_LEVEL"

# --- raw: the pipeline without HTTP, and the network alone -------------------------------------------------
wanted raw && phase raw 180 30 "$PYTHON" benchmarks/raw_pipeline.py --model "$MODEL" --sizes "$SIZES_CSV" \
    "${RAW_ARGS[@]}" --json "$OUT/raw.json"

# --- ready: the real server ------------------------------------------------------------------------------------
if wanted server; then
    PORT=$("$PYTHON" -c 'from benchmarks.serving import free_port; print(free_port())')
    BASE="http://127.0.0.1:$PORT"
    say "starting: $PYTHON -m server --host 127.0.0.1 --port $PORT --weights weights (log: server.log)"
    "$PYTHON" -m server --host 127.0.0.1 --port "$PORT" --weights weights >"$OUT/server.log" 2>&1 &
    SERVER_PID=$!
    phase ready 150 30 "$PYTHON" "$WORK/ready.py" "$BASE" "$SERVER_PID"
    READY=$?

    # --- load: sizes x clients, JPEG in and out ------------------------------------------------------------------
    if [ "$READY" = 0 ]; then
        if command -v nvidia-smi >/dev/null; then
            nvidia-smi dmon -s pucm -o T >"$OUT/gpu_dmon.txt" 2>&1 &
            DMON_PID=$!
        fi
        for size in $SIZES; do
            for clients in $CLIENTS; do
                if ! server_alive; then
                    say "=== load ${size}px ${clients} clients: SKIPPED (the server is gone; see server.log)"
                    echo "load-${size}px-${clients}c server-gone 0" >>"$PHASES"
                    continue
                fi
                secs=$LEVEL_S
                [ "$clients" = 1 ] && secs=$ONE_CLIENT_S
                # The server is bound by its one core on a GPU (docs/benchmarks.md): sample what fills it
                # during one level, after its warm-up, with py-spy (carried as a wheel; root may ptrace).
                SPY_PID=""
                if [ "${size}x${clients}" = "$PROFILE_LEVEL" ] && [ -n "$PYSPY" ]; then
                    (sleep "$((WARMUP_S + 1))" && "$PYSPY" record --pid "$SERVER_PID" --duration "$((secs - 2))" \
                        --rate 200 --format raw --output "$OUT/server_profile.txt" --nonblocking) >>"$LOG" 2>&1 &
                    SPY_PID=$!
                fi
                phase "load-${size}px-${clients}c" $((secs + WARMUP_S + 45)) $((secs + WARMUP_S + 10)) \
                    "$PYTHON" benchmarks/load_test.py --url "$BASE" --pid "$SERVER_PID" --model "$MODEL" \
                    --size "$size" --clients "$clients" --seconds "$secs" --warmup-s "$WARMUP_S" --format jpeg \
                    --jsonl "$OUT/load.jsonl"
                [ -n "$SPY_PID" ] && wait "$SPY_PID"
            done
        done
        stop_dmon
        command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm \
            --format=csv 2>&1 | tee -a "$LOG"
    fi
    stop_server
fi

# --- compiled: the network under torch.compile, alone (GPU) ---------------------------------------------
COMPILE=${COMPILE:-$([ "$QUICK" != 1 ] && command -v nvidia-smi >/dev/null && echo 1 || echo 0)}
if [ "$COMPILE" = 1 ] && wanted compiled; then
    phase compiled 150 40 "$PYTHON" benchmarks/raw_pipeline.py --model "$MODEL" --network-only --compile \
        --sizes "$SIZES_CSV" --repeats 200 --warmup 5 --json "$OUT/raw.json"
fi

summarize
