"""Where do the batch-norm arm's black holes come from? Experiments, not guesses (issue 16, part 3).

On full-size held-out photos, the shipped ``starry-night-batch`` (plain fp32 network) with:

* ``running``: its shipped running statistics (eval mode, what users get);
* ``per-image``: each photo's own statistics (batch norm in training mode on a batch of one);
* ``precise-crops``: population statistics recomputed in fp32 with the final weights, averaged over
  training crops like those it was trained on (256 px, batches of 4): rules out bf16 autocast and
  the EMA momentum as the cause when the holes stay;
* ``precise-varied``: the same over full-size bsds500 train photos plus sun80 (skies, water): rules
  out "too few distinct photos" when the holes stay.

and, for the worst photo, which layer's activations leave the population statistics the most
(largest |z| = |photo mean - running mean| / running std over channels).

    python benchmarks/bn_holes.py                      # bsds500 test (200) + sun80 (80), full size
    python benchmarks/bn_holes.py --quick              # 20 + 10 photos
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
from style_transfer.data import ContentImages  # noqa: E402
from style_transfer.evaluation import pick_images  # noqa: E402
from style_transfer.imageio import load_rgb  # noqa: E402
from style_transfer.metrics import dark_spots  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "content"


def _bn_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.BatchNorm2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]


@torch.no_grad()
def precise_statistics(model: torch.nn.Module, batches: list[torch.Tensor]) -> torch.nn.Module:
    """A copy whose running statistics are the exact fp32 average over ``batches`` (cumulative mean of
    per-batch statistics, as in "precise BN"), with the final weights."""
    model = copy.deepcopy(model)
    for _, bn in _bn_layers(model):
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average instead of an EMA
    model.train()
    for batch in batches:
        model(batch)
    return model.eval()


@torch.no_grad()
def layer_z(model: torch.nn.Module, image: torch.Tensor) -> list[tuple[str, float, float]]:
    """Per batch-norm layer: the largest |z| of a channel mean and the largest std ratio, on ``image``."""
    rows: list[tuple[str, float, float]] = []
    hooks = []
    for name, bn in _bn_layers(model):
        def hook(module, args, output, name=name):
            x = args[0].float()
            mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
            std = (module.running_var + module.eps).sqrt()
            z = ((mean - module.running_mean) / std).abs().max().item()
            ratio = (var.sqrt() / std).max().item()
            rows.append((name, z, ratio))
        hooks.append(bn.register_forward_hook(hook))
    model.eval()
    model(image)
    for h in hooks:
        h.remove()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "weights" / "starry-night-batch.safetensors"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, _ = load_model(args.model)
    model.eval()
    n_test, n_sun = (20, 10) if args.quick else (200, 80)
    photos = pick_images(SHARED / "bsds500" / "test", n_test) + pick_images(SHARED / "sun80", n_sun)

    # Precise statistics over training-like crops (the recipe's: 256 px, batch 4), 50 batches.
    crops = ContentImages(SHARED / "bsds500" / "train", 256)
    batches = [torch.stack([crops[(i * 4 + j, 0)] for j in range(4)]) for i in range(50)]
    variants = {"running": model, "precise-crops": precise_statistics(model, batches)}
    # Varied: full-size train photos and sun80 photos (downscaled to 512 px), one per batch.
    varied = [load_rgb(p, 512) for p in pick_images(SHARED / "bsds500" / "train", 100)]
    varied += [load_rgb(p, 512) for p in pick_images(SHARED / "sun80", 80)]
    variants["precise-varied"] = precise_statistics(model, varied)
    per_image = copy.deepcopy(model).train()
    for _, bn in _bn_layers(per_image):
        bn.track_running_stats = False  # batch statistics in training mode, nothing updated
        bn.running_mean = bn.running_var = None

    results: dict[str, list[float]] = {k: [] for k in [*variants, "per-image"]}
    worst = (0.0, None)
    with torch.no_grad():
        for path in photos:
            image = load_rgb(path, 768)
            for name, net in [*variants.items(), ("per-image", per_image)]:
                spots = dark_spots(net(image).clamp(0, 1), image)
                results[name].append(spots)
                if name == "running" and spots > worst[0]:
                    worst = (spots, path)
    print(f"{len(photos)} photos ({n_test} bsds500 test, {n_sun} sun80), long side <= 768 px, plain fp32")
    print(f"{'statistics':<16} {'mean %':>8} {'max %':>8} {'> 1 %':>6} {'> 0.1 %':>8}")
    for name, values in results.items():
        print(f"{name:<16} {statistics.mean(values):>8.3f} {max(values):>8.2f} {sum(v > 1 for v in values):>6} "
              f"{sum(v > 0.1 for v in values):>8}")
    for name, values in results.items():
        ranked = sorted(zip(values, photos), reverse=True)[:5]
        print(f"worst under {name}: " + ", ".join(f"{p.name} {v:.1f}%" for v, p in ranked))
    if worst[1] is not None:
        print(f"\nper-layer statistics on the worst photo ({worst[1].name}, {worst[0]:.1f}%), running vs photo:")
        image = load_rgb(worst[1], 768)
        typical = pick_images(SHARED / "bsds500" / "test", 3)[1]
        ref = {n: (z, r) for n, z, r in layer_z(model, load_rgb(typical, 768))}
        print(f"{'layer':<28} {'max |z|':>8} {'std ratio':>10}   (typical photo {typical.name}: |z|, ratio)")
        for name, z, ratio in layer_z(model, image):
            print(f"{name:<28} {z:>8.2f} {ratio:>10.2f}   ({ref[name][0]:.2f}, {ref[name][1]:.2f})")


if __name__ == "__main__":
    main()
