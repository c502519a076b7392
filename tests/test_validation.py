"""Validation during training (issue 16): held-out photos measured at every sample step, and the warning
when the photo is being lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from style_transfer.checkpoint import file_sha256, read_model_info
from style_transfer.rundir import RunDir
from style_transfer.spec import RunSpec
from style_transfer.train import TrainingError, TrainOptions, train
from style_transfer.validation import LOST_PHOTO_SSIM, WARMUP_FRACTION, photo_lost, validation_photos

REPO = Path(__file__).resolve().parents[1]
FLAGSHIP = REPO / "weights" / "starry-night.safetensors"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def val_photos(held_out_photos) -> tuple[Path, ...]:
    """Two held-out bsds500 test photos at 240 px to keep tests quick."""
    return held_out_photos(240)


def _tiny(content: Path, style: Path, **settings) -> RunSpec:
    base = dict(content=content, style=style, steps=4, image_size=32, batch_size=2, precision="fp32")
    return RunSpec.from_flat({**base, "width": 8, "num_residual": 1, "style_size": 64, **settings})


def _options(**changes) -> TrainOptions:
    return TrainOptions(**{"device": "cpu", "checkpoint_every": 100, "sample_every": 2, "progress": False, **changes})


def test_the_warning_waits_for_the_warm_up_and_names_the_fix():
    assert photo_lost({"val_ssim": 0.1}, step=1, total_steps=100) is None  # an untrained network keeps nothing
    assert photo_lost({"val_ssim": LOST_PHOTO_SSIM}, step=90, total_steps=100) is None
    assert photo_lost({}, step=90, total_steps=100) is None  # no validation photos
    message = photo_lost({"val_ssim": 0.12}, step=int(WARMUP_FRACTION * 100), total_steps=100)
    assert "0.12" in message and "--style-weight" in message
    assert "--bn-frozen-steps" not in message
    assert "--bn-frozen-steps" in photo_lost({"val_ssim": 0.12}, step=90, total_steps=100, norm="batch")
    assert "auto is lowering the weight (now 5e-06" in photo_lost({"val_ssim": 0.12}, 90, 100, auto_weight=5e-6)


def test_measures_are_logged_at_sample_steps_and_change_nothing(tmp_path, content_dir, small_style_path, val_photos):
    spec = _tiny(content_dir, small_style_path)
    plain = train(spec, RunDir.of(tmp_path / "a" / "m.safetensors"), _options())
    run = RunDir.of(tmp_path / "b" / "m.safetensors")
    watched = train(spec, run, _options(val_photos=val_photos))
    # Measuring does not change the run: same weights, same losses.
    a, b = load_file(tmp_path / "a" / "m.safetensors"), load_file(run.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [e["total"] for e in plain.history] == [e["total"] for e in watched.history]
    entries = [json.loads(line) for line in run.log.read_text().splitlines()]
    measured = [e["step"] for e in entries if "val_ssim" in e]
    assert measured == [2, 4]
    for e in entries:
        if "val_ssim" in e:
            assert -1 <= e["val_ssim"] <= 1 and e["val_style"] > 0
    assert run.latest_validation() == {k: entries[-1][k] for k in ("val_ssim", "val_style")}
    assert sorted(p.name for p in run.samples.glob("*_val.jpg")) == ["step_000002_val.jpg", "step_000004_val.jpg"]
    with Image.open(run.val_sample_path(4)) as grid:  # photo | output, one row per photo
        assert grid.width == 2 * 240 and grid.height == sum(Image.open(p).height for p in val_photos)


def test_training_photos_cannot_validate(tmp_path, content_dir, small_style_path):
    with pytest.raises(ValueError, match="must not be training photos"):
        train(_tiny(content_dir, small_style_path), RunDir.of(tmp_path / "m.safetensors"),
              _options(val_photos=(sorted(content_dir.iterdir())[0],)))
    with pytest.raises(FileNotFoundError, match="validation photo"):
        validation_photos([tmp_path / "nowhere.jpg"])


def test_the_warning_fires_when_the_photo_is_lost_and_not_when_it_is_kept(tmp_path, content_dir, val_photos,
                                                                         style_path, caplog):
    """Style-heavy: a tiny network trained from scratch with 50000x the style weight, past its warm-up:
    texture only. Kept: the shipped (balanced) Starry Night model, fine-tuned with a learning rate too
    small to move it, keeps the photos (~0.53 luminance SSIM on these two at 240 px). No from-scratch
    run small enough for a test keeps a photo: tiny networks scored 0.1-0.3 after 150 steps whatever the
    loss weights, so the kept case starts from trained weights."""
    caplog.set_level("INFO")
    heavy = _tiny(content_dir, style_path, style_weight=1.0, lr=1e-2, steps=6)
    train(heavy, RunDir.of(tmp_path / "heavy.safetensors"), _options(val_photos=val_photos, sample_every=3))
    assert "the photo is being lost at step 6" in caplog.text and "--style-weight" in caplog.text
    caplog.clear()
    kept = RunSpec(content=content_dir, style=style_path, init=FLAGSHIP, steps=2, image_size=64, batch_size=2,
                   lr=1e-7, precision="fp32")
    result = train(kept, RunDir.of(tmp_path / "kept.safetensors"), _options(val_photos=val_photos))
    assert "being lost" not in caplog.text
    assert result.history[-1]["val_ssim"] > LOST_PHOTO_SSIM


def test_a_warm_up_spares_a_trained_network_the_first_steps_shock(tmp_path, shared_data, style_path):
    """The shipped Starry Night model fine-tuned on its own painting at train's warm-start lr: without a
    warm-up Adam's first step (about lr on every weight, whatever its gradient) multiplies the style loss
    many times; ramped over 100 steps, the loss stays where it was (zoo.BASE_WARMUP)."""
    from style_transfer.train import warmup_lr
    from style_transfer.zoo import BASE_LR, BASE_WARMUP

    assert [warmup_lr(1.0, s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_lr(1.0, 0, None) == 1.0
    # Photos at the scale the flagship was trained on (its loss is low there: the shock needs that).
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted((shared_data / "content" / "bsds500" / "train").glob("*.jpg"))[:4]:
        shutil.copy(path, photos / path.name)
    spec = RunSpec.from_flat(dict(content=photos, style=style_path, init=FLAGSHIP, steps=3, image_size=192,
                                  batch_size=2, lr=BASE_LR, precision="fp32", style_size=512))
    styles = {}
    for name, warmup in (("shock", None), ("warm", BASE_WARMUP)):
        result = train(spec.replace(lr_warmup=warmup), RunDir.of(tmp_path / f"{name}.safetensors"), _options())
        styles[name] = [e["style"] for e in result.history]
    assert styles["shock"][0] == styles["warm"][0]  # the same start, before any update
    assert styles["shock"][1] > 5 * styles["shock"][0]
    assert max(styles["warm"][1:]) < 2 * styles["warm"][0]


def test_init_starts_from_a_checkpoint_and_refuses_another_network(tmp_path, content_dir, small_style_path,
                                                                   make_checkpoint):
    source = make_checkpoint("instance", width=8, num_residual=1, trained=True)
    spec = _tiny(content_dir, small_style_path, init=source, steps=1, lr=1e-9)
    train(spec, RunDir.of(tmp_path / "m.safetensors"), _options())
    before, after = load_file(source), load_file(tmp_path / "m.safetensors")
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)  # lr 1e-9: still the init
    assert read_model_info(tmp_path / "m.safetensors").training["init_sha256"] == file_sha256(source)
    with pytest.raises(TrainingError, match="is not this run's"):
        train(spec.replace(width=16), RunDir.of(tmp_path / "w.safetensors"), _options())



def test_init_takes_a_model_name_from_the_weights_folder(tmp_path, content_dir, small_style_path, make_checkpoint):
    from style_transfer.cli import main

    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(make_checkpoint("instance", width=8, num_residual=1, trained=True), weights / "base.safetensors")
    common = ["train", "--content", str(content_dir), "--style", str(small_style_path), "--steps", "1",
              "--image-size", "32", "--batch-size", "2", "--width", "8", "--residual-blocks", "1", "--style-size",
              "64", "--precision", "fp32", "--device", "cpu", "--weights", str(weights)]
    assert main([*common, "--init", "base", "--out", str(tmp_path / "m.safetensors")]) == 0
    recorded = read_model_info(tmp_path / "m.safetensors").training["init_sha256"]
    assert recorded == file_sha256(weights / "base.safetensors")
    assert main([*common, "--init", "nope", "--out", str(tmp_path / "n.safetensors")]) != 0



def test_train_starts_from_the_flagship_when_it_has_the_network(tmp_path, content_dir, small_style_path,
                                                                 make_checkpoint, caplog):
    """--init auto (the train command's default): the weights folder's flagship at lr 2e-4, warmed up over
    100 steps, when its network is the run's; from scratch at 1e-3 without warm-up otherwise, or with
    --init none. An explicit --lr or --lr-warmup wins."""
    from style_transfer.cli import main
    from style_transfer.zoo import BASE_LR, BASE_MODEL, BASE_WARMUP

    weights = tmp_path / "weights"
    weights.mkdir()
    flagship = weights / f"{BASE_MODEL}.safetensors"
    shutil.copy(make_checkpoint("instance", width=8, num_residual=1, trained=True), flagship)

    def run(name: str, *extra: str) -> dict:
        out = tmp_path / f"{name}.safetensors"
        assert main(["train", "--content", str(content_dir), "--style", str(small_style_path), "--steps", "1",
                     "--image-size", "32", "--batch-size", "2", "--residual-blocks", "1", "--style-size", "64",
                     "--precision", "fp32", "--device", "cpu", "--weights", str(weights), "--out", str(out),
                     *extra]) == 0
        return read_model_info(out).training

    warm = run("warm", "--width", "8")
    assert warm["init_sha256"] == file_sha256(flagship) and warm["lr"] == BASE_LR
    assert warm["lr_warmup"] == BASE_WARMUP
    assert warm["loss"]["style_weight"] == "auto"
    cold = run("cold", "--width", "8", "--init", "none")
    assert "init_sha256" not in cold and cold["lr"] == 1e-3 and "lr_warmup" not in cold
    other = run("other", "--width", "16")  # the flagship has another network: from scratch
    assert "init_sha256" not in other and other["lr"] == 1e-3 and "lr_warmup" not in other
    explicit = run("lr", "--width", "8", "--lr", "5e-4", "--lr-warmup", "7")
    assert (explicit["lr"], explicit["lr_warmup"]) == (5e-4, 7)
    path = run("path", "--width", "8", "--init", str(flagship))  # any checkpoint fine-tunes
    assert (path["lr"], path["lr_warmup"]) == (BASE_LR, BASE_WARMUP)
    # Without --steps or --epochs a run from a trained network trains zoo.FINETUNE_STEPS (the shipped
    # fine-tunes' budget), not the 40,000 meant for a network from scratch; a given budget wins.
    from style_transfer.cli import _train_spec, build_parser
    from style_transfer.rundir import RunDir
    from style_transfer.spec import RunSpec
    from style_transfer.zoo import FINETUNE_STEPS

    def spec_of(*extra: str) -> RunSpec:
        out = tmp_path / "spec.safetensors"
        args = build_parser().parse_args(["train", "--content", str(content_dir), "--style", str(small_style_path),
                                          "--residual-blocks", "1", "--width", "8", "--weights", str(weights),
                                          "--out", str(out), *extra])
        return _train_spec(args, RunDir.of(out))

    assert spec_of().steps == FINETUNE_STEPS < RunSpec.DEFAULT_STEPS
    assert spec_of("--init", str(flagship)).steps == FINETUNE_STEPS
    assert spec_of("--init", "none").steps is None and spec_of("--init", "none").total_steps(lambda: 1) == 40_000
    assert spec_of("--steps", "7").steps == 7
    assert spec_of("--epochs", "2").steps is None and spec_of("--epochs", "2").epochs == 2
    # A conditional instance norm network of the flagship's shape starts its one style from it too.
    caplog.clear()
    assert run("multi", "--width", "8", "--norm", "conditional_instance")["init_sha256"] == file_sha256(flagship)
    assert not [r for r in caplog.records if "lozenges" in r.getMessage()]


def test_several_paintings_train_from_scratch_with_their_pairs_at_ten_times_the_rate(
        tmp_path, content_dir, small_style_path, make_checkpoint, caplog):
    """For several paintings --init auto is scratch, clipped, with the styles' (gamma, beta) at 10x --lr:
    from the flagship its strokes show in every style (docs/multi-style.md, "The lozenges"), so an explicit
    single-style --init is warned about. Given options win, and a resume keeps the rate it started with."""
    from style_transfer.cli import main
    from style_transfer.zoo import BASE_LR, BASE_MODEL, MULTI_STYLE_AFFINE_FACTOR, MULTI_STYLE_CLIP

    weights = tmp_path / "weights"
    weights.mkdir()
    flagship = weights / f"{BASE_MODEL}.safetensors"
    shutil.copy(make_checkpoint("instance", width=8, num_residual=1, trained=True), flagship)
    second = tmp_path / "second.png"
    Image.open(small_style_path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(second)

    def run(name: str, *extra: str, steps: str = "1") -> dict:
        out = tmp_path / f"{name}.safetensors"
        assert main(["train", "--content", str(content_dir), "--style", str(small_style_path), "--style", str(second),
                     "--norm", "conditional_instance", "--steps", steps, "--image-size", "32", "--batch-size", "2",
                     "--width", "8", "--residual-blocks", "1", "--style-size", "64", "--precision", "fp32",
                     "--device", "cpu", "--weights", str(weights), "--out", str(out), *extra]) == 0
        return read_model_info(out).training

    def warned() -> bool:
        return any("lozenges" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)

    default = run("default")
    assert "init_sha256" not in default and default["lr"] == 1e-3 and default["clip_grad_norm"] == MULTI_STYLE_CLIP
    assert default["affine_lr"] == MULTI_STYLE_AFFINE_FACTOR * 1e-3 and not warned()
    assert run("lr", "--lr", "5e-4")["affine_lr"] == MULTI_STYLE_AFFINE_FACTOR * 5e-4
    assert run("none", "--init", "none")["affine_lr"] == MULTI_STYLE_AFFINE_FACTOR * 1e-3
    assert run("given", "--affine-lr", "3e-3")["affine_lr"] == 3e-3
    warm = run("warm", "--init", str(flagship))
    assert warm["init_sha256"] == file_sha256(flagship) and warm["lr"] == BASE_LR and warned()
    assert warm.get("affine_lr") is None  # fine-tuning keeps its one rate
    # A resume without the options keeps the rate the run started with.
    run("resumed", "--lr", "5e-4", steps="1")
    resumed = run("resumed", "--resume", steps="2")
    assert resumed["affine_lr"] == MULTI_STYLE_AFFINE_FACTOR * 5e-4 and resumed["lr"] == 5e-4


def test_a_resume_keeps_the_recipe_it_started_with(tmp_path, content_dir, small_style_path, make_checkpoint):
    """A run started with a fixed weight, or from the flagship, resumes without repeating those options: the
    command's defaults do not apply to it, and what it started from stays recorded."""
    from style_transfer.cli import main
    from style_transfer.zoo import BASE_MODEL

    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(make_checkpoint("instance", width=8, num_residual=1, trained=True),
                weights / f"{BASE_MODEL}.safetensors")
    out = tmp_path / "m.safetensors"
    common = ["train", "--content", str(content_dir), "--style", str(small_style_path), "--image-size", "32",
              "--batch-size", "2", "--width", "8", "--residual-blocks", "1", "--style-size", "64", "--precision",
              "fp32", "--device", "cpu", "--weights", str(weights), "--out", str(out), "--checkpoint-every", "1"]
    assert main([*common, "--steps", "1", "--style-weight", "3e-5"]) == 0
    started = read_model_info(out).training
    assert main([*common, "--steps", "2", "--resume"]) == 0
    resumed = read_model_info(out)
    assert resumed.steps == 2 and resumed.training["loss"]["style_weight"] == 3e-5
    assert resumed.training["init_sha256"] == started["init_sha256"] and resumed.training["lr"] == started["lr"]
    assert resumed.training["lr_warmup"] == started["lr_warmup"] == 100
    # Resumed without --steps or --epochs it finishes its own budget (recorded in the state), not the
    # default of a new run: here it has nothing left to do.
    from style_transfer.cli import _train_spec, build_parser
    from style_transfer.rundir import RunDir

    assert _train_spec(build_parser().parse_args([*common, "--resume"]), RunDir.of(out)).steps == 2
    assert main([*common, "--resume"]) == 0
    assert read_model_info(out).steps == 2
    assert main([*common, "--resume", "--steps", "3"]) == 0  # a new total continues it
    assert read_model_info(out).steps == 3



def test_quality_curves_read_every_runs_validation_per_step(tmp_path):
    """benchmarks/quality_curves.py: the logged measures per run and step, steps a run lacks left blank."""
    from benchmarks.quality_curves import curves, plot, table

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "s.jpg")
    (tmp_path / "plan.toml").write_text('[defaults]\ncontent = "photos"\nstyle = "s.jpg"\nsteps = 500\n'
                                        '[[models]]\nname = "a"\nstyle_weight = "auto"\n[[models]]\nname = "b"\n'
                                        '[[models]]\nname = "c"\n')
    logs = {"a": [{"step": 1, "total": 1.0}, {"step": 250, "val_ssim": 0.3, "val_style": 0.5},
                  {"step": 300, "style_weight": 1e-5}, {"step": 350, "style_weight": 8e-6},
                  {"step": 500, "val_ssim": 0.45, "val_style": 0.2}],
            "b": [{"step": 250, "val_ssim": 0.5, "val_style": 0.9}]}  # c: not started
    for name, entries in logs.items():
        run = tmp_path / "runs" / f"{name}.run"
        run.mkdir(parents=True)
        (run / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    data = curves(tmp_path / "plan.toml", tmp_path / "runs")
    # The style weight in force at each sample step: auto's start, then its last update; else the fixed one.
    assert data == {"a": {"val_ssim": {250: 0.3, 500: 0.45}, "val_style": {250: 0.5, 500: 0.2},
                          "style_weight": {250: 2e-5, 500: 8e-6}},
                    "b": {"val_ssim": {250: 0.5}, "val_style": {250: 0.9}, "style_weight": {250: 2e-5}}}
    assert table(data, "val_ssim").splitlines()[2:] == ["| a | 0.300 | 0.450 |", "| b | 0.500 |  |"]
    assert table(data, "style_weight").splitlines()[2] == "| a | 2e-05 | 8e-06 |"
    plot(data, tmp_path / "curves.png")
    assert Image.open(tmp_path / "curves.png").size[0] > 100


def test_quality_curves_put_runs_of_several_plans_in_one_table(tmp_path):
    """The --extend curves beside the single-style runs (issue 17): runs of two plans, each read from its
    own runs folder; --only picks names from either, a pending extension is left out, unknown names refused."""
    from benchmarks.quality_curves import several

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "s.jpg")
    (tmp_path / "one.toml").write_text('[defaults]\ncontent = "photos"\nstyle = "s.jpg"\nsteps = 500\n'
                                       '[[models]]\nname = "single"\n[[models]]\nname = "other"\n')
    (tmp_path / "two.toml").write_text('[defaults]\ncontent = "photos"\nstyle = "s.jpg"\nsteps = 500\n'
                                       '[[models]]\nname = "ext"\nextend = "none.safetensors"\n')
    for folder, name in [("a", "single"), ("a", "other"), ("b", "single")]:
        run = tmp_path / folder / f"{name}.run"
        run.mkdir(parents=True)
        value = 0.5 if folder == "a" else 0.9  # a run of the same name in another plan's folder is not read
        (run / "log.jsonl").write_text(json.dumps({"step": 250, "val_ssim": value, "val_style": 0.1}) + "\n")
    pairs = [(tmp_path / "one.toml", tmp_path / "a"), (tmp_path / "two.toml", tmp_path / "b")]
    assert list(several(pairs)) == ["single", "other"]
    assert several(pairs, ["single", "ext"])["single"]["val_ssim"] == {250: 0.5}
    assert list(several(pairs, ["ext"])) == []
    with pytest.raises(SystemExit, match="nope"):
        several(pairs, ["nope"])


