"""How much each norm's painting moves when a video's frame barely does: the shimmer of a stylized clip.

A video is stylized frame by frame (style_transfer/video.py), so whatever the network does with a change
too small to see becomes the clip's shimmer. Two changes every clip has, measured on photos (default: three
sun80 scenes that no tuning decision used), at the CLI's fast path:

* **noise**: the same frame again with fresh sensor noise (Gaussian, sigma 2 levels of 255, about a
  phone's in daylight), 8 frames: the mean absolute change between consecutive outputs, in levels
  (the input's own is ~2.3);
* **a camera move of 1 or 2 px**: the painting of the moved frame against the first painting moved the same
  way, over the area both show: strokes that stick to the scene give ~0, strokes that swim give more.
  The network's two stride-2 convolutions make moves of 4 px nearly exact, so 1 and 2 px are the hard
  cases. For scale, "stuck" is the same error for a painting that did not move at all (the first painting
  against itself moved 1 px): a move error near it means the strokes do not follow the scene.

    python benchmarks/video_flicker.py --only starry-night-instance --only starry-night-batch \\
        --only starry-night-group --only starry-night-layer --only starry-night

Instance, group and layer norm take statistics of each frame, batch norm (at inference) fixed ones, so the
norms can differ here where a single image shows nothing.

``--gallery FILE PHOTO`` also draws, for each model, PHOTO's painting and under it how much the painting
changes after a 1 px move (the move error per pixel, 4x brighter): where the strokes are drawn anew.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine  # noqa: E402
from style_transfer.grid import image_grid  # noqa: E402
from style_transfer.imageio import load_rgb  # noqa: E402
from style_transfer.stylize import Stylizer  # noqa: E402
from style_transfer.train import stability_distance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SUN80 = ROOT.parent / "shared" / "data" / "content" / "sun80"
PHOTOS = ("aqueduct_sun_ancegghzusmmvzjn.jpg", "boardwalk_sun_bskwjtamytupzwah.jpg", "chalet_sun_alyagmlzovxxkriw.jpg")
NOISE = 2 / 255
FRAMES = 8


def levels(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean() * 255)


def noise_flicker(stylizer: Stylizer, photo: torch.Tensor, seed: int = 0) -> tuple[float, float]:
    """(output, input) mean absolute change between consecutive noisy frames, in levels."""
    g = torch.Generator().manual_seed(seed)
    frames = [(photo + NOISE * torch.randn(photo.shape, generator=g)).clamp(0, 1) for _ in range(FRAMES)]
    painted = [stylizer.run(frame) for frame in frames]
    out = sum(levels(a, b) for a, b in zip(painted, painted[1:])) / (FRAMES - 1)
    inp = sum(levels(a, b) for a, b in zip(frames, frames[1:])) / (FRAMES - 1)
    return out, inp


def move_error(stylizer: Stylizer, photo: torch.Tensor, shift: int, first: torch.Tensor) -> float:
    """The painting of the frame the camera sees after moving ``shift`` px (the scene goes up and left),
    against ``first``, the first frame's painting, over the area both show: the distance `train
    --stability-weight` trains down (train.stability_distance), in levels."""
    moved = stylizer.run(photo[..., shift:, shift:])
    return 255 * float(stability_distance(first, moved, shift, shift))


def stuck(first: torch.Tensor, shift: int = 1) -> float:
    """move_error's value for a painting that stays where it is while the scene moves ``shift`` px."""
    return 255 * float(stability_distance(first, first[..., :-shift, :-shift], shift, shift))


def change_map(stylizer: Stylizer, photo: torch.Tensor, first: torch.Tensor, shift: int = 1) -> torch.Tensor:
    """Per pixel, the grey mean absolute change of move_error (4x brighter), the shape of ``first``."""
    moved = stylizer.run(photo[..., shift:, shift:])
    change = (moved - first[..., shift:, shift:]).abs().mean(1, keepdim=True).mul(4).clamp(0, 1)
    return torch.nn.functional.pad(change, (0, shift, 0, shift)).expand(-1, 3, -1, -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", required=True,
                        help="a model of weights/, or a checkpoint file (repeat)")
    parser.add_argument("--photos", type=Path, nargs="*", default=[SUN80 / p for p in PHOTOS])
    parser.add_argument("--size", type=int, default=512, help="long side of the frames (px)")
    parser.add_argument("--gallery", nargs=2, type=Path, metavar=("FILE", "PHOTO"),
                        help="draw each model's painting of PHOTO and its change after a 1 px move into FILE")
    args = parser.parse_args()
    columns: list[list[torch.Tensor]] = []
    shown = load_rgb(args.gallery[1], args.size) if args.gallery else None

    photos = [load_rgb(p, args.size) for p in args.photos]
    print(f"# {machine()}; {len(photos)} photos at {args.size} px: {', '.join(p.name for p in args.photos)}")
    print("| model | noise: output change (levels) | noise: input change | 1 px move | 2 px move | 4 px move | stuck |")
    print("|---|---|---|---|---|---|---|")
    for name in args.only:
        path = Path(name) if name.endswith(".safetensors") else ROOT / "weights" / f"{name}.safetensors"
        stylizer = Stylizer.from_checkpoint(path, "cpu")
        rows = []
        for photo in photos:
            out, inp = noise_flicker(stylizer, photo)
            first = stylizer.run(photo)
            rows.append((out, inp, *(move_error(stylizer, photo, s, first) for s in (1, 2, 4)), stuck(first)))
        mean = [sum(col) / len(col) for col in zip(*rows)]
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in mean) + " |", flush=True)
        if shown is not None:
            first = stylizer.run(shown)
            columns.append([first, change_map(stylizer, shown, first)])
    if shown is not None:
        labels = [Path(name).stem for name in args.only]
        image_grid([list(row) for row in zip(*columns)], labels, cell=args.size).save(args.gallery[0], quality=88)
        print(f"wrote {args.gallery[0]}")


if __name__ == "__main__":
    main()
