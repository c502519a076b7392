"""The weights folder: list the served checkpoints and resolve a model name safely."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .checkpoint import MODEL_SUFFIX, CheckpointError, file_sha256, read_model_info
from .imageio import atomic_write_bytes

if TYPE_CHECKING:
    from .network import TransformerConfig

WEIGHTS_ENV = "STYLE_TRANSFER_WEIGHTS"
# A model name is a file stem: letters, digits, '-', '_' and '.', not starting with '.'; this rules
# out path separators, '..', absolute paths and NUL bytes by construction.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
NAME_RULE = "letters, digits, '_', '.' and '-', starting with a letter or digit, at most 128"
NOT_A_NAME = f"the file name is no model name ({NAME_RULE}): rename the file to use it by name"


def default_weights_dir() -> Path:
    """$STYLE_TRANSFER_WEIGHTS, else ./weights."""
    return Path(os.environ.get(WEIGHTS_ENV, "weights"))


def is_valid_name(name: str) -> bool:
    """True when ``name`` can only refer to a file directly inside the weights folder."""
    return bool(_NAME.fullmatch(name)) and ".." not in name


def list_models(weights_dir: Path | str) -> dict[str, Path]:
    """name -> path for every checkpoint in ``weights_dir`` (sorted by name)."""
    folder = Path(weights_dir)
    if not folder.is_dir():
        return {}
    return {p.name[: -len(MODEL_SUFFIX)]: p for p in sorted(folder.glob("*" + MODEL_SUFFIX))
            if is_valid_name(p.name[: -len(MODEL_SUFFIX)])}


def resolve_model(name_or_path: str, weights_dir: Path | str | None = None) -> Path:
    """A checkpoint path from a path, or from a model name in the weights folder."""
    candidate = Path(name_or_path)
    if candidate.suffix == MODEL_SUFFIX or os.sep in name_or_path or candidate.is_file():
        if not candidate.is_file():
            raise FileNotFoundError(f"model file not found: {candidate}")
        return candidate
    folder = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    models = list_models(folder)
    if is_valid_name(name_or_path) and name_or_path in models:
        return models[name_or_path]
    available = ", ".join(models) or "none"
    raise FileNotFoundError(f"no model named {name_or_path!r} in {folder} (available: {available})")


# What ``train`` starts a new painting from by default (``--init auto``; issue 16, part 4): the flagship.
# Its decoder already keeps photos, so a new painting only has to change the strokes and colours: The
# Scream started from it at lr 2e-4 kept more of the held-out photos at step 250 than The Scream trained
# from scratch for 3000 steps, with as much of the painting (docs/quality.md).
BASE_MODEL = "starry-night"
# Adam's first steps move every weight by about the learning rate: 1e-3 undoes a trained network (The
# Scream's weighted style loss from the flagship went from 6.4 to 1076 at the second step), 2e-4 fine-tunes
# it (6.4, then 1.1 by step 7; the warm-the-scream runs of benchmarks/quality-plan.toml).
BASE_LR = 2e-4
# ... and even at 2e-4 the first step shocks a network whose loss is already low: the flagship trained on
# its own painting (or a multi-style network's first style, which is the flagship's) went from a style
# loss of 0.31 to 35 in one step, and was still at 6.9 ten steps later; with the learning rate ramped
# over 100 steps it stayed at 0.20-0.26 (benchmarks/warmup_shock.py, docs/quality.md). A painting far from the flagship
# has gradients large enough to recover from it (the warm-auto runs met the bar without a warm-up).
BASE_WARMUP = 100
# A multi-style run clips its gradient norm at this unless told otherwise: one painting per step gives
# larger and more uneven gradients than one painting (four-styles: median 57, p99 310; the warm-auto
# singles: median 15-36, p99 80-190), and four-styles' first run, unclipped, diverged at step ~1380 and
# lost the photo on every painting (docs/multi-style.md). The zoo's A/B arms clip at the same 100.
MULTI_STYLE_CLIP = 100.0
# ... and trains from scratch with its styles' (gamma, beta) at this many times its --lr, unless told
# otherwise. Started from the flagship, every style painted the flagship's strokes as lozenges (they stay
# in the shared convolutions); from scratch at one rate, the pairs stayed within 5% of each other and the
# paintings came out as one picture in four tints; from scratch with the pairs at 10x they moved apart,
# the paintings differed in texture, and by step 750 the style matched the warm-started run's with no
# lozenges. They came back from step 1000 (in three of four styles by step 1250): the better recipe, not
# a cure (docs/multi-style.md, "The lozenges").
MULTI_STYLE_AFFINE_FACTOR = 10.0
# A distilled run (--teacher) starts from the flagship (--init auto) at this learning rate, its styles'
# (gamma, beta) at MULTI_STYLE_AFFINE_FACTOR times it: the recipe of the probe in which a four-style network
# trained to the four shipped singles lost the flagship's lozenges by step 1000, at 24.6-28.1 dB to them
# (docs/multi-style.md, "Distillation"). Its target is a picture, not a loss near its minimum, so it can
# move faster than a perceptual fine-tune (BASE_LR).
DISTILL_LR = 5e-4
# ... and ships the moving average of its weights with this decay (train --ema-decay; 0 turns it off). At
# DISTILL_LR the weights wander from step to step; in the shipped four-styles' run the average was 0.6-1.3
# dB closer to the teachers than the last weights on the gallery photos and 0.6-0.9 dB on four photos no
# decision had used, with more of each painting on 24 test photos, the training itself unchanged
# (docs/multi-style.md, "The weights' average").
DISTILL_EMA = 0.995
# `train --extend` trains only the new painting's (gamma, beta) at this rate. At 1e-3 (the default for a
# whole network) Udnie added to four-styles had moved its pair ~0.09 by step 300 and its gallery style
# measure stood still at 0.27 from step 750 to 1000, far from its single's 0.09; at 1e-2 it reached
# 0.23 by step 250, its single's 0.23 at the same step (docs/multi-style.md, "How many steps"). Adam moves a
# parameter by about its rate per step at most, and 3,200 affine numbers are all that trains: there are no
# trained convolutions for a large step to undo.
EXTEND_LR = 1e-2
# ... for this many steps unless --steps or --epochs is given, not train's 40,000 (Johnson et al.'s budget
# for a whole network): at EXTEND_LR Udnie's extension stood still from step 250, and auto's controller,
# which waits for the first fifth of the budget and moves the weight at most 19% per 50 steps, needs the
# rest of 500 to reach its 2x bound. ~45 minutes on 2 CPU cores.
EXTEND_STEPS = 500
# A run that starts from a trained network (--init, which is auto for one painting, and a distilled run)
# trains this many steps unless --steps or --epochs is given: the budget of the shipped fine-tunes
# (weights/zoo.toml), at which each of six paintings, two never used to tune anything, kept the photo and
# carried the painting on 24 held-out photos (docs/quality.md). ~55 minutes on 2 CPU cores, where
# train's 40,000 (Johnson et al.'s budget from scratch) would take a day.
FINETUNE_STEPS = 1500


def base_model(network: TransformerConfig, weights_dir: Path | str | None = None) -> Path | None:
    """The weights folder's :data:`BASE_MODEL` when ``network`` (a TransformerConfig) can start from it (its
    network, or a multi-style one of its shape: TransformerConfig.can_start_from), else None (then training
    starts from scratch): another norm or width cannot."""
    path = list_models(Path(weights_dir) if weights_dir is not None else default_weights_dir()).get(BASE_MODEL)
    if path is None:
        return None
    try:
        return path if network.can_start_from(read_model_info(path).config) else None
    except CheckpointError:
        return None


def unnamed_checkpoints(weights_dir: Path | str) -> list[Path]:
    """The folder's checkpoints whose file name is no model name (a space in it, say): list_models leaves
    them out, and what lists models says so (NOT_A_NAME) rather than leaving them silently missing."""
    folder = Path(weights_dir)
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.glob("*" + MODEL_SUFFIX)) if not is_valid_name(p.name[: -len(MODEL_SUFFIX)])]


def describe_models(weights_dir: Path | str) -> list[dict]:
    """Metadata of every checkpoint in the folder; unreadable files and unusable file names are listed
    with their error."""
    rows = []
    for name, path in list_models(weights_dir).items():
        try:
            info = read_model_info(path)
            rows.append({"name": name, "path": str(path), "bytes": path.stat().st_size, **info.summary()})
        except (CheckpointError, OSError) as exc:
            rows.append({"name": name, "path": str(path), "error": str(exc)})
    return rows + [{"name": p.name, "path": str(p), "error": NOT_A_NAME} for p in unnamed_checkpoints(weights_dir)]


# ----------------------------------------------------------------------------- shipped weights

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
# Half-precision export must not change outputs visibly: the same bound as the fast path.
EXPORT_MIN_PSNR = 35.0


def read_manifest(weights_dir: Path | str) -> dict:
    """The manifest of a weights folder ({"format_version", "models": [...]}); empty when absent."""
    path = Path(weights_dir) / MANIFEST
    if not path.exists():
        return {"format_version": MANIFEST_VERSION, "models": []}
    return json.loads(path.read_text())


def _write_manifest(weights_dir: Path, manifest: dict) -> None:
    manifest["models"].sort(key=lambda m: m["name"])
    atomic_write_bytes(weights_dir / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


def _probe_image(size: int = 256) -> torch.Tensor:
    """A deterministic photo-like test image (smooth gradients and edges) for export checks."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    r = 0.5 + 0.4 * torch.sin(7 * x + 2 * y)
    g = (0.3 + 0.6 * y * (x > 0.4)).clamp(0, 1)
    b = 0.5 + 0.4 * torch.cos(9 * x * y)
    return torch.stack([r, g, b])[None].clamp(0, 1)