def _two_style_run(tmp_path, entries: list[dict], settings: str) -> None:
    """A plan at tmp_path/plan.toml with one two-style run "duo" (paintings a and b, plus ``settings``),
    whose log in tmp_path/runs holds ``entries``."""
    (tmp_path / "photos").mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{name}.jpg")
    (tmp_path / "plan.toml").write_text('[[models]]\nname = "duo"\ncontent = "photos"\nstyle = ["a.jpg", "b.jpg"]\n'
                                        'norm = "conditional_instance"\n' + settings)
    run = tmp_path / "runs" / "duo.run"
    run.mkdir(parents=True)
    (run / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))


def test_quality_curves_give_a_row_per_painting_of_a_multi_style_run(tmp_path):
    """Each painting's own measures and weight; --per-painting puts its steps at its share of the run's."""
    from benchmarks.quality_curves import curves

    entries = [{"step": 200, "val_ssim": 0.5, "val_style": 0.3, "val_ssim/a": 0.4, "val_style/a": 0.2,
                "val_ssim/b": 0.6, "val_style/b": 0.4},
               {"step": 300, "style_weight/a": 1e-5, "style_weight/b": 3e-5},
               {"step": 400, "val_ssim": 0.55, "val_style": 0.25, "val_ssim/a": 0.5, "val_style/a": 0.1,
                "val_ssim/b": 0.6, "val_style/b": 0.4}]
    _two_style_run(tmp_path, entries, 'steps = 500\nstyle_weight = "auto"\n')
    data = curves(tmp_path / "plan.toml", tmp_path / "runs")
    assert list(data) == ["duo/a", "duo/b"]
    assert data["duo/a"] == {"val_ssim": {200: 0.4, 400: 0.5}, "val_style": {200: 0.2, 400: 0.1},
                             "style_weight": {200: 2e-5, 400: 1e-5}}
    assert data["duo/b"]["style_weight"] == {200: 2e-5, 400: 3e-5}
    shared = curves(tmp_path / "plan.toml", tmp_path / "runs", per_painting=True)
    assert shared["duo/b"] == {"val_ssim": {100: 0.6, 200: 0.6}, "val_style": {100: 0.4, 200: 0.4},
                               "style_weight": {100: 2e-5, 200: 3e-5}}


