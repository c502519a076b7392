"""Load test of the HTTP service: many concurrent clients on loopback for a bounded time.

Starts `python -m server` (or uses --url), sends JPEG uploads from N client threads, and at the same
time probes /healthz. Reports status codes, throughput, p50/p99 latency, /healthz latency while busy,
and the server's peak resident memory. Fails (exit 1) on any 5xx other than the documented 503 (queue
full) and 504 (deadline), or when /healthz stops answering quickly.

    python benchmarks/load_test.py --quick
    python benchmarks/load_test.py --clients 16 --seconds 60 --size 512
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.serving import bench_weights, drive, percentile, photo_jpeg, running_server  # noqa: E402


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
    parser.add_argument("--quick", action="store_true", help="8 clients, 15 s, 256 px")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.seconds, args.size = 8, 15, 256
    payload = photo_jpeg(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            base, pid = args.url, None
            model = args.model or httpx.get(base + "/v1/models").json()["models"][0]["name"]
            result = drive(base, model, payload, args.clients, args.seconds, pid)
        else:
            weights = args.weights or Path(tmp)
            if args.weights is None:
                bench_weights(weights)
            with running_server(weights, queue_size=args.queue_size, request_timeout_s=args.timeout_s,
                                max_size=args.size) as (base, proc):
                model = args.model or httpx.get(base + "/v1/models").json()["models"][0]["name"]
                result = drive(base, model, payload, args.clients, args.seconds, proc.pid)
    codes = result.codes
    bad = {c: n for c, n in codes.items() if (c >= 500 and c not in (503, 504)) or c < 0}
    print(f"load test: {args.clients} clients, {args.seconds:.0f} s, {args.size}x{args.size} JPEG, model {model}")
    print("| metric | value |\n|---|---|")
    print(f"| responses by status | {dict(sorted(codes.items()))} |")
    print(f"| throughput (200/s) | {result.throughput:.2f} |")
    print(f"| latency p50 / p99 (s) | {percentile(result.latencies, 50):.2f} / {percentile(result.latencies, 99):.2f} |")
    print(f"| /healthz while busy p50 / max (ms) | {percentile(result.health, 50) * 1e3:.1f} / "
          f"{max(result.health, default=float('nan')) * 1e3:.1f} |")
    if result.peak_rss:
        print(f"| server peak RSS (MB) | {result.peak_rss / 1e6:.0f} |")
    failures = []
    if bad:
        failures.append(f"unexpected statuses {bad}")
    if not result.health or max(result.health) > 1.0:
        failures.append("/healthz took over 1 s while busy")
    if codes.get(200, 0) == 0:
        failures.append("no request succeeded")
    for failure in failures:
        print("FAIL:", failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
