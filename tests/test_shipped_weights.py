"""The checkpoints shipped in weights/: listed in the manifest, intact, loadable, and they stylize."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from style_transfer.checkpoint import file_sha256, load_model
from style_transfer.stylize import Stylizer
from style_transfer.zoo import read_manifest, verify_manifest

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
ENTRIES = read_manifest(WEIGHTS)["models"]


def test_every_shipped_checkpoint_is_listed_and_intact():
    assert verify_manifest(WEIGHTS) == []


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_shipped_checkpoint_loads_and_stylizes(entry):
    path = WEIGHTS / entry["file"]
    assert file_sha256(path) == entry["sha256"]
    model, info = load_model(path)
    assert info.norm == entry["norm"] and info.steps == entry["steps"] and info.style_name == entry["style"]
    image = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    out = Stylizer(model).stylize(image)
    assert out.shape == image.shape and torch.isfinite(out).all()
    assert (out - image).abs().mean() > 0.02  # it changes the image


def test_readme_lists_every_shipped_model():
    readme = (WEIGHTS.parent / "README.md").read_text()
    section = readme.split("## Shipped models", 1)[1].split("\n## ", 1)[0]
    for entry in ENTRIES:
        row = next((line for line in section.splitlines() if line.startswith(f"| `{entry['name']}` |")), None)
        assert row is not None, f"README 'Shipped models' table lacks {entry['name']}"
        assert f"| {entry['norm']} | {entry['steps']} |" in row, f"README row of {entry['name']} is stale: {row}"
