"""Peak resident memory of stylizing a very large photo with tiling, through the real CLI.

Builds a 4096x4096 JPEG (a BSDS500 photo upscaled, or a synthetic one), runs
`style-transfer stylize --tile N` in a child process and reads the child's peak RSS
(getrusage RUSAGE_CHILDREN). Also runs it once without tiling for comparison unless --skip-untiled.

    python benchmarks/bench_tile_memory.py --quick          # 2048 px
    python benchmarks/bench_tile_memory.py --size 4096 --tile 512
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def big_photo(path: Path, size: int) -> None:
    photos = sorted((ROOT.parent / "shared" / "data" / "content" / "bsds500" / "test").glob("*.jpg"))
    if photos:
        img = Image.open(photos[0]).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    else:
        y, x = np.mgrid[0:size, 0:size] / size
        img = Image.fromarray((np.stack([x, y, np.sin(20 * x * y) * 0.5 + 0.5], -1) * 255).astype(np.uint8))
    img.save(path, quality=92)


def run_child(args: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    elapsed = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kb <= before:
        raise RuntimeError("the child's peak RSS was not above an earlier child's; run the cases separately")
    return elapsed, peak_kb / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--skip-untiled", action="store_true")
    parser.add_argument("--quick", action="store_true", help="2048 px")
    args = parser.parse_args()
    if args.quick:
        args.size = 2048
    from benchmarks.reference import bench_model
    from style_transfer.checkpoint import ModelInfo, save_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = bench_model("instance")
        save_model(tmp / "bench.safetensors", model, ModelInfo(model.config, style_name="bench"))
        photo = tmp / "big.jpg"
        big_photo(photo, args.size)
        cli = [sys.executable, "-m", "style_transfer", "stylize", str(photo), "--model", str(tmp / "bench.safetensors"),
               "--max-size", str(args.size)]
        # The tiled run goes first: getrusage reports the maximum over all children so far.
        t_tiled, rss_tiled = run_child(cli + ["--out", str(tmp / "tiled.png"), "--tile", str(args.tile)])
        print(f"| image | mode | seconds | peak RSS (MB) |\n|---|---|---|---|")
        print(f"| {args.size}x{args.size} | tiles of {args.tile} | {t_tiled:.1f} | {rss_tiled:.0f} |", flush=True)
        if not args.skip_untiled:
            try:
                t_whole, rss_whole = run_child(cli + ["--out", str(tmp / "whole.png")])
                print(f"| {args.size}x{args.size} | whole image | {t_whole:.1f} | {rss_whole:.0f} |")
            except (subprocess.CalledProcessError, RuntimeError) as exc:
                print(f"| {args.size}x{args.size} | whole image | failed: {exc} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
