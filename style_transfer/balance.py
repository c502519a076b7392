"""``--style-weight auto``: a style weight that adapts to the painting, by feedback on the photo kept (issue 16).

The balance between the content and style terms decides how much of the photo survives, and the right
balance depends on the painting: at the same weight, Starry Night's models keep the subjects while The
Great Wave's painted everything in its paper colour and needed half the weight (weights/zoo.toml). A
user training a new painting cannot know which it will be. Two rules computed from the painting alone
were tried first and did not predict it (docs/quality.md): the painting's Gram distance to photos
ranks The Great Wave as needing *more* weight than Starry Night.

So ``auto`` measures what the balance is for, while training: every :data:`EVERY` steps after the first
:data:`START_FRACTION` of the budget (an untrained network keeps nothing yet), the model stylizes a few
photos at :data:`SIZE` px, and the mean luminance SSIM to them (``val_ssim``, measured by
``validation.Validator.kept``) steers the style weight. The weight is ``base * 2**u``; each update moves
``u`` by :data:`GAIN` times the SSIM's distance to :data:`TARGET` (at most :data:`MAX_MOVE`), within
:data:`BOUNDS`: an integral controller, slow enough for the network to follow (its kept answers a change
of weight over ~100 steps) and bounded, so it can neither erase the style nor the photo. It starts at
the fixed default and keeps it while the photo is kept at the target.

The photos are the run's ``--val`` photos, or else :data:`PHOTOS` of its content photos spread over the
folder (the network does not memorize 256 px crops of hundreds of photos, so their kept tracks unseen
photos'; docs/quality.md). The measure is deterministic: the same run gives the same weights. In a
multi-process run rank 0 measures and the others receive its weight, so every process trains the same
loss. At a sample step of a run with ``--val`` photos the validation's own ``val_ssim`` is used, so
the photos are stylized once. Norm A/B sets (``ablate``, zoo plans) keep a fixed weight: auto would
give each arm its own, and arms must differ in the norm only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .imageio import spread

AUTO = "auto"
# Where the weight starts, and what a fixed default would be (losses.LossConfig).
BASE_WEIGHT = 2e-5
# Mean luminance SSIM the controlled photos should keep, at SIZE. Tuned on the four paintings the zoo
# ships single-style models of (Starry Night, The Great Wave, Shipwreck, The Scream; Udnie and
# Composition VII held out): on the four gallery photos at 512 px their models keep 0.55-0.63, and
# 0.017-0.032 more than on 24 full-size bsds500 test photos. 0.60 here is about 0.575 there: above the
# issue's 0.55 bar with a margin, and still the photo kept by the least stylized shipped models.
TARGET = 0.60
SIZE = 512  # long side, px: the validation size (validation.VAL_SIZE), where TARGET was measured
EVERY = 50  # steps between updates
START_FRACTION = 0.2  # of the budget: before it an untrained network keeps nothing, whatever the weight
# Per update, u moves by GAIN * (kept - TARGET), at most MAX_MOVE: a kept 0.1 short halves the weight
# within 200 steps; 0.02 short moves it 3% per update.
GAIN = 2.5
MAX_MOVE = 0.25
BOUNDS = (-3.0, 1.0)  # u: the weight stays within 1/8 and 2x the base
PHOTOS = 4  # content photos measured when the run has no --val photos


def is_auto(weight: float | str) -> bool:
    return isinstance(weight, str) and weight == AUTO


def check_weight(weight: float | str) -> None:
    """A style weight is a number >= 0 or ``auto``."""
    if isinstance(weight, str):
        if weight != AUTO:
            raise ValueError(f"style_weight must be a number >= 0 or {AUTO!r}, got {weight!r}")
    elif not weight >= 0:
        raise ValueError(f"style_weight must be >= 0, got {weight}")


def parse_weight(text: str) -> float | str:
    """A style weight's text form: ``auto`` or a number."""
    return AUTO if text.strip().lower() == AUTO else float(text)


def control_photos(content_photos: Sequence[Path], count: int = PHOTOS) -> list[Path]:
    """The photos the controller measures when the run has no ``--val``: ``count`` content photos spread
    evenly over them (sorted, so the choice does not depend on the folder's listing order). With ``--val``
    it reuses the validation photos' measure instead (train.Trainer._update_balance)."""
    return spread(sorted(content_photos, key=str), count)


@dataclass
class StyleBalance:
    """The controller's state: ``u`` (the weight is ``base * 2**u``) and the updates so far."""

    total_steps: int
    base: float = BASE_WEIGHT
    u: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)  # step, kept, weight per update

    @property
    def weight(self) -> float:
        return self.base * 2.0 ** self.u

    @property
    def start(self) -> int:
        """The first step that updates the weight: the first multiple of EVERY at or past START_FRACTION."""
        return max(EVERY, math.ceil(START_FRACTION * self.total_steps / EVERY) * EVERY)

    def due(self, step: int) -> bool:
        """Whether the weight is updated after ``step`` (never at the last step: nothing would train on it)."""
        return step >= self.start and step % EVERY == 0 and step < self.total_steps

    def update(self, step: int, kept: float) -> float:
        """Move the weight by the kept photo measured after ``step``; returns the new weight."""
        if not math.isfinite(kept):
            raise ValueError(f"kept must be finite, got {kept}")
        move = max(-MAX_MOVE, min(MAX_MOVE, GAIN * (kept - TARGET)))
        self.u = max(BOUNDS[0], min(BOUNDS[1], self.u + move))
        self.history.append({"step": step, "kept": kept, "weight": self.weight})
        return self.weight

    def state_dict(self) -> dict:
        return {"u": self.u, "base": self.base, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.u, self.base, self.history = float(state["u"]), float(state["base"]), list(state["history"])
