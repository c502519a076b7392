"""Validation during training: held-out photos at full size, measured at every sample step (issue 16).

A training sample is a 256 px crop of a training photo, and it misleads: a Van Gogh run whose finished
model kept the subjects showed texture only in its crops from step 250 to 1500, and a user watching
them would have stopped a run that was working. So every sample step also stylizes a fixed set of
photos the run never trains on, at the size people use (long side :data:`VAL_SIZE`), and logs:

* ``val_ssim`` -- content kept: luminance SSIM of the output to the photo (metrics.luminance_ssim);
  a style may change colours, not the photo's structure. The shipped models keep 0.49-0.60 on average
  over 24 bsds500 test photos at full size (docs/quality.md).
* ``val_style`` -- style carried: the output's style loss (Gram distance to the painting, the
  training loss's style term without its weight) divided by the photo's own. 1.0 means no closer to
  the painting than the photo itself; lower means more of the painting's statistics. Unweighted and
  relative, so it compares across style weights and paintings.

When the photo is really being lost (``val_ssim`` below :data:`LOST_PHOTO_SSIM` once the run is past
:data:`WARMUP_FRACTION` of its budget, when an untrained network has nothing to keep yet), the log
and the progress bar say so, with the fix.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .device import autocast
from .imageio import collect_images, load_rgb, save_image
from .losses import PerceptualLoss
from .metrics import luminance_ssim

log = logging.getLogger(__name__)

# Long side of the validation photos: the size the shipped models are compared at (README, issue 16).
VAL_SIZE = 512
# Below this luminance SSIM (the mean over the validation photos) the subjects are going. Calibration
# (docs/quality.md, benchmarks/quality.py): every shipped model but the batch arm keeps 0.49-0.60 on
# average over 24 bsds500 test photos, and no single photo of theirs falls below 0.36; the batch arm,
# whose black holes swallow parts of some photos, keeps 0.355; texture alone scores 0.1-0.3.
LOST_PHOTO_SSIM = 0.40
# An untrained network keeps nothing yet; before this share of the budget a low score is no signal.
WARMUP_FRACTION = 0.2


def paintings_measured(entry: Mapping[str, Any]) -> list[str]:
    """The paintings a log entry holds each one's own measures of (``val_ssim/<name>``), in order; []
    for a single-style run's entry."""
    return [k.partition("/")[2] for k in entry if k.startswith("val_ssim/")]


def validation_photos(paths: Sequence[Path | str]) -> list[Path]:
    """The photos named by ``paths`` (files, or folders searched recursively), in order, each once."""
    return list(dict.fromkeys(collect_images([Path(p) for p in paths], what="validation photo or folder")))


