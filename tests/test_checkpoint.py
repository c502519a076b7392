"""Checkpoints: served models (safetensors + metadata) and the resume state; refusals of bad files."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from style_transfer.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    ModelInfo,
    load_model,
    load_train_state,
    read_model_info,
    save_train_state,
)
from style_transfer.network import TransformerConfig
from style_transfer.norms import NORM_NAMES


def _read_raw(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})


def _probe(seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 3, 20, 28, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- served models


@pytest.mark.parametrize("norm", NORM_NAMES)
def test_round_trip_same_outputs_and_metadata(norm, make_model, make_checkpoint):
    model = make_model(norm, trained=True)
    losses = {"content": 1.25, "style": 0.5, "tv": 0.03125, "total": 1.78125}
    path = make_checkpoint(model=model, steps=123, style_name="starry", losses=losses,
                           training={"lr": 0.001, "batch_size": 4}, extra={"note": "x"})
    assert path.suffix == ".safetensors" and path.is_file()
    loaded, info = load_model(path)
    assert not loaded.training
    assert info.norm == norm
    assert info.config == model.config
    assert info.steps == 123
    assert info.style_name == "starry"
    assert info.losses == losses
    assert info.training == {"lr": 0.001, "batch_size": 4}
    assert info.extra == {"note": "x"}
    x = _probe()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # every tensor (batch-norm running statistics included) survived exactly
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


@pytest.mark.parametrize("norm", NORM_NAMES)
def test_fp16_checkpoint_loads_close_to_fp32(norm, make_model, make_checkpoint, tmp_path):
    model = make_model(norm, trained=True)
    path16 = make_checkpoint(model=model, path=tmp_path / "half.safetensors", dtype=torch.float16)
    path32 = make_checkpoint(model=model, path=tmp_path / "full.safetensors")
    tensors, _ = _read_raw(path16)
    assert all(t.dtype in (torch.float16, torch.int64) for t in tensors.values())
    assert path16.stat().st_size < 0.6 * path32.stat().st_size
    loaded, _ = load_model(path16)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = _probe(1)
    with torch.no_grad():
        ref, out = model(x), loaded(x)
    assert (out - ref).abs().max() < 1e-2


def test_group_count_survives(make_model, make_checkpoint):
    path = make_checkpoint(model=make_model("group", groups=4))
    loaded, info = load_model(path)
    assert info.config.groups == 4
    assert {m.num_groups for m in loaded.modules() if isinstance(m, torch.nn.GroupNorm)} == {4}


def test_read_model_info_reads_metadata_only(make_checkpoint, tmp_path):
    path = make_checkpoint("layer", steps=42, style_name="wave")
    info = read_model_info(path)
    assert isinstance(info, ModelInfo)
    assert (info.norm, info.steps, info.style_name) == ("layer", 42, "wave")
    # proof that no tensor is read: cut the tensor data away, keep the header
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    headless = tmp_path / "header_only.safetensors"
    headless.write_bytes(data[: 8 + header_len])
    info2 = read_model_info(headless)
    assert (info2.norm, info2.steps, info2.style_name) == ("layer", 42, "wave")
    with pytest.raises(CheckpointError):
        load_model(headless)


def test_norm_is_read_from_the_config_only(make_checkpoint, tmp_path):
    """The config holds the norm; no separate "norm" key is written. Older checkpoints (those shipped in
    weights/) carry one, and still load, whatever it says: it is never read."""
    path = make_checkpoint("batch")
    _, meta = _read_raw(path)
    assert "norm" not in meta and json.loads(meta["config"])["norm"] == "batch"
    legacy = _rewrite(path, tmp_path / "legacy.safetensors", norm="instance")
    assert _read_raw(legacy)[1]["norm"] == "instance"
    loaded, info = load_model(legacy)
    assert info.norm == read_model_info(legacy).norm == "batch"
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.modules())


def test_save_is_atomic_and_overwrites(make_checkpoint, tmp_path):
    path = tmp_path / "m.safetensors"
    make_checkpoint("instance", path=path, steps=1)
    make_checkpoint("none", path=path, steps=2)
    assert read_model_info(path).steps == 2 and read_model_info(path).norm == "none"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


# ----------------------------------------------------------------------------- refusals


def _assert_refused(path: Path, *fragments: str) -> CheckpointError:
    with pytest.raises(CheckpointError) as excinfo:
        load_model(path)
    message = str(excinfo.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message
    return excinfo.value


def test_refuses_random_bytes(tmp_path):
    path = tmp_path / "random.safetensors"
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())
    _assert_refused(path, "safetensors")
    with pytest.raises(CheckpointError):
        read_model_info(path)


def test_refuses_text_file(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("hello, this is not a model at all\n" * 10)
    _assert_refused(path)


def test_refuses_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    _assert_refused(path, "too short")
    with pytest.raises(CheckpointError, match="too short"):
        read_model_info(path)


def test_refuses_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(tmp_path / "nope.safetensors")


def test_refuses_truncated_file(make_checkpoint):
    path = make_checkpoint("instance")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _assert_refused(path)


def test_refuses_truncated_header(make_checkpoint):
    path = make_checkpoint("instance")
    data = path.read_bytes()
    path.write_bytes(data[:40])
    _assert_refused(path, "truncated")


def test_refuses_foreign_safetensors_without_metadata(tmp_path, make_model):
    path = tmp_path / "foreign.safetensors"
    save_file({k: v.contiguous() for k, v in make_model("instance").state_dict().items()}, str(path))
    _assert_refused(path, "not a style-transfer checkpoint")
    with pytest.raises(CheckpointError, match="not a style-transfer checkpoint"):
        read_model_info(path)


def test_refuses_foreign_metadata(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    _assert_refused(path, "not a style-transfer checkpoint")


def _rewrite(path: Path, out: Path, *, tensors=None, **meta_changes) -> Path:
    raw, meta = _read_raw(path)
    meta.update(meta_changes)
    save_file(raw if tensors is None else tensors, str(out), metadata=meta)
    return out


def test_refuses_future_format_version(make_checkpoint, tmp_path):
    path = _rewrite(make_checkpoint("instance"), tmp_path / "v99.safetensors", format_version="99")
    err = _assert_refused(path, "version 99")
    assert str(FORMAT_VERSION) in str(err)
    with pytest.raises(CheckpointError, match="99"):
        read_model_info(path)


@pytest.mark.parametrize("version", ["0", "one", ""])
def test_refuses_bad_format_version(make_checkpoint, tmp_path, version):
    path = _rewrite(make_checkpoint("instance"), tmp_path / "bad.safetensors", format_version=version)
    _assert_refused(path)


def test_refuses_weights_of_another_norm(make_checkpoint, tmp_path):
    """Instance-norm weights under metadata that claims norm 'none': the keys do not match."""
    lie = TransformerConfig(norm="none", width=8, num_residual=1)
    path = _rewrite(make_checkpoint("instance"), tmp_path / "lie.safetensors", config=lie.to_json())
    err = _assert_refused(path, "none", "unexpected")
    assert "down1.2.weight" in str(err)  # a norm parameter the none-norm network lacks


def test_refuses_missing_keys(make_checkpoint, tmp_path):
    path = make_checkpoint("batch")
    raw, _ = _read_raw(path)
    del raw["tail.1.weight"]
    out = _rewrite(path, tmp_path / "missing.safetensors", tensors=raw)
    _assert_refused(out, "missing", "tail.1.weight")


def test_refuses_wrong_width(make_checkpoint, tmp_path):
    wide = TransformerConfig(norm="instance", width=16, num_residual=1)
    path = _rewrite(make_checkpoint("instance"), tmp_path / "wide.safetensors", config=wide.to_json())
    _assert_refused(path, "shape")


def test_refuses_unparseable_config(make_checkpoint, tmp_path):
    path = _rewrite(make_checkpoint("instance"), tmp_path / "cfg.safetensors", config="{not json")
    _assert_refused(path, "metadata")
    path = _rewrite(make_checkpoint("instance"), tmp_path / "cfg2.safetensors",
                    config=json.dumps({"norm": "weird", "width": 8, "num_residual": 1, "groups": 8}))
    _assert_refused(path, "weird")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_refuses_non_finite_weights(make_checkpoint, tmp_path, bad):
    path = make_checkpoint("instance")
    raw, _ = _read_raw(path)
    raw["down1.1.weight"] = raw["down1.1.weight"].clone()
    raw["down1.1.weight"][0, 0, 0, 0] = bad
    out = _rewrite(path, tmp_path / "nan.safetensors", tensors=raw)
    _assert_refused(out, "non-finite", "down1.1.weight")


# ----------------------------------------------------------------------------- training state


def _train_state(make_model) -> dict:
    model = make_model("batch", trained=True).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(2, 3, 16, 16)).mean().backward()
    opt.step()
    return {
        "step": 17,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": {"cpu": torch.get_rng_state()},
        "settings": {"lr": 1e-3, "network": {"norm": "batch", "width": 8}, "precision": "fp32"},
    }


def _assert_nested_equal(a, b, where="state"):
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_nested_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_nested_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def test_train_state_round_trip(make_model, tmp_path):
    state = _train_state(make_model)
    path = tmp_path / "run" / "train_state.pt"
    save_train_state(path, state)
    loaded = load_train_state(path)
    assert loaded["format_version"] == FORMAT_VERSION
    for key in state:
        _assert_nested_equal(state[key], loaded[key], key)
    # the optimizer state really restores into a fresh optimizer
    model = make_model("batch")
    model.load_state_dict(loaded["model"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt.load_state_dict(loaded["optimizer"])
    assert sorted(p.name for p in path.parent.iterdir()) == ["train_state.pt"]  # no temp file left


def test_train_state_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no training state"):
        load_train_state(tmp_path / "train_state.pt")


class _Exploit:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_train_state_refuses_code_execution(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "train_state.pt"
    payload = {"format": "style-transfer-train-state", "format_version": 1, "step": 0,
               "model": _Exploit(marker), "optimizer": {}, "rng": {}, "settings": {}}
    if writer == "pickle":
        with open(path, "wb") as fh:
            pickle.dump(payload, fh, protocol=2)
    else:
        torch.save(payload, path)
    # the payload is live: a plain unpickle would run it (checked on a copy, with a different marker)
    if writer == "pickle":
        canary = tmp_path / "canary"
        pickle.loads(pickle.dumps(_Exploit(canary)))
        assert canary.exists()
    with pytest.raises(CheckpointError) as excinfo:
        load_train_state(path)
    assert str(path) in str(excinfo.value)
    assert not marker.exists(), "loading the training state executed code"


def test_train_state_refuses_dict_missing_keys(tmp_path):
    path = tmp_path / "train_state.pt"
    torch.save({"format": "style-transfer-train-state", "format_version": 1, "step": 3}, path)
    with pytest.raises(CheckpointError, match="lacks") as excinfo:
        load_train_state(path)
    for key in ("model", "optimizer", "rng", "settings"):
        assert key in str(excinfo.value)


def test_train_state_refuses_foreign_dict(tmp_path):
    path = tmp_path / "train_state.pt"
    torch.save({"step": 3, "model": {}}, path)
    with pytest.raises(CheckpointError, match="not a style-transfer training state"):
        load_train_state(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError):
        load_train_state(path)


def test_train_state_refuses_newer_version(make_model, tmp_path):
    path = tmp_path / "train_state.pt"
    state = _train_state(make_model)
    torch.save({"format": "style-transfer-train-state", **state, "format_version": FORMAT_VERSION + 1}, path)
    with pytest.raises(CheckpointError, match="newer"):
        load_train_state(path)


@pytest.mark.parametrize("cut", [0.5, 0.1])
def test_train_state_refuses_truncated_file(make_model, tmp_path, cut):
    path = tmp_path / "train_state.pt"
    save_train_state(path, _train_state(make_model))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(CheckpointError) as excinfo:
        load_train_state(path)
    assert str(path) in str(excinfo.value)


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"garbage bytes, not a zip file or a pickle"])
def test_train_state_refuses_garbage(tmp_path, content):
    path = tmp_path / "train_state.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_train_state(path)


def test_train_state_refuses_non_integer_version(make_model, tmp_path):
    path = tmp_path / "train_state.pt"
    state = _train_state(make_model)
    torch.save({"format": "style-transfer-train-state", **state, "format_version": "2"}, path)
    with pytest.raises(CheckpointError):
        load_train_state(path)
