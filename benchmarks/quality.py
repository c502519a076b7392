"""How much of the photo and of the painting the shipped models keep, on full-size held-out photos (issue 16).

For every model of the plan that the weights folder ships: the validation measures of training
(validation.py) on bsds500 test photos at full size (481x321, never trained on): ``kept`` (luminance
SSIM of the output to the photo), ``style`` (the output's style loss relative to the photo's own: 1 =
no closer to the painting than the photo), and dark spots (% of lit pixels painted near-black). These
calibrate the warning threshold and the quality bar of issue 16 (docs/quality.md).

    python benchmarks/quality.py                          # 24 photos spread over bsds500/test
    python benchmarks/quality.py --max-images 4 --only starry-night
    python benchmarks/quality.py --only shipwreck --against shipwreck=old.safetensors   # paired by photo

``--against NAME=PATH`` also measures another checkpoint of plan model NAME (a candidate to ship, or the
version it replaces) on the same photos and prints the paired differences (shipped − other), on how
many photos the shipped one is better, and the Wilcoxon signed-rank p-value: the test behind every
"reshipped because" in docs/quality.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from style_transfer.checkpoint import load_model  # noqa: E402
from style_transfer.evaluation import pick_images  # noqa: E402
from style_transfer.imageio import load_rgb  # noqa: E402
from style_transfer.losses import PerceptualLoss  # noqa: E402
from style_transfer.metrics import dark_spots, luminance_ssim, wilcoxon_signed_rank  # noqa: E402
from style_transfer.validation import Validator  # noqa: E402
from style_transfer.zoo import list_models  # noqa: E402
from style_transfer.zoo_build import ZooModel, load_plan, select  # noqa: E402

PHOTOS = ROOT.parent / "shared" / "data" / "content" / "bsds500" / "test"


def measure_model(model: torch.nn.Module, m: ZooModel, photos: list[Path], size: int) -> dict[str, list[dict]]:
    """Per style of plan model ``m`` (one, or a multi-style network's every style, by name): per photo,
    ``kept``, ``style`` and ``dark`` (% of lit pixels painted near-black), in the plain fp32 network.
    An extension (``extend``) is measured on the styles it trained, the network's last."""
    paintings = [load_rgb(p, m.spec.loss.style_size) for p in m.spec.style]
    styles, names = model.config.num_styles, m.spec.style_names[-len(paintings):]  # an extension's: the new
    validator = Validator(photos, PerceptualLoss(paintings, m.spec.loss), torch.device("cpu"), size=size,
                          style_names=names, network_styles=styles, first_style=styles - len(paintings) if styles > 1 else 0)
    out = {}
    for k, name in enumerate(names):
        results = validator.measure_each(model, "fp32", k)
        out[name] = [{"kept": r["val_ssim"], "style": r["val_style"], "dark": dark_spots(o, image)}
                     for (r, o), image in zip(results, validator.images)]
    return out


# Which way is better for each measure: more of the photo kept; a style closer to the painting, fewer dark spots.
HIGHER_IS_BETTER = {"kept": True, "style": False, "dark": False}


def paired(a: list[dict], b: list[dict], key: str) -> dict:
    """One measure of two models on the same photos (per-photo rows, in the same order): both means, the
    mean difference a − b, on how many photos a is better (ties count for neither), and the two-sided
    Wilcoxon signed-rank p-value of the differences."""
    x, y = [r[key] for r in a], [r[key] for r in b]
    if len(x) != len(y):
        raise ValueError(f"paired rows differ in length: {len(x)} and {len(y)}")
    diffs = [p - q for p, q in zip(x, y)]
    sign = 1 if HIGHER_IS_BETTER[key] else -1
    return {"a": statistics.mean(x), "b": statistics.mean(y), "diff": statistics.mean(diffs),
            "a_better": sum(sign * d > 0 for d in diffs), "photos": len(diffs),
            "wilcoxon_p": wilcoxon_signed_rank(diffs)}


def measure_fast(model: torch.nn.Module, photos: list[Path], size: int, style: int = 0) -> list[dict]:
    """``kept`` and ``dark`` only (no VGG: several times faster on a CPU), per photo, plain fp32 network;
    of its style number ``style`` for a multi-style network."""
    rows = []
    styles = model.config.num_styles
    weights = [torch.eye(styles)[style]] if styles > 1 else []
    with torch.no_grad():
        for path in photos:
            image = load_rgb(path, size)
            out = model(image, *weights).float().clamp(0, 1)
            rows.append({"kept": float(luminance_ssim(out, image)), "dark": dark_spots(out, image)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, default=ROOT / "weights" / "zoo.toml")
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--max-images", type=int, default=24)
    parser.add_argument("--size", type=int, default=512, help="long side of the photos (default: %(default)s)")
    parser.add_argument("--only", action="append")
    parser.add_argument("--no-style", action="store_true", help="skip the style measure (no VGG: much faster)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="measure this file as the plan's model NAME instead of the shipped one (e.g. an "
                             "earlier version: git show REV:weights/NAME.safetensors > old.safetensors)")
    parser.add_argument("--against", action="append", default=[], metavar="NAME=PATH",
                        help="also measure this checkpoint as plan model NAME and compare the two by photo")
    args = parser.parse_args()
    shipped = {**list_models(args.plan.parent),
               **{name: Path(path) for name, _, path in (c.partition("=") for c in args.checkpoint)}}
    against = {name: Path(path) for name, _, path in (c.partition("=") for c in args.against)}
    photos = pick_images(args.photos, args.max_images)
    print(f"{len(photos)} photos from {args.photos} at <= {args.size} px; plain fp32 network")
    print(f"{'model':<24} {'norm':<9} {'kept mean':>9} {'kept min':>9} {'style mean':>10} {'style max':>9} "
          f"{'dark % mean':>11} {'dark % max':>10}")
    for m in select(load_plan(args.plan), args.only):
        if m.name not in shipped:
            continue
        per_style = measure_file(shipped[m.name], m, photos, args.size, args.no_style)
        other = measure_file(against[m.name], m, photos, args.size, args.no_style) if m.name in against else {}
        for name, rows in per_style.items():
            label = m.name if len(per_style) == 1 else f"{m.name}/{name}"  # a multi-style network: each style
            kept, dark = [r["kept"] for r in rows], [r["dark"] for r in rows]
            styles = [r["style"] for r in rows] if not args.no_style else [math.nan]
            print(f"{label:<24} {m.norm:<9} {statistics.mean(kept):>9.3f} {min(kept):>9.3f} "
                  f"{statistics.mean(styles):>10.3f} {max(styles):>9.3f} {statistics.mean(dark):>11.3f} "
                  f"{max(dark):>10.2f} {sum(d > 1 for d in dark):>4}/{len(dark)} over 1%", flush=True)
            if name in other:
                print(f"  vs {against[m.name]}: " + compare_line(rows, other[name]), flush=True)


def measure_file(path: Path, m: ZooModel, photos: list[Path], size: int, no_style: bool) -> dict[str, list[dict]]:
    """:func:`measure_model` (or :func:`measure_fast` without the style measure) of a checkpoint file."""
    model, _ = load_model(path)
    model.eval()
    if no_style:  # the first style it trained (an extension's first new one)
        first = model.config.num_styles - len(m.spec.style) if model.config.num_styles > 1 else 0
        return {m.spec.style_names[-len(m.spec.style)]: measure_fast(model, photos, size, first)}
    return measure_model(model, m, photos, size)


def compare_line(rows: list[dict], other: list[dict]) -> str:
    """The paired comparison of two models' per-photo rows, one measure after the other, in words."""
    parts = []
    for key in HIGHER_IS_BETTER:
        if key in rows[0]:
            r = paired(rows, other, key)
            parts.append(f"{key} {r['a']:.3f} vs {r['b']:.3f}, better on {r['a_better']}/{r['photos']} "
                         f"(p = {r['wilcoxon_p']:.2g})")
    return "; ".join(parts)


if __name__ == "__main__":
    main()