def test_quality_curves_grad_summarizes_the_gradient_norms_between_sample_steps_per_painting(tmp_path):
    """--grad: median, p99 and largest pre-clip gradient norm of the steps since the previous sample step,
    per painting of a multi-style run (by its style_index), at each painting's share with --per-painting."""
    from benchmarks.quality_curves import curves, gradients

    log = [{"step": s, "grad_norm": float(s), "style_index": s % 2} for s in range(1, 201)]
    norms = gradients(log, [100, 200])
    assert norms["grad_median"] == {100: 50.5, 200: 150.5} and norms["grad_max"] == {100: 100, 200: 200}
    assert norms["grad_p99"] == {100: 99, 200: 199}
    odd = gradients(log, [100, 200], style_index=1)  # steps 1, 3, ..., 99: between steps 49 and 51
    assert odd["grad_median"] == {100: 50, 200: 150} and odd["grad_max"] == {100: 99, 200: 199}
    assert gradients(log, [0, 100])["grad_max"] == {100: 100}  # no step before step 0: left out

    measured = {"val_ssim": 0.5, "val_style": 0.3, "val_ssim/a": 0.5, "val_style/a": 0.3,
                "val_ssim/b": 0.5, "val_style/b": 0.3}
    _two_style_run(tmp_path, log[:100] + [{"step": 100, **measured}] + log[100:] + [{"step": 200, **measured}],
                   "steps = 200\n")
    assert "grad_max" not in curves(tmp_path / "plan.toml", tmp_path / "runs")["duo/a"]
    data = curves(tmp_path / "plan.toml", tmp_path / "runs", per_painting=True, grad=True)
    assert data["duo/a"]["grad_max"] == {50: 100, 100: 200} and data["duo/b"]["grad_max"] == {50: 99, 100: 199}
