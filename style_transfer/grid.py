"""Labelled image grids: the picture behind `style-transfer compare`, `/v1/compare?output=image` and the
zoo gallery. Pure drawing (PIL); nothing here runs a model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from .imageio import to_pil

_LABEL_HEIGHT = 22
_GAP = 4
_BACKGROUND = (255, 255, 255)
_INK = (30, 30, 30)
# Pillow's default bitmap font is about 7 px per character: longer labels are cut to their column.
_CHAR_WIDTH = 7


def _fit(image: torch.Tensor, cell: int) -> Image.Image:
    pil = to_pil(image)
    pil.thumbnail((cell, cell), Image.Resampling.LANCZOS)
    return pil


def image_grid(rows: Sequence[Sequence[torch.Tensor]], column_labels: Sequence[str], cell: int = 256) -> Image.Image:
    """A labelled grid: each row is one content image, each column one variant (e.g. original, arms).

    Every image (1, 3, H, W) in [0, 1] is scaled to fit a ``cell`` x ``cell`` box, keeping its aspect.
    """
    if not rows:
        raise ValueError("image_grid needs at least one row")
    columns = len(column_labels)
    if any(len(row) != columns for row in rows):
        raise ValueError(f"every row needs {columns} images (one per column label)")
    fitted = [[_fit(img, cell) for img in row] for row in rows]
    col_w = [max(r[c].width for r in fitted) for c in range(columns)]
    row_h = [max(img.height for img in r) for r in fitted]
    width = sum(col_w) + _GAP * (columns + 1)
    height = _LABEL_HEIGHT + sum(row_h) + _GAP * (len(rows) + 1)
    grid = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    x = _GAP
    for c, label in enumerate(column_labels):
        fits = col_w[c] // _CHAR_WIDTH
        text = label if len(label) <= fits else label[: max(1, fits - 1)] + "…"
        draw.text((x + 2, 5), text, fill=_INK, font=font)
        x += col_w[c] + _GAP
    y = _LABEL_HEIGHT + _GAP
    for r, row in enumerate(fitted):
        x = _GAP
        for c, img in enumerate(row):
            grid.paste(img, (x + (col_w[c] - img.width) // 2, y + (row_h[r] - img.height) // 2))
            x += col_w[c] + _GAP
        y += row_h[r] + _GAP
    return grid


def progress_sheet(samples: Sequence[tuple[int, torch.Tensor]], cell: int = 160) -> Image.Image:
    """How a training run went, at a glance: its sampled crop, then the network's output of it at each of
    these sample steps, one row per style it paints. ``samples`` are (step, sample image) in step order,
    each sample the crop beside its output in each style, square panels side by side (train.py)."""
    if not samples:
        raise ValueError("progress_sheet needs at least one sample")
    panels = [_panels(image) for _, image in samples]
    styles = min(len(p) for p in panels) - 1
    rows = [[panels[-1][0], *(p[1 + k] for p in panels)] for k in range(styles)]
    return image_grid(rows, ["photo", *(f"step {step}" for step, _ in samples)], cell=cell)


def _panels(sample: torch.Tensor) -> list[torch.Tensor]:
    """A sample's square panels, left to right."""
    size = sample.shape[-2]
    return [sample[..., i:i + size] for i in range(0, sample.shape[-1] - size + 1, size)]
