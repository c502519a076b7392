"""Would int8 residual convs keep the stylized image? End-to-end PSNR of simulated int8 (issue 5).

``bench_conv_kernels.py`` times an int8 residual conv (VNNI) against bf16; this measures the other
half of the question on the shipped models and real photos: the network run in fp32 with its ten
residual-block convs seeing int8 inputs and weights -- activations quantized to uint8 with each
image's own range (the best case: a deployment would need calibrated or per-image scales), weights
per output channel to int8 -- against the plain fp32 network, PSNR of the output images.

    python benchmarks/bench_int8_accuracy.py                  # the Starry Night A/B set, 6 photos, full size
    python benchmarks/bench_int8_accuracy.py --quick          # instance and batch, 2 photos, 256 px
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from style_transfer.checkpoint import load_model  # noqa: E402
from style_transfer.evaluation import pick_images  # noqa: E402
from style_transfer.imageio import load_rgb  # noqa: E402
from style_transfer.metrics import psnr  # noqa: E402
from style_transfer.network import ResidualBlock  # noqa: E402

MODELS = ("starry-night-instance", "starry-night-batch", "starry-night-group", "starry-night-layer")


def fake_quant_activation(x: torch.Tensor) -> torch.Tensor:
    """uint8 with a zero point, over this tensor's own min-max (residual inputs are signed)."""
    lo, hi = x.amin(), x.amax()
    scale = (hi - lo).clamp_min(1e-12) / 255
    return torch.round((x - lo) / scale).clamp(0, 255) * scale + lo


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Symmetric int8, one scale per output channel (what the x86 engine's per-channel conv takes)."""
    scale = w.abs().amax((1, 2, 3), keepdim=True).clamp_min(1e-12) / 127
    return torch.round(w / scale).clamp(-127, 127) * scale


def int8_residuals(model: torch.nn.Module) -> torch.nn.Module:
    """A copy whose residual-block convs compute on int8-rounded inputs and weights."""
    model = copy.deepcopy(model)
    for block in (m for m in model.modules() if isinstance(m, ResidualBlock)):
        for layer in block.body:
            conv = layer[1]
            conv.weight.data = fake_quant_weight(conv.weight.data)
            conv.register_forward_pre_hook(lambda module, args: (fake_quant_activation(args[0]),))
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="shipped model names (weights/<name>.safetensors)")
    ap.add_argument("--photos", type=int, default=6, help="held-out bsds500 test photos, evenly spaced")
    ap.add_argument("--size", type=int, default=512, help="longer side at most (bsds500 photos are 481x321)")
    ap.add_argument("--quick", action="store_true", help="instance and batch, 2 photos, 256 px")
    args = ap.parse_args()
    if args.quick:
        args.models, args.photos, args.size = "starry-night-instance,starry-night-batch", 2, 256
    test = ROOT.parent / "shared" / "data" / "content" / "bsds500" / "test"
    if not test.is_dir():
        sys.exit(f"needs {test}")
    photos = pick_images(test, args.photos)  # spread over the split, as `style-transfer compare` picks them
    print(f"# int8 residual convs (simulated) vs fp32, {len(photos)} photos, long side <= {args.size} px; PSNR of the output")
    print("| model | norm | median PSNR (dB) | min | max |")
    print("|---|---|---|---|---|")
    for name in args.models.split(","):
        model, info = load_model(ROOT / "weights" / f"{name}.safetensors", torch.device("cpu"))
        model.eval()
        quantized = int8_residuals(model)
        scores = []
        with torch.no_grad():
            for photo in photos:
                x = load_rgb(photo, max_size=args.size)
                scores.append(psnr(quantized(x).clamp(0, 1), model(x).clamp(0, 1)))
        print(f"| {name} | {info.config.norm} | {statistics.median(scores):.1f} | {min(scores):.1f} | {max(scores):.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
