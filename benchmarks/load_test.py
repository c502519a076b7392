"""Load test of the HTTP service: many concurrent clients on loopback for a bounded time.

Starts `python -m server` (or uses --url), sends JPEG uploads from N client threads, and at the same
time probes /healthz. Reports status codes, throughput, p50/p99 latency, /healthz latency while busy,
and the server's peak resident memory. Fails (exit 1) on any 5xx other than the documented 503 (queue
full) and 504 (deadline), or when /healthz stops answering quickly. --jsonl appends the run's figures
as one JSON line (benchmarks/gpu_server.sh collects its load levels so).

    python benchmarks/load_test.py --quick
    python benchmarks/load_test.py --clients 16 --seconds 60 --size 512
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --pid 1234 --model starry-night \
        --size 1024 --format jpeg --clients 16 --seconds 10 --warmup-s 2 --jsonl load.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import percentile  # noqa: E402
from benchmarks.serving import (LoadResult, bench_weights, drive, photo_jpeg, running_server,  # noqa: E402
                                sample_photo)


def run_record(args: argparse.Namespace, model: str, photo: str, payload: bytes, result: LoadResult,
               failures: list[str]) -> dict:
    """One load level as a JSON-ready dict: its settings, every status count and the latency percentiles."""
    lat = result.latencies
    health = [t for t in result.health if t != float("inf")]
    return {
        "model": model, "size": args.size, "clients": args.clients, "seconds": args.seconds,
        "warmup_s": args.warmup_s, "format": args.format, "photo": photo, "payload_bytes": len(payload),
        "codes": {str(code): n for code, n in sorted(result.codes.items())},
        "ok": result.codes.get(200, 0), "elapsed_s": result.elapsed, "throughput": result.throughput,
        "latency_ms": {"mean": statistics.fmean(lat) * 1e3 if lat else None,
                       **{f"p{q}": percentile(lat, q) * 1e3 if lat else None for q in (50, 90, 99)},
                       "max": max(lat) * 1e3 if lat else None},
        "health_ms": {"p50": percentile(health, 50) * 1e3 if health else None,
                      "max": max(health) * 1e3 if health else None,
                      "failed": len(result.health) - len(health)},
        "busy_without_retry_after": result.busy_without_retry_after,
        "response_bytes_mean": result.response_bytes / result.codes[200] if result.codes.get(200) else None,
        "peak_rss_mb": result.peak_rss / 1e6 if result.peak_rss else None,
        "server_cpu_s": result.server_cpu_s or None, "client_cpu_s": result.client_cpu_s,
        "failures": failures,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an already running server (default: start one)")
    parser.add_argument("--model", help="model name (default: the first one the server lists)")
    parser.add_argument("--weights", type=Path, help="weights folder for the started server "
                        "(default: a temporary one with a default-size network)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--queue-size", type=int, default=8)
    parser.add_argument("--timeout-s", type=float, default=20, help="server request deadline")
    parser.add_argument("--format", choices=("png", "jpeg"), default="png", help="output format asked for")
    parser.add_argument("--warmup-s", type=float, default=0.0,
                        help="drive the server this long first, unmeasured (cuDNN tunes each new image size once)")
    parser.add_argument("--pid", type=int, help="with --url: the server's process id, for its memory and CPU time")
    parser.add_argument("--jsonl", type=Path, help="append this run's figures to this file as one JSON line")
    parser.add_argument("--quick", action="store_true", help="8 clients, 15 s, 256 px")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.seconds, args.size = 8, 15, 256
    payload, photo = photo_jpeg(args.size), sample_photo()[1]
    fields = {"format": args.format}

    def measure(base: str, model: str, pid: int | None) -> LoadResult:
        if args.warmup_s > 0:
            drive(base, model, payload, args.clients, args.warmup_s, probe_health=False, fields=fields)
        return drive(base, model, payload, args.clients, args.seconds, pid, fields=fields)

    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            base = args.url
            model = args.model or httpx.get(base + "/v1/models").json()["models"][0]["name"]
            result = measure(base, model, args.pid)
        else:
            weights = args.weights or Path(tmp)
            if args.weights is None:
                bench_weights(weights)
            with running_server(weights, queue_size=args.queue_size, request_timeout_s=args.timeout_s,
                                max_size=args.size) as (base, proc):
                model = args.model or httpx.get(base + "/v1/models").json()["models"][0]["name"]
                result = measure(base, model, proc.pid)
    codes = result.codes
    bad = {c: n for c, n in codes.items() if (c >= 500 and c not in (503, 504)) or c < 0}
    print(f"load test: {args.clients} clients, {args.seconds:.0f} s, {args.size}x{args.size} JPEG "
          f"({len(payload) // 1024} KiB, {photo}) -> {args.format.upper()}, model {model}")
    print("| metric | value |\n|---|---|")
    print(f"| responses by status | {dict(sorted(codes.items()))} |")
    print(f"| throughput (200/s) | {result.throughput:.2f} |")
    print(f"| latency p50 / p99 (s) | {percentile(result.latencies, 50):.2f} / {percentile(result.latencies, 99):.2f} |")
    print(f"| /healthz while busy p50 / max (ms) | {percentile(result.health, 50) * 1e3:.1f} / "
          f"{max(result.health, default=float('nan')) * 1e3:.1f} |")
    if result.peak_rss:
        print(f"| server peak RSS (MB) | {result.peak_rss / 1e6:.0f} |")
    if result.server_cpu_s:
        print(f"| server CPU (cores busy) | {result.server_cpu_s / result.elapsed:.2f} |")
    print(f"| load generator CPU (cores busy) | {result.client_cpu_s / result.elapsed:.2f} |")
    if result.busy_without_retry_after:
        print(f"| 503 without Retry-After | {result.busy_without_retry_after} |")
    failures = []
    if bad:
        failures.append(f"unexpected statuses {bad}")
    if not result.health or max(result.health) > 1.0:
        failures.append("/healthz took over 1 s while busy")
    if codes.get(200, 0) == 0:
        failures.append("no request succeeded")
    if result.busy_without_retry_after:
        failures.append(f"{result.busy_without_retry_after} answers 503 without Retry-After")
    for failure in failures:
        print("FAIL:", failure, file=sys.stderr)
    if args.jsonl:
        with args.jsonl.open("a") as f:
            f.write(json.dumps(run_record(args, model, photo, payload, result, failures)) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
