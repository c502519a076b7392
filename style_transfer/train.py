"""Training a transformer network for one style (Johnson et al. 2016), single process or torchrun/DDP."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import ModelInfo, file_sha256, load_train_state, save_model, save_train_state
from .data import ContentImages, ResumableSampler, steps_per_epoch
from .device import autocast, check_precision, resolve_device, resolve_precision
from .imageio import load_rgb, save_image
from .losses import LossConfig, PerceptualLoss
from .network import TransformerConfig, TransformerNet

log = logging.getLogger(__name__)

TERMS = ("content", "style", "tv", "total")


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
class TrainSettings:
    """Everything a training run depends on. Stored in the checkpoint; a resume must match it."""

    content_dir: Path
    style_image: Path
    out: Path  # the served checkpoint (.safetensors)
    network: TransformerConfig = TransformerConfig()
    loss: LossConfig = LossConfig()
    steps: int | None = None  # total optimizer steps; default below when neither steps nor epochs
    epochs: float | None = None
    image_size: int = 256  # random crops, as in Johnson et al. 2016
    batch_size: int = 4  # per process
    lr: float = 1e-3  # Adam, as in Johnson et al. 2016
    # Clip the gradient's global L2 norm to this (None: no clipping, as in Johnson et al.). The group-norm
    # arm of the shipped Starry Night A/B set diverged twice without it (weights/zoo.toml).
    clip_grad_norm: float | None = None
    seed: int = 0
    precision: str = "auto"  # autocast; auto = bf16 where the hardware has it (resolved at start)
    device: str = "auto"
    workdir: Path | None = None  # resume state, log and samples; default: <out>.run/ beside the checkpoint
    checkpoint_every: int = 500
    sample_every: int = 500
    num_workers: int = 0
    sync_bn: bool = False
    save_dtype: str = "fp32"
    progress: bool = True

    # 40k steps of batch 4 is two epochs of COCO, Johnson et al.'s budget.
    DEFAULT_STEPS = 40_000

    def __post_init__(self) -> None:
        self.content_dir, self.style_image, self.out = Path(self.content_dir), Path(self.style_image), Path(self.out)
        if self.workdir is None:
            self.workdir = self.out.with_name(self.out.name.removesuffix(".safetensors") + ".run")
        self.workdir = Path(self.workdir)
        check_precision(self.precision)
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give --steps or --epochs, not both")
        for name in ("image_size", "batch_size", "checkpoint_every", "sample_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ValueError(f"clip_grad_norm must be > 0, got {self.clip_grad_norm}")
        if self.save_dtype not in ("fp32", "fp16"):
            raise ValueError(f"save_dtype must be fp32 or fp16, got {self.save_dtype!r}")
        if not self.style_image.is_file():
            raise FileNotFoundError(f"style image not found: {self.style_image}")

    def fingerprint(self) -> dict[str, Any]:
        """The settings that must not change across a resume (everything that shapes the result)."""
        fingerprint = {
            "network": dataclasses.asdict(self.network),
            "loss": dataclasses.asdict(self.loss),
            "image_size": self.image_size,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "seed": self.seed,
            "precision": self.precision,
        }
        # Only when set, so that runs from before the option existed still resume.
        if self.clip_grad_norm is not None:
            fingerprint["clip_grad_norm"] = self.clip_grad_norm
        return fingerprint


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


def _read_log(path: Path, upto_step: int) -> list[dict[str, float]]:
    """Log entries up to ``upto_step`` (entries after the last checkpoint are dropped on resume)."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if entry.get("step", math.inf) <= upto_step:
            entries.append(entry)
    return entries


def loss_terms(net: torch.nn.Module, criterion: PerceptualLoss, batch: torch.Tensor, device: torch.device,
               precision: str) -> dict[str, torch.Tensor]:
    """Forward pass of one training step: the network under autocast, the loss terms (Grams in fp32)."""
    with autocast(device, precision):
        output = net(batch)
        return criterion(output, batch)


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


