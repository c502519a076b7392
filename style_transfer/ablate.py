"""The norm study: one training run ("arm") per norm and seed, identical in everything else.

A study is a base :class:`~style_transfer.spec.RunSpec` plus norms and seeds; each arm is the base
with ``norm`` and ``seed`` replaced, trained by an ordinary :func:`train.train` run. So arms inherit
what makes them comparable:

* the model is built right after ``torch.manual_seed(seed)`` and norm layers draw no random numbers, so
  arms with the same seed start from the same conv weights whatever their norm;
* the data stream (image order and crops) is a pure function of the seed and the content folders, so
  arms with the same seed see the same batches in the same order;
* every other setting is the base spec's, shared by all (any setting the spec has: a new one reaches
  the study with no edit here).

Layout of a study folder::

    <study>/study.json                      the base spec + the list of arms
    <study>/<norm>-s<seed>/model.safetensors    the arm's checkpoint (written at every checkpoint)
    <study>/<norm>-s<seed>/model.run/            its run folder (rundir.py): resume state, log, samples

Running the study again continues it: finished arms (checkpoint at the target step) are skipped,
interrupted ones resume exactly from their resume state, and new norms or seeds may be added. A
change to a shared setting is refused with the list of differences (it would make arms incomparable).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .balance import BASE_WEIGHT, is_auto
from .checkpoint import file_sha256
from .device import resolve_device, resolve_precision
from .imageio import atomic_write_bytes
from .norms import NORM_NAMES, STUDY_NORMS
from .rundir import RunDir
from .spec import RunSpec
from .train import TrainOptions

log = logging.getLogger(__name__)

STUDY_FILE = "study.json"
STUDY_FORMAT = "style-transfer-study"
# 2: the settings are a run spec's flat record (spec.py). Version 1 records are still read.
STUDY_VERSION = 2
CHECKPOINT_NAME = "model.safetensors"
# What varies between arms; the base spec's own values of these are not part of the study.
ARM_KEYS = ("norm", "seed")


class StudyError(ValueError):
    """The study cannot be run or continued as asked; the message says why."""


@dataclass
class StudySettings:
    """What a study is: the base spec (with a step budget), the norms and the seeds; and how its arms run."""

    out: Path  # the study folder
    base: RunSpec
    norms: tuple[str, ...] = STUDY_NORMS
    seeds: tuple[int, ...] = (0,)
    options: TrainOptions = field(default_factory=lambda: TrainOptions(checkpoint_every=100))

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.seeds = tuple(dict.fromkeys(int(s) for s in self.seeds))
        if not self.norms or not self.seeds:
            raise StudyError("a study needs at least one norm and one seed")
        if self.base.steps is None:
            raise StudyError("a study needs a step budget (steps), the same for every arm")
        if is_auto(self.base.loss.style_weight):
            raise StudyError("a norm study's arms share one fixed style weight: --style-weight auto steers each "
                             "run's weight by its own output (balance.py), and arms must differ in the norm only; "
                             f"give a number (without --style-weight: {BASE_WEIGHT})")
        # Every arm's spec is built (and so checked) now, before any arm runs: an unknown norm, or a
        # group count that does not divide the width, fails here rather than after the first arms.
        try:
            self.norms = tuple(dict.fromkeys(self.base.replace(norm=n).network.norm for n in self.norms))
        except ValueError as exc:
            raise StudyError(str(exc)) from None

    def arm_spec(self, norm: str, seed: int) -> RunSpec:
        return self.base.replace(norm=norm, seed=seed)


@dataclass(frozen=True)
class Arm:
    """One training run of the study."""

    norm: str
    seed: int
    folder: Path

    @property
    def name(self) -> str:
        return arm_name(self.norm, self.seed)

    @property
    def run(self) -> RunDir:
        return RunDir.of(self.folder / CHECKPOINT_NAME)

    @property
    def checkpoint(self) -> Path:
        return self.run.checkpoint

    @property
    def log_path(self) -> Path:
        return self.run.log

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "norm": self.norm, "seed": self.seed,
                "checkpoint": f"{self.name}/{CHECKPOINT_NAME}", "workdir": f"{self.name}/{self.run.root.name}"}


def arm_name(norm: str, seed: int) -> str:
    return f"{norm}-s{seed}"


@dataclass
class Study:
    """A study folder: its record (study.json) and its arms."""

    root: Path
    record: dict[str, Any]
    arms: list[Arm] = field(default_factory=list)

    @property
    def base(self) -> RunSpec:
        """The recorded base spec (its norm and seed are the defaults: each arm replaces them)."""
        return RunSpec.from_dict(self.record["settings"])

    @property
    def style_image(self) -> Path:
        return self.base.style[0]  # a study has one style (its arms differ in the norm only)

    @property
    def steps(self) -> int:
        return int(self.record["settings"]["steps"])

    @property
    def norms(self) -> list[str]:
        return list(dict.fromkeys(a.norm for a in self.arms))

    @property
    def seeds(self) -> list[int]:
        return list(dict.fromkeys(a.seed for a in self.arms))

    @property
    def content_dirs(self) -> list[Path]:
        return list(self.base.content)

    def status(self, arm: Arm) -> str:
        """'done' (checkpoint at the target step), 'partial' (resumable), or 'new'."""
        return arm.run.status(self.steps)

    def settings(self) -> StudySettings:
        """The StudySettings that continue this study as recorded."""
        options = TrainOptions(device=self.record.get("device", "auto"),
                               checkpoint_every=self.record.get("checkpoint_every", 100),
                               sample_every=self.record.get("sample_every", 500),
                               val_photos=tuple(Path(p) for p in self.record.get("val_photos", [])))
        return StudySettings(out=self.root, base=self.base, norms=tuple(self.norms), seeds=tuple(self.seeds),
                             options=options)


def _settings_v1(old: dict[str, Any]) -> dict[str, Any]:
    """A version 1 record's settings as a spec record (v1 named the data differently and nested the loss)."""
    new = {k: v for k, v in old.items() if k not in ("content_dirs", "style_image", "loss")}
    return {"content": old["content_dirs"], "style": old["style_image"], **new, **old.get("loss", {})}


