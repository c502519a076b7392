"""Stylize speed: the project's default (fast) path vs the reference, same weights, one run, alternating.

Prints, per norm and size: median (min-max) ms per image for both, the speed ratio (images/s of ours
over the reference's) and the PSNR of our output against the reference's fp32 output.

    python benchmarks/bench_stylize.py --quick
    python benchmarks/bench_stylize.py --sizes 256,512,1024 --norms instance,batch,group,layer,none
    python benchmarks/bench_stylize.py --device cuda --sizes 256,512,1024,2048 --compile
    python benchmarks/bench_stylize.py --device cuda --sizes 256,512,1024,2048 --compile --batch 1,8
    python benchmarks/bench_stylize.py --device cuda --sizes 1024 --compile --precision bf16   # vs the fp16 default
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import alternate, machine, summary  # noqa: E402
from benchmarks.reference import ReferenceNet, bench_model, load_project_weights  # noqa: E402
from style_transfer.device import PRECISIONS, resolve_device  # noqa: E402
from style_transfer.metrics import psnr  # noqa: E402
from style_transfer.norms import NORM_NAMES  # noqa: E402
from style_transfer.stylize import Stylizer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256,512,1024")
    parser.add_argument("--norms", default=",".join(NORM_NAMES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the fast path")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="our path's precision (default: %(default)s, what the CLI and server use)")
    parser.add_argument("--batch", default="1",
                        help="images per call, comma-separated; times are per image, so a batch > 1 measures "
                             "throughput rather than latency (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="512 px, instance and batch norm, 3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.norms, args.repeats = "512", "instance,batch", 3
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"machine: {machine()}; device {device}; times are ms per image")
    print("| norm | size | batch | reference fp32 ms | ours ms | speed-up | PSNR vs reference (dB) | our precision |")
    print("|---|---|---|---|---|---|---|---|")
    for norm in args.norms.split(","):
        model = bench_model(norm)
        reference = load_project_weights(ReferenceNet(norm), model).to(device)
        ours = Stylizer(model, device=device, precision=args.precision, compile=args.compile)
        for size, batch in itertools.product(map(int, args.sizes.split(",")), map(int, args.batch.split(","))):
            x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(size)).to(device)
            try:
                with torch.no_grad():
                    ref_out = reference(x).clamp(0, 1)
            except RuntimeError as exc:  # e.g. CUDA's reflection pad past 2^31 elements (2048 px, batch 8)
                print(f"| {norm} | {size} | {batch} | failed: {str(exc).splitlines()[0]} | | | | |", flush=True)
                continue
            our_out = ours.run(x)

            def run_ref():
                with torch.no_grad():
                    reference(x)
                sync()

            def run_ours():
                ours.run(x)
                sync()

            times = alternate({"ref": run_ref, "ours": run_ours}, args.repeats)
            times = {name: [t / batch for t in ts] for name, ts in times.items()}
            ratio = statistics.median(times["ref"]) / statistics.median(times["ours"])
            print(f"| {norm} | {size} | {batch} | {summary(times['ref'])} | {summary(times['ours'])} | {ratio:.2f}x | "
                  f"{psnr(our_out, ref_out):.1f} | {ours.precision} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
