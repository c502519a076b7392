"""--style-weight auto (issue 16): the style weight steered by the photo kept (style_transfer/balance.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from style_transfer import balance
from style_transfer.balance import BASE_WEIGHT, BOUNDS, TARGET, StyleBalance, control_photos, parse_weight
from style_transfer.checkpoint import read_model_info
from style_transfer.cli import main
from style_transfer.evaluation import _loss_config
from style_transfer.losses import LossConfig
from style_transfer.rundir import RunDir
from style_transfer.spec import RunSpec, ab_group, settings
from style_transfer.train import TrainingError, TrainOptions, train
from style_transfer.validation import Validator

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def quick_control(monkeypatch):
    """Updates every 2 steps from the first fifth of the budget: the real schedule (every 50 steps) at
    the scale of a test run."""
    monkeypatch.setattr(balance, "EVERY", 2)


@pytest.fixture(scope="module")
def photos(held_out_photos) -> tuple[Path, ...]:
    """What the controller measures in these tests: two held-out photos at 96 px."""
    return held_out_photos(96)


def _tiny(content: Path, style: Path, **changes) -> RunSpec:
    values = dict(content=content, style=style, steps=10, image_size=32, batch_size=2, precision="fp32",
                  width=8, num_residual=1, style_size=64, style_weight="auto")
    return RunSpec.from_flat({**values, **changes})


def _options(photos, **changes) -> TrainOptions:
    return TrainOptions(**{"device": "cpu", "checkpoint_every": 100, "sample_every": 100, "progress": False,
                           "val_photos": photos, **changes})


# ----------------------------------------------------------------------------- the controller


def test_the_weight_moves_toward_the_target_and_stays_within_its_bounds():
    b = StyleBalance(total_steps=1500)
    assert b.weight == BASE_WEIGHT
    assert b.update(300, TARGET) == BASE_WEIGHT  # on target: unchanged
    b.update(350, TARGET - 0.04)  # 0.04 short: u moves by 2.5 * -0.04
    assert b.weight == pytest.approx(BASE_WEIGHT * 2 ** -0.1)
    b.update(400, TARGET + 0.04)
    assert b.weight == pytest.approx(BASE_WEIGHT)
    for step in range(450, 1500, 50):  # the photo lost for good: at most MAX_MOVE per update, down to 1/8
        b.update(step, 0.0)
    assert b.weight == pytest.approx(BASE_WEIGHT * 2 ** BOUNDS[0])
    assert b.history[3]["weight"] == pytest.approx(BASE_WEIGHT * 2 ** -balance.MAX_MOVE)
    for step in range(0, 2000, 50):  # the photo untouched: up to 2x
        b.update(step, 1.0)
    assert b.weight == pytest.approx(BASE_WEIGHT * 2 ** BOUNDS[1])
    with pytest.raises(ValueError, match="finite"):
        b.update(10, float("nan"))


def test_updates_start_after_the_warm_up_and_skip_the_last_step():
    b = StyleBalance(total_steps=1500)
    assert [s for s in range(1, 1501) if b.due(s)] == list(range(300, 1500, 50))
    assert StyleBalance(total_steps=100).start == 50  # never before the first interval
    assert not StyleBalance(total_steps=50).due(50)


def test_the_same_measures_give_the_same_weights_and_the_state_round_trips():
    kept = [0.41, 0.47, 0.52, 0.58, 0.63, 0.61]
    a, b = StyleBalance(1500), StyleBalance(1500)
    for i, k in enumerate(kept):
        a.update(300 + 50 * i, k)
        b.update(300 + 50 * i, k)
    assert a.weight == b.weight and a.history == b.history
    c = StyleBalance(1500)
    c.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert c.update(600, 0.5) == a.update(600, 0.5)


def test_without_val_the_photos_measured_are_content_photos_spread_over_the_folder(tmp_path):
    content = [tmp_path / f"{i:02d}.jpg" for i in range(10)]
    assert control_photos(list(reversed(content)), count=4) == [content[i] for i in (0, 2, 5, 7)]
    assert control_photos(content[:3], count=4) == content[:3]


def test_auto_is_a_setting_of_its_own_kind():
    assert parse_weight("auto") == parse_weight(" AUTO ") == "auto" and parse_weight("3e-5") == 3e-5
    assert next(s for s in settings() if s.name == "style_weight").kind == "weight"
    with pytest.raises(ValueError, match="a number >= 0 or 'auto'"):
        LossConfig(style_weight="more")
    with pytest.raises(ValueError, match=">= 0"):
        LossConfig(style_weight=-1.0)
    spec = RunSpec.from_flat({"content": "c", "style": "s.jpg", "style_weight": "auto"})
    assert spec.fingerprint()["loss"]["style_weight"] == "auto"
    assert spec.differences(spec.replace(style_weight=BASE_WEIGHT).fingerprint()) == ["style_weight"]


# ----------------------------------------------------------------------------- in training


def test_a_style_heavy_run_lowers_its_weight_deterministically(tmp_path, content_dir, style_path, photos,
                                                                quick_control):
    """Texture only (a tiny network trained from scratch keeps ~0.1-0.3 of a photo): every update finds
    the photo lost and lowers the weight, the same way in two runs; the loss uses the moved weight."""
    spec = _tiny(content_dir, style_path)
    runs = [RunDir.of(tmp_path / name / "m.safetensors") for name in ("a", "b")]
    results = [train(spec, run, _options(photos)) for run in runs]
    logs = [[{k: e[k] for k in ("step", "total", "auto_kept", "style_weight")} for e in r.history
             if "style_weight" in e] for r in results]
    assert [e["step"] for e in logs[0]] == [2, 4, 6, 8]  # from a fifth of 10 steps, every 2, not at the last
    weights = [e["style_weight"] for e in logs[0]]
    assert all(e["auto_kept"] < TARGET for e in logs[0])
    assert weights == sorted(weights, reverse=True) and weights[-1] < BASE_WEIGHT
    assert logs[0] == logs[1]  # deterministic
    a, b = load_file(runs[0].checkpoint), load_file(runs[1].checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    info = read_model_info(runs[0].checkpoint)
    assert info.training["loss"]["style_weight"] == "auto"
    assert info.training["style_weight_used"] == weights[-1]
    # The checkpoint's loss is the one it ended with, for compare's weighted terms.
    assert _loss_config(info, None).style_weight == weights[-1]
    # A fixed weight's run trains differently from step 3 on (the first update is after step 2).
    fixed = train(spec.replace(style_weight=BASE_WEIGHT), RunDir.of(tmp_path / "c" / "m.safetensors"),
                  _options(photos))
    assert [e["total"] for e in fixed.history[:2]] == [e["total"] for e in results[0].history[:2]]
    assert fixed.history[2]["style"] != results[0].history[2]["style"]
    # The weight it ended at is not part of the recipe: another run of it is the same A/B recipe.
    other = dict(info.training, style_weight_used=1.0)
    assert ab_group(other, info.style_sha256) == ab_group(info.training, info.style_sha256)


def test_resume_continues_the_controller_exactly(tmp_path, content_dir, style_path, photos, quick_control):
    spec = _tiny(content_dir, style_path)
    straight = train(spec, RunDir.of(tmp_path / "a" / "m.safetensors"), _options(photos))
    run = RunDir.of(tmp_path / "b" / "m.safetensors")
    # Interrupted after step 5 (its checkpoint), then resumed to 10: the updates at 2 and 4 are restored.
    train(spec.replace(steps=5), run, _options(photos, checkpoint_every=5))
    resumed = train(spec, run, _options(photos), resume=True)
    assert [e.get("style_weight") for e in resumed.history] == [e.get("style_weight") for e in straight.history]
    a, b = load_file(tmp_path / "a" / "m.safetensors"), load_file(run.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(TrainingError, match="style_weight"):
        train(spec.replace(style_weight=BASE_WEIGHT, steps=12), run, _options(photos), resume=True)


def test_at_a_sample_step_the_controller_uses_the_validation_measure(tmp_path, content_dir, style_path,
                                                                    photos, quick_control, monkeypatch):
    """With --val photos the controller measures the validation photos; when a step both samples and
    updates, the validation's val_ssim is the controller's kept and the photos are stylized once."""
    stylized = []
    outputs = Validator._outputs

    def counting(self, *args, **kwargs):
        stylized.append(1)
        return outputs(self, *args, **kwargs)

    monkeypatch.setattr(Validator, "_outputs", counting)
    result = train(_tiny(content_dir, style_path), RunDir.of(tmp_path / "m.safetensors"),
                   _options(photos, sample_every=4))
    by_step = {e["step"]: e for e in result.history}
    assert [s for s, e in by_step.items() if "auto_kept" in e] == [2, 4, 6, 8]
    assert [s for s, e in by_step.items() if "val_ssim" in e] == [4, 8, 10]
    assert all(by_step[s]["auto_kept"] == by_step[s]["val_ssim"] for s in (4, 8))
    assert len(stylized) == 2 + 3  # the updates at 2 and 6, and the three samples; not again at 4 and 8


def test_each_painting_of_a_multi_style_run_has_its_own_weight(tmp_path, content_dir, style_path,
                                                               small_style_path, shared_data, photos,
                                                               quick_control):
    second = shared_data / "styles" / "hokusai_great_wave_c1831.jpg"
    spec = _tiny(content_dir, [style_path, second], norm="conditional_instance")
    result = train(spec, RunDir.of(tmp_path / "m.safetensors"), _options(photos))
    names = spec.style_names
    updates = [e for e in result.history if any(k.startswith("style_weight/") for k in e)]
    assert [e["step"] for e in updates] == [2, 4, 6, 8]
    assert all(set(e) >= {f"style_weight/{n}" for n in names} | {f"auto_kept/{n}" for n in names} for e in updates)
    last = updates[-1]
    used = read_model_info(tmp_path / "m.safetensors").training["style_weight_used"]
    assert used == [last[f"style_weight/{n}"] for n in names]
    assert last[f"auto_kept/{names[0]}"] != last[f"auto_kept/{names[1]}"]  # measured in each style


def test_the_train_command_defaults_to_auto_and_takes_a_number(tmp_path, content_dir, small_style_path, caplog):
    common = ["train", "--content", str(content_dir), "--style", str(small_style_path), "--steps", "1",
              "--image-size", "32", "--batch-size", "2", "--width", "8", "--residual-blocks", "1",
              "--style-size", "64", "--precision", "fp32", "--device", "cpu"]
    caplog.set_level("INFO")
    assert main([*common, "--out", str(tmp_path / "a.safetensors")]) == 0
    # It ends with how to use the model: the stylize command, and the name the server serves it under.
    assert f"style-transfer stylize PHOTO --model {tmp_path / 'a.safetensors'}" in caplog.text
    assert "served by its file name, a)" in caplog.text and "will not serve" not in caplog.text
    assert main([*common, "--out", str(tmp_path / "my painting.safetensors")]) == 0
    assert "will not serve" in caplog.text and "rename it" in caplog.text
    assert read_model_info(tmp_path / "a.safetensors").training["loss"]["style_weight"] == "auto"
    assert main([*common, "--style-weight", "3e-5", "--out", str(tmp_path / "b.safetensors")]) == 0
    training = read_model_info(tmp_path / "b.safetensors").training
    assert training["loss"]["style_weight"] == 3e-5 and "style_weight_used" not in training


def test_the_run_folder_tells_where_auto_has_the_weight(tmp_path):
    run = RunDir.of(tmp_path / "m.safetensors")
    run.root.mkdir()
    entries = [{"step": 1}, {"step": 2, "style_weight": 1.5e-5, "auto_kept": 0.5}, {"step": 3}]
    run.log.write_text("".join(json.dumps(e) + "\n" for e in entries))
    assert run.latest_style_weights() == [1.5e-5]
    entries.append({"step": 4, "style_weight/a": 1e-5, "style_weight/b": 3e-5})
    run.log.write_text("".join(json.dumps(e) + "\n" for e in entries))
    assert run.latest_style_weights() == [1e-5, 3e-5]
    run.log.write_text(json.dumps({"step": 1}) + "\n")
    assert run.latest_style_weights() == []  # a fixed weight
