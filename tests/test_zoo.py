"""Exporting checkpoints into the weights folder, and the manifest that lists them."""

from __future__ import annotations

import json

import pytest
import torch

from style_transfer.checkpoint import load_model
from style_transfer.zoo import export_model, list_models, read_manifest, resolve_model, verify_manifest


def test_export_fp16_lists_the_model_with_its_hash(make_checkpoint, tmp_path):
    source = make_checkpoint("instance", trained=True, steps=42, style_name="wave")
    weights = tmp_path / "weights"
    entry = export_model(source, weights, "wave-instance")
    assert (weights / "wave-instance.safetensors").stat().st_size < source.stat().st_size * 0.6
    manifest = json.loads((weights / "manifest.json").read_text())
    assert manifest["models"] == [entry]
    assert entry["norm"] == "instance" and entry["steps"] == 42 and entry["style"] == "wave"
    assert entry["dtype"] == "fp16" and entry["export_psnr_db"] >= 35
    assert verify_manifest(weights) == []
    model, info = load_model(weights / "wave-instance.safetensors")
    assert all(p.dtype == torch.float32 for p in model.parameters())  # loads back as fp32
    assert resolve_model("wave-instance", weights) == weights / "wave-instance.safetensors"


def test_export_replaces_an_entry_and_verify_finds_problems(make_checkpoint, tmp_path):
    weights = tmp_path / "weights"
    export_model(make_checkpoint("batch", trained=True), weights, "a", dtype="fp32")
    export_model(make_checkpoint("group", trained=True), weights, "a")
    assert [m["norm"] for m in read_manifest(weights)["models"]] == ["group"]
    (weights / "a.safetensors").write_bytes((weights / "a.safetensors").read_bytes() + b" ")
    make_checkpoint("none", path=weights / "stray.safetensors")
    problems = verify_manifest(weights)
    assert any("sha256" in p for p in problems) and any("stray" in p for p in problems)
    (weights / "a.safetensors").unlink()
    assert any("missing" in p for p in verify_manifest(weights))


def test_export_refuses_bad_names(make_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="invalid model name"):
        export_model(make_checkpoint(), tmp_path, "../evil")
    assert list_models(tmp_path) == {}
