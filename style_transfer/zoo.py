"""The weights folder: list the served checkpoints and resolve a model name safely."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .checkpoint import MODEL_SUFFIX, CheckpointError, read_model_info

WEIGHTS_ENV = "STYLE_TRANSFER_WEIGHTS"
# A model name is a file stem: letters, digits, '-', '_' and '.', not starting with '.'; this rules
# out path separators, '..', absolute paths and NUL bytes by construction.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


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


def describe_models(weights_dir: Path | str) -> list[dict]:
    """Metadata of every checkpoint in the folder; unreadable files are listed with their error."""
    rows = []
    for name, path in list_models(weights_dir).items():
        try:
            info = read_model_info(path)
            rows.append({"name": name, "path": str(path), "bytes": path.stat().st_size, **info.summary()})
        except (CheckpointError, OSError) as exc:
            rows.append({"name": name, "path": str(path), "error": str(exc)})
    return rows