def load_study(root: Path | str) -> Study:
    """Read ``<root>/study.json``; refuse anything that is not a study of this project."""
    root = Path(root)
    path = root / STUDY_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise StudyError(f"{root}: not a study folder (no {STUDY_FILE})") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise StudyError(f"{path}: unreadable study record: {exc}") from None
    if not isinstance(record, dict) or record.get("format") != STUDY_FORMAT:
        raise StudyError(f"{path}: not a {STUDY_FORMAT} record")
    version = record.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= STUDY_VERSION:
        raise StudyError(f"{path}: study format version {version!r} is not supported")
    try:
        if version == 1:
            record["settings"] = _settings_v1(record["settings"])
        RunSpec.from_dict(record["settings"])  # a check: a record the spec cannot read is refused here
        arms = [Arm(a["norm"], int(a["seed"]), root / arm_name(a["norm"], int(a["seed"]))) for a in record["arms"]]
        int(record["settings"]["steps"])
    except (KeyError, TypeError, ValueError) as exc:
        raise StudyError(f"{path}: invalid study record: {exc!r}") from None
    return Study(root, record, arms)


def _shared(base: RunSpec) -> dict[str, Any]:
    """The base spec's record without the settings arms vary (JSON-ready)."""
    return {k: v for k, v in base.to_dict().items() if k not in ARM_KEYS}


def prepare_study(settings: StudySettings) -> Study:
    """Create ``study.json``, or check that an existing study has the same shared settings.

    New norms/seeds are added to an existing study; arms are never removed from its record.
    """
    root = settings.out
    existing = load_study(root) if (root / STUDY_FILE).exists() else None
    base = settings.base
    if base.precision == "auto":
        # Resolved once: the recorded value, else this machine's. Every arm then uses the same precision.
        precision = (existing.base.precision if existing
                     else resolve_precision("auto", resolve_device(settings.options.device), training=True))
        base = base.replace(precision=precision)
    if len(base.style) != 1:
        # Every arm trains on the same data; a norm that learns one style cannot take several. A
        # multi-style network against single-style ones is another comparison (docs/multi-style.md).
        raise StudyError("a norm study trains every arm on one style image; give --style once")
    if not base.style[0].is_file():
        raise StudyError(f"style image not found: {base.style[0]}")
    for folder in base.content:
        if not folder.is_dir():
            raise StudyError(f"content folder not found: {folder}")
    shared = _shared(base)
    style_sha = file_sha256(base.style[0])
    if existing:
        before = _shared(existing.base)
        changed = [k for k in shared if before.get(k) != shared[k]]
        if existing.record.get("style_sha256") not in (None, style_sha):
            changed.append("style (contents)")
        if changed:
            raise StudyError(
                f"{root}: these settings differ from the study's ({', '.join(changed)}); a study's arms must "
                "share every setting but the norm and the seed. Use another --out for a new study, or "
                "continue this one with --resume."
            )
    arms = list(existing.arms) if existing else []
    known = {(a.norm, a.seed) for a in arms}
    # Seed-major order: an interrupted study has whole seeds of every norm, which can already be compared.
    for seed in settings.seeds:
        for norm in settings.norms:
            if (norm, seed) not in known:
                arms.append(Arm(norm, seed, root / arm_name(norm, seed)))
    record = {
        "format": STUDY_FORMAT,
        "format_version": STUDY_VERSION,
        "created": existing.record.get("created") if existing else time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": shared,
        "style_sha256": style_sha,
        "device": settings.options.device,
        "checkpoint_every": settings.options.checkpoint_every,
        "sample_every": settings.options.sample_every,
        "val_photos": [str(p.resolve()) for p in settings.options.val_photos],
        "arms": [a.to_json() for a in arms],
    }
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(root / STUDY_FILE, (json.dumps(record, indent=2) + "\n").encode())
    return Study(root, record, arms)


def arm_job(study: Study, arm: Arm, progress: bool = True) -> tuple[RunSpec, RunDir, TrainOptions]:
    """What trains one arm: the study's base spec with this arm's norm and seed, its run folder, the
    study's options. ``train.train(*arm_job(...))``."""
    settings = study.settings()
    options = dataclasses.replace(settings.options, progress=progress)
    return settings.arm_spec(arm.norm, arm.seed), arm.run, options


