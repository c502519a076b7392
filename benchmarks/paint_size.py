"""Stroke size: what painting a large photo smaller (``--paint-size``) does to the picture and the time.

A network trained on 256 px crops paints strokes of a fixed size in pixels: on a large photo seen whole
(fitted to a screen) they shrink to a fine texture on a tinted photo. ``StylizeOptions.paint_size``
paints the photo downscaled and brings the painting back to full size with the photo's fine detail
(``stylize.upscale_painting``). The photos here are at most 1024 px, so a large photo is stood for by
one enlarged ``--upscale`` times (bicubic: it has no finer detail than the original, a real large photo
has). Every output is measured as it is seen: downscaled to the photo's original size (``--size``):

* ``kept``: luminance SSIM of the output to the photo (as in benchmarks/quality.py);
* ``style``: the output's style loss relative to the photo's own (1 = no closer to the painting than
  the photo; lower = more of the painting), the painting at its training size (``style_size``);
* ``ms``: the fast path's time per image at the enlarged size (the network plus the upscale), median.

``full`` paints at the enlarged size (in tiles of ``--tile`` px). ``--no-detail`` adds, per paint size,
the painting upsampled alone (bicubic, no detail layer): what the detail layer is for. Each is paired
against ``full``: the mean difference, on how many photos it is better, Wilcoxon p.

    python benchmarks/paint_size.py                 # 8 sun80 photos, 1024 -> 2048 px, seen at 1024
    python benchmarks/paint_size.py --upscale 1     # the photos as they are: paint a 1024 px photo smaller?
    python benchmarks/paint_size.py --only starry-night --max-images 2 --paint 512 --no-detail
    python benchmarks/paint_size.py --gallery docs/gallery/stroke-size.jpg \
        --gallery-photo ../shared/data/content/urban100/img_096.jpg --only starry-night   # the picture only

``--gallery`` writes one picture instead of measuring: the photo enlarged, painted at full size (left)
and at the first ``--paint`` size (right), seen whole (top) and a crop at 100% (bottom).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.quality import paired  # noqa: E402
from style_transfer.evaluation import pick_images  # noqa: E402
from style_transfer.imageio import load_rgb, resize_max  # noqa: E402
from style_transfer.losses import PerceptualLoss  # noqa: E402
from style_transfer.metrics import luminance_ssim  # noqa: E402
from style_transfer.stylize import Stylizer, StylizeOptions, finish  # noqa: E402
from style_transfer.zoo import list_models  # noqa: E402
from style_transfer.zoo_build import load_plan, select  # noqa: E402

PHOTOS = ROOT.parent / "shared" / "data" / "content" / "sun80"
MODELS = ["starry-night", "great-wave", "shipwreck", "the-scream"]


def variants(paint: list[int], no_detail: bool) -> list[tuple[str, int | None, bool]]:
    """(label, paint size, detail layer) of every variant measured: full size first, the baseline."""
    out = [("full", None, True)]
    for size in paint:
        out.append((str(size), size, True))
        if no_detail:
            out.append((f"{size} no detail", size, False))
    return out


def stylize(stylizer: Stylizer, image: torch.Tensor, paint: int | None, detail: bool,
            tile: int) -> tuple[torch.Tensor, float]:
    """The output and the seconds it took; without ``detail`` the painting is only upsampled."""
    start = time.perf_counter()
    if detail:
        out = stylizer.stylize(image, StylizeOptions(paint_size=paint, tile=tile))
    else:
        small = resize_max(image, paint)
        up = torch.nn.functional.interpolate(stylizer.run(small), size=image.shape[-2:], mode="bicubic",
                                             align_corners=False)
        out = finish(up, image, StylizeOptions())
    return out, time.perf_counter() - start


def enlarge(image: torch.Tensor, upscale: float) -> torch.Tensor:
    """``image`` enlarged ``upscale`` times (bicubic), standing for a large photo; itself at 1."""
    if upscale == 1:
        return image
    return torch.nn.functional.interpolate(image, scale_factor=upscale, mode="bicubic", align_corners=False).clamp(0, 1)


def gallery(stylizer: Stylizer, photo: Path, size: int, upscale: float, paint: int, tile: int, path: Path) -> None:
    """The picture of ``--gallery``: full size vs ``paint``, seen whole (top row) and at 100% (bottom)."""
    from PIL import Image

    from style_transfer.imageio import to_pil

    big = enlarge(load_rgb(photo, size), upscale)
    pair = [stylize(stylizer, big, p, True, tile)[0] for p in (None, paint)]
    whole = [to_pil(resize_max(out, size // 2)) for out in pair]
    w, h = whole[0].size
    top, left = big.shape[-2] // 3, big.shape[-1] // 3
    crops = [to_pil(out[..., top:top + h, left:left + w]) for out in pair]
    sheet = Image.new("RGB", (2 * w, 2 * h), "white")
    for k, (a, b) in enumerate(zip(whole, crops)):
        sheet.paste(a, (k * w, 0))
        sheet.paste(b, (k * w, h))
    sheet.save(path, quality=88)
    print(f"wrote {path}: {photo.name}, full size vs painted at {paint} px, whole and at 100%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, default=ROOT / "weights" / "zoo.toml")
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--max-images", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024,
                        help="long side of the photos, and the size the outputs are seen at (default: %(default)s)")
    parser.add_argument("--upscale", type=float, default=2.0,
                        help="enlarge the photos this many times to stand for a large photo (default: %(default)s)")
    parser.add_argument("--paint", default="1024,768,512", help="paint sizes, comma-separated (default: %(default)s)")
    parser.add_argument("--tile", type=int, default=1024, help="tile size of every variant (default: %(default)s)")
    parser.add_argument("--no-detail", action="store_true",
                        help="also measure each paint size without the detail layer")
    parser.add_argument("--only", action="append", help=f"models (default: {', '.join(MODELS)})")
    parser.add_argument("--gallery", type=Path, help="write the picture described above here instead of measuring")
    parser.add_argument("--gallery-photo", type=Path, help="the photo of --gallery")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    shipped = list_models(args.plan.parent)
    models = [m for m in select(load_plan(args.plan), args.only or MODELS)
              if m.name in shipped and m.norm != "conditional_instance"]
    photos = pick_images(args.photos, args.max_images)
    if args.gallery:  # the first model, on one photo: nothing else is loaded
        return gallery(Stylizer.from_checkpoint(shipped[models[0].name], device="cpu"),
                       args.gallery_photo or photos[0], args.size, args.upscale, int(args.paint.split(",")[0]),
                       args.tile, args.gallery)
    images = [load_rgb(p, args.size) for p in photos]
    large = [enlarge(image, args.upscale) for image in images]
    runs = variants([int(s) for s in args.paint.split(",")], args.no_detail)
    print(f"{len(photos)} photos from {args.photos} at <= {args.size} px, enlarged {args.upscale:g}x "
          f"(long side {max(large[0].shape[-2:])} px), seen at <= {args.size} px; fast path, "
          f"{torch.get_num_threads()} threads")
    print(f"{'model':<14} {'paint':<16} {'kept':>6} {'style':>6} {'ms':>6}   vs full: kept, style (better on, p)")
    for m in models:
        stylizer = Stylizer.from_checkpoint(shipped[m.name], device="cpu")
        criterion = PerceptualLoss([load_rgb(p, m.spec.loss.style_size) for p in m.spec.style], m.spec.loss)
        own = [float(criterion.style_distance(image)) for image in images]
        stylize(stylizer, images[0], None, True, args.tile)  # warm-up
        rows: dict[str, list[dict]] = {}
        for label, paint, detail in runs:
            rows[label] = []
            for image, big, base in zip(images, large, own):
                out, seconds = stylize(stylizer, big, paint, detail, args.tile)
                out = resize_max(out, args.size)  # as it is seen
                rows[label].append({"kept": float(luminance_ssim(out, image)),
                                    "style": float(criterion.style_distance(out)) / max(base, 1e-12),
                                    "ms": seconds * 1000})
            r = rows[label]
            line = (f"{m.name:<14} {label:<16} {statistics.mean(x['kept'] for x in r):>6.3f} "
                    f"{statistics.mean(x['style'] for x in r):>6.3f} {statistics.median(x['ms'] for x in r):>6.0f}")
            if label != "full":
                k, s = paired(r, rows["full"], "kept"), paired(r, rows["full"], "style")
                line += (f"   {k['diff']:+.3f} ({k['a_better']}/{k['photos']}, p={k['wilcoxon_p']:.2g}), "
                         f"{s['diff']:+.3f} ({s['a_better']}/{s['photos']}, p={s['wilcoxon_p']:.2g})")
            print(line, flush=True)


if __name__ == "__main__":
    main()
