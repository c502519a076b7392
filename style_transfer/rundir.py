"""The run folder: where a training run keeps its checkpoint, resume state, log and samples.

One owner for the layout (issue 15); train, ablate, compare and zoo all go through :class:`RunDir`::

    <name>.safetensors          the served checkpoint, rewritten at every checkpoint step
    <name>.run/train_state.pt   model, optimizer and RNG state: what --resume continues from
    <name>.run/log.jsonl        one JSON line per step: every loss term, the gradient norm, seconds
    <name>.run/samples/         step_NNNNNN.png: a training crop beside its stylization, and
                                step_NNNNNN_val.jpg: the validation photos beside theirs (validation.py);
                                progress.jpg: the crop's stylization at up to 10 of those steps
    <name>.run/content/         only when training on several folders: numbered symlinks to each

The log is the record a report reads (training curves) and a resume trims (to the resumed step).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .checkpoint import MODEL_SUFFIX, CheckpointError, ModelInfo, read_model_info

# The loss terms of the log and of every checkpoint's losses. A perceptually trained run logs all four at
# every step; a distilled one (--teacher) logs ``total`` at every step and the perceptual three only on the
# steps it measures them (train.TrainOptions.perceptual_every).
TERMS = ("content", "style", "tv", "total")


def term_mean(entries: Sequence[dict[str, float]], term: str) -> float:
    """The mean of ``term`` over the log entries that hold it (nan when none does)."""
    values = [e[term] for e in entries if term in e]
    return sum(values) / len(values) if values else math.nan


@dataclass(frozen=True)
class RunDir:
    """A run's checkpoint and its folder (by default ``<checkpoint stem>.run`` beside it)."""

    checkpoint: Path
    root: Path

    @classmethod
    def of(cls, checkpoint: Path | str, root: Path | str | None = None) -> "RunDir":
        checkpoint = Path(checkpoint)
        if root is None:
            root = checkpoint.with_name(checkpoint.name.removesuffix(MODEL_SUFFIX) + ".run")
        return cls(checkpoint, Path(root))

    @property
    def state(self) -> Path:
        return self.root / "train_state.pt"

    @property
    def log(self) -> Path:
        return self.root / "log.jsonl"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def content_links(self) -> Path:
        return self.root / "content"

    def sample_path(self, step: int) -> Path:
        return self.samples / f"step_{step:06d}.png"

    @property
    def progress(self) -> Path:
        """samples/progress.jpg: the sampled crop's output at the run's sample steps (grid.progress_sheet)."""
        return self.samples / "progress.jpg"

    def sample_steps(self, upto: float = math.inf, most: int | None = None) -> list[tuple[int, Path]]:
        """(step, file) of the crop samples up to ``upto`` (a resumed run's later ones are another run's),
        in step order; at most ``most`` of them, spread evenly from the first to the latest."""
        found = []
        for path in self.samples.glob("step_*.png"):
            step = path.stem.removeprefix("step_")
            if step.isdigit() and int(step) <= upto:
                found.append((int(step), path))
        found.sort()
        if most is not None and len(found) > most:
            found = [found[(i * (len(found) - 1)) // (most - 1)] for i in range(most)]
        return found

    def val_sample_path(self, step: int) -> Path:
        """The validation photos beside their outputs (validation.py); JPEG: they are full size."""
        return self.samples / f"step_{step:06d}_val.jpg"

    def latest_validation(self) -> dict[str, float]:
        """The validation measures of the last sample step that has them ({} when none has)."""
        for entry in reversed(self.read_log()):
            if "val_ssim" in entry:
                return {k: v for k, v in entry.items() if k.startswith("val_")}
        return {}

    def latest_style_weights(self) -> list[float]:
        """Where --style-weight auto has each painting's weight at its last update (balance.py; one per
        painting trained, in order); [] for a fixed weight or before the first update."""
        for entry in reversed(self.read_log()):
            weights = [v for k, v in entry.items() if k == "style_weight" or k.startswith("style_weight/")]
            if weights:
                return weights
        return []

    # ------------------------------------------------------------------ status

    def info(self) -> ModelInfo | None:
        """The checkpoint's metadata, or None when there is no readable checkpoint yet."""
        try:
            return read_model_info(self.checkpoint) if self.checkpoint.is_file() else None
        except (CheckpointError, OSError):
            return None

    def steps_done(self) -> int:
        """Steps in the last checkpoint (0 when there is none yet)."""
        info = self.info()
        return info.steps if info else 0

    def can_resume(self) -> bool:
        return self.state.is_file()

    def status(self, target_steps: int) -> str:
        """'done' (checkpoint at the target step), 'partial' (resumable), or 'new'."""
        if self.steps_done() >= target_steps:
            return "done"
        return "partial" if self.can_resume() else "new"

    # ------------------------------------------------------------------ the log

    def read_log(self, upto_step: float = math.inf) -> list[dict[str, float]]:
        """Log entries up to ``upto_step``, in order ([] without a log). A line cut short by a crash is
        skipped; a resume passes its step to drop the entries after its checkpoint."""
        return read_log(self.log, upto_step)

    def start_log(self, entries: Sequence[dict[str, Any]]) -> IO[str]:
        """Rewrite the log with ``entries`` (what a resumed state covers), then open it for appending."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.log.write_text("".join(json.dumps(e) + "\n" for e in entries))
        return open(self.log, "a", encoding="utf-8")

    def seconds_per_step(self, recent: int = 100) -> float | None:
        """Median time of the last ``recent`` logged steps; None without a readable log."""
        seconds = [e["seconds"] for e in self.read_log()[-recent:] if isinstance(e.get("seconds"), (int, float))]
        return statistics.median(seconds) if seconds else None


def read_log(path: Path | str | None, upto_step: float = math.inf) -> list[dict[str, float]]:
    """The entries of a log.jsonl up to ``upto_step`` ([] when there is none): see :meth:`RunDir.read_log`."""
    if path is None:
        return []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("step"), (int, float)) and entry["step"] <= upto_step:
            entries.append(entry)
    return entries