class Validator:
    """Stylizes the validation photos and measures them against the photos and the painting.

    For a multi-style network (its criterion holds N paintings) every photo is stylized in each style
    and measured against that style's painting; the measures are then the means over the styles, with
    each style's own under ``val_ssim/<name>`` and ``val_style/<name>``. The criterion's paintings are
    the network's styles from ``first_style`` on (of ``network_styles``; all by default): a run that
    extends a model measures the styles it trains.
    """

    def __init__(self, photos: Sequence[Path], criterion: PerceptualLoss, device: torch.device,
                 size: int = VAL_SIZE, style_names: Sequence[str] = (), network_styles: int | None = None,
                 first_style: int = 0) -> None:
        if not photos:
            raise ValueError("the validator needs at least one photo")
        self.photos = list(photos)
        self.criterion = criterion
        self.device = device
        self.network_styles = network_styles or criterion.num_styles
        self.first_style = first_style
        self.style_names = list(style_names) if criterion.num_styles > 1 else []
        if self.style_names and len(self.style_names) != criterion.num_styles:
            raise ValueError(f"{len(self.style_names)} style names for {criterion.num_styles} styles")
        self.images = [load_rgb(p, size).to(device) for p in self.photos]

    @functools.cached_property
    def photo_style(self) -> list[list[float]]:
        """The photos' own distance to each painting: the unit of val_style. Computed when first measured,
        so a validator used for ``kept`` alone (the style balance's) never runs VGG on them."""
        with torch.no_grad():
            return [[float(self.criterion.style_distance(img, k)) for img in self.images]
                    for k in range(self.criterion.num_styles)]

    def _outputs(self, model: torch.nn.Module, precision: str, style: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Per photo: the photo and its output (1, 3, H, W) in [0, 1], in the style of the criterion's
        painting number ``style``; the model in inference mode meanwhile."""
        was_training = model.training
        model.eval()
        onehot = torch.eye(self.network_styles, device=self.device)[self.first_style + style] \
            if self.network_styles > 1 else None
        try:
            with torch.no_grad():
                for image in self.images:
                    with autocast(self.device, precision):
                        out = model(image) if onehot is None else model(image, onehot)
                    yield image, out.float().clamp(0, 1)
        finally:
            model.train(was_training)

    def measure_each(self, model: torch.nn.Module, precision: str, style: int = 0
                     ) -> list[tuple[dict[str, float], torch.Tensor]]:
        """Per photo, in the style of the criterion's painting number ``style``: ``{"val_ssim": ...,
        "val_style": ...}`` and the output (1, 3, H, W) in [0, 1]."""
        results = []
        for (image, out), photo_style in zip(self._outputs(model, precision, style), self.photo_style[style]):
            with torch.no_grad():
                distance = float(self.criterion.style_distance(out, style))
            results.append(({"val_ssim": float(luminance_ssim(out, image)),
                             "val_style": distance / max(photo_style, 1e-12)}, out))
        return results

    def kept(self, model: torch.nn.Module, precision: str, style: int = 0) -> float:
        """The mean ``val_ssim`` alone (no style measure): what --style-weight auto steers by (balance.py)."""
        values = [float(luminance_ssim(out, image)) for image, out in self._outputs(model, precision, style)]
        return sum(values) / len(values)

    def measure(self, model: torch.nn.Module, precision: str) -> tuple[dict[str, float], list[list[torch.Tensor]]]:
        """The measures' means over the photos (and styles), and the outputs: per photo, one per style."""
        keys = ("val_ssim", "val_style")
        per_style = [self.measure_each(model, precision, k) for k in range(self.criterion.num_styles)]
        means: dict[str, float] = {}
        for name, results in zip(self.style_names, per_style):
            means.update({f"{key}/{name}": sum(m[key] for m, _ in results) / len(results) for key in keys})
        every = [m for results in per_style for m, _ in results]
        means.update({key: sum(m[key] for m in every) / len(every) for key in keys})
        return means, [[results[i][1] for results in per_style] for i in range(len(self.images))]

    def save(self, outputs: Sequence[Sequence[torch.Tensor]], path: Path) -> None:
        """Photo beside its outputs (one per style), one row per photo (rows padded to the widest)."""
        rows = [torch.cat([img, *outs], dim=-1) for img, outs in zip(self.images, outputs)]
        width = max(r.shape[-1] for r in rows)
        rows = [torch.nn.functional.pad(r, (0, width - r.shape[-1]), value=1.0) for r in rows]
        save_image(torch.cat(rows, dim=-2), path)


def photo_lost(measures: dict[str, float], step: int, total_steps: int, norm: str = "instance",
               auto_weight: float | None = None) -> str | None:
    """The warning to give when the run is losing the photo at ``step``; None when it is not (or too early).
    ``auto_weight``: where --style-weight auto has the weight now (it is lowering it already)."""
    ssim = measures.get("val_ssim")
    if ssim is None or step < WARMUP_FRACTION * total_steps or ssim >= LOST_PHOTO_SSIM:
        return None
    message = (f"the photo is being lost at step {step}: the validation photos keep luminance SSIM {ssim:.2f} "
               f"(below {LOST_PHOTO_SSIM}; the shipped models keep 0.49-0.60). Lower --style-weight (e.g. halve "
               "it) or raise --content-weight, and watch the samples/*_val.jpg images.")
    if auto_weight is not None:
        message += (f" --style-weight auto is lowering the weight (now {auto_weight:.2g}, at most 8x below its "
                    "start); if it is at that floor, raise --content-weight.")
    if norm == "batch":
        # Validation runs in inference mode, with the running statistics: before any frozen steps a
        # batch-norm network's gap to them shows here as black holes (docs/quality.md), not as texture.
        message += (" Batch norm: if the *_val.jpg images show black areas rather than texture, it is the gap "
                    "to the running statistics; --bn-frozen-steps closes it in the last steps.")
    return message
