"""Can different image sizes share a batch by padding to a common size? A measurement, per shipped model.

Batching jobs of *similar* sizes (issue 18: "batch across requests by size bucket") would mean padding
each image to its bucket's size (reflection), running the batch, and cropping each output back. That is
only acceptable if the cropped output equals the image stylized alone. This script measures it: for each
model, one photo stylized at its own size, and the same photo reflection-padded to the bucket size
(height and width rounded up to a multiple of ``--multiple``), stylized, cropped back. It prints the
largest difference in 8-bit levels, the share of pixels that differ by more than one level (the
quantization step), the PSNR of padded against alone, and how far from the padded edges the differences
reach. Both the server's default fast path and the plain fp32 network run, so that reduced-precision
rounding cannot be mistaken for a padding effect.

    python benchmarks/bucket_padding.py
    python benchmarks/bucket_padding.py --models starry-night-instance,starry-night-batch --multiple 128
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine  # noqa: E402
from benchmarks.serving import sample_photo  # noqa: E402
from style_transfer.imageio import decode_image  # noqa: E402
from style_transfer.metrics import psnr  # noqa: E402
from style_transfer.stylize import Stylizer  # noqa: E402
from style_transfer.zoo import list_models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def photo(width: int, height: int) -> torch.Tensor:
    """The benchmarks' sample photo resized to width x height, (1, 3, H, W) in [0, 1]."""
    import io

    from PIL import Image

    img = sample_photo()[0].resize((width, height), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return decode_image(buf.getvalue()).rgb


def padded_then_cropped(stylizer: Stylizer, image: torch.Tensor, multiple: int) -> torch.Tensor:
    """``image`` reflection-padded on the bottom and right to the next multiple, stylized, cropped back."""
    h, w = image.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    padded = F.pad(image, (0, pw, 0, ph), mode="reflect")
    return stylizer.stylize(padded)[..., :h, :w]


def compare(alone: torch.Tensor, padded: torch.Tensor) -> dict[str, float]:
    a8, p8 = (alone * 255 + 0.5).floor(), (padded * 255 + 0.5).floor()
    diff = (a8 - p8).abs().amax(dim=1)[0]  # (H, W): largest channel difference, 8-bit levels
    changed = diff > 1
    h, w = diff.shape
    # Distance of each changed pixel from the padded edges (bottom and right): a padding effect that
    # only reaches the receptive field stays near them; a normalization effect reaches everywhere.
    ys, xs = torch.nonzero(changed, as_tuple=True)
    reach = int(torch.minimum(h - 1 - ys, w - 1 - xs).max()) if len(ys) else 0
    return {"max_levels": float(diff.max()), "changed_pct": 100 * float(changed.float().mean()),
            "psnr": psnr(padded, alone), "reach_px": reach, "height": h, "width": w}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=ROOT / "weights")
    parser.add_argument("--models", default="starry-night-instance,starry-night-batch,starry-night-group,"
                                            "starry-night-layer")
    parser.add_argument("--size", default="481x321", help="the photo's size, WxH (default: BSDS500's)")
    parser.add_argument("--multiple", type=int, default=64, help="bucket sizes are multiples of this")
    args = parser.parse_args()
    width, height = map(int, args.size.lower().split("x"))
    image = photo(width, height)
    models = list_models(args.weights)
    bucket = f"{width + -width % args.multiple}x{height + -height % args.multiple}"
    print(f"machine: {machine()}; photo {sample_photo()[1]} at {width}x{height}, padded to {bucket}")
    print("| model | path | max difference (levels) | pixels > 1 level (%) | PSNR padded vs alone (dB) | "
          "changes reach (px from the padded edges) |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for label, fast in (("fast (server default)", True), ("plain fp32", False)):
            stylizer = Stylizer.from_checkpoint(models[name], "cpu", fast=fast)
            alone = stylizer.stylize(image)
            again = stylizer.stylize(image)
            assert torch.equal(alone, again), "stylize is not deterministic: the comparison would mean nothing"
            r = compare(alone, padded_then_cropped(stylizer, image, args.multiple))
            print(f"| {name} | {label} | {r['max_levels']:.0f} | {r['changed_pct']:.1f} | {r['psnr']:.1f} | "
                  f"{r['reach_px']} of {min(r['height'], r['width']) - 1} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
