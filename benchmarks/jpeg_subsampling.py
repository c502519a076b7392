"""Which quality makes a 4:4:4 JPEG (what nvJPEG writes on a GPU) as large as Pillow's 4:2:0 one at 92?

The GPU server encodes with nvJPEG, which writes 4:4:4 chroma; the CPU server with Pillow (libjpeg), which
writes 4:2:0. Pillow's own 4:4:4 encode (``subsampling=0``, the same IJG tables) stands in for nvJPEG here:
on an H200 its files at quality 92 came within 1% of nvJPEG's (docs/benchmarks.md, "JPEG size on a GPU").
Shipped models paint the astronaut (1024 px, as the GPU benchmark sends it) and a BSDS500 test photo; each
painting is encoded both ways, at a sweep of qualities for 4:4:4, and each file's size and PSNR to the
painted pixels printed side by side. ``imageio.NVJPEG_QUALITY_OFFSET`` comes from this table.

    python benchmarks/jpeg_subsampling.py
    python benchmarks/jpeg_subsampling.py --models starry-night --qualities 92,84
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from style_transfer.checkpoint import load_model  # noqa: E402
from style_transfer.imageio import decode_image  # noqa: E402
from style_transfer.metrics import psnr  # noqa: E402
from style_transfer.stylize import Stylizer  # noqa: E402


def photos() -> dict[str, Image.Image]:
    import skimage.data

    found = {"astronaut 1024 px": Image.fromarray(skimage.data.astronaut()).resize((1024, 1024),
                                                                                    Image.Resampling.LANCZOS)}
    bsds = sorted((ROOT.parent / "shared" / "data" / "content" / "bsds500" / "test").glob("*.jpg"))
    if bsds:
        found[f"BSDS500 {bsds[0].stem}"] = Image.open(bsds[0]).convert("RGB")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="starry-night,great-wave")
    parser.add_argument("--qualities", default="92,88,84,80", help="4:4:4 qualities; 4:2:0 is at 92")
    args = parser.parse_args()
    qualities = [int(q) for q in args.qualities.split(",")]
    print("| model | photo | encode | file KiB | PSNR to the painted pixels (dB) |")
    print("|---|---|---|---|---|")
    for name in args.models.split(","):
        model, info = load_model(ROOT / "weights" / f"{name}.safetensors")
        stylizer = Stylizer(model, info, "cpu", fast=False)
        for label, img in photos().items():
            x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255
            with torch.inference_mode():
                painted = (stylizer.stylize(x).clamp(0, 1)[0].permute(1, 2, 0) * 255).round().byte().numpy()
            reference = torch.from_numpy(painted).permute(2, 0, 1)[None].float() / 255
            for subsampling, qs in ((2, [92]), (0, qualities)):
                for q in qs:
                    buf = io.BytesIO()
                    Image.fromarray(painted).save(buf, "JPEG", quality=q, subsampling=subsampling)
                    data = buf.getvalue()
                    kind = "4:2:0" if subsampling == 2 else "4:4:4"
                    print(f"| {name} | {label} | {kind} q{q} | {len(data) // 1024} | "
                          f"{psnr(decode_image(data).rgb, reference):.1f} |", flush=True)


if __name__ == "__main__":
    main()
