"""The norm study's evaluation (style_transfer.evaluation): aggregation and paired statistics, batch
behaviour, how checkpoints become arms, and the report built from a tiny study. The metrics themselves
are tested in test_metrics.py."""

from __future__ import annotations

import csv
import json
import math
import re

import pytest
import torch
from PIL import Image

from style_transfer.checkpoint import read_model_info
from style_transfer.cli import main
from style_transfer.evaluation import (BATCH_TESTS, METRICS, EvalSettings, _batch_behaviour, arms_from_checkpoints,
                                       arms_from_study, evaluate, paired_comparisons, pick_images, summarize)
from style_transfer.report import write_report
from style_transfer.spec import ab_group


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- aggregation


def test_summary_and_paired_comparisons_have_known_answers():
    rows = []
    for label, offset in (("a", 0.0), ("b", 1.0)):
        for seed in (0, 1):
            for i in range(6):
                value = i + offset + 0.1 * seed
                rows.append({"label": label, "seed": seed, "image": f"{i}.jpg",
                             **{m: value for m in METRICS}})
    summary = summarize(rows, ["a", "b"])
    s = summary["a"]["style"]
    assert s["mean"] == pytest.approx(2.55) and s["n_images"] == 6 and s["seeds"] == [0, 1]
    assert s["seed_means"] == pytest.approx([2.5, 2.6])
    assert s["sd_images"] == pytest.approx(math.sqrt(3.5)) and s["sd_seeds"] == pytest.approx(0.1 / math.sqrt(2))
    paired = {(p["a"], p["b"], p["metric"]): p for p in paired_comparisons(rows, ["a", "b"])}
    p = paired[("a", "b", "style")]
    assert p["mean_diff"] == pytest.approx(-1.0) and p["sd_diff"] == pytest.approx(0.0, abs=1e-12)
    assert (p["n"], p["a_lower"], p["a_higher"]) == (6, 6, 0)
    assert p["p_sign"] == pytest.approx(2 / 64) and p["p_wilcoxon"] == pytest.approx(2 / 64)


# ----------------------------------------------------------------------------- batch behaviour


