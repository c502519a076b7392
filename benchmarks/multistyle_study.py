"""What sharing every convolution costs: a multi-style network against single-style models (issue 17).

For each painting of a multi-style (conditional instance norm) model of the plan, its single-style
instance-norm model of the same plan (the first in plan order trained on that painting alone), both
measured on the same held-out photos at full size with quality.py's measures: ``kept`` (luminance SSIM
to the photo), ``style`` (style loss relative to the photo's own; lower = more of the painting) and dark
spots. The multi-style network runs in that painting's style. Differences are paired by photo
(multi − single) with the Wilcoxon signed-rank p-value.

The shipped four-styles is distilled from these very singles (docs/multi-style.md): it costs their steps
plus its own, so the study measures what one network in place of the four loses against them. For a
perceptual-loss network at the singles' total steps, name its plan and entry (--plan, --multi).

    python benchmarks/multistyle_study.py                         # four-styles, 24 bsds500 test photos
    python benchmarks/multistyle_study.py --checkpoint runs/zoo/four-styles.safetensors --json out.json
    python benchmarks/multistyle_study.py --plan benchmarks/multistyle-plan.toml --multi four-styles-scratch \
        --singles-plan weights/zoo.toml --checkpoint runs/multistyle/four-styles-scratch.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.quality import PHOTOS, measure_model, paired  # noqa: E402
from style_transfer.checkpoint import load_model  # noqa: E402
from style_transfer.evaluation import pick_images  # noqa: E402
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
        single_model, single_info = load_model(checkpoint)
        single_model.eval()
        (single_rows,) = measure_model(single_model, single, photos, size).values()
        # A checkpoint given in place of the plan's model (--single) is named by its file.
        label = single.name if checkpoint.stem == single.name else checkpoint.stem
        row: dict = {"painting": name, "single": label, "single_steps": single_info.steps,
                     "multi_steps": info.steps, "photos": len(photos)}
        for key in MEASURES:
            r = paired(multi_rows[name], single_rows, key)
            row[key] = {"multi": r["a"], "single": r["b"], "diff": r["diff"], "multi_better": r["a_better"],
                        "wilcoxon_p": r["wilcoxon_p"]}
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table (docs/multi-style.md)."""
    lines = ["| painting | single model | kept: single / multi (multi better on, p) | "
             "style: single / multi (multi better on, p) | dark %: single / multi |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        cells = [f"{r[k]['single']:.3f} / {r[k]['multi']:.3f} ({r[k]['multi_better']}/{r['photos']}, "
                 f"{r[k]['wilcoxon_p']:.2g})" for k in ("kept", "style")]
        lines.append(f"| {r['painting']} | {r['single']} | {cells[0]} | {cells[1]} | "
                     f"{r['dark']['single']:.3f} / {r['dark']['multi']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, default=ROOT / "weights" / "zoo.toml")
    parser.add_argument("--multi", default="four-styles", help="the multi-style model of the plan")
    parser.add_argument("--singles-plan", type=Path,
                        help="the plan whose single-style models (shipped in its folder) it is compared with "
                             "(default: --plan; give weights/zoo.toml for a variant in benchmarks/multistyle-plan.toml)")
    parser.add_argument("--checkpoint", type=Path, help="its checkpoint (default: the shipped one)")
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--max-images", type=int, default=24)
    parser.add_argument("--size", type=int, default=512, help="long side of the photos (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the rows (per-painting means and tests) here")
    parser.add_argument("--single", action="append", default=[], metavar="PAINTING=PATH",
                        help="compare this painting (its style name) with this single-style checkpoint instead "
                             "of the shipped one (Starry Night: runs/quality/warm-auto-starry-night.safetensors, "
                             "the run with the multi-style network's recipe)")
    args = parser.parse_args()
    plan = load_plan(args.plan)
    singles_plan = args.singles_plan or args.plan
    shipped = list_models(singles_plan.parent)
    multi = next((m for m in plan if m.name == args.multi), None)
    if multi is None or len(multi.spec.style) < 2:
        raise SystemExit(f"{args.multi}: not a multi-style model of {args.plan}")
    checkpoint = args.checkpoint or list_models(args.plan.parent).get(multi.name)
    if checkpoint is None:
        raise SystemExit(f"{multi.name} is not shipped yet: give --checkpoint (e.g. runs/zoo/{multi.name}.safetensors)")
    given = {name: Path(path) for name, _, path in (s.partition("=") for s in args.single)}
    unknown = sorted(set(given) - set(multi.spec.style_names))
    if unknown:
        raise SystemExit(f"--single: {', '.join(unknown)} not among {multi.name}'s styles {multi.spec.style_names}")
    singles = {name: (m, given.get(name, shipped.get(m.name)))
               for name, m in singles_for(multi, load_plan(singles_plan)).items()}
    singles = {name: pair for name, pair in singles.items() if pair[1] is not None}
    photos = pick_images(args.photos, args.max_images)
    rows = study(multi, checkpoint, singles, photos, args.size)
    print(f"{multi.name} ({multi.steps} steps, {len(multi.spec.style)} styles) against single-style models, "
          f"{len(photos)} photos from {args.photos} at <= {args.size} px; multi − single paired by photo")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
