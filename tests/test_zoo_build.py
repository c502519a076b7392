"""The zoo plan: parsing and validation, resumable training, exporting only finished runs, the gallery."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from style_transfer.checkpoint import file_sha256, load_model, read_model_info, save_model
from style_transfer.grid import image_grid
from style_transfer.imageio import load_rgb
from style_transfer.cli import main
from style_transfer.zoo import read_manifest, verify_manifest
from style_transfer.rundir import RunDir
from style_transfer.train import TrainOptions
from style_transfer.zoo import list_models
from style_transfer.zoo_build import (PlanError, ab_sets, blend_chain, export_zoo, gallery, gallery_photos, load_plan,
                                      select, status, train_zoo)

REPO_PLAN = Path(__file__).resolve().parents[1] / "weights" / "zoo.toml"
EVERY_STEP = TrainOptions(checkpoint_every=1, sample_every=250, progress=False)


def _write_plan(folder: Path, body: str) -> Path:
    path = folder / "zoo.toml"
    path.write_text(body)
    return path


TINY = """
[defaults]
content = ["{content}"]
steps = {steps}
image_size = 32
batch_size = 2
width = 8
num_residual = 1
style_size = 64
"""


def _tiny_plan(folder: Path, content: Path, style: Path, steps: int = 2) -> Path:
    body = TINY.format(content=content, steps=steps)
    body += f"""
[[models]]
name = "a"
style = "{style}"

[[models]]
name = "a-batch"
style = "{style}"
norm = "batch"
"""
    return _write_plan(folder, body)


def test_defaults_apply_and_models_override_them(tmp_path):
    (tmp_path / "photos").mkdir()
    plan = _write_plan(tmp_path, """