def export_model(source: Path | str, weights_dir: Path | str, name: str, dtype: str = "fp16") -> dict:
    """Copy a trained checkpoint into the weights folder (optionally in fp16) and list it in the manifest.

    fp16 halves the file; the export is refused if the fp16 model's output differs from the fp32 one by
    more than EXPORT_MIN_PSNR dB on a test image.
    """
    from .checkpoint import load_model, save_model
    from .metrics import psnr as image_psnr
    from .stylize import Stylizer

    if not is_valid_name(name):
        raise ValueError(f"invalid model name {name!r}: use letters, digits, '-', '_' and '.'")
    if dtype not in ("fp16", "fp32"):
        raise ValueError(f"dtype must be fp16 or fp32, got {dtype!r}")
    folder = Path(weights_dir)
    target = folder / f"{name}{MODEL_SUFFIX}"
    model, info = load_model(source)
    save_model(target, model, info, torch.float16 if dtype == "fp16" else torch.float32)
    exported, _ = load_model(target)
    probe = _probe_image()
    reference = Stylizer(model, fast=False).stylize(probe)
    check = Stylizer(exported, fast=False).stylize(probe)
    psnr = image_psnr(check, reference)
    if psnr < EXPORT_MIN_PSNR:
        target.unlink()
        raise ValueError(f"{dtype} export changes the output too much ({psnr:.1f} dB < {EXPORT_MIN_PSNR} dB); "
                         "export in fp32")
    entry = {
        "name": name,
        "file": target.name,
        "style": info.style_name,
        "style_sha256": info.style_sha256,
        "norm": info.norm,
        "steps": info.steps,
        "dtype": dtype,
        "bytes": target.stat().st_size,
        "sha256": file_sha256(target),
        # The trained checkpoint it came from: a run retrained with the same settings and budget
        # (e.g. on other hardware) is another model, and zoo export must see that (zoo_build.export_zoo).
        "source_sha256": file_sha256(source),
        "export_psnr_db": round(psnr, 1),
        "settings": info.training,
        "losses": info.losses,
    }
    manifest = read_manifest(folder)
    manifest["models"] = [m for m in manifest["models"] if m["name"] != name] + [entry]
    _write_manifest(folder, manifest)
    return entry


def verify_manifest(weights_dir: Path | str) -> list[str]:
    """Problems with the shipped weights: missing files, hash mismatches, unlisted checkpoints."""
    folder = Path(weights_dir)
    manifest = read_manifest(folder)
    problems = []
    listed = set()
    for entry in manifest["models"]:
        path = folder / entry["file"]
        listed.add(entry["name"])
        if not path.is_file():
            problems.append(f"{entry['name']}: {path} is missing")
        elif file_sha256(path) != entry["sha256"]:
            problems.append(f"{entry['name']}: sha256 of {path} does not match the manifest")
    for name in list_models(folder):
        if name not in listed:
            problems.append(f"{name}: checkpoint not listed in {MANIFEST}")
    return problems
