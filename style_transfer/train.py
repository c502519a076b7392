"""Training a transformer network (Johnson et al. 2016), single process or torchrun/DDP: for one style,
or for several in one conditional instance norm network (Dumoulin et al. 2017; issue 17).

``train(spec, run, options)``: the :class:`~style_transfer.spec.RunSpec` says what is trained (data,
recipe, budget), the :class:`~style_transfer.rundir.RunDir` where it is kept (checkpoint, resume state,
log, samples), and :class:`TrainOptions` how it executes (device, intervals, workers).
"""

from __future__ import annotations

import collections
import copy
import functools
import io
import json
import logging
import math
import os
import signal
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from .balance import SIZE as BALANCE_SIZE
from .balance import StyleBalance, control_photos, is_auto
from .checkpoint import ModelInfo, file_sha256, load_model, load_train_state, save_model, save_train_state
from .data import ContentImages, ResumableSampler, link_folders, steps_per_epoch
from .device import autocast, keep_freed_memory, resolve_device, resolve_precision
from .grid import progress_sheet
from .imageio import atomic_write_bytes, load_rgb, save_image
from .losses import PerceptualLoss
from .metrics import psnr
from .network import TransformerNet
from .norms import ConditionalInstanceNorm2d, has_batch_statistics
from .rundir import TERMS, RunDir, term_mean
from .spec import RunSpec, combined_sha256
from .validation import VAL_SIZE, Validator, photo_lost

log = logging.getLogger(__name__)


class _StopRequest:
    """SIGINT/SIGTERM during training: finish the current step, checkpoint it, then stop.

    Without it a Ctrl-C (or the ``kill`` that ends a background run) loses every step since the last
    periodic checkpoint, and an interrupt inside ``optimizer.step()`` could leave half-updated weights.
    The first signal only sets a flag read between steps; a second one interrupts at once. Only for a
    single process in the main thread: DDP ranks could see the signal at different steps and then
    disagree at the checkpoint barrier, so torchrun runs keep the default behaviour.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: int | None = None
        self.forced = False  # a second signal: stop at once, possibly mid-step, so save nothing
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            self.forced = True
            raise KeyboardInterrupt
        self.received = signum
        log.warning("%s: stopping after this step and saving a checkpoint (again to stop at once)",
                    signal.Signals(signum).name)

    def __enter__(self) -> "_StopRequest":
        if self.enabled:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class TrainingError(RuntimeError):
    """Training cannot go on (diverged, or a resume that does not match); the message says why."""


@dataclass
class TrainOptions:
    """How a run executes. Nothing here changes the result, so a resume may change any of it; what
    does change the result is the :class:`~style_transfer.spec.RunSpec`."""

    device: str = "auto"
    checkpoint_every: int = 500  # steps between resume states (and served checkpoints)
    sample_every: int = 500  # steps between sample images
    num_workers: int = 0  # data loading processes: each crop is a pure function of seed and position
    # Batch norm statistics over every process's batch (DDP on CUDA only). It does change a multi-process
    # batch-norm result; it is recorded in the checkpoint's metadata and ignored for other norms.
    sync_bn: bool = False
    save_dtype: str = "fp32"  # of the served checkpoint
    progress: bool = True
    # Photos the run never trains on, stylized at full size at every sample step and measured
    # (validation.py): what the finished model will do, which training crops do not show (issue 16).
    val_photos: tuple[Path, ...] = ()
    # A distilled run (--teacher) measures the perceptual terms of its output (content, style, tv: what a
    # perceptually trained run minimizes) only for the log, so its curves compare with such runs. Two VGG
    # forward passes are 37% of a distillation step on 2 CPU cores (benchmarks/bench_distill_step.py), so it
    # measures them in one round of its paintings out of this many; every painting is measured in that
    # round, so each keeps its own ``style/<name>`` in the checkpoint's losses. Ignored by perceptual runs.
    perceptual_every: int = 10

    def __post_init__(self) -> None:
        for name in ("checkpoint_every", "sample_every", "perceptual_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.save_dtype not in ("fp32", "fp16"):
            raise ValueError(f"save_dtype must be fp32 or fp16, got {self.save_dtype!r}")
        self.val_photos = tuple(Path(p) for p in self.val_photos)


@dataclass
class TrainResult:
    """What a finished run reports."""

    steps: int
    losses: dict[str, float]
    checkpoint: Path
    skipped_images: int
    history: list[dict[str, float]] = field(default_factory=list)


class _Distributed:
    """torchrun environment: rank, world size, and the process group if there is more than one process."""

    def __init__(self, device_name: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(device_name)
        # Always an indexed device: torch.cuda.set_device (and the CUDA RNG state calls) reject a bare
        # "cuda", which is what --device auto/cuda resolves to in a single-process run.
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", self.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.active = self.world > 1
        if self.active and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        if self.active:
            values = values.clone()
            dist.all_reduce(values)
            values /= self.world
        return values

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast(self, values: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``values`` on every rank."""
        if self.active:
            values = values.clone()
            dist.broadcast(values, src=0)
        return values

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# Moves of the camera the stability term (RunSpec.stability_weight) trains on: 1-3 px each way, the moves
# the stride-2 convolutions' 4 px grid does not already follow (benchmarks/video_flicker.py: 10-14 levels
# of change after 1-2 px, 0.1-1.3 after 4); a longer move is one of these plus whole grid steps.
MAX_MOVE = 3
# px of the compared area's border left out: the moved crop's replicated edge is not the scene.
STABILITY_MARGIN = 16


