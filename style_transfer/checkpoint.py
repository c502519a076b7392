"""Checkpoints.

* Served models: safetensors (no pickle, nothing executable) with self-describing metadata; loading
  rebuilds the network from the metadata alone.
* Training state (for ``--resume``): a ``torch.save`` dict of tensors and plain values, loaded with
  ``weights_only=True`` so a malicious pickle cannot run code.
Both are written atomically (temp file + fsync + rename): a crash never leaves a broken file.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .imageio import atomic_write_bytes
from .network import TransformerConfig, TransformerNet

FORMAT_NAME = "style-transfer"
FORMAT_VERSION = 1
MODEL_SUFFIX = ".safetensors"


class CheckpointError(ValueError):
    """A file is not a valid checkpoint of this project; the message says why."""


@dataclass
class ModelInfo:
    """What a served checkpoint says about itself."""

    config: TransformerConfig
    style_name: str = ""
    style_sha256: str = ""
    steps: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def norm(self) -> str:
        return self.config.norm

    def to_metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT_NAME,
            "format_version": str(FORMAT_VERSION),
            # The norm lives in the config only. Older checkpoints (the shipped ones in weights/) also carry
            # a "norm" key; nothing reads it, so they load unchanged (issue 15).
            "config": self.config.to_json(),
            "style_name": self.style_name,
            "style_sha256": self.style_sha256,
            "steps": str(self.steps),
            "training": json.dumps(self.training, sort_keys=True),
            "losses": json.dumps(self.losses, sort_keys=True),
            "extra": json.dumps(self.extra, sort_keys=True),
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str] | None, source: str) -> "ModelInfo":
        if not meta or meta.get("format") != FORMAT_NAME:
            raise CheckpointError(f"{source}: not a {FORMAT_NAME} checkpoint (metadata 'format' missing)")
        try:
            version = int(meta.get("format_version", ""))
        except ValueError:
            raise CheckpointError(f"{source}: bad format_version {meta.get('format_version')!r}") from None
        if version > FORMAT_VERSION or version < 1:
            raise CheckpointError(
                f"{source}: checkpoint format version {version} is not supported (this version reads 1..{FORMAT_VERSION})"
            )
        try:
            return cls(
                config=TransformerConfig.from_dict(json.loads(meta["config"])),
                style_name=meta.get("style_name", ""),
                style_sha256=meta.get("style_sha256", ""),
                steps=int(meta.get("steps", "0")),
                training=json.loads(meta.get("training", "{}")),
                losses=json.loads(meta.get("losses", "{}")),
                extra=json.loads(meta.get("extra", "{}")),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{source}: invalid checkpoint metadata: {exc}") from exc

    def summary(self, num_params: int | None = None) -> dict[str, Any]:
        """A JSON-ready description (for `style-transfer models` and the server)."""
        out = {
            "style": self.style_name,
            "style_sha256": self.style_sha256,
            "norm": self.norm,
            "config": json.loads(self.config.to_json()),
            "steps": self.steps,
            "training": self.training,
            "losses": self.losses,
        }
        if num_params is not None:
            out["parameters"] = num_params
        return out


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_model(path: Path | str, model: TransformerNet, info: ModelInfo, dtype: torch.dtype = torch.float32) -> None:
    """Write a served checkpoint (safetensors + metadata) atomically. ``dtype`` may be fp16 to halve size."""
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.to(dtype)
        state[key] = value.contiguous()
    atomic_write_bytes(Path(path), st_save(state, metadata=info.to_metadata()))


def _read_safetensors_metadata(data: bytes, source: str) -> dict[str, str] | None:
    # The header is: u64 little-endian length, then that many bytes of JSON.
    if len(data) < 8:
        raise CheckpointError(f"{source}: file is too short to be a safetensors checkpoint")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise CheckpointError(f"{source}: truncated or not a safetensors file (header runs past the end)")
    try:
        header = json.loads(data[8 : 8 + length])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{source}: not a safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{source}: not a safetensors file (header is not an object)")
    return header.get("__metadata__")


def read_model_info(path: Path | str) -> ModelInfo:
    """Read only the metadata of a served checkpoint (cheap: no tensors are built)."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: file is too short to be a safetensors checkpoint")
        (length,) = struct.unpack("<Q", head)
        if length > 100_000_000:
            raise CheckpointError(f"{path}: not a safetensors file (implausible header length)")
        data = head + fh.read(length)
    return ModelInfo.from_metadata(_read_safetensors_metadata(data, str(path)), str(path))


def load_model(path: Path | str, device: torch.device | str = "cpu") -> tuple[TransformerNet, ModelInfo]:
    """Load a served checkpoint: rebuild the network from its metadata, check and load the weights."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc.strerror or exc}") from exc
    source = str(path)
    info = ModelInfo.from_metadata(_read_safetensors_metadata(data, source), source)
    try:
        state = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{source}: corrupt safetensors data: {exc}") from exc
    model = TransformerNet(info.config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not match a {info.config.norm}-norm network "
            f"(missing: {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected: {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})"
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(f"{source}: {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}")
        if not torch.isfinite(value.float()).all():
            raise CheckpointError(f"{source}: {key} contains non-finite values")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    model.eval().to(device)
    return model, info


# ----------------------------------------------------------------------------- training state

TRAIN_STATE_KEYS = {"format", "format_version", "step", "model", "optimizer", "rng", "settings"}


def save_train_state(path: Path | str, state: dict[str, Any]) -> None:
    """Write the resume state atomically."""
    state = {"format": FORMAT_NAME + "-train-state", "format_version": FORMAT_VERSION, **state}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_train_state(path: Path | str) -> dict[str, Any]:
    """Load the resume state with ``weights_only=True``; refuse anything that is not one."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no training state to resume from") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError,
            TypeError, struct.error, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable training state (refused, nothing executed): {first}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT_NAME + "-train-state":
        raise CheckpointError(f"{path}: not a {FORMAT_NAME} training state")
    missing = TRAIN_STATE_KEYS - set(state)
    if missing:
        raise CheckpointError(f"{path}: training state lacks {sorted(missing)}")
    if not isinstance(state["format_version"], int) or not 1 <= state["format_version"] <= FORMAT_VERSION:
        raise CheckpointError(f"{path}: training state version {state['format_version']!r} is not supported "
                              f"(this version reads 1..{FORMAT_VERSION})")
    return state