@dataclass
class ArmOutcome:
    name: str
    status: str  # done (already), trained, resumed, failed
    steps: int = 0
    seconds: float = 0.0
    error: str = ""


def _train_arm(job: tuple[RunSpec, RunDir, TrainOptions], resume: bool) -> tuple[int, float]:
    from .train import train

    t0 = time.perf_counter()
    result = train(*job, resume=resume)
    return result.steps, time.perf_counter() - t0


def _init_worker(threads: int, level: int) -> None:
    torch.set_num_threads(threads)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def run_study(settings: StudySettings, jobs: int = 1, progress: bool = True) -> list[ArmOutcome]:
    """Train every arm that is not finished; returns what happened to each arm.

    ``jobs`` > 1 trains that many arms at once in separate processes, each with an equal share of the
    CPU threads (useful on many-core CPUs, where one small network does not use every core). Results do
    not depend on ``jobs``. An arm that fails (e.g. a diverged loss) is reported and the others go on.
    """
    if jobs < 1:
        raise StudyError(f"jobs must be >= 1, got {jobs}")
    settings.out.mkdir(parents=True, exist_ok=True)
    with _exclusive(settings.out):
        return _run_study(settings, jobs, progress)


@contextlib.contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """Hold ``<root>/.lock`` while training: two processes on one study would train the same arm twice."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        yield
        return
    with open(root / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise StudyError(f"{root}: another process is training this study (see --status)") from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _run_study(settings: StudySettings, jobs: int, progress: bool) -> list[ArmOutcome]:
    study = prepare_study(settings)
    outcomes: dict[str, ArmOutcome] = {}
    todo: list[tuple[Arm, bool]] = []
    for arm in study.arms:
        status = study.status(arm)
        if status == "done":
            outcomes[arm.name] = ArmOutcome(arm.name, "done", study.steps)
        else:
            todo.append((arm, status == "partial"))
    log.info("study %s: %d arm(s), %d finished, %d to train (%d resumed); %d step(s) each, precision %s",
             study.root, len(study.arms), len(outcomes), len(todo), sum(r for _, r in todo), study.steps,
             study.record["settings"]["precision"])

    def record(arm: Arm, resume: bool, fn) -> None:
        try:
            steps, seconds = fn()
            outcomes[arm.name] = ArmOutcome(arm.name, "resumed" if resume else "trained", steps, seconds)
            log.info("arm %s finished: %d steps in %.0f s (%d of %d arms done)", arm.name, steps, seconds,
                     sum(o.status != "failed" for o in outcomes.values()), len(study.arms))
        except Exception as exc:  # noqa: BLE001 -- one failed arm must not stop the study
            outcomes[arm.name] = ArmOutcome(arm.name, "failed", error=str(exc))
            log.error("arm %s failed: %s", arm.name, exc)

    if jobs == 1 or len(todo) <= 1:
        for arm, resume in todo:
            log.info("arm %s: %s", arm.name, "resuming" if resume else "training")
            job = arm_job(study, arm, progress)
            record(arm, resume, lambda: _train_arm(job, resume))
    else:
        threads = max(1, torch.get_num_threads() // jobs)
        ctx = multiprocessing.get_context("spawn")  # no fork of a process with torch threads
        with concurrent.futures.ProcessPoolExecutor(
                max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                initargs=(threads, logging.getLogger().getEffectiveLevel())) as pool:
            futures = {pool.submit(_train_arm, arm_job(study, arm, False), resume): (arm, resume)
                       for arm, resume in todo}
            log.info("training %d arm(s), %d at a time, %d thread(s) each", len(todo), jobs, threads)
            for future in concurrent.futures.as_completed(futures):
                arm, resume = futures[future]
                record(arm, resume, future.result)
    return [outcomes[a.name] for a in study.arms]


def parse_norms(text: str) -> tuple[str, ...]:
    """``--norms`` text: comma-separated names (each checked when the study's arms are built)."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise ValueError(f"--norms: give at least one of {', '.join(NORM_NAMES)}")
    return names


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--seeds: expected comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ValueError("--seeds: give at least one seed")
    return seeds


def describe(study: Study) -> list[dict[str, Any]]:
    """One row per arm: name, norm, seed, status and the step its checkpoint holds."""
    return [{"name": arm.name, "norm": arm.norm, "seed": arm.seed, "status": study.status(arm),
             "steps": arm.run.steps_done(), "target": study.steps} for arm in study.arms]


def content_images_of(study: Study) -> set[str]:
    """Real paths of every training image of the study (to check that evaluation images are unseen)."""
    from .imageio import find_images

    found: set[str] = set()
    for folder in study.content_dirs:
        if folder.is_dir():
            found.update(os.path.realpath(p) for p in find_images(folder))
    return found


__all__: Sequence[str] = (
    "Arm", "ArmOutcome", "Study", "StudyError", "StudySettings", "arm_job", "arm_name",
    "describe", "load_study", "prepare_study", "run_study",
)
