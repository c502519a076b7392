"""A picture of what `train --extend` gives (issue 17, part 3): each extension's new painting on top, then
held-out photos stylized in it, one column per extension of the plan.

    python benchmarks/extension_strip.py --only extend-picabia-lr1e-2 --only extend-kandinsky \
        --out docs/gallery/extend.jpg

The photos default to two no tuning decision looked at (sun80's lighthouse, urban100's img_077; the
gallery photos are the runs' validation photos, so they are not held out of anything). The checkpoint
is each run's latest (``--runs``): its step is in the column label.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from style_transfer.grid import image_grid  # noqa: E402
from style_transfer.imageio import load_rgb  # noqa: E402
from style_transfer.stylize import StylizeOptions, Stylizer, style_mix, style_names  # noqa: E402
from style_transfer.zoo_build import ZooModel, load_plan, select  # noqa: E402

CONTENT = ROOT.parent / "shared" / "data" / "content"
PHOTOS = [CONTENT / "sun80" / "lighthouse_sun_akeqnxvbhbktajfl.jpg", CONTENT / "urban100" / "img_077.jpg"]


def strip_rows(models: list[ZooModel], runs: Path, photos: list[Path], cell: int
               ) -> tuple[list[list[torch.Tensor]], list[str]]:
    """The grid's rows and column labels: a header row of the paintings, then one row per photo; the first
    column is the photo, then one per extension, in its new style (the network's last)."""
    columns, header, labels = [], [torch.ones(1, 3, 8, 8)], ["photo"]
    for m in models:
        if m.spec.extend is None:
            raise ValueError(f"{m.name} does not extend a model")
        checkpoint = m.checkpoint(runs)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{m.name}: no checkpoint at {checkpoint} (train it: style-transfer zoo train)")
        stylizer = Stylizer.from_checkpoint(checkpoint, device="cpu")
        info = stylizer.info
        new = style_names(info)[-1]
        columns.append((stylizer, StylizeOptions(style=style_mix(info, new))))
        header.append(load_rgb(m.spec.style[-1], max_size=cell))
        labels.append(f"{new} (+{info.steps} steps)")
    images = [load_rgb(p, max_size=cell * 2) for p in photos]
    return [header] + [[img] + [s.stylize(img, options) for s, options in columns] for img in images], labels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", type=Path, default=ROOT / "benchmarks" / "multistyle-plan.toml")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "multistyle")
    p.add_argument("--only", action="append", help="plan entries that extend a model (default: every one)")
    p.add_argument("--photos", type=Path, nargs="+", default=PHOTOS)
    p.add_argument("--cell", type=int, default=384, help="each picture's box, px (default: %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="the picture (.jpg)")
    args = p.parse_args(argv)
    models = [m for m in select(load_plan(args.plan), args.only) if args.only or m.spec.extend is not None]
    grid = image_grid(*strip_rows(models, args.runs, args.photos, args.cell), cell=args.cell)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out, quality=88, optimize=True)  # as the gallery's (zoo_build.gallery)
    print(f"wrote {args.out} ({grid.width}x{grid.height})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