def test_batch_behaviour_separates_batch_norm_from_the_rest(make_model, random_image):
    crops = random_image(32, 32, batch=4, seed=2)
    for norm in ("instance", "group", "layer", "none"):
        result = _batch_behaviour(make_model(norm, trained=True), crops)
        assert set(result) == set(BATCH_TESTS)
        for test, stats in result.items():
            assert max(s["max_abs"] for s in stats) < 1e-4, (norm, test)
    model = make_model("batch", trained=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = _batch_behaviour(model, crops)
    # Eval mode uses the running statistics: an image's output does not depend on its batch.
    assert max(s["max_abs"] for s in result["batch_vs_alone_eval"]) < 1e-4
    # Training mode uses the batch's statistics: output changes with mode and with the batch.
    for test in ("train_vs_eval", "train_batch_vs_eval", "batch_vs_alone_train"):
        assert min(s["mean_abs"] for s in result[test]) > 1e-3, test
    # ...and measuring it did not touch the model's running statistics.
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


# ----------------------------------------------------------------------------- arms


def test_checkpoints_are_grouped_by_norm_when_seeds_differ(make_checkpoint, tmp_path):
    paths = [make_checkpoint("instance", path=tmp_path / f"in{seed}.safetensors", training={"seed": seed})
             for seed in (0, 1)] + [make_checkpoint("batch", path=tmp_path / "bn.safetensors", training={"seed": 0})]
    assert [(a.label, a.name, a.seed) for a in arms_from_checkpoints(paths)] == [
        ("instance", "in0", 0), ("instance", "in1", 1), ("batch", "bn", 0)]
    same_seed = [make_checkpoint("layer", path=tmp_path / f"ln{k}.safetensors", training={"seed": 0}) for k in (0, 1)]
    assert [a.label for a in arms_from_checkpoints(same_seed)] == ["ln0", "ln1"]
    unknown_seed = [make_checkpoint("layer", path=tmp_path / "nos.safetensors", training={})]
    assert [a.label for a in arms_from_checkpoints(unknown_seed)] == ["nos"]


def _shipped_like(make_checkpoint, folder, name, norm, seed=0, **recipe):
    training = {"seed": seed, "lr": 1e-3, "clip_grad_norm": 100, "network": {"norm": norm, "width": 8},
                "sync_bn": norm == "batch", **recipe}
    return make_checkpoint(norm, path=folder / f"{name}.safetensors", training=training, style_sha256="c" * 64)


def test_only_one_recipe_is_grouped_by_norm(make_checkpoint, tmp_path):
    """Like the shipped Starry Night: an A/B set beside a flagship trained without clipping. The set is
    grouped by norm; the flagship, another recipe, is a label of its own, never pooled with the set's
    instance arm."""
    flagship = _shipped_like(make_checkpoint, tmp_path, "flagship", "instance", clip_grad_norm=None)
    arms = [_shipped_like(make_checkpoint, tmp_path, f"set-{norm}", norm) for norm in ("instance", "batch", "group")]
    result = arms_from_checkpoints([flagship, *arms])
    assert [(a.label, a.name) for a in result] == [("flagship", "flagship"), ("instance", "set-instance"),
                                                   ("batch", "set-batch"), ("group", "set-group")]
    # The arms grouped by norm are one A/B set (spec.ab_group), the flagship is not in it.
    groups = {a.name: ab_group(read_model_info(a.checkpoint).training, "c" * 64) for a in result}
    assert len({groups[a.name] for a in result if a.label == a.norm}) == 1
    assert groups["flagship"] != groups["set-instance"]
    # Seeds of one recipe pool; the same norm from two recipes does not.
    seeds = [_shipped_like(make_checkpoint, tmp_path, f"s{seed}", "layer", seed=seed) for seed in (0, 1)]
    other = _shipped_like(make_checkpoint, tmp_path, "other-lr", "layer", seed=2, lr=5e-4)
    assert [a.label for a in arms_from_checkpoints([*seeds, other])] == ["layer", "layer", "other-lr"]
    # Another style image is another recipe.
    elsewhere = make_checkpoint("batch", path=tmp_path / "elsewhere.safetensors", style_sha256="d" * 64,
                                training=read_model_info(arms[1]).training)
    assert [a.label for a in arms_from_checkpoints([arms[0], arms[1], elsewhere])] == ["instance", "batch",
                                                                                        "elsewhere"]


def test_an_arm_finds_its_training_log_in_its_run_folder(make_checkpoint, tmp_path):
    with_log = make_checkpoint("instance", path=tmp_path / "a.safetensors", training={"seed": 0})
    (tmp_path / "a.run").mkdir()
    (tmp_path / "a.run" / "log.jsonl").write_text('{"step": 1, "content": 1, "style": 2, "tv": 3, "total": 6}\n')
    study_arm = make_checkpoint("batch", path=tmp_path / "batch-s0" / "model.safetensors", training={"seed": 0})
    a, b = arms_from_checkpoints([with_log, study_arm])
    assert a.log_path == tmp_path / "a.run" / "log.jsonl"
    assert (b.name, b.log_path) == ("batch-s0", None)  # named after its folder; no log yet


def test_pick_images_spreads_over_the_folder(tmp_path, make_image_file):
    for i in range(10):
        make_image_file(tmp_path / f"{i:02d}.png")
    assert [p.stem for p in pick_images(tmp_path, 4)] == ["00", "02", "05", "07"]
    assert len(pick_images(tmp_path, 50)) == 10


# ----------------------------------------------------------------------------- the report


def test_report_from_a_tiny_study(tiny_study, heldout_dir, tmp_path):
    """`style-transfer compare STUDY` end to end: every file, consistent numbers, valid links."""
    out = tmp_path / "report"
    assert main(["compare", str(tiny_study.root), "--content", str(heldout_dir), "--out", str(out),
                 "--size", "40", "--cell", "48", "--grid-rows", "2", "--batch-images", "3", "--timing-repeats", "1"]) == 0
    expected = {"report.html", "README.md", "grid.png", "curves.png", "metrics.png", "metrics.json", "metrics.csv",
                "summary.csv", "paired.csv", "batch.csv", "curves.csv"}
    assert expected <= {p.name for p in out.iterdir()}
    record = json.loads((out / "metrics.json").read_text())
    assert record["labels"] == ["instance", "batch"]
    assert [a["name"] for a in record["arms"]] == ["instance-s0", "batch-s0", "instance-s1", "batch-s1"]
    assert all(a["steps"] == a["target_steps"] == 3 and a["parameters"] > 0 for a in record["arms"])
    assert len(record["per_image"]) == 4 * 4 and not record["warnings"]
    for row in record["per_image"]:
        assert row["content"] > 0 and row["style"] > 0 and -1 <= row["ssim"] <= 1 and row["colour"] >= 0
        assert 0 <= row["dark_spots"] <= 100
        assert row["time_ms"] > 0 and row["time_plain_ms"] > 0
    assert record["summary"]["instance"]["style"]["seeds"] == [0, 1]
    assert {(p["a"], p["b"]) for p in record["paired"]} == {("instance", "batch")}
    assert record["batch"]["instance"]["batch_vs_alone_train"]["max_abs"] < 1e-4
    assert record["batch"]["batch"]["batch_vs_alone_train"]["mean_abs"] > 1e-4
    assert record["training"]["batch"]["steps"] == [3, 3]
    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 16 and set(METRICS) <= set(rows[0])
    with (out / "curves.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 4 * 3
    # Images: the grid has a row per photo shown and a column per arm (plus the original).
    grid = Image.open(out / "grid.png")
    assert grid.width >= 3 * 40 and grid.height >= 2 * 26
    for name in ("curves.png", "metrics.png"):
        assert Image.open(out / name).width >= 800
    # Every file the HTML and the Markdown point to exists next to them; no external resources.
    page = (out / "report.html").read_text()
    readme = (out / "README.md").read_text()
    links = re.findall(r"src='([^']+)'", page) + re.findall(r"\]\(([^)]+)\)", readme)
    assert links and all((out / link).is_file() for link in links)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "instance − batch" in readme and "Wilcoxon" in readme


def test_compare_refuses_what_it_cannot_do(tiny_study, heldout_dir, tmp_path, make_checkpoint):
    ckpt = make_checkpoint("instance")
    # Checkpoints outside a study need the style image.
    assert main(["compare", str(ckpt), "--content", str(heldout_dir), "--out", str(tmp_path / "r")]) == 2
    assert main(["compare", str(tmp_path / "missing"), "--content", str(heldout_dir), "--out", str(tmp_path / "r")]) == 2


def test_compare_takes_model_names_of_the_weights_folder(heldout_dir, small_style_path, tmp_path, make_checkpoint,
                                                         caplog):
    weights = make_checkpoint("instance").parent
    make_checkpoint("batch")
    out = tmp_path / "r"
    assert main(["compare", "test_style_instance", "test_style_batch", "--weights", str(weights), "--content",
                 str(heldout_dir), "--out", str(out), "--style", str(small_style_path), "--size", "32",
                 "--max-images", "1", "--grid-rows", "1", "--no-fast-timing", "--timing-repeats", "1"]) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert {a["name"] for a in record["arms"]} == {"test_style_instance", "test_style_batch"}
    assert main(["compare", "nope", "--weights", str(weights), "--content", str(heldout_dir), "--out", str(out),
                 "--style", str(small_style_path)]) == 2
    assert f"a model name of {weights}: nope" in caplog.text


def test_evaluation_warns_about_training_images_and_other_styles(tiny_study, small_style_path, tmp_path,
                                                                 make_checkpoint):
    from pathlib import Path

    from style_transfer.ablate import content_images_of

    arms = arms_from_study(tiny_study)[:1]
    seen = sorted(content_images_of(tiny_study))[:2]

    evaluation = evaluate(arms, [Path(p) for p in seen], small_style_path, EvalSettings(size=32, grid_rows=1),
                          progress=False, training_images=content_images_of(tiny_study))
    assert any("were training images" in w for w in evaluation.record["warnings"])
    other = arms_from_checkpoints([make_checkpoint("instance", style_sha256="f" * 64)])
    evaluation = evaluate(other, [Path(seen[0])], small_style_path, EvalSettings(size=32, grid_rows=1, time_fast=False),
                          progress=False)
    assert any("another style image" in w for w in evaluation.record["warnings"])
    assert evaluation.record["per_image"][0]["time_ms"] is None  # not measured
    write_report(evaluation, tmp_path / "report")  # unmeasured values are left blank, not NaN
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["per_image"][0]["time_ms"] is None
    # Without training logs there is no curves.csv, and the report does not point to one.
    readme = (tmp_path / "report" / "README.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", readme)
    assert links and all((tmp_path / "report" / link).is_file() for link in links)
    assert "curves.csv" not in (tmp_path / "report" / "report.html").read_text()