[defaults]
content = ["photos"]
steps = 10
style_weight = 3e-4
[[models]]
name = "one"
style = "s.jpg"
[[models]]
name = "two"
style = "s.jpg"
steps = 20
norm = "group"
style_weight = 1e-4
style_layers = ["relu1_2", "relu2_2"]
""")
    one, two = load_plan(plan)
    assert (one.steps, one.spec.loss.style_weight, one.norm) == (10, 3e-4, "instance")
    assert (two.steps, two.spec.loss.style_weight, two.norm) == (20, 1e-4, "group")
    assert two.spec.loss.style_layers == ("relu1_2", "relu2_2")
    # Relative paths are relative to the plan file, not to the working directory.
    assert one.spec.style == ((tmp_path / "s.jpg").resolve(),)
    assert one.spec.content == ((tmp_path / "photos").resolve(),)


@pytest.mark.parametrize("body, message", [
    ('[[models]]\nname = "x"\nstyle = "s.jpg"\ncontent = "c"\nsteps = 5\nstyle_wieght = 1.0\n', "unknown key"),
    ('[[models]]\nname = "../x"\nstyle = "s.jpg"\ncontent = "c"\nsteps = 5\n', "invalid name"),
    ('[[models]]\nname = "x"\nstyle = "s.jpg"\ncontent = "c"\nsteps = 5\nnorm = "weight"\n', "unknown norm"),
    ('[[models]]\nname = "x"\ncontent = "c"\nsteps = 5\n', "'style' is required"),
    ('[[models]]\nname = "x"\nstyle = "s.jpg"\ncontent = "c"\nsteps = 0\n', "positive integer"),
    ('[[models]]\nname = "x"\nstyle = "s.jpg"\ncontent = "c"\nsteps = 5\n' * 2, "duplicate"),
    ('[defaults]\nsteps = 5\n', "no [[models]]"),
    ('[model]\nname = "x"\n', "unknown section"),
    ('[[models]\n', "not valid TOML"),
])
def test_bad_plans_are_refused_with_the_reason(tmp_path, body, message):
    with pytest.raises(PlanError, match=message.replace("[", r"\[")):
        load_plan(_write_plan(tmp_path, body))


def test_select_keeps_plan_order_and_refuses_unknown_names(tmp_path):
    plan = _write_plan(tmp_path, "".join(
        f'[[models]]\nname = "{n}"\nstyle = "s.jpg"\ncontent = "c"\nsteps = 1\n' for n in ("a", "b", "c")))
    models = load_plan(plan)
    assert [m.name for m in select(models, ["c", "a"])] == ["a", "c"]
    assert select(models, None) == models
    with pytest.raises(PlanError, match="not in the plan: zz"):
        select(models, ["zz"])


def test_shipped_plan_is_valid_and_its_weights_have_a_full_norm_ab_set():
    models = load_plan(REPO_PLAN)
    assert len({m.spec.style for m in models if m.norm == "instance"}) >= 4
    # The zoo's budget (issue 6): 3000 steps of batch 4 at 256 px. A model that starts from another of
    # the plan's models (train's --init auto, issue 16) counts that model's steps too.
    by_file = {(REPO_PLAN.parent / f"{m.name}.safetensors").resolve(): m for m in models}

    def trained_steps(m) -> int:
        return m.steps + (trained_steps(by_file[m.spec.init.resolve()]) if m.spec.init is not None else 0)

    assert all(trained_steps(m) >= 3000 and m.spec.batch_size == 4 and m.spec.image_size == 256 for m in models)
    assert any(m.spec.init is not None for m in models)  # the train command's defaults are shipped too
    norms = {m.name: m.norm for m in models}
    sets = ab_sets(list_models(REPO_PLAN.parent))
    assert any({norms[n] for n in arms} >= {"instance", "batch", "group", "layer"} for arms in sets)
    # Every arm of another norm belongs to a set with an instance-norm arm to compare against; a
    # multi-style network is compared with the single-style models, painting by painting, instead.
    in_sets = {n for arms in sets if any(norms[a] == "instance" for a in arms) for n in arms}
    assert {n for n, norm in norms.items() if norm not in ("instance", "conditional_instance")} <= in_sets
    assert "starry-night" not in in_sets  # the flagship was trained with another recipe (no clipping)


def test_ab_sets_group_models_that_differ_only_in_the_norm(make_checkpoint, tmp_path):
    recipe = {"lr": 2e-3, "seed": 0, "network": {"width": 8, "norm": "instance"}, "total_steps": 2}

    def shipped(name: str, norm: str, style_sha256: str = "a" * 64, **changes) -> tuple[str, Path]:
        training = {**recipe, **changes, "network": {**recipe["network"], "norm": norm}}
        return name, make_checkpoint(norm, path=tmp_path / f"{name}.safetensors", training=training, style_sha256=style_sha256)

    models = dict([shipped("flagship", "instance", lr=1e-3), shipped("set-instance", "instance"),
                   shipped("set-group", "group"), shipped("lone-batch", "batch", lr=3e-3),
                   shipped("set-layer", "layer"), shipped("other-style", "batch", style_sha256="b" * 64),
                   shipped("longer", "none", total_steps=3)])
    assert ab_sets(models) == [["set-instance", "set-group", "set-layer"]]


def test_gallery_photos_resolve_against_the_plan_and_are_checked(tmp_path):
    (tmp_path / "p.jpg").write_bytes(b"x")
    body = 'gallery.photos = ["p.jpg"]\n[[models]]\nname = "a"\nstyle = "s.jpg"\ncontent = "c"\nsteps = 1\n'
    plan = _write_plan(tmp_path, body)
    assert len(load_plan(plan)) == 1  # the section is allowed next to the models
    assert gallery_photos(plan) == [(tmp_path / "p.jpg").resolve()]
    _write_plan(tmp_path, body.replace("p.jpg", "gone.jpg"))
    with pytest.raises(PlanError, match="no such photo"):
        gallery_photos(plan)
    _write_plan(tmp_path, body.replace("gallery.photos", "gallery.photo"))
    with pytest.raises(PlanError, match="unknown key"):
        gallery_photos(plan)
    _write_plan(tmp_path, body.replace('gallery.photos = ["p.jpg"]\n', ""))
    assert gallery_photos(plan) == []


@pytest.mark.skipif(not (REPO_PLAN.parents[2] / "shared" / "data").is_dir(), reason="../shared/data not available")
def test_shipped_plan_gallery_uses_held_out_photos():
    photos = gallery_photos(REPO_PLAN)
    assert len(photos) >= 3
    assert all(p.parent.name == "test" for p in photos)  # never the train/val photos the models saw
    trained_on = {c.resolve() for m in load_plan(REPO_PLAN) for c in m.spec.content}
    assert not {p.parent for p in photos} & trained_on


def test_train_resumes_skips_finished_runs_and_export_ships_only_finished(tmp_path, content_dir, small_style_path):
    runs, weights = tmp_path / "runs", tmp_path / "weights"
    weights.mkdir()
    plan = _tiny_plan(tmp_path, content_dir, small_style_path, steps=2)
    models = load_plan(plan)
    assert [r["steps_done"] for r in status(models, runs, weights)] == [0, 0]

    assert train_zoo(select(models, ["a"]), runs, EVERY_STEP) == ["a"]
    # Only finished runs are shipped.
    assert [e["name"] for e in export_zoo(models, runs, weights)] == ["a"]
    assert verify_manifest(weights) == []
    # 'train --export' also ships a run that finished earlier without being exported.
    (weights / "manifest.json").unlink()
    (weights / "a.safetensors").unlink()
    assert train_zoo(select(models, ["a"]), runs, export_to=weights) == []
    assert [m["name"] for m in read_manifest(weights)["models"]] == ["a"]
    assert train_zoo(models, runs, EVERY_STEP, export_to=weights) == ["a-batch"]  # "a" is finished
    assert {m["name"]: m["steps"] for m in read_manifest(weights)["models"]} == {"a": 2, "a-batch": 2}
    assert train_zoo(models, runs, EVERY_STEP) == []

    # A longer budget resumes the runs from their last checkpoint rather than starting over.
    models = load_plan(_tiny_plan(tmp_path, content_dir, small_style_path, steps=3))
    log_a = (runs / "a.run" / "log.jsonl").read_text().splitlines()
    assert train_zoo(select(models, ["a"]), runs, EVERY_STEP) == ["a"]
    assert (runs / "a.run" / "log.jsonl").read_text().splitlines()[:2] == log_a
    assert read_model_info(runs / "a.safetensors").steps == 3

    exported = export_zoo(models, runs, weights)  # "a" re-shipped at 3 steps; "a-batch" (2 of 3) is not
    assert [e["name"] for e in exported] == ["a"]
    assert {m["name"]: m["steps"] for m in read_manifest(weights)["models"]} == {"a": 3, "a-batch": 2}
    assert export_zoo(models, runs, weights) == []  # nothing new
    # A run retrained with the same settings and budget (other hardware, another attempt) is another
    # model: export ships it although steps and settings match what is shipped.
    model, info = load_model(runs / "a.safetensors")
    with torch.no_grad():
        model.tail[1].bias.add_(0.01)
    save_model(runs / "a.safetensors", model, info)
    assert [e["name"] for e in export_zoo(models, runs, weights)] == ["a"]
    assert export_zoo(models, runs, weights) == []
    # Entries exported before the source hash was recorded fall back to the final losses.
    manifest = read_manifest(weights)
    for entry in manifest["models"]:
        del entry["source_sha256"]
    (weights / "manifest.json").write_text(json.dumps(manifest))
    assert export_zoo(models, runs, weights) == []
    save_model(runs / "a.safetensors", model, dataclasses.replace(info, losses={**info.losses, "style": 1.0}))
    assert [e["name"] for e in export_zoo(models, runs, weights)] == ["a"]
    rows = {r["name"]: r for r in status(models, runs, weights)}
    assert rows["a"]["finished"] and rows["a"]["shipped_steps"] == 3
    assert not rows["a-batch"]["finished"] and rows["a-batch"]["shipped_steps"] == 2
    # Time left: from each run's own step times (the log), 0 when finished.
    assert rows["a"]["remaining_s"] == 0 and rows["a"]["seconds_per_step"] > 0
    rate = rows["a-batch"]["seconds_per_step"]
    assert rate > 0 and rows["a-batch"]["remaining_s"] == pytest.approx(rate)  # 1 step of 3 left

    # Gallery: the style grid has the style row plus one row per photo; an A/B grid needs two norms.
    train_zoo(models, runs, EVERY_STEP)
    export_zoo(models, runs, weights)
    photos = sorted(content_dir.glob("*.jpg"))[:2]
    written = gallery(models, weights, photos, tmp_path / "gallery", cell=64)
    assert sorted(p.name for p in written) == ["ab-a.jpg", "styles.jpg"]
    with Image.open(tmp_path / "gallery" / "ab-a.jpg") as ab, Image.open(tmp_path / "gallery" / "styles.jpg") as st:
        assert ab.width > st.width  # photo + 2 norms vs photo + 1 style
        assert st.height > ab.height  # the extra style row


def test_seconds_per_step_is_the_recent_median_and_survives_a_cut_line(tmp_path):
    run = RunDir.of(tmp_path / "m.safetensors")
    assert run.seconds_per_step() is None
    lines = [json.dumps({"step": i, "seconds": 9.0 if i < 5 else 2.0}) for i in range(1, 21)]
    run.root.mkdir()
    run.log.write_text("\n".join(lines) + '\n{"step": 21, "seco')
    assert run.seconds_per_step(recent=10) == 2.0
    assert run.seconds_per_step() == 2.0  # 4 slow of 20


def test_cli_status_and_errors(tmp_path, content_dir, small_style_path, capsys):
    plan = _tiny_plan(tmp_path, content_dir, small_style_path)
    assert main(["zoo", "status", "--plan", str(plan), "--runs", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "a-batch" in out and "0/2" in out
    assert "training left: ?" in out  # no run has a step time yet
    assert main(["zoo", "status", "--plan", str(plan), "--only", "nope"]) == 2
    assert main(["zoo", "gallery", "--plan", str(plan), "--weights", str(tmp_path)]) == 2  # nothing shipped


def test_status_names_runs_trained_in_different_precisions(tmp_path, content_dir, small_style_path, capsys):
    """precision = "auto" resolves per host, so two arms of a plan can differ in it unseen: status says so."""
    runs = tmp_path / "runs"
    plan = _tiny_plan(tmp_path, content_dir, small_style_path, steps=1)
    fp32 = plan.read_text().replace("[defaults]\n", '[defaults]\nprecision = "fp32"\n')
    (tmp_path / "fp32").mkdir()
    train_zoo(select(load_plan(_write_plan(tmp_path / "fp32", fp32)), None), runs, EVERY_STEP)
    assert main(["zoo", "status", "--plan", str(plan), "--runs", str(runs)]) == 0
    assert "different precisions" not in capsys.readouterr().out  # both fp32
    # a-batch retrained where auto means bf16 (as on a host with AVX512-BF16 or a GPU)
    (runs / "a-batch.safetensors").unlink()
    shutil.rmtree(runs / "a-batch.run")
    (tmp_path / "bf16").mkdir()
    bf16 = plan.read_text().replace("[defaults]\n", '[defaults]\nprecision = "bf16"\n')
    train_zoo(select(load_plan(_write_plan(tmp_path / "bf16", bf16)), ["a-batch"]), runs, EVERY_STEP)
    assert [r["precision"] for r in status(select(load_plan(plan), None), runs, tmp_path)] == ["fp32", "bf16"]
    assert main(["zoo", "status", "--plan", str(plan), "--runs", str(runs)]) == 0
    assert "these runs trained in different precisions (bf16: a-batch; fp32: a)" in capsys.readouterr().out


def test_data_loading_workers_change_speed_only_not_the_trained_weights(tmp_path, content_dir, small_style_path,
                                                                        monkeypatch):
    from safetensors.torch import load_file

    import style_transfer.train as train_module

    plan = _tiny_plan(tmp_path, content_dir, small_style_path, steps=2)
    train_zoo(select(load_plan(plan), ["a"]), tmp_path / "serial", EVERY_STEP)
    loaders = []
    real_loader = train_module.DataLoader
    monkeypatch.setattr(train_module, "DataLoader", lambda *a, **kw: loaders.append(kw) or real_loader(*a, **kw))
    assert main(["zoo", "train", "--plan", str(plan), "--only", "a", "--runs", str(tmp_path / "parallel"),
                 "--workers", "2"]) == 0
    assert [kw["num_workers"] for kw in loaders] == [2]
    serial = load_file(tmp_path / "serial" / "a.safetensors")
    parallel = load_file(tmp_path / "parallel" / "a.safetensors")
    assert serial.keys() == parallel.keys()
    assert all((serial[k] == parallel[k]).all() for k in serial)


def test_a_run_trained_with_other_settings_than_the_plan_is_neither_skipped_nor_shipped(tmp_path, content_dir,
                                                                                        small_style_path):
    runs, weights = tmp_path / "runs", tmp_path / "weights"
    weights.mkdir()
    plan = _tiny_plan(tmp_path, content_dir, small_style_path, steps=2)
    models = select(load_plan(plan), ["a"])
    train_zoo(models, runs, EVERY_STEP, export_to=weights)
    assert status(models, runs, weights)[0]["stale"] == [] and status(models, runs, weights)[0]["shipped_stale"] == []

    # The plan is edited after the run finished: the run and the shipped model no longer match it.
    edited = plan.read_text().replace('name = "a"\n', 'name = "a"\nclip_grad_norm = 5\nstyle_weight = 3.0\n')
    models = select(load_plan(_write_plan(tmp_path, edited)), ["a"])
    row = status(models, runs, weights)[0]
    assert row["finished"] and row["stale"] == ["style_weight", "clip_grad_norm"]
    assert row["shipped_stale"] == ["style_weight", "clip_grad_norm"]
    with pytest.raises(PlanError, match=r"a: the run .* \(style_weight, clip_grad_norm\); move a.safetensors"):
        train_zoo(models, runs)
    assert export_zoo(models, runs, weights) == []  # not shipped under the plan's settings
    assert main(["zoo", "status", "--plan", str(plan), "--runs", str(runs), "--weights", str(weights)]) == 0

    # Moved away, the run is retrained from the new plan and re-shipped at the same step count.
    (runs / "a.safetensors").rename(tmp_path / "old.safetensors")
    (runs / "a.run").rename(tmp_path / "old.run")
    assert train_zoo(models, runs, EVERY_STEP) == ["a"]
    assert [e["name"] for e in export_zoo(models, runs, weights)] == ["a"]
    entry = read_manifest(weights)["models"][0]
    assert entry["steps"] == 2 and entry["settings"]["clip_grad_norm"] == 5
    assert status(models, runs, weights)[0]["shipped_stale"] == [] and export_zoo(models, runs, weights) == []


def test_plan_differences_name_each_changed_key_and_a_changed_style_image(tmp_path, content_dir, small_style_path):

    style = tmp_path / "style.png"
    shutil.copy(small_style_path, style)
    model = load_plan(_tiny_plan(tmp_path, content_dir, style))[0]
    train_zoo([model], tmp_path / "runs", EVERY_STEP)
    info = read_model_info(tmp_path / "runs" / "a.safetensors")
    assert model.differences(info.training, info.style_sha256) == []
    def changed(**settings):
        return dataclasses.replace(model, resolved=model.spec.replace(**settings))

    assert changed(lr=2e-3, seed=1).differences(info.training) == ["lr", "seed"]
    assert changed(width=16).differences(info.training) == ["width"]
    other = "bf16" if info.training["precision"] == "fp32" else "fp32"  # 'auto' resolves by machine
    assert changed(precision=other).differences(info.training) == ["precision"]
    with Image.open(style) as img:
        img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(style)
    assert model.differences(info.training, info.style_sha256) == ["style"]
    assert model.stale(tmp_path / "runs") == ["style"]


def test_gallery_style_grid_shows_one_model_per_style(tmp_path, content_dir, small_style_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    body = TINY.format(content=content_dir, steps=1) + "".join(
        f'\n[[models]]\nname = "{name}"\nstyle = "{small_style_path}"\n{extra}\n'
        for name, extra in [("flagship", ""), ("other-recipe", "lr = 2e-3")])
    models = load_plan(_write_plan(tmp_path, body))
    train_zoo(models, tmp_path / "runs", export_to=weights)
    photos = sorted(content_dir.glob("*.jpg"))[:1]
    (path,) = gallery(models, weights, photos, tmp_path / "gallery", cell=64)  # no A/B set: one norm only
    with Image.open(path) as both:
        (one,) = gallery(models[:1], weights, photos, tmp_path / "one", cell=64)
        with Image.open(one) as single:
            assert both.size == single.size  # the second instance model of the style is not a column


@pytest.mark.skipif(not (REPO_PLAN.parents[2] / "shared" / "data").is_dir(), reason="../shared/data not available")
def test_quality_study_plan_covers_every_painting_with_the_defaults():
    plan = REPO_PLAN.parents[1] / "benchmarks" / "quality-plan.toml"
    models = load_plan(plan)
    styles = sorted((REPO_PLAN.parents[2] / "shared" / "data" / "styles").glob("*.jpg"))
    defaults = [m for m in models if m.name.startswith("default-")]
    assert sorted(m.spec.style[0] for m in defaults) == [s.resolve() for s in styles]
    # 1500 steps, as `train` trains a new painting; the A/B-set batch arms have their own (checked below).
    assert all(m.steps == 1500 for m in models
               if not m.name.startswith(("starry-night-batch-", "starry-night-video-")))
    # Fixed-weight runs share one loss; the auto ones differ from it in the style weight alone.
    auto = [m for m in models if m.spec.loss.style_weight == "auto"]
    assert sorted(m.spec.style[0] for m in auto if m.name.startswith("auto-")) == [s.resolve() for s in styles]
    assert all(m.spec.loss == models[0].spec.loss for m in models if m not in auto)
    assert all(m.spec.loss.style_weight == 2e-5 for m in models if m not in auto)
    assert all(m.spec.replace(style_weight=2e-5).loss == models[0].spec.loss for m in auto)
    warm = [m for m in models if m.spec.init is not None]
    assert warm and all(m.spec.init.is_file() and m.spec.init.parent.name == "weights" for m in warm)
    assert gallery_photos(plan) and all(p.parent.name == "test" for p in gallery_photos(plan))
    # The weights' average in perceptual-loss training: the default recipe of a new painting plus the average.
    by_name = {m.name: m for m in models}
    for painting in ("the-scream", "picabia"):
        averaged = by_name[f"warm-auto-{painting}-ema"]
        assert averaged.spec.diff(by_name[f"warm-auto-{painting}"].spec) == ["ema_decay"]
        assert averaged.spec.ema_decay == 0.995
    # ... and on the norm A/B set's batch-norm arm, against the shipped arm's own recipe.
    shipped = {m.name: m for m in load_plan(REPO_PLAN)}["starry-night-batch"]
    batch = by_name["starry-night-batch-ema"]
    assert batch.spec.diff(shipped.spec) == ["ema_decay"] and batch.steps == shipped.steps
    # The frozen-statistics check: the shipped arm's recipe, shorter.
    short = by_name["starry-night-batch-1000"]
    assert short.spec.diff(shipped.spec) == ["steps"] and short.steps == 1000 and short.spec.bn_frozen_steps == 300
    # The video model's control: the shipped recipe without the stability term, and nothing else changed.
    video = {m.name: m for m in load_plan(REPO_PLAN)}["starry-night-video"]
    control = by_name["starry-night-video-control"]
    assert control.spec.diff(video.spec) == ["stability_weight"] and control.spec.stability_weight is None
    assert control.steps == video.steps



@pytest.mark.skipif(not (REPO_PLAN.parents[2] / "shared" / "data").is_dir(), reason="../shared/data not available")
def test_multistyle_plan_varies_four_styles_and_extends_it_with_the_held_out_paintings():
    plan = REPO_PLAN.parents[1] / "benchmarks" / "multistyle-plan.toml"
    models = {m.name: m for m in load_plan(plan)}  # loads whether four-styles is shipped yet or not
    four = models.pop("four-styles-warm")  # the perceptual-loss recipe the variants are defined against
    assert four.spec.init == REPO_PLAN.parent / "starry-night.safetensors" and four.spec.teacher is None
    variant = models.pop("four-styles-affine-lr")
    assert variant.spec.diff(four.spec) == ["affine_lr"] and variant.spec.affine_lr > variant.spec.lr
    # From scratch: four-styles' paintings, loss and clipping, without the flagship's weights (whose strokes
    # the warm-started runs paint in every style) at the zoo's from-scratch rate, for the four singles' cost.
    scratch = models.pop("four-styles-scratch")
    assert sorted(scratch.spec.diff(four.spec)) == ["init", "lr", "lr_warmup", "steps"]
    assert scratch.spec.init is None and scratch.spec.lr == load_plan(REPO_PLAN)[0].spec.lr
    scratch_affine = models.pop("four-styles-scratch-affine-lr")
    assert scratch_affine.spec.diff(scratch.spec) == ["affine_lr"]
    assert scratch_affine.spec.affine_lr > scratch_affine.spec.lr
    from benchmarks.multistyle_study import singles_for
    assert scratch.steps == sum(m.steps for m in singles_for(four, load_plan(REPO_PLAN)).values())
    # The identity start: a single network trained on the photo alone, then scratch_affine's recipe from it,
    # for the same total steps.
    identity, from_identity = models.pop("identity"), models.pop("four-styles-identity")
    assert identity.norm == "instance" and identity.spec.init is None
    assert identity.spec.loss.style_weight < 1e-6 * identity.spec.loss.content_weight
    assert sorted(from_identity.spec.diff(scratch_affine.spec)) == ["init", "lr_warmup", "steps"]
    assert from_identity.spec.init.stem == "identity" and from_identity.spec.init.parent.name == "multistyle"
    assert identity.steps + from_identity.steps == scratch.steps
    # The shipped four-styles: four-styles-warm's paintings and start, taught by the shipped singles of the
    # same paintings (each teacher trained on its style's very image), at the rates of `train --teacher`.
    (distilled,) = [m for m in load_plan(REPO_PLAN) if m.name == "four-styles"]
    assert distilled.spec.style == four.spec.style
    assert [read_model_info(t).style_sha256 for t in distilled.spec.teacher] == \
        [file_sha256(p) for p in four.spec.style]
    assert distilled.spec.init == four.spec.init and distilled.spec.clip_grad_norm == four.spec.clip_grad_norm
    from style_transfer.zoo import DISTILL_LR, MULTI_STYLE_AFFINE_FACTOR
    assert distilled.spec.lr == DISTILL_LR and distilled.spec.affine_lr == MULTI_STYLE_AFFINE_FACTOR * DISTILL_LR
    # The texture-term A/B: the L1-only recipe (shipped until 2026-12-02), 1e-6 and half that, which differ
    # in teacher_style_weight alone; the half with the weights' average is the zoo's four-styles, so a plan
    # entry reruns the shipped model and others the ones it replaced.
    l1 = models.pop("four-styles-l1")
    assert l1.spec.teacher_style_weight is None
    textured = models.pop("four-styles-texture")
    assert textured.spec.diff(l1.spec) == ["teacher_style_weight"]
    lighter = models.pop("four-styles-texture-5e-7")  # the same at half the texture weight
    assert lighter.spec.diff(textured.spec) == ["teacher_style_weight"]
    assert lighter.spec.teacher_style_weight == textured.spec.teacher_style_weight / 2
    averaged = models.pop("four-styles-ema")  # the same with the weights' moving average: the shipped recipe
    assert averaged.spec.diff(lighter.spec) == ["ema_decay"] and 0 < averaged.spec.ema_decay < 1
    assert averaged.spec.diff(distilled.spec) == []
    # The extensions: each held-out painting with its weight on auto, as `train --extend` gives it; Udnie's
    # at the old rate 1e-3 and at 10x, which differ in lr alone, Kandinsky's at `train --extend`'s rate.
    faster = models.pop("extend-picabia-lr1e-2")
    assert faster.spec.diff(models["extend-picabia"].spec) == ["lr"] and faster.spec.lr > models["extend-picabia"].spec.lr
    from style_transfer.balance import BASE_WEIGHT, BOUNDS
    from style_transfer.zoo import EXTEND_LR
    assert faster.spec.lr == models["extend-kandinsky"].spec.lr == EXTEND_LR
    heavier = models.pop("extend-picabia-w1.6e-4")  # beyond the bound auto may reach: differs in the weight alone
    assert heavier.spec.diff(faster.spec) == ["style_weight"]
    assert heavier.spec.loss.style_weight > 2 ** BOUNDS[1] * BASE_WEIGHT
    assert all(m.spec.loss.style_weight == "auto" for m in models.values())
    base = REPO_PLAN.parent / "four-styles.safetensors"
    for m in models.values():
        assert (m.waits_for if m.waits_for is not None else m.spec.extend) == base
        assert m.norm == "conditional_instance"
        assert len(m.style_files) == 1 and m.style_files[0] not in four.spec.style and m.style_files[0].is_file()
    assert len({m.style_files for m in models.values()}) == len(models) == 2
    assert gallery_photos(plan) == gallery_photos(REPO_PLAN.parents[1] / "benchmarks" / "quality-plan.toml")


def test_blend_chain_has_each_style_alone_and_the_even_mix_of_each_neighbouring_pair():
    mixes, labels = blend_chain(["a", "b", "c"])
    assert mixes == [(1, 0, 0), (0.5, 0.5, 0), (0, 1, 0), (0, 0.5, 0.5), (0, 0, 1)]
    assert labels[::2] == ["a", "b", "c"] and len(labels) == 5


def test_gallery_draws_a_blend_strip_for_a_multi_style_model(tmp_path, content_dir, small_style_path):
    other = tmp_path / "other.jpg"
    with Image.open(small_style_path) as img:
        img.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(other)
    weights = tmp_path / "weights"
    weights.mkdir()
    body = TINY.format(content=content_dir, steps=1) + (
        f'\n[[models]]\nname = "duo"\nnorm = "conditional_instance"\nstyle = ["{small_style_path}", "{other}"]\n')
    models = load_plan(_write_plan(tmp_path, body))
    train_zoo(models, tmp_path / "runs", export_to=weights)
    photos = sorted(content_dir.glob("*.jpg"))[:2]
    (path,) = gallery(models, weights, photos, tmp_path / "gallery", cell=64)
    assert path.name == "blend-duo.jpg"
    # Columns photo, style, mix, style (outputs keep the photo's size); rows: the style images, the photos.
    styles = [load_rgb(p, max_size=64) for p in (small_style_path, other)]
    blank = torch.ones(1, 3, 8, 8)
    expected = image_grid([[blank, styles[0], blank, styles[1]]] + [[load_rgb(p, max_size=128)] * 4 for p in photos],
                          ["photo", "a", "mix", "b"], cell=64)
    with Image.open(path) as strip:
        assert strip.size == expected.size


def test_a_plan_holds_an_extension_of_a_model_it_trains_first(tmp_path, content_dir, small_style_path, caplog):
    """An ``extend`` entry whose base is not trained yet loads as pending (issue 17): status shows what it
    waits for, and training the plan trains the base, then the extension from it."""
    other, third = tmp_path / "other.jpg", tmp_path / "third.jpg"
    with Image.open(small_style_path) as img:
        img.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(other)
        img.transpose(Image.Transpose.ROTATE_180).save(third)
    body = TINY.format(content=content_dir, steps=1) + (
        f'\n[[models]]\nname = "duo"\nnorm = "conditional_instance"\nstyle = ["{small_style_path}", "{other}"]\n'
        f'\n[[models]]\nname = "trio"\nextend = "runs/duo.safetensors"\nstyle = "{third}"\nsteps = 2\n'
        f'\n[[models]]\nname = "orphan"\nextend = "elsewhere/none.safetensors"\nstyle = "{third}"\n')
    plan = _write_plan(tmp_path, body)
    duo, trio, orphan = load_plan(plan)
    assert trio.waits_for == tmp_path / "runs" / "duo.safetensors"
    assert (trio.steps, trio.norm) == (2, "conditional_instance")
    rows = {r["name"]: r for r in status([duo, trio], tmp_path / "runs", tmp_path)}
    assert rows["trio"]["waits_for"] == str(trio.waits_for) and rows["trio"]["style"] == "duo + third"
    assert rows["duo"]["waits_for"] is None
    with pytest.raises(PlanError, match="trio: waits for the model it extends"):
        trio.spec

    assert train_zoo([duo, trio, orphan], tmp_path / "runs") == ["duo", "trio"]
    assert "orphan: waits for" in caplog.text
    assert trio.waits_for is None and trio.spec.style_names == [small_style_path.stem, "other", "third"]
    _, info = load_model(tmp_path / "runs" / "trio.safetensors")
    assert info.extra["styles"] == [small_style_path.stem, "other", "third"] and info.steps == 2


def test_an_entry_that_starts_from_or_learns_from_an_untrained_entry_waits_for_it(tmp_path, content_dir,
                                                                                     small_style_path, caplog):
    body = TINY.format(content=content_dir, steps=1) + (
        f'\n[[models]]\nname = "tiny"\nstyle = "{small_style_path}"\n'
        f'\n[[models]]\nname = "warm"\nstyle = "{small_style_path}"\ninit = "runs/tiny.safetensors"\nsteps = 1\n'
        f'\n[[models]]\nname = "pupil"\nstyle = "{small_style_path}"\nteacher = "runs/warm.safetensors"\nsteps = 1\n'
        f'\n[[models]]\nname = "stray"\nstyle = "{small_style_path}"\ninit = "elsewhere.safetensors"\nsteps = 1\n')
    first, warm, pupil, stray = load_plan(_write_plan(tmp_path, body))
    assert first.waits_for is None
    assert warm.waits_for == tmp_path / "runs" / "tiny.safetensors"
    assert pupil.waits_for == tmp_path / "runs" / "warm.safetensors"
    rows = {r["name"]: r for r in status([first, warm, pupil, stray], tmp_path / "runs", tmp_path)}
    assert rows["pupil"]["waits_for"] == str(pupil.waits_for) and rows["pupil"]["style"] == small_style_path.stem
    # Training the plan in order trains each before the entry that needs it; the stray one is skipped.
    assert train_zoo([first, warm, pupil, stray], tmp_path / "runs") == ["tiny", "warm", "pupil"]
    assert "stray: waits for" in caplog.text and warm.waits_for is None


def test_a_pending_extension_is_still_checked_for_its_own_settings(tmp_path, small_style_path):
    (tmp_path / "photos").mkdir()
    body = f'[[models]]\nname = "x"\ncontent = "photos"\nextend = "none.safetensors"\nstyle = "{small_style_path}"\n' \
           'steps = 5\nlr = -1\n'
    with pytest.raises(PlanError, match="model 'x'.*lr"):
        load_plan(_write_plan(tmp_path, body))


def test_status_shows_each_painting_of_a_multi_style_run(tmp_path, small_style_path, capsys):
    (tmp_path / "photos").mkdir()
    plan = _write_plan(tmp_path, f'[[models]]\nname = "duo"\ncontent = "photos"\nnorm = "conditional_instance"\n'
                                 f'style = ["{small_style_path}", "{small_style_path.with_name("b.jpg")}"]\nsteps = 10\n')
    run = tmp_path / "runs" / "duo.run"
    run.mkdir(parents=True)
    a = small_style_path.stem
    entries = [{"step": 4, "seconds": 1.0, "val_ssim": 0.5, "val_style": 0.3, f"val_ssim/{a}": 0.61,
                f"val_style/{a}": 0.12, "val_ssim/b": 0.39, "val_style/b": 0.48},
               {"step": 5, f"style_weight/{a}": 1.5e-5, "style_weight/b": 4e-6}]
    (run / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    assert main(["zoo", "status", "--plan", str(plan), "--runs", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert f"  {a}: kept 0.61, style 0.12, style_w 1.5e-05\n  b: kept 0.39, style 0.48, style_w 4e-06\n" in out
    # A distilled run's log has each painting's PSNR to its teacher as well.
    entries[0].update({f"val_psnr/{a}": 25.04, "val_psnr/b": 23.96})
    (run / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    assert main(["zoo", "status", "--plan", str(plan), "--runs", str(tmp_path / "runs")]) == 0
    assert f"  {a}: kept 0.61, style 0.12, style_w 1.5e-05, 25.0 dB to its teacher\n" in capsys.readouterr().out