def train(settings: TrainSettings, resume: bool = False) -> TrainResult:
    """Train (or resume training) and write the served checkpoint to ``settings.out``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if settings.sync_bn and settings.network.norm == "batch" and world > 1 \
            and resolve_device(settings.device).type != "cuda":
        # Checked before joining the process group, so every rank fails fast with the same message.
        raise ValueError("--sync-bn needs CUDA GPUs: PyTorch's SyncBatchNorm has no CPU implementation "
                         "(without it, each process normalizes over its own batch)")
    env = _Distributed(settings.device)
    try:
        return _train(settings, resume, env)
    finally:
        env.close()


def _train(s: TrainSettings, resume: bool, env: _Distributed) -> TrainResult:
    device = env.device
    # Resolve "auto" once, so the checkpoint records (and a resume compares) the precision actually used.
    s = dataclasses.replace(s, precision=resolve_precision(s.precision, device, training=True))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if s.sync_bn and s.network.norm != "batch":
        log.warning("--sync-bn only affects the batch norm; ignored for %s norm", s.network.norm)

    dataset = ContentImages(s.content_dir, s.image_size)
    total_steps = s.steps
    if total_steps is None:
        total_steps = (math.ceil(s.epochs * steps_per_epoch(len(dataset), s.batch_size, env.world))
                       if s.epochs is not None else TrainSettings.DEFAULT_STEPS)

    style = load_rgb(s.style_image, s.loss.style_size).to(device)
    criterion = PerceptualLoss(style, s.loss).to(device)

    # Seed before building the model: arms that differ only in the norm start from the same conv
    # weights (norm layers draw no random numbers), which makes norm comparisons fair.
    torch.manual_seed(s.seed)
    model = TransformerNet(s.network).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)

    state_path = s.workdir / "train_state.pt"
    log_path = s.workdir / "log.jsonl"
    start_step = 0
    history: list[dict[str, float]] = []
    if resume:
        state = load_train_state(state_path)
        if state["settings"] != s.fingerprint():
            changed = sorted(k for k in s.fingerprint() if state["settings"].get(k) != s.fingerprint()[k])
            raise TrainingError(
                f"cannot resume {state_path}: these settings differ from the interrupted run: {changed}"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"], device)
        start_step = int(state["step"])
        history = _read_log(log_path, start_step)
        if env.main:
            log.info("resuming %s from step %d", state_path, start_step)
    elif state_path.exists() and env.main:
        log.warning("%s exists; starting over (use --resume to continue it)", state_path)

    if s.sync_bn and s.network.norm == "batch" and env.active:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net: torch.nn.Module = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if env.active else model

    sampler = ResumableSampler(dataset, s.batch_size, s.seed, start_step, env.world, env.rank)
    loader = DataLoader(dataset, batch_size=s.batch_size, sampler=sampler, num_workers=s.num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    sample_input = dataset.crop(load_rgb(dataset.paths[0]), crop_seed=s.seed).unsqueeze(0).to(device)

    if env.main:
        s.workdir.mkdir(parents=True, exist_ok=True)
        (s.workdir / "samples").mkdir(exist_ok=True)
        # Rewrite the log with only the entries the resumed state covers.
        log_path.write_text("".join(json.dumps(e) + "\n" for e in history))
        log.info("training %s norm on %d images (%d skipped) for %d steps on %s (%s), %d process(es)",
                 s.network.norm, len(dataset), len(dataset.skipped), total_steps, device, s.precision, env.world)
    style_sha = file_sha256(s.style_image)

    def info_for(step: int, losses: dict[str, float]) -> ModelInfo:
        return ModelInfo(
            config=s.network,
            style_name=s.style_image.stem,
            style_sha256=style_sha,
            steps=step,
            training={**s.fingerprint(), "content_dir": s.content_dir.name, "num_images": len(dataset),
                      "world_size": env.world, "total_steps": total_steps, "sync_bn": s.sync_bn},
            losses=losses,
        )

    def recent_losses() -> dict[str, float]:
        window = history[-50:]
        return {t: sum(e[t] for e in window) / len(window) for t in TERMS} if window else {}

    def write_checkpoint(step: int) -> None:
        # Rank 0 writes; the other ranks hold identical weights (DDP keeps them in sync).
        if env.main:
            save_train_state(state_path, {
                "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": _rng_state(device), "settings": s.fingerprint(),
            })
            save_model(s.out, model, info_for(step, recent_losses()),
                       torch.float16 if s.save_dtype == "fp16" else torch.float32)
        env.barrier()

    def write_sample(step: int) -> None:
        if not env.main:
            return
        model.eval()
        with torch.no_grad(), autocast(device, s.precision):
            out = model(sample_input).float().clamp(0, 1)
        model.train()
        save_image(torch.cat([sample_input, out], dim=-1), s.workdir / "samples" / f"step_{step:06d}.png")

    model.train()
    bar = tqdm(total=total_steps, initial=start_step, disable=not (env.main and s.progress),
               desc=f"train {s.network.norm}", unit="step", dynamic_ncols=True)
    step = start_step
    data = iter(loader)
    log_file = open(log_path, "a", encoding="utf-8") if env.main else None

    def run_steps() -> None:
        nonlocal step
        while step < total_steps:
            t0 = time.perf_counter()
            batch = next(data).to(device, non_blocking=True)
            terms = loss_terms(net, criterion, batch, device, s.precision)
            values = env.mean(torch.stack([terms[t].detach().float() for t in TERMS]))
            if not torch.isfinite(values).all():
                raise TrainingError(
                    f"loss became non-finite at step {step + 1} ("
                    + ", ".join(f"{t}={v:.4g}" for t, v in zip(TERMS, values.tolist()))
                    + f"); training stopped. The last good checkpoint ({state_path}, "
                    "if any) was kept. Try a lower --lr, --precision fp32, or smaller loss weights."
                )
            grad_norm = optimizer_step(optimizer, terms["total"], s.clip_grad_norm)
            step += 1
            entry = {"step": step, **{t: float(v) for t, v in zip(TERMS, values.tolist())},
                     "grad_norm": grad_norm, "seconds": time.perf_counter() - t0}
            history.append(entry)
            if log_file:
                log_file.write(json.dumps(entry) + "\n")
                log_file.flush()
            bar.update(1)
            bar.set_postfix({t: f"{entry[t]:.3g}" for t in TERMS})
            if step % s.sample_every == 0 or step == total_steps:
                write_sample(step)
            if step % s.checkpoint_every == 0 or step == total_steps:
                if log_file:
                    os.fsync(log_file.fileno())
                write_checkpoint(step)
            if stop.received is not None:
                return

    stop = _StopRequest(enabled=not env.active)
    try:
        with stop:
            run_steps()
    except BaseException:
        # A signal can also surface as an error (e.g. DataLoader workers killed by the same SIGTERM)
        # while fetching a batch, before the step: the weights then still match ``step``.
        if stop.received is None or stop.forced:
            raise
    finally:
        bar.close()
        if log_file:
            log_file.close()
    if stop.received is not None:
        if step > start_step:
            write_checkpoint(step)
            log.warning("stopped at step %d of %d; checkpoint saved in %s: continue with --resume",
                        step, total_steps, s.workdir)
        else:
            log.warning("stopped before the first step; nothing to save")
        raise KeyboardInterrupt
    if start_step >= total_steps and env.main:
        log.info("nothing to do: the run already has %d of %d steps", start_step, total_steps)
    return TrainResult(step, recent_losses(), s.out, len(dataset.skipped), history)

