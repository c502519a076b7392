"""One photo, many models: the server's ``POST /v1/compare`` (hence the web page's A/B view).

* :func:`stylize_each_async` runs each model on the photo through whatever owns the device (the
  server's inference worker) and keeps each output with its model's name, norm, style and time;
* :func:`photo_metrics` measures what an output kept of the photo and its defects, without the style
  image or VGG, so the server can report it for every comparison;
* :func:`comparison_grid` lays the outputs out in one labelled row.

The study evaluation (many photos, many checkpoints, statistics) is :mod:`evaluation`; it reports the
same :func:`photo_metrics`. This module stays cheap to import (no VGG, no plotting): the server loads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from PIL import Image

from .checkpoint import ModelInfo
from .grid import image_grid
from .imageio import LoadedImage
from .metrics import dark_spots, luminance_ssim


@dataclass
class ModelOutput:
    """One model's output for one image, and the time it took."""

    name: str
    norm: str
    style: str
    image: LoadedImage
    elapsed_s: float

    @property
    def label(self) -> str:
        return f"{self.name} ({self.norm}, {self.elapsed_s * 1e3:.0f} ms)"


class TimedImage(Protocol):
    """What a submit function gives back: the stylized image and the device time it took."""

    image: LoadedImage
    elapsed_s: float


def photo_metrics(output: torch.Tensor, content: torch.Tensor) -> dict[str, float]:
    """Luminance SSIM of an output to its photo and its dark spots (see :data:`evaluation.METRICS`)."""
    return {"ssim": float(luminance_ssim(output, content)[0]), "dark_spots": dark_spots(output, content)}


async def stylize_each_async(names: Sequence[str], submit: Callable[[str], Awaitable[TimedImage]],
                             describe: Callable[[str], ModelInfo | None]) -> list[ModelOutput]:
    """Stylize one image with every model in ``names``, where something else owns the device.

    ``submit(name)`` stylizes the image with that model; ``describe(name)`` gives the model's ModelInfo.
    All models are submitted at once, so a scheduler may run them back to back. Outputs are in the
    order of ``names``.
    """
    results = await asyncio.gather(*(submit(name) for name in names))
    outputs = []
    for name, result in zip(names, results):
        info = describe(name)
        outputs.append(ModelOutput(name, info.norm if info else "", info.style_name if info else "",
                                   result.image, result.elapsed_s))
    return outputs


def comparison_grid(original: torch.Tensor, outputs: Sequence[ModelOutput], cell: int = 512) -> Image.Image:
    """One row: the original, then every model's output labelled with its name, norm and time."""
    return image_grid([[original] + [o.image.rgb for o in outputs]], ["original"] + [o.label for o in outputs], cell)
