"""The run spec (issue 15): one definition of the training settings that train, ablate and zoo all read."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest

from style_transfer import data as data_module
from style_transfer import train as train_module
from style_transfer.checkpoint import read_model_info
from style_transfer.cli import build_parser, main
from style_transfer.spec import RunSpec, ab_group, settings
from style_transfer.zoo_build import load_plan

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--image-size", "32", "--batch-size", "2", "--width", "8", "--residual-blocks", "1", "--style-size", "64",
        "--precision", "fp32", "--device", "cpu"]


def _options_of(command: str) -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {flag for action in sub.choices[command]._actions for flag in action.option_strings}


def test_every_setting_is_an_option_of_train_and_ablate_and_a_plan_key(tmp_path):
    """A setting added to the spec needs no edit elsewhere: the commands and the plan read the table."""
    train, ablate = _options_of("train"), _options_of("ablate")
    for s in settings():
        assert set(s.flags) <= train, s.name
        if s.name not in ("norm", "seed"):  # a study varies these: --norms, --seeds
            assert set(s.flags) <= ablate, s.name
    assert "--clip-grad-norm" in ablate
    # Every setting is a plan key (a value different from the default, so the test sees it arrive).
    changed = {"norm": '"group"', "width": 16, "num_residual": 2, "groups": 4, "content_layers": '["relu3_3"]',
               "style_layers": '["relu2_2"]', "content_weight": 2.0, "style_weight": 3.0, "tv_weight": 0.5,
               "style_size": 128, "epochs": 2.5, "image_size": 64, "batch_size": 8, "lr": 0.01, "lr_warmup": 10, "affine_lr": 0.02,
               "clip_grad_norm": 5.0,
               "bn_frozen_steps": 2, "seed": 7, "precision": '"bf16"', "teacher_style_weight": 1e-6, "ema_decay": 0.99}
    data = {"content", "style", "init", "extend", "teacher", "steps"}  # paths (and the required steps), not values
    alone = {"stability_weight": 10.0}  # trains with the perceptual loss: refused beside the plan's teacher
    assert set(changed) | data | set(alone) == {s.name for s in settings()}
    del changed["epochs"]  # a plan gives steps (required), and a spec refuses both
    body = "\n".join(f"{k} = {v}" for k, v in changed.items())
    plan = tmp_path / "zoo.toml"
    # teacher_style_weight needs a teacher; the plan names one, relative to the plan file like every path.
    plan.write_text(f'[[models]]\nname = "m"\nstyle = "s.jpg"\ncontent = "c"\nsteps = 3\nteacher = "t.safetensors"\n{body}\n')
    flat = json.loads(json.dumps(load_plan(plan)[0].spec.flat(), default=str))
    assert {k: flat[k] for k in changed} == tomllib.loads(body)
    assert flat["teacher"] == [str((tmp_path / "t.safetensors").resolve())]
    plan.write_text('[[models]]\nname = "m"\nstyle = "s.jpg"\ncontent = "c"\nsteps = 3\nstability_weight = 10.0\n')
    assert load_plan(plan)[0].spec.stability_weight == alone["stability_weight"]
    with pytest.raises(ValueError, match="stability_weight"):
        RunSpec(content="c", style="s.jpg", teacher="t.safetensors", stability_weight=10.0)


def test_flat_names_round_trip_and_replace_checks():
    spec = RunSpec(content=("a", "b"), style="s.jpg", steps=10)
    assert RunSpec.from_dict(spec.to_dict()) == RunSpec(content=(Path("a").resolve(), Path("b").resolve()),
                                                        style=Path("s.jpg").resolve(), steps=10)
    other = spec.replace(norm="Batch", clip_grad_norm=100, style_weight=1e-5)
    assert other.network.norm == "batch" and other.loss.style_weight == 1e-5
    assert spec.diff(other) == ["norm", "style_weight", "clip_grad_norm"]
    assert other.differences(spec.fingerprint()) == ["norm", "style_weight", "clip_grad_norm"]
    # Optional settings are left out of the fingerprint while off (old runs still resume).
    assert "clip_grad_norm" not in spec.fingerprint() and other.fingerprint()["clip_grad_norm"] == 100
    with pytest.raises(ValueError, match="unknown setting.*'lr_decay'"):
        spec.replace(lr_decay=0.5)
    with pytest.raises(ValueError, match="steps or epochs"):
        spec.replace(epochs=1.0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        spec.replace(lr=0)
    with pytest.raises(ValueError, match="given twice"):
        RunSpec(content=("a", "a"), style="s.jpg")
    with pytest.raises(ValueError, match="groups"):
        spec.replace(norm="group", width=12, groups=8)


def test_batch_norm_settings_leave_other_norms_recipes_alone():
    spec = RunSpec(content="c", style="s.jpg", steps=10, bn_frozen_steps=3)
    assert spec.fingerprint()["network"]["norm"] == "instance" and "bn_frozen_steps" not in spec.fingerprint()
    assert spec.differences(spec.replace(bn_frozen_steps=None).fingerprint()) == []
    batch = spec.replace(norm="batch")
    assert batch.fingerprint()["bn_frozen_steps"] == 3
    assert batch.differences(batch.replace(bn_frozen_steps=None).fingerprint()) == ["bn_frozen_steps"]
    # ...and a batch arm with it still belongs to the A/B set of arms trained without it.
    training = {"lr": 1e-3, "network": {"norm": "instance"}}
    assert ab_group({**training, "network": {"norm": "batch"}, "bn_frozen_steps": 3}, "a") == ab_group(training, "a")


def test_ab_group_is_the_recipe_without_the_norm():
    training = {"lr": 1e-3, "seed": 0, "total_steps": 3000, "sync_bn": False,
                "network": {"norm": "instance", "width": 32}, "loss": {"style_weight": 2e-5}}
    key = ab_group(training, "a" * 64)
    assert ab_group({**training, "network": {"norm": "batch", "width": 32}, "sync_bn": True}, "a" * 64) == key
    assert ab_group({**training, "clip_grad_norm": 100}, "a" * 64) != key
    assert ab_group({**training, "seed": 1}, "a" * 64) != key
    assert ab_group(training, "b" * 64) != key
    assert ab_group({**training, "network": {"norm": "instance", "width": 16}}, "a" * 64) != key


def test_ablate_clip_grad_norm_reaches_every_arm(tmp_path, content_dir, small_style_path):
    study = tmp_path / "study"
    assert main(["ablate", "--out", str(study), "--content", str(content_dir), "--style", str(small_style_path),
                 "--norms", "instance,layer", "--steps", "1", "--clip-grad-norm", "50", *TINY]) == 0
    assert json.loads((study / "study.json").read_text())["settings"]["clip_grad_norm"] == 50
    for arm in ("instance-s0", "layer-s0"):
        assert read_model_info(study / arm / "model.safetensors").training["clip_grad_norm"] == 50


def test_repeated_content_folders_are_all_trained_on(tmp_path, content_dir, small_style_path):
    second = tmp_path / "more"
    second.mkdir()
    for p in sorted(content_dir.iterdir())[:2]:
        shutil.copy2(p, second / ("b_" + p.name))
    out = tmp_path / "m.safetensors"
    assert main(["train", "--content", str(content_dir), "--content", str(second), "--style", str(small_style_path),
                 "--out", str(out), "--steps", "1", *TINY]) == 0
    assert read_model_info(out).training["num_images"] == len(list(content_dir.iterdir())) + 2
    # The same folder twice is a mistake, said before anything runs.
    assert main(["train", "--content", str(content_dir), "--content", str(content_dir), "--style",
                 str(small_style_path), "--out", str(out), "--steps", "1", *TINY]) == 2


def test_bad_network_settings_fail_before_the_data_scan(tmp_path, content_dir, small_style_path, monkeypatch, caplog):
    def scanned(*args, **kwargs):
        raise AssertionError("the data was scanned before the settings were checked")

    monkeypatch.setattr(data_module, "ContentImages", scanned)
    monkeypatch.setattr(train_module, "ContentImages", scanned)
    args = ["train", "--content", str(content_dir), "--style", str(small_style_path), "--out",
            str(tmp_path / "m.safetensors"), "--steps", "1", *TINY]
    assert main(args + ["--norm", "group", "--width", "12"]) == 2
    assert "groups" in caplog.text and "12" in caplog.text
    assert main(args + ["--norm", "weight"]) == 2
    assert "instance" in caplog.text  # the valid names are listed
    assert main(args[:2] + [str(tmp_path / "nowhere")] + args[3:]) == 2
    assert "content folder not found" in caplog.text
