"""One CPU training step (256x256, batch 4, perceptual loss), or one stylized image (``--workload stylize``:
the CLI's and server's fast path, 1024x1024 by default), under three memory allocators: glibc as it
comes, glibc keeping freed memory (style_transfer.device.keep_freed_memory, what `train`, `stylize` and
the server do on a CPU), and jemalloc where one is given. Also the minor page faults per step and the
peak resident memory.

An allocator is chosen at process start, so each runs in its own child process: one child per
allocator per round, the rounds alternating, so drifts of the machine hit each alike.

    python benchmarks/bench_allocator.py --rounds 2 --steps 4
    python benchmarks/bench_allocator.py --rounds 2 --steps 4 --workload stylize --size 1024 --batch 1
    python benchmarks/bench_allocator.py --jemalloc .venv/lib/python3.11/site-packages/ray/core/libjemalloc.so
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("glibc", "kept", "jemalloc")


def child(mode: str, workload: str, steps: int, size: int, batch: int) -> dict[str, float]:
    """Run ``steps`` steps after one warm-up step; the median step time, faults per step, peak RSS."""
    import torch

    from benchmarks.reference import bench_model
    from style_transfer.device import keep_freed_memory, resolve_precision
    from style_transfer.losses import LossConfig, PerceptualLoss
    from style_transfer.stylize import Stylizer
    from style_transfer.train import loss_terms, optimizer_step

    if mode == "kept" and not keep_freed_memory():
        raise SystemExit("keep_freed_memory() did not apply (not glibc?)")
    device = torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    batch_images = torch.rand(batch, 3, size, size, generator=gen)
    if workload == "stylize":
        stylizer = Stylizer(bench_model("instance"), device=device)
        precision = stylizer.precision

        def step() -> None:
            stylizer.run(batch_images)
    else:
        precision = resolve_precision("auto", device, training=True)
        criterion = PerceptualLoss(torch.rand(1, 3, 256, 256, generator=gen), LossConfig())
        model = bench_model("instance").train()
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)

        def step() -> None:
            optimizer_step(optimizer, loss_terms(model, criterion, batch_images, device, precision)["total"])

    step()
    times, faults = [], []
    for _ in range(steps):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {"seconds": statistics.median(times), "faults": statistics.median(faults),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "precision": precision}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=("train", "stylize"), default="train")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per child (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--jemalloc", type=Path, help="a libjemalloc.so to LD_PRELOAD (e.g. the one ray ships)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.workload, args.steps, args.size, args.batch)))
        return 0
    if args.jemalloc is not None and not args.jemalloc.is_file():
        parser.error(f"--jemalloc {args.jemalloc}: no such file")
    modes = [m for m in MODES if m != "jemalloc" or args.jemalloc is not None]
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode in modes:
            env = dict(os.environ)
            if mode == "jemalloc":
                # Keep jemalloc's freed pages too (its default returns them after 10 s), one arena per core.
                env.update(LD_PRELOAD=str(args.jemalloc.resolve()),
                           MALLOC_CONF="dirty_decay_ms:-1,muzzy_decay_ms:-1,retain:true,narenas:2")
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--workload", args.workload,
                                  "--steps", str(args.steps),
                                  "--size", str(args.size), "--batch", str(args.batch)],
                                 env=env, check=True, capture_output=True, text=True).stdout
            results[mode].append(json.loads(out.strip().splitlines()[-1]))
    import torch

    base = statistics.median(r["seconds"] for r in results["glibc"])
    print(f"machine: {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{args.workload}: {args.rounds} rounds x {args.steps} steps, {args.size}x{args.size}, batch {args.batch}, "
          f"{results['glibc'][0]['precision']}")
    print("| allocator | step ms (median of rounds) | speed-up | minor page faults per step | peak RSS MB |")
    print("|---|---|---|---|---|")
    for mode in modes:
        seconds = statistics.median(r["seconds"] for r in results[mode])
        rounds = ", ".join(f"{r['seconds'] * 1e3:.0f}" for r in results[mode])
        print(f"| {mode} | {seconds * 1e3:.0f} ({rounds}) | "
              f"{base / seconds:.2f}x | {statistics.median(r['faults'] for r in results[mode]):.0f} | "
              f"{max(r['peak_mb'] for r in results[mode]):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
