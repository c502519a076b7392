"""What sharing every convolution costs: a multi-style network against single-style models (issue 17).

For each painting of a multi-style (conditional instance norm) model of the plan, its single-style
instance-norm model of the same plan (the first in plan order trained on that painting alone), both
measured on the same held-out photos at full size with quality.py's measures: ``kept`` (luminance SSIM
to the photo), ``style`` (style loss relative to the photo's own; lower = more of the painting) and dark
spots. The multi-style network runs in that painting's style. Differences are paired by photo
(multi − single) with the Wilcoxon signed-rank p-value.

Fair at equal steps: the plan gives the multi-style network the singles' total budget with their recipe
(four-styles: 4 x 1500 steps with train's defaults), so each painting gets as many steps in it as its
single model had alone.

    python benchmarks/multistyle_study.py                         # four-styles, 24 bsds500 test photos
    python benchmarks/multistyle_study.py --checkpoint runs/zoo/four-styles.safetensors --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.quality import PHOTOS, measure_model  # noqa: E402
from style_transfer.checkpoint import load_model  # noqa: E402
from style_transfer.evaluation import pick_images  # noqa: E402
from style_transfer.metrics import wilcoxon_signed_rank  # noqa: E402
from style_transfer.zoo import list_models  # noqa: E402
from style_transfer.zoo_build import ZooModel, load_plan  # noqa: E402

MEASURES = ("kept", "style", "dark")


def singles_for(multi: ZooModel, plan: list[ZooModel]) -> dict[str, ZooModel]:
    """Each painting of ``multi`` (by style name) -> the plan's first instance-norm model of it alone."""
    out = {}
    for path, name in zip(multi.spec.style, multi.spec.style_names):
        match = next((m for m in plan if m.norm == "instance" and m.spec.style == (path,)), None)
        if match is not None:
            out[name] = match
    return out


def study(multi: ZooModel, multi_checkpoint: Path, singles: dict[str, tuple[ZooModel, Path]],
          photos: list[Path], size: int) -> list[dict]:
    """Per painting: both models' per-photo measures, their means, and the paired differences."""
    model, info = load_model(multi_checkpoint)
    model.eval()
    if info.extra.get("styles") != multi.spec.style_names:
        raise ValueError(f"{multi_checkpoint} holds styles {info.extra.get('styles')}, the plan's "
                         f"{multi.name} has {multi.spec.style_names}")
    multi_rows = measure_model(model, multi, photos, size)
    rows = []
    for name, (single, checkpoint) in singles.items():
        single_model, _ = load_model(checkpoint)
        single_model.eval()
        (single_rows,) = measure_model(single_model, single, photos, size).values()
        row: dict = {"painting": name, "single": single.name, "single_steps": single.steps,
                     "multi_steps": multi.steps, "photos": len(photos)}
        for key in MEASURES:
            a, b = [r[key] for r in multi_rows[name]], [r[key] for r in single_rows]
            diffs = [x - y for x, y in zip(a, b)]
            row[key] = {"multi": statistics.mean(a), "single": statistics.mean(b),
                        "diff": statistics.mean(diffs), "wilcoxon_p": wilcoxon_signed_rank(diffs)}
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table (docs/multi-style.md)."""
    lines = ["| painting | single model | kept: single / multi (p) | style: single / multi (p) | dark %: single / multi |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        cells = [f"{r[k]['single']:.3f} / {r[k]['multi']:.3f} ({r[k]['wilcoxon_p']:.2g})" for k in ("kept", "style")]
        lines.append(f"| {r['painting']} | {r['single']} | {cells[0]} | {cells[1]} | "
                     f"{r['dark']['single']:.3f} / {r['dark']['multi']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, default=ROOT / "weights" / "zoo.toml")
    parser.add_argument("--multi", default="four-styles", help="the multi-style model of the plan")
    parser.add_argument("--checkpoint", type=Path, help="its checkpoint (default: the shipped one)")
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--max-images", type=int, default=24)
    parser.add_argument("--size", type=int, default=512, help="long side of the photos (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the rows (per-painting means and tests) here")
    args = parser.parse_args()
    plan = load_plan(args.plan)
    shipped = list_models(args.plan.parent)
    multi = next((m for m in plan if m.name == args.multi), None)
    if multi is None or len(multi.spec.style) < 2:
        raise SystemExit(f"{args.multi}: not a multi-style model of {args.plan}")
    checkpoint = args.checkpoint or shipped.get(multi.name)
    if checkpoint is None:
        raise SystemExit(f"{multi.name} is not shipped yet: give --checkpoint (e.g. runs/zoo/{multi.name}.safetensors)")
    singles = {name: (m, shipped[m.name]) for name, m in singles_for(multi, plan).items() if m.name in shipped}
    photos = pick_images(args.photos, args.max_images)
    rows = study(multi, checkpoint, singles, photos, args.size)
    print(f"{multi.name} ({multi.steps} steps, {len(multi.spec.style)} styles) against single-style models, "
          f"{len(photos)} photos from {args.photos} at <= {args.size} px; multi − single paired by photo")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
