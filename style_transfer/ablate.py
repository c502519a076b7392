"""The norm study: one training run ("arm") per norm and seed, identical in everything else.

Every arm is an ordinary :func:`train.train` run, so it inherits what makes arms comparable:

* the model is built right after ``torch.manual_seed(seed)`` and norm layers draw no random numbers, so
  arms with the same seed start from the same conv weights whatever their norm;
* the data stream (image order and crops) is a pure function of the seed and the content folder, so arms
  with the same seed see the same batches in the same order;
* loss weights, learning rate, crop size, batch size, width and precision are the study's, shared by all.

Layout of a study folder::

    <study>/study.json                      shared settings + the list of arms
    <study>/content/<i>-<name> -> DIR       only with several --content folders (symlinks, no copies)
    <study>/<norm>-s<seed>/model.safetensors    the arm's checkpoint (written at every checkpoint)
    <study>/<norm>-s<seed>/model.run/            train_state.pt (resume), log.jsonl (every loss term
                                                 of every step), samples/

Running the study again continues it: finished arms (checkpoint at the target step) are skipped,
interrupted ones resume exactly from their ``train_state.pt``, and new norms or seeds may be added. A
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

from .checkpoint import CheckpointError, file_sha256, read_model_info
from .data import link_folders
from .device import check_precision, resolve_device, resolve_precision
from .imageio import atomic_write_bytes
from .losses import LossConfig
from .network import TransformerConfig
from .norms import DEFAULT_GROUPS, NORM_NAMES

log = logging.getLogger(__name__)

STUDY_FILE = "study.json"
STUDY_FORMAT = "style-transfer-study"
STUDY_VERSION = 1
CHECKPOINT_NAME = "model.safetensors"
CONTENT_LINKS = "content"


class StudyError(ValueError):
    """The study cannot be run or continued as asked; the message says why."""


@dataclass
class StudySettings:
    """What a study is: the shared training settings, the norms and the seeds."""

    out: Path  # the study folder
    content_dirs: tuple[Path, ...]
    style_image: Path
    steps: int
    norms: tuple[str, ...] = ("instance", "batch", "group", "layer", "none")
    seeds: tuple[int, ...] = (0,)
    image_size: int = 256
    batch_size: int = 4
    lr: float = 1e-3
    width: int = TransformerConfig.width
    num_residual: int = TransformerConfig.num_residual
    groups: int = DEFAULT_GROUPS
    loss: LossConfig = LossConfig()
    precision: str = "auto"  # resolved once when the study is created, then used by every arm
    device: str = "auto"
    checkpoint_every: int = 100
    sample_every: int = 500

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.style_image = Path(self.style_image)
        if isinstance(self.content_dirs, (str, Path)):
            self.content_dirs = (self.content_dirs,)
        self.content_dirs = tuple(Path(p) for p in self.content_dirs)
        self.norms = tuple(dict.fromkeys(n.strip().lower() for n in self.norms))
        self.seeds = tuple(dict.fromkeys(int(s) for s in self.seeds))
        check_precision(self.precision)
        bad = [n for n in self.norms if n not in NORM_NAMES]
        if bad:
            raise StudyError(f"unknown norm(s) {bad}; valid names are: {', '.join(NORM_NAMES)}")
        if not self.norms or not self.seeds:
            raise StudyError("a study needs at least one norm and one seed")
        if not self.content_dirs:
            raise StudyError("a study needs at least one content folder")
        for name in ("steps", "image_size", "batch_size", "width", "checkpoint_every", "sample_every"):
            if getattr(self, name) < 1:
                raise StudyError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise StudyError(f"lr must be > 0, got {self.lr}")
        # Fail before any arm runs, not after the first few: group norm needs a group count that
        # divides every layer width (w, 2w, 4w).
        if "group" in self.norms and self.width % self.groups:
            raise StudyError(f"group norm: --groups {self.groups} does not divide --width {self.width}")

    def network(self, norm: str) -> TransformerConfig:
        return TransformerConfig(norm=norm, width=self.width, num_residual=self.num_residual, groups=self.groups)

    def shared(self) -> dict[str, Any]:
        """Everything the arms must share (JSON-ready). A study can only be continued with the same values."""
        return {
            "content_dirs": [str(p.resolve()) for p in self.content_dirs],
            "style_image": str(self.style_image.resolve()),
            "steps": self.steps,
            "image_size": self.image_size,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "width": self.width,
            "num_residual": self.num_residual,
            "groups": self.groups,
            "loss": json.loads(json.dumps(dataclasses.asdict(self.loss))),
            "precision": self.precision,
        }


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
    def checkpoint(self) -> Path:
        return self.folder / CHECKPOINT_NAME

    @property
    def workdir(self) -> Path:
        return self.folder / (CHECKPOINT_NAME.removesuffix(".safetensors") + ".run")

    @property
    def log_path(self) -> Path:
        return self.workdir / "log.jsonl"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "norm": self.norm, "seed": self.seed,
                "checkpoint": f"{self.name}/{CHECKPOINT_NAME}", "workdir": f"{self.name}/{self.workdir.name}"}


def arm_name(norm: str, seed: int) -> str:
    return f"{norm}-s{seed}"


@dataclass
class Study:
    """A study folder: its record (study.json) and its arms."""

    root: Path
    record: dict[str, Any]
    arms: list[Arm] = field(default_factory=list)

    @property
    def style_image(self) -> Path:
        return Path(self.record["settings"]["style_image"])

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
        return [Path(p) for p in self.record["settings"]["content_dirs"]]

    def status(self, arm: Arm) -> str:
        """'done' (checkpoint at the target step), 'partial' (resumable), or 'new'."""
        return arm_status(arm, self.steps)

    def settings(self) -> StudySettings:
        """The StudySettings that continue this study as recorded."""
        s = self.record["settings"]
        return StudySettings(
            out=self.root, content_dirs=tuple(Path(p) for p in s["content_dirs"]), style_image=Path(s["style_image"]),
            steps=s["steps"], norms=tuple(self.norms), seeds=tuple(self.seeds), image_size=s["image_size"],
            batch_size=s["batch_size"], lr=s["lr"], width=s["width"], num_residual=s["num_residual"],
            groups=s["groups"], loss=LossConfig(**s["loss"]), precision=s["precision"],
            device=self.record.get("device", "auto"),
            checkpoint_every=self.record.get("checkpoint_every", 100),
            sample_every=self.record.get("sample_every", 500),
        )


def arm_status(arm: Arm, steps: int) -> str:
    if arm.checkpoint.is_file():
        try:
            if read_model_info(arm.checkpoint).steps >= steps:
                return "done"
        except (CheckpointError, OSError):
            pass
    if (arm.workdir / "train_state.pt").is_file():
        return "partial"
    return "new"


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
    if not isinstance(record.get("format_version"), int) or not 1 <= record["format_version"] <= STUDY_VERSION:
        raise StudyError(f"{path}: study format version {record.get('format_version')!r} is not supported")
    try:
        arms = [Arm(a["norm"], int(a["seed"]), root / arm_name(a["norm"], int(a["seed"]))) for a in record["arms"]]
        record["settings"]["steps"]  # noqa: B018 -- presence check
    except (KeyError, TypeError, ValueError) as exc:
        raise StudyError(f"{path}: invalid study record: {exc!r}") from None
    return Study(root, record, arms)


def _content_root(settings: StudySettings) -> Path:
    """The one folder the arms train on: the given folder, or a folder of symlinks to several."""
    for folder in settings.content_dirs:
        if not folder.is_dir():
            raise StudyError(f"content folder not found: {folder}")
    return link_folders(settings.content_dirs, settings.out / CONTENT_LINKS)


def prepare_study(settings: StudySettings) -> Study:
    """Create ``study.json``, or check that an existing study has the same shared settings.

    New norms/seeds are added to an existing study; arms are never removed from its record.
    """
    root = settings.out
    device = resolve_device(settings.device)
    existing = load_study(root) if (root / STUDY_FILE).exists() else None
    if settings.precision == "auto":
        # Resolved once: the recorded value, else this machine's. Every arm then uses the same precision.
        precision = (existing.record["settings"]["precision"] if existing
                     else resolve_precision("auto", device, training=True))
        settings = dataclasses.replace(settings, precision=precision)
    if not settings.style_image.is_file():
        raise StudyError(f"style image not found: {settings.style_image}")
    shared = settings.shared()
    style_sha = file_sha256(settings.style_image)
    if existing:
        before = existing.record["settings"]
        changed = sorted(k for k in set(before) | set(shared) if before.get(k) != shared.get(k))
        if existing.record.get("style_sha256") not in (None, style_sha):
            changed.append("style_image (contents)")
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
        "device": settings.device,
        "checkpoint_every": settings.checkpoint_every,
        "sample_every": settings.sample_every,
        "arms": [a.to_json() for a in arms],
    }
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(root / STUDY_FILE, (json.dumps(record, indent=2) + "\n").encode())
    return Study(root, record, arms)


def arm_train_settings(study: Study, arm: Arm, progress: bool = True):
    """The TrainSettings of one arm: the study's shared settings with this arm's norm and seed."""
    from .train import TrainSettings  # late: train imports torch.distributed & co.

    s = study.settings()
    return TrainSettings(
        content_dir=_content_root(s), style_image=s.style_image, out=arm.checkpoint, workdir=arm.workdir,
        network=s.network(arm.norm), loss=s.loss, steps=s.steps, image_size=s.image_size,
        batch_size=s.batch_size, lr=s.lr, seed=arm.seed, precision=s.precision, device=s.device,
        checkpoint_every=s.checkpoint_every, sample_every=s.sample_every, progress=progress,
    )


@dataclass
class ArmOutcome:
    name: str
    status: str  # done (already), trained, resumed, failed
    steps: int = 0
    seconds: float = 0.0
    error: str = ""


def _train_arm(train_settings, resume: bool) -> tuple[int, float]:
    from .train import train

    t0 = time.perf_counter()
    result = train(train_settings, resume=resume)
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
    _content_root(study.settings())  # create the links once, before any worker starts
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
            settings_ = arm_train_settings(study, arm, progress)
            record(arm, resume, lambda: _train_arm(settings_, resume))
    else:
        threads = max(1, torch.get_num_threads() // jobs)
        ctx = multiprocessing.get_context("spawn")  # no fork of a process with torch threads
        with concurrent.futures.ProcessPoolExecutor(
                max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                initargs=(threads, logging.getLogger().getEffectiveLevel())) as pool:
            futures = {pool.submit(_train_arm, arm_train_settings(study, arm, False), resume): (arm, resume)
                       for arm, resume in todo}
            log.info("training %d arm(s), %d at a time, %d thread(s) each", len(todo), jobs, threads)
            for future in concurrent.futures.as_completed(futures):
                arm, resume = futures[future]
                record(arm, resume, future.result)
    return [outcomes[a.name] for a in study.arms]


def parse_norms(text: str) -> tuple[str, ...]:
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in NORM_NAMES]
    if bad or not names:
        raise ValueError(f"--norms: unknown norm(s) {bad}; valid names are: {', '.join(NORM_NAMES)}")
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
    rows = []
    for arm in study.arms:
        steps = 0
        if arm.checkpoint.is_file():
            try:
                steps = read_model_info(arm.checkpoint).steps
            except (CheckpointError, OSError):
                pass
        rows.append({"name": arm.name, "norm": arm.norm, "seed": arm.seed, "status": study.status(arm),
                     "steps": steps, "target": study.steps})
    return rows


def content_images_of(study: Study) -> set[str]:
    """Real paths of every training image of the study (to check that evaluation images are unseen)."""
    from .imageio import find_images

    found: set[str] = set()
    for folder in study.content_dirs:
        if folder.is_dir():
            found.update(os.path.realpath(p) for p in find_images(folder))
    return found


__all__: Sequence[str] = (
    "Arm", "ArmOutcome", "Study", "StudyError", "StudySettings", "arm_name", "arm_status", "arm_train_settings",
    "describe", "load_study", "prepare_study", "run_study",
)