def moved_crops(batch: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """The crops as a camera moved (dy, dx) px down and right sees them (random, 1..MAX_MOVE each; the
    scene goes up and left), the same size, the uncovered edge replicated; and (dy, dx)."""
    dy, dx = (int(v) for v in torch.randint(1, MAX_MOVE + 1, (2,)))
    return F.pad(batch[..., dy:, dx:], (0, dx, 0, dy), mode="replicate"), dy, dx


def stability_distance(output: torch.Tensor, moved_output: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Mean absolute difference between the painting of the moved crops and the crops' painting moved
    along, over the area both show (STABILITY_MARGIN in from its edges, less on small crops so that half
    the area is left): 0 when the strokes follow the scene, as a clip's frames need."""
    h, w = output.shape[-2:]
    m = min(STABILITY_MARGIN, (min(h, w) - MAX_MOVE) // 4)
    mine = moved_output[..., m:h - dy - m, m:w - dx - m].float()
    along = output[..., dy + m:h - m, dx + m:w - m].float()
    return (mine - along).abs().mean()


def loss_terms(net: torch.nn.Module, criterion: PerceptualLoss, batch: torch.Tensor, device: torch.device,
               precision: str, style: tuple[torch.Tensor, int] | None = None,
               stability_weight: float | None = None) -> dict[str, torch.Tensor]:
    """Forward pass of one training step: the network under autocast, the loss terms (Grams in fp32).
    ``style``: for a multi-style network, the network's style weights for this step and the number of
    its painting in ``criterion`` (None: the only style).

    With ``stability_weight`` (RunSpec.stability_weight) the network also paints the crops as a moved
    camera sees them, in the same forward pass (one call, as DistributedDataParallel needs), and the
    objective adds that weight times their ``stability_distance`` (logged unweighted as ``stability``)."""
    weights, painting = (None, None) if style is None else style
    inputs = batch
    if stability_weight is not None:
        moved, dy, dx = moved_crops(batch)
        inputs = torch.cat([batch, moved])
    with autocast(device, precision):
        painted = net(inputs) if weights is None else net(inputs, weights)
        output = painted[:batch.shape[0]]
        terms = criterion(output, batch) if painting is None else criterion(output, batch, painting)
    if stability_weight is not None:
        stability = stability_distance(output, painted[batch.shape[0]:], dy, dx)
        terms.update(stability=stability.detach(), total=terms["total"] + stability_weight * stability)
    return terms


def distill_terms(net: torch.nn.Module, teacher: torch.nn.Module, criterion: PerceptualLoss, batch: torch.Tensor,
                  device: torch.device, precision: str, style: tuple[torch.Tensor, int] | None = None,
                  texture_weight: float | None = None, perceptual: bool = True) -> dict[str, torch.Tensor]:
    """Forward pass of one distillation step (RunSpec.teacher): ``distill``, the mean absolute difference
    between the network's output and ``teacher``'s on the batch, which is also ``total``, the objective; and,
    with ``perceptual``, the perceptual terms of the same output, measured without a gradient so the log and
    the curves compare with perceptually trained runs (TrainOptions.perceptual_every says how often).

    L1 rather than L2: the probe that settled distillation (docs/multi-style.md) used it; it does not let a
    few large differences (a teacher's bright stroke) outweigh the rest of the picture.

    With ``texture_weight`` (RunSpec.teacher_style_weight) the objective adds that weight times the Gram
    distance to the teacher's output (``texture``, logged unweighted), and the perceptual terms reuse the
    output's VGG features."""
    with torch.no_grad(), autocast(device, precision):
        target = teacher(batch).float()
    with autocast(device, precision):
        output = net(batch) if style is None else net(batch, style[0])
    # Unclamped: a clamp would give the pixels the network pushes past the image range no gradient back.
    distill = (output.float() - target).abs().mean()
    painting = 0 if style is None else style[1]
    terms = {"distill": distill, "total": distill}
    feats = None
    if texture_weight is not None:
        with autocast(device, precision):
            texture, feats = criterion.texture_distance(output, target)
        terms.update(texture=texture.detach(), total=distill + texture_weight * texture)
    if perceptual:
        with torch.no_grad(), autocast(device, precision):
            measured = criterion(output.detach(), batch, painting,
                                 **({} if feats is None else {"feats": {k: v.detach() for k, v in feats.items()}}))
        terms.update({t: measured[t] for t in TERMS if t != "total"})
    return terms


def warmup_lr(lr: float, step: int, warmup: int | None) -> float:
    """The learning rate of the step after ``step`` steps: ``lr`` ramped linearly over the first
    ``warmup`` steps (spec.lr_warmup says why), then ``lr``. From the step alone, so a resume continues it."""
    return lr if not warmup else lr * min(1.0, (step + 1) / warmup)


def optimizer_step(optimizer: torch.optim.Optimizer, total: torch.Tensor, clip: float | None = None) -> float:
    """Backward pass and parameter update of one training step; returns the gradient's global L2 norm
    (before clipping to ``clip``, when given), which the training log records: a divergence shows
    there first."""
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]  # parameters without a grad are skipped
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else math.inf)
    optimizer.step()
    return float(norm)


# A step whose gradient norm is SPIKE_FACTOR times the median of the last SPIKE_WINDOW steps: the first sign
# of a divergence, while the loss is still finite (no other check fires). Four-styles' first run (no
# clipping) went from a median of ~57 to 4730 at step 1396 and 16086 two steps later, and lost the photo
# on every painting (docs/multi-style.md). On the single-style instance-norm runs of the zoo and the
# quality study the largest ratio was 2.6-13.7; the batch-norm A/B arm (clipped at 100) reached 83x at
# step 434 and recovered, which is worth a warning too.
SPIKE_FACTOR = 20
SPIKE_WINDOW = 100


class SpikeWatch:
    """Gradient norms of the recent steps, to tell a spike from the run's own normal spread."""

    def __init__(self, window: int = SPIKE_WINDOW, factor: float = SPIKE_FACTOR) -> None:
        self.recent: collections.deque[float] = collections.deque(maxlen=window)
        self.factor = factor
        self.warned_at = -math.inf

    def check(self, step: int, norm: float) -> float | None:
        """Record a step's norm; its ratio to the recent median when it is a spike that deserves a
        warning (at most one per window of steps, so a diverging run does not flood the log), else None."""
        ratio = None
        if len(self.recent) == self.recent.maxlen:
            median = statistics.median(self.recent)
            if median > 0 and norm > self.factor * median and step - self.warned_at >= self.recent.maxlen:
                ratio = norm / median
                self.warned_at = step
        self.recent.append(norm)
        return ratio


def train(spec: RunSpec, run: RunDir, options: TrainOptions = TrainOptions(), resume: bool = False) -> TrainResult:
    """Train ``spec`` (or continue it from ``run``'s resume state) and write ``run.checkpoint``."""
    _check_inputs(spec)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if options.sync_bn and spec.network.norm == "batch" and world > 1 \
            and resolve_device(options.device).type != "cuda":
        # Checked before joining the process group, so every rank fails fast with the same message.
        raise ValueError("--sync-bn needs CUDA GPUs: PyTorch's SyncBatchNorm has no CPU implementation "
                         "(without it, each process normalizes over its own batch)")
    env = _Distributed(options.device)
    try:
        trainer = _Trainer(spec, run, options, env)
        if resume:
            trainer.restore()
        return trainer.run()
    finally:
        env.close()


def _check_inputs(spec: RunSpec) -> None:
    """The data exists: checked before the data scan and the VGG load, which take a while."""
    for style in spec.style:
        if not style.is_file():
            raise FileNotFoundError(f"style image not found: {style}")
    if spec.init is not None and not spec.init.is_file():
        raise FileNotFoundError(f"--init checkpoint not found: {spec.init}")
    for teacher in spec.teacher or ():
        if not teacher.is_file():
            raise FileNotFoundError(f"--teacher checkpoint not found: {teacher}")
    for folder in spec.content:
        if not folder.is_dir():
            raise FileNotFoundError(f"content folder not found: {folder}")


def _owner(model: torch.nn.Module, parameter: str) -> torch.nn.Module:
    """The module that holds a parameter, by its dotted name."""
    return model.get_submodule(parameter.rpartition(".")[0])


class _Trainer:
    """One training run: the model, its optimizer, the data stream and the run folder, stepped until the
    budget is spent, checkpointing and sampling on the way."""

    def __init__(self, spec: RunSpec, run: RunDir, options: TrainOptions, env: _Distributed) -> None:
        self.env, self.run_dir, self.options = env, run, options
        device = self.device = env.device
        # Resolve "auto" once, so the checkpoint records (and a resume compares) the precision actually used.
        self.spec = spec = spec.replace(precision=resolve_precision(spec.precision, device, training=True))
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        else:  # 1.32x a step on 2 cores: no page faults for the activations (benchmarks/bench_allocator.py)
            keep_freed_memory()
        if options.sync_bn and spec.network.norm != "batch":
            log.warning("--sync-bn only affects the batch norm; ignored for %s norm", spec.network.norm)

        content_root = link_folders(spec.content, run.content_links)
        self.dataset = ContentImages(content_root, spec.image_size)
        self.content_name = content_root.name
        self.total_steps = spec.total_steps(lambda: steps_per_epoch(len(self.dataset), spec.batch_size, env.world))

        styles = [load_rgb(p, spec.loss.style_size).to(device) for p in spec.style]
        self.criterion = PerceptualLoss(styles, spec.loss).to(device)
        # Every style of the network by its image's hash (an extended model's first), hashed once: the
        # checkpoint records them; a resumed run checks the paintings trained here (style_sha).
        self.style_sha256s = spec.style_sha256s()
        self.style_sha = combined_sha256(self.style_sha256s[-len(spec.style):])
        # The network's styles; the paintings trained here are its last len(styles) (all of them unless
        # the run extends a model, whose own styles come first and stay frozen).
        self.num_styles = spec.network.num_styles if spec.network.norm == "conditional_instance" else 1
        self.first_trained = self.num_styles - len(styles)
        self.validator = self._validator(options.val_photos) if options.val_photos and env.main else None
        self.last_val: dict[str, float] = {}
        self.teachers = self._load_teachers()
        # --style-weight auto (balance.py): one controller per painting trained, each steering its own
        # painting's weight by the photo kept in its style; rank 0 measures.
        self.balances: list[StyleBalance] = []
        self.kept_meter: Validator | None = None  # what the controllers measure: the validator, if any
        if is_auto(spec.loss.style_weight) and not self.teachers:  # distilled: the weight is not in the loss
            self.balances = [StyleBalance(self.total_steps) for _ in styles]
            if env.main:
                self.kept_meter = self.validator or self._validator(
                    tuple(control_photos(self.dataset.paths)), size=BALANCE_SIZE, training_photos=True)

        # Seed before building the model: arms that differ only in the norm start from the same conv
        # weights (norm layers draw no random numbers), which makes norm comparisons fair.
        torch.manual_seed(spec.seed)
        self.model = TransformerNet(spec.network).to(device)
        self.init_sha: str | None = None  # what the run started from (kept across a resume: the state has it)
        if spec.init is not None:
            self._load_init(spec.init)
        if spec.extend is not None:
            self._load_extended(spec.extend)
        # The moving average of the weights (spec.ema_decay): a copy of the network, always in inference
        # mode, that the checkpoint, the samples and the validation use; None without it.
        self.ema: torch.nn.Module | None = None
        if spec.ema_decay is not None:
            self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        groups = self._param_groups()
        self.group_lrs = [lr for lr, _ in groups]  # each group's rate after the warm-up, in group order
        self.optimizer = torch.optim.Adam([{"params": params, "lr": lr} for lr, params in groups])
        self.step = self.start_step = 0
        self.history: list[dict[str, float]] = []
        self._shown: dict[str, str] = {}  # the progress bar's loss terms
        self.spikes = SpikeWatch(SPIKE_WINDOW, SPIKE_FACTOR)
        self.resumed = False

    def _param_groups(self) -> list[tuple[float, list[torch.nn.Parameter]]]:
        """The trainable parameters by learning rate: all at ``lr``, or with ``affine_lr`` the
        conditional norms' per-style (gamma, beta) at that rate in a second group (omitted when empty:
        an extension trains only them). One group without it, as before, so older resume states load."""
        trainable = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        if self.spec.affine_lr is None:
            return [(self.spec.lr, [p for _, p in trainable])]
        is_affine = [isinstance(_owner(self.model, name), ConditionalInstanceNorm2d) for name, _ in trainable]
        groups = [(self.spec.lr, [p for (_, p), a in zip(trainable, is_affine) if not a]),
                  (self.spec.affine_lr, [p for (_, p), a in zip(trainable, is_affine) if a])]
        return [(lr, params) for lr, params in groups if params]

    def _load_init(self, path: Path) -> None:
        """Start from a trained checkpoint's weights (fine-tuning), refusing another architecture. A
        multi-style (conditional instance norm) network may start from a single-style instance-norm one:
        its convolutions are shared by every style, and each style's (gamma, beta) starts as that
        network's affine, so every style starts where the trained one is (a decoder that keeps photos)."""
        trained, info = load_model(path)
        network = self.spec.network
        if not network.can_start_from(info.config):
            raise TrainingError(f"--init {path}: its network ({info.config}) is not this run's ({network})")
        state = trained.state_dict()
        if info.config != network:
            state = {name: value.expand(network.num_styles, *value.shape).clone()
                     if isinstance(_owner(self.model, name), ConditionalInstanceNorm2d) else value
                     for name, value in state.items()}
        self.model.load_state_dict(state)
        self.init_sha = file_sha256(path)

    def _load_extended(self, path: Path) -> None:
        """Start from a multi-style model to extend (issue 17, part 3): its weights, its styles' (gamma,
        beta) in the first rows, the new styles' rows starting at the mean of its styles (a neutral
        point among styles the network already renders), and everything but the norm affines frozen.
        Its styles' rows never change: a step trains one new style, whose one-hot weights give the other
        rows an exactly zero gradient, and Adam moves nothing with zero gradients and zero moments."""
        trained, _ = load_model(path)
        base = len(self.spec.base_styles or ())
        state = trained.state_dict()
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                old = state[name]
                if isinstance(_owner(self.model, name), ConditionalInstanceNorm2d):
                    param[:base] = old
                    param[base:] = old.mean(0, keepdim=True)
                else:
                    param.copy_(old)
                    param.requires_grad_(False)
            for name, buffer in self.model.named_buffers():
                if name in state:  # persistent buffers (batch statistics; none in a conditional network yet)
                    buffer.copy_(state[name])
        self.extend_sha = file_sha256(path)

    def _load_teachers(self) -> list[torch.nn.Module]:
        """The ``teacher`` models, frozen in inference mode; [] when the run does not distill. Each must be
        a single-style model of its painting (its recorded style image's hash is the painting's): a
        teacher of another painting would teach the wrong style under the painting's name."""
        teachers = []
        self.teacher_sha256s = [file_sha256(p) for p in self.spec.teacher or ()]
        for path, painting in zip(self.spec.teacher or (), self.spec.style):
            model, info = load_model(path)
            if info.config.num_styles != 1:
                raise TrainingError(f"--teacher {path}: a teacher is a single-style model; it holds "
                                    f"{info.config.num_styles} styles")
            if info.style_sha256 != file_sha256(painting):
                raise TrainingError(f"--teacher {path} was trained on another painting ({info.style_name}) than "
                                    f"its --style {painting}: give the teachers in the order of the styles")
            teachers.append(model.to(self.device).eval().requires_grad_(False))
        return teachers

    def _validator(self, photos: tuple[Path, ...], size: int = VAL_SIZE, training_photos: bool = False) -> Validator:
        """``training_photos``: allow them (the style balance's fallback photos; balance.py says why)."""
        seen = {os.path.realpath(p) for p in self.dataset.paths}
        trained_on = [str(p) for p in photos if os.path.realpath(p) in seen]
        if trained_on and not training_photos:
            raise ValueError(f"validation photos must not be training photos: {', '.join(trained_on)}")
        return Validator(list(photos), self.criterion, self.device, size=size,
                         style_names=self.spec.style_names[self.first_trained:],
                         network_styles=self.num_styles, first_style=self.first_trained)

    def restore(self) -> None:
        """Continue from the run's resume state, refusing one trained with another recipe."""
        state = load_train_state(self.run_dir.state)
        # The data stream and the update depend on the global batch, not on how it is split over
        # processes (data.ResumableSampler; DDP averages the gradients), so a run may resume on another
        # number of processes (e.g. a multi-node run on one machine) with the same global batch.
        world = int(state.get("world_size", 1))
        recorded_global = int(state["settings"].get("batch_size", 0)) * world
        changed = [k for k in self.spec.differences(state["settings"], ignore_auto_precision=False)
                   if k != "batch_size"]
        if recorded_global != self.spec.batch_size * self.env.world:
            changed.append(f"batch_size (global: {state['settings'].get('batch_size')} x {world} process(es) = "
                           f"{recorded_global}; now {self.spec.batch_size} x {self.env.world})")
        if state.get("style_sha256") not in (None, self.style_sha):  # recorded since multi-style training
            changed.append("style (another image, or another order of the style images)")
        if state.get("teacher_sha256s", []) != self.teacher_sha256s:
            changed.append("teacher (other teacher models, or none where the run had them)")
        if changed:
            raise TrainingError(f"cannot resume {self.run_dir.state}: these settings differ from the "
                                f"interrupted run: {changed}")
        self.model.load_state_dict(state["model"])
        if self.ema is not None:  # the settings match, so a state with ema_decay recorded has its average
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.init_sha = state.get("init_sha256", self.init_sha)
        for balance, saved in zip(self.balances, state.get("style_balance") or []):
            balance.load_state_dict(saved)
        self._apply_balance()
        _set_rng_state(state["rng"], self.device)
        self.step = self.start_step = int(state["step"])
        self.history = self.run_dir.read_log(self.start_step)
        self.resumed = True
        if self.env.main:
            log.info("resuming %s from step %d", self.run_dir.state, self.start_step)

    def run(self) -> TrainResult:
        spec, env, options = self.spec, self.env, self.options
        if not self.resumed and self.run_dir.can_resume() and env.main:
            log.warning("%s exists; starting over (use --resume to continue it)", self.run_dir.state)
        model = self.model
        if options.sync_bn and spec.network.norm == "batch" and env.active:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device = self.device
        self.net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
            if env.active else model
        sampler = ResumableSampler(self.dataset, spec.batch_size, spec.seed, self.start_step, env.world, env.rank)
        loader = DataLoader(self.dataset, batch_size=spec.batch_size, sampler=sampler,
                            num_workers=options.num_workers, pin_memory=device.type == "cuda",
                            persistent_workers=False)
        self.sample_input = self.dataset.crop(load_rgb(self.dataset.paths[0]), crop_seed=spec.seed
                                              ).unsqueeze(0).to(device)
        log_file = None
        if env.main:
            self.run_dir.samples.mkdir(parents=True, exist_ok=True)
            # Rewritten with only the entries the resumed state covers.
            log_file = self.run_dir.start_log(self.history)
            log.info("training %s norm on %d images (%d skipped) for %d steps on %s (%s), %d process(es)",
                     spec.network.norm, len(self.dataset), len(self.dataset.skipped), self.total_steps, device,
                     spec.precision, env.world)

        self.model.train()
        bar = tqdm(total=self.total_steps, initial=self.start_step, disable=not (env.main and options.progress),
                   desc=f"train {spec.network.norm}", unit="step", dynamic_ncols=True)
        stop = _StopRequest(enabled=not env.active)
        try:
            with stop:
                self._loop(iter(loader), bar, log_file, stop)
        except BaseException:
            # A signal can also surface as an error (e.g. DataLoader workers killed by the same SIGTERM)
            # while fetching a batch, before the step: the weights then still match ``self.step``.
            if stop.received is None or stop.forced:
                raise
        finally:
            bar.close()
            if log_file:
                log_file.close()
        if stop.received is not None:
            if self.step > self.start_step:
                self._checkpoint()
                log.warning("stopped at step %d of %d; checkpoint saved in %s: continue with --resume",
                            self.step, self.total_steps, self.run_dir.root)
            else:
                log.warning("stopped before the first step; nothing to save")
            raise KeyboardInterrupt
        if self.start_step >= self.total_steps and env.main:
            log.info("nothing to do: the run already has %d of %d steps", self.start_step, self.total_steps)
        return TrainResult(self.step, self._recent_losses(), self.run_dir.checkpoint, len(self.dataset.skipped),
                           self.history)

    def _loop(self, data: Any, bar: tqdm, log_file: Any, stop: _StopRequest) -> None:
        while self.step < self.total_steps:
            self._freeze_batch_statistics()
            entry = self._train_step(next(data))
            self._watch_gradient(entry)
            measured: dict[str, float] = {}
            if self.step % self.options.sample_every == 0 or self.step == self.total_steps:
                measured = self._sample()
                entry.update(measured)
            if self.balances and self.balances[0].due(self.step):
                entry.update(self._update_balance(measured))
            self.history.append(entry)
            if log_file:
                log_file.write(json.dumps(entry) + "\n")
                log_file.flush()
            bar.update(1)
            # A distilled step that skipped the perceptual terms leaves the last measured ones on the bar.
            self._shown.update({t: f"{entry[t]:.3g}" for t in TERMS if t in entry})
            bar.set_postfix({**self._shown,
                             **({"kept": f"{self.last_val['val_ssim']:.2f}"} if self.last_val else {}),
                             **({"style_w": f"{self.balances[0].weight:.2g}"} if len(self.balances) == 1 else {})})
            if self.step % self.options.checkpoint_every == 0 or self.step == self.total_steps:
                if log_file:
                    os.fsync(log_file.fileno())
                self._checkpoint()
            if stop.received is not None:
                return

    def _watch_gradient(self, entry: dict[str, float]) -> None:
        """Warn (once per window) when the step's gradient norm spikes far above the recent median."""
        ratio = self.spikes.check(self.step, entry["grad_norm"])
        if ratio is not None and self.env.main:
            clip = self.spec.clip_grad_norm
            advice = (f"the update was clipped to {clip:g}; if the loss does not come back, train again with a "
                      "lower --lr" if clip is not None else
                      "it is not clipped: if the loss climbs, restart with --clip-grad-norm (e.g. 100)")
            log.warning("step %d: gradient norm %.4g is %.0fx the median of the last %d steps, the first sign of "
                        "a diverging run; %s", self.step, entry["grad_norm"], ratio, self.spikes.recent.maxlen,
                        advice)

    def _freeze_batch_statistics(self) -> None:
        """In the last ``bn_frozen_steps`` steps, batch norm layers normalize with (and keep) their running
        statistics; set before every step, since sampling puts the model back in training mode.

        At the first frozen step the optimizer's moments start over. Adam's second moments were measured
        on a network that normalizes with its batch's statistics, where a weight change that shifts or
        scales a layer's output is undone by the next batch norm, so its gradient is ~0 and its second
        moment tiny. With the statistics frozen those directions matter at once: their gradients divide
        by those tiny moments, and the steps blow up. A retrain of the A/B set's batch arm (lr 1e-3) did
        so: gradient norm 9 at the freeze, 72 three steps later, 1.4e6 at six, then a flat grey output
        (docs/quality.md, "Frozen statistics and the optimizer"). Restarted moments adapt to the new
        gradients; the learning rate ramps up meanwhile (_freeze_ramp)."""
        frozen = self.spec.bn_frozen_steps
        if not frozen or self.step < self.total_steps - frozen:
            return
        for module in self._batch_norms:
            module.eval()
        if self._batch_norms and self.step == self.total_steps - frozen and self.optimizer.state:
            self.optimizer.state.clear()
            log.info("step %d: batch norm statistics frozen for the last %d steps; the optimizer's moments "
                     "start over", self.step + 1, frozen)

    def _freeze_ramp(self) -> float:
        """The learning rate's factor in the frozen steps: from 1/W up to 1 over their first W (50, or half
        of them when fewer), since restarted moments make each first step lr-sized on every weight at
        once, which threw the loss of a batch arm from 1.2 to 26 at lr 1e-3 (docs/quality.md, "Frozen
        statistics and the optimizer"); 1 elsewhere."""
        frozen = self.spec.bn_frozen_steps
        if not frozen or self.step < self.total_steps - frozen or not self._batch_norms:
            return 1.0
        ramp = min(50, max(1, frozen // 2))
        return min(1.0, (self.step - (self.total_steps - frozen) + 1) / ramp)

    @functools.cached_property
    def _batch_norms(self) -> list[torch.nn.Module]:
        """The network's layers that keep batch statistics (none unless its norm is batch)."""
        return [module for module in self.model.modules() if has_batch_statistics(module)]

    def _style_of_step(self) -> int | None:
        """The style the next step trains, for a multi-style network: each in turn, so every style gets
        its share of the steps (within one) and a resumed run continues the same sequence. One style
        per batch, as in Dumoulin et al. 2017, so a step's style loss is one style's (the log's
        ``style_index``)."""
        trained = self.num_styles - self.first_trained
        return self.first_trained + self.step % trained if self.num_styles > 1 else None

    def _style_weights(self, style: int) -> torch.Tensor:
        """The network's one-hot style weights for its style number ``style``."""
        return torch.eye(self.num_styles, device=self.device)[style]

    def _train_step(self, batch: torch.Tensor) -> dict[str, float]:
        """One optimizer step; its log entry. A non-finite loss stops the run before the update."""
        t0 = time.perf_counter()
        batch = batch.to(self.device, non_blocking=True)
        style = self._style_of_step()
        painting = 0 if style is None else style - self.first_trained
        if self.teachers:
            terms = distill_terms(self.net, self.teachers[painting], self.criterion, batch, self.device,
                                  self.spec.precision, None if style is None else (self._style_weights(style), painting),
                                  self.spec.teacher_style_weight, perceptual=self._perceptual_due())
        else:
            terms = loss_terms(self.net, self.criterion, batch, self.device, self.spec.precision,
                               None if style is None else (self._style_weights(style), painting),
                               self.spec.stability_weight)
        logged = [t for t in TERMS if t in terms]  # every term, but a distilled step may skip the perceptual ones
        values = self.env.mean(torch.stack([terms[t].detach().float() for t in logged]))
        if not torch.isfinite(values).all():
            raise TrainingError(
                f"loss became non-finite at step {self.step + 1} ("
                + ", ".join(f"{t}={v:.4g}" for t, v in zip(logged, values.tolist()))
                + f"); training stopped. The last good checkpoint ({self.run_dir.state}, "
                "if any) was kept. Try a lower --lr, --precision fp32, or smaller loss weights."
            )
        for group, lr in zip(self.optimizer.param_groups, self.group_lrs):
            group["lr"] = warmup_lr(lr, self.step, self.spec.lr_warmup) * self._freeze_ramp()
        grad_norm = optimizer_step(self.optimizer, terms["total"], self.spec.clip_grad_norm)
        self.step += 1
        self._update_average()
        return {"step": self.step, **{t: float(v) for t, v in zip(logged, values.tolist())},
                "grad_norm": grad_norm, "seconds": time.perf_counter() - t0,
                # A distilled run's L1 to its teacher (its whole objective without teacher_style_weight).
                **{t: float(self.env.mean(terms[t].detach().float())) for t in ("distill", "texture", "stability")
                   if t in terms},
                **({"style_index": style} if style is not None else {})}

    @property
    def shipped(self) -> torch.nn.Module:
        """The network the checkpoint holds and the validation measures: the weights' moving average when
        the run keeps one, else the trained weights themselves."""
        return self.ema if self.ema is not None else self.model

    def _update_average(self) -> None:
        """One update of the weights' moving average, at the warmed-up decay min(decay, (1 + t) / (10 + t))
        for update t (TensorFlow's ExponentialMovingAverage with num_updates). Every rank holds the same
        weights (DDP), so every rank's average is the same. Integer buffers (batch norm's step count)
        are copied. A frozen weight (an extension's) stays bit-exact: lerp between equal values."""
        if self.ema is None:
            return
        decay = min(self.spec.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for average, current in zip(self.ema.state_dict().values(), self.model.state_dict().values()):
                if average.is_floating_point():
                    average.lerp_(current, 1 - decay)
                else:
                    average.copy_(current)

    def _perceptual_due(self) -> bool:
        """Whether the next distillation step measures the perceptual terms: in the first of every
        ``perceptual_every`` rounds of the trained paintings (a whole round, so every painting is measured
        as often, whatever the number of paintings)."""
        trained = self.num_styles - self.first_trained
        return (self.step // trained) % self.options.perceptual_every == 0

    @functools.cached_property
    def _teacher_outputs(self) -> list[list[torch.Tensor]]:
        """Per validation photo, each teacher's output in [0, 1] (the teachers are frozen: computed once)."""
        assert self.validator is not None
        with torch.no_grad(), autocast(self.device, self.spec.precision):
            return [[t(image).float().clamp(0, 1) for t in self.teachers] for image in self.validator.images]

    def _teacher_psnr(self, outputs: list[list[torch.Tensor]]) -> dict[str, float]:
        """How closely a distilled network reproduces its teachers on the validation photos: the PSNR of
        its outputs to theirs, per style (``val_psnr/<name>``) and the mean over styles (``val_psnr``)."""
        names = self.spec.style_names[self.first_trained:]
        per_style = [statistics.fmean(psnr(outs[k], teachers[k]) for outs, teachers in zip(outputs, self._teacher_outputs))
                     for k in range(len(self.teachers))]
        out = {f"val_psnr/{n}": v for n, v in zip(names, per_style)} if len(names) > 1 else {}
        return {**out, "val_psnr": statistics.fmean(per_style)}

    def _apply_balance(self) -> None:
        """The controllers' weights into the loss."""
        if self.balances:
            self.criterion.style_weights = [b.weight for b in self.balances]

    def _update_balance(self, measured: dict[str, float]) -> dict[str, float]:
        """Measure the photo kept in every trained style (rank 0; the others receive it) and move each
        style's weight; the log entry's ``auto_kept`` and ``style_weight`` (per style for several).
        ``measured``: this step's validation measures, if it sampled; when the controllers measure the
        same photos, their ``val_ssim`` is the kept, and the photos are not stylized twice."""
        names = self.spec.style_names[self.first_trained:]
        keys = ["val_ssim"] if len(self.balances) == 1 else [f"val_ssim/{n}" for n in names]
        kept = torch.zeros(len(self.balances), dtype=torch.float64, device=self.device)
        if self.kept_meter is not None:
            for k, key in enumerate(keys):
                # The controller steers the trained weights, so it measures them, not their average.
                reuse = self.kept_meter is self.validator and key in measured and self.ema is None
                kept[k] = measured[key] if reuse else self.kept_meter.kept(self.model, self.spec.precision, k)
        kept = self.env.broadcast(kept).tolist()
        weights = [b.update(self.step, value) for b, value in zip(self.balances, kept)]
        self._apply_balance()
        if len(self.balances) == 1:
            return {"auto_kept": kept[0], "style_weight": weights[0]}
        return {**{f"auto_kept/{n}": v for n, v in zip(names, kept)},
                **{f"style_weight/{n}": w for n, w in zip(names, weights)}}

    def _recent_losses(self) -> dict[str, float]:
        """Each term's mean over the last 50 steps; for a multi-style network also each style's own style
        term (``style/<name>``) over its last 50 steps."""
        # The last 50 entries that hold each term (a distilled run measures the perceptual ones now and then).
        out = {t: term_mean([e for e in self.history if t in e][-50:], t) for t in TERMS
               if any(t in e for e in self.history)}
        if self.num_styles > 1:
            for k, name in enumerate(self.spec.style_names[self.first_trained:], self.first_trained):
                own = [e["style"] for e in self.history if e.get("style_index") == k and "style" in e][-50:]
                if own:
                    out[f"style/{name}"] = sum(own) / len(own)
        return out

    def _info(self) -> ModelInfo:
        spec = self.spec
        return ModelInfo(
            config=spec.network, style_name=" + ".join(spec.style_names), steps=self.step,
            style_sha256=combined_sha256(self.style_sha256s),
            training={**spec.fingerprint(), "content_dir": self.content_name, "num_images": len(self.dataset),
                      "world_size": self.env.world, "total_steps": self.total_steps,
                      "sync_bn": self.options.sync_bn,
                      # Where --style-weight auto left each painting's weight (one number for one style).
                      **({"style_weight_used": self._weights_used()} if self.balances else {}),
                      **({"init_sha256": self.init_sha} if self.init_sha is not None else {}),
                      **({"teacher_sha256s": self.teacher_sha256s} if self.teachers else {}),
                      **({"extend_sha256": self.extend_sha} if spec.extend is not None else {})},
            losses=self._recent_losses(),
            # A conditional network's styles, in the order of its (gamma, beta) pairs: what stylize --style
            # and the server choose from (stylize.style_names).
            extra={"styles": spec.style_names, "style_sha256s": self.style_sha256s}
            if spec.network.norm == "conditional_instance" else {},
        )

    def _weights_used(self) -> float | list[float]:
        weights = [b.weight for b in self.balances]
        return weights[0] if len(weights) == 1 else weights

    def _checkpoint(self) -> None:
        # Rank 0 writes; the other ranks hold identical weights (DDP keeps them in sync).
        if self.env.main:
            save_train_state(self.run_dir.state, {
                "step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
                "rng": _rng_state(self.device), "settings": self.spec.fingerprint(), "world_size": self.env.world,
                # The budget, so `train --resume` without --steps/--epochs finishes the run it continues.
                "total_steps": self.total_steps,
                "style_sha256": self.style_sha,
                **({"style_balance": [b.state_dict() for b in self.balances]} if self.balances else {}),
                **({"init_sha256": self.init_sha} if self.init_sha is not None else {}),
                **({"teacher_sha256s": self.teacher_sha256s} if self.teachers else {}),
            })
            save_model(self.run_dir.checkpoint, self.shipped, self._info(),
                       torch.float16 if self.options.save_dtype == "fp16" else torch.float32)
        self.env.barrier()

    def _write_progress(self) -> None:
        """samples/progress.jpg, rewritten at every sample step: how the run went, as one picture."""
        samples = [(step, load_rgb(path)) for step, path in self.run_dir.sample_steps(upto=self.step, most=10)]
        buf = io.BytesIO()
        progress_sheet(samples).save(buf, format="JPEG", quality=88)
        atomic_write_bytes(self.run_dir.progress, buf.getvalue())

    def _sample(self) -> dict[str, float]:
        """Write the step's samples; return the validation measures for its log entry ({} without any)."""
        if not self.env.main:
            return {}
        net, was_training = self.shipped, self.shipped.training
        net.eval()
        with torch.no_grad(), autocast(self.device, self.spec.precision):
            # The crop beside its output in every style the network holds.
            outs = [net(self.sample_input) if self.num_styles == 1 else net(self.sample_input, self._style_weights(k))
                    for k in range(self.first_trained, self.num_styles)]
        net.train(was_training)
        outs = [o.float().clamp(0, 1) for o in outs]
        save_image(torch.cat([self.sample_input, *outs], dim=-1), self.run_dir.sample_path(self.step))
        self._write_progress()
        if self.validator is None:
            return {}
        measures, outputs = self.validator.measure(net, self.spec.precision)
        if self.teachers:
            measures.update(self._teacher_psnr(outputs))
        self.validator.save(outputs, self.run_dir.val_sample_path(self.step))
        self.last_val = measures
        warning = photo_lost(measures, self.step, self.total_steps, self.spec.network.norm,
                             min(b.weight for b in self.balances) if self.balances else None)
        if warning:
            log.warning("%s", warning)
        else:
            log.info("step %d: validation photos keep luminance SSIM %.3f, style distance %.3f of the photos'",
                     self.step, measures["val_ssim"], measures["val_style"])
        return measures
