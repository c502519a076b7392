"""Every shipped model still computes exactly what it computed when its golden outputs were recorded.

Refactors of the network and its kernels must leave the shipped models' outputs unchanged (issue 15).
The check runs the plain network (not the fast path) in float64 on the CPU and rounds the output to
8-bit pixels (clamped to [0, 1], times 255, rounded), as an image file would hold it: float64 keeps the
rounding noise of one host's math library ~1e-16, far below a pixel step, so the uint8 golden holds on
every CI host (Intel Xeon or AMD EPYC), where a bf16 or fp32 golden would drift with the kernels chosen.

Two input sizes, so that every code path of the network runs (see network.py and kernels.py):

* 61x83 (odd): both upsampling layers take the fallback (nearest to an odd size, then the 3x3 conv)
  and the output conv's padded input is odd, so it runs as a plain 9x9 conv;
* 44x60 (multiples of 4): both upsampling layers are exact x2, so they run as sub-pixel 2x2 convs,
  and the output conv runs space-to-depth.

The golden file is tests/golden/shipped_outputs.npz. Regenerate it with::

    python -m tests.test_shipped_outputs --regenerate

but only when the shipped weights change on purpose (a model retrained or added): regenerating to make
a failing refactor pass would hide exactly the change this test exists to catch.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from style_transfer.checkpoint import load_model
from style_transfer.zoo import read_manifest

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
GOLDEN = Path(__file__).resolve().parent / "golden" / "shipped_outputs.npz"
SIZES = ((61, 83), (44, 60))
ENTRIES = read_manifest(WEIGHTS)["models"]


def photo_like(h: int, w: int) -> torch.Tensor:
    """A deterministic (1, 3, H, W) 8-bit image in [0, 1]: sky gradient, a soft sun, a hard-edged
    building, a diagonal horizon and fine texture -- smooth areas, edges and high frequencies.

    Quantized to 8 bits like a decoded photo, so a last-ulp difference in sin/exp between hosts can only
    matter exactly at a rounding boundary."""
    y = torch.linspace(0, 1, h, dtype=torch.float64)[:, None].expand(h, w)
    x = torch.linspace(0, 1, w, dtype=torch.float64)[None, :].expand(h, w)
    sky = torch.stack([0.35 + 0.3 * y, 0.55 + 0.2 * y, 0.9 - 0.25 * y])
    sun = torch.exp(-((x - 0.7) ** 2 + (y - 0.25) ** 2) / 0.01)
    image = sky + sun * torch.tensor([0.6, 0.4, -0.3], dtype=torch.float64)[:, None, None]
    ground = (y > 0.6 + 0.15 * (x - 0.5)).double()
    grass = torch.stack([0.25 + 0.1 * torch.sin(40 * x + 9 * y), 0.45 + 0.15 * torch.sin(23 * x * y + 31 * y),
                         0.15 + 0.05 * torch.cos(57 * x)])
    image = image * (1 - ground) + grass * ground
    building = ((x > 0.12) & (x < 0.3) & (y > 0.3)).double()
    windows = ((torch.sin(60 * x) > 0.3) & (torch.sin(45 * y) > 0.2)).double()
    image = image * (1 - building) + building * (0.3 + 0.5 * windows)
    return (image.clamp(0, 1) * 255).round().div(255)[None]


def shipped_outputs(entry: dict) -> dict[str, np.ndarray]:
    """The model of one manifest entry on every size in SIZES: {"HxW": (3, H, W) uint8}."""
    model, _ = load_model(WEIGHTS / entry["file"])
    model = model.double().eval()
    outputs = {}
    with torch.no_grad():
        for h, w in SIZES:
            y = model(photo_like(h, w))
            outputs[f"{h}x{w}"] = (y.clamp(0, 1) * 255).round().to(torch.uint8)[0].numpy()
    return outputs


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as data:
        return dict(data)


def test_golden_covers_every_shipped_model(golden):
    expected = {f"{e['name']}/{h}x{w}" for e in ENTRIES for h, w in SIZES}
    assert set(golden) == expected, (
        "tests/golden/shipped_outputs.npz does not match weights/manifest.json; if the shipped models "
        "changed on purpose, regenerate it (see this file's docstring)")


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_shipped_model_output_is_bit_identical(entry, golden):
    failures = []
    for size, out in shipped_outputs(entry).items():
        ref = golden[f"{entry['name']}/{size}"]
        assert out.shape == ref.shape, (entry["name"], size)
        differ = out != ref
        if differ.any():
            worst = np.abs(out.astype(np.int16) - ref.astype(np.int16)).max()
            failures.append(f"{size}: {int(differ.sum())} of {differ.size} values differ (max by {worst})")
    assert not failures, f"{entry['name']}: " + "; ".join(failures)


def main() -> None:
    parser = argparse.ArgumentParser(description="Regenerate tests/golden/shipped_outputs.npz (see the docstring).")
    parser.add_argument("--regenerate", action="store_true", help="write the golden file from the current code")
    args = parser.parse_args()
    if not args.regenerate:
        parser.error("nothing to do without --regenerate")
    arrays = {f"{e['name']}/{size}": out for e in ENTRIES for size, out in shipped_outputs(e).items()}
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN, **arrays)
    total = sum(math.prod(a.shape) for a in arrays.values())
    print(f"wrote {GOLDEN} ({len(arrays)} arrays, {total} values, {GOLDEN.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
