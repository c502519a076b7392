"""Server throughput vs raw stylize throughput at the same size, with batching off and on.

Raw: the same Stylizer the server uses, called in a loop in this process (decode + stylize + encode
excluded: just the network path). Server: N concurrent clients posting the same JPEG on loopback.
Reports images/s, the server/raw ratio, and p50/p99 latency.

    python benchmarks/bench_server.py --quick
    python benchmarks/bench_server.py --clients 4 --size 512 --seconds 60
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine  # noqa: E402
from benchmarks.common import percentile  # noqa: E402
from benchmarks.serving import bench_weights, drive, photo_jpeg, running_server  # noqa: E402
from style_transfer.imageio import decode_image  # noqa: E402
from style_transfer.stylize import Stylizer  # noqa: E402


def raw_throughput(weights: Path, payload: bytes, seconds: float) -> float:
    stylizer = Stylizer.from_checkpoint(weights / "bench.safetensors")
    image = decode_image(payload).rgb
    stylizer.stylize(image)  # warm-up
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end or len(times) < 3:
        t0 = time.perf_counter()
        stylizer.stylize(image)
        times.append(time.perf_counter() - t0)
    return 1 / statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=45)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="15 s per configuration")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 15
    payload = photo_jpeg(args.size)
    print(f"machine: {machine()}")
    print(f"| configuration | images/s | vs raw | p50 latency (s) | p99 latency (s) | statuses |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp)
        model = bench_weights(weights)
        raw = raw_throughput(weights, payload, args.seconds / 3)
        print(f"| raw stylize, {args.size} px, in-process | {raw:.2f} | 1.00 | | | |", flush=True)
        for label, settings in (("server, batching off", {}),
                                (f"server, batching on (max {args.max_batch}, 10 ms)",
                                 {"max_batch_size": args.max_batch, "batch_wait_ms": 10})):
            with running_server(weights, max_size=args.size, queue_size=4 * args.clients, **settings) as (base, proc):
                drive(base, model, payload, args.clients, 3, probe_health=False)  # warm the path
                result = drive(base, model, payload, args.clients, args.seconds, probe_health=False)
            print(f"| {label}, {args.clients} clients | {result.throughput:.2f} | {result.throughput / raw:.2f} | "
                  f"{percentile(result.latencies, 50):.2f} | {percentile(result.latencies, 99):.2f} | "
                  f"{dict(result.codes)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
