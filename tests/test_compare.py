"""Comparison: metrics with known answers, paired statistics, batch behaviour, the shared one-image
comparison (used by the server), and the report built from a tiny study."""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import math
import re
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from style_transfer.compare import (BATCH_TESTS, METRICS, EvalSettings, _batch_behaviour, arms_from_checkpoints, photo_metrics,
                                    arms_from_study, comparison_grid, evaluate, image_grid, paired_comparisons,
                                    pick_images, stylize_each, stylize_each_async, summarize)
from style_transfer.cli import main
from style_transfer.imageio import LoadedImage
from style_transfer.metrics import (DARK_SPOT_CONTENT, DARK_SPOT_OUTPUT, PSNR_CAP, colour_distance, dark_spots,
                                    diff_stats, luminance, luminance_ssim, psnr, sign_test, ssim, wilcoxon_signed_rank)
from style_transfer.report import write_report
from style_transfer.stylize import Stylizer


pytestmark = pytest.mark.usefixtures("one_thread")


def smooth_image(h: int = 48, w: int = 64, seed: int = 0) -> torch.Tensor:
    """A photo-like test image: smooth colour gradients plus texture, within [0.2, 0.8] (no clipping
    when shifted by up to 0.2)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.nn.functional.interpolate(torch.rand(1, 3, h // 4, w // 4, generator=gen), size=(h, w),
                                            mode="bilinear", align_corners=False)
    ramp = torch.linspace(0, 1, w).view(1, 1, 1, w).expand(1, 3, h, w)
    return 0.2 + 0.6 * (0.5 * noise + 0.5 * ramp)


# ----------------------------------------------------------------------------- metrics


def test_ssim_known_answers():
    x = smooth_image()
    y = luminance(x)
    assert ssim(y, y).item() == pytest.approx(1.0, abs=1e-12)
    assert luminance_ssim(x, x).item() == pytest.approx(1.0, abs=1e-12)
    # Constant images a and b: only the luminance term is left, (2ab + C1) / (a² + b² + C1).
    a, b = torch.full((1, 1, 20, 20), 0.3), torch.full((1, 1, 20, 20), 0.6)
    c1 = (0.01 * 1.0) ** 2
    assert ssim(a, b).item() == pytest.approx((2 * 0.3 * 0.6 + c1) / (0.3**2 + 0.6**2 + c1), rel=1e-9)
    # Data range is fixed at 1.0: the score does not rescale with the images' own range.
    noisy = (y + 0.05 * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    worse = (y + 0.15 * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert 1.0 > ssim(noisy, y).item() > ssim(worse, y).item() > 0.0
    assert ssim(y, noisy).item() == pytest.approx(ssim(noisy, y).item(), abs=1e-12)  # symmetric
    # Luminance SSIM ignores a change of colour that keeps the luminance.
    shifted = x + torch.tensor([0.1, -0.1 * 0.299 / 0.587, 0.0]).view(1, 3, 1, 1)
    assert luminance_ssim(shifted, x).item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        ssim(y, y[..., :10])


def test_colour_distance_known_answers():
    x = smooth_image()
    assert colour_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    # A uniform shift c moves the Gaussian fit by exactly |c| (covariances unchanged).
    c = torch.tensor([0.1, -0.05, 0.2])
    assert colour_distance(x + c.view(1, 3, 1, 1), x) == pytest.approx(float(c.norm()), rel=1e-6)
    # A contrast change by k about the mean: W2 = |1 - k| * sqrt(trace of the covariance).
    mean = x.mean(dim=(2, 3), keepdim=True)
    k = 0.5
    flat = x.double().reshape(3, -1)
    trace = float(((flat - flat.mean(1, keepdim=True)) ** 2).mean(1).sum())
    assert colour_distance(mean + k * (x - mean), x) == pytest.approx(abs(1 - k) * math.sqrt(trace), rel=1e-6)
    # Independent of the image sizes and of pixel positions; symmetric.
    assert colour_distance(x.flip(-1), x) == pytest.approx(0.0, abs=1e-6)
    big = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    assert colour_distance(big, x) == pytest.approx(0.0, abs=1e-6)
    y = smooth_image(seed=3)
    assert colour_distance(x, y) == pytest.approx(colour_distance(y, x), rel=1e-6)


def test_dark_spots_counts_near_black_output_only_where_the_photo_is_lit():
    photo = torch.full((1, 3, 10, 20), 0.8)
    photo[..., :, 10:] = 0.1  # right half: a dark part of the photo
    out = torch.full_like(photo, 0.5)
    assert dark_spots(out, photo) == 0.0
    out[..., 2:4, 2:7] = 0.0  # a 2x5 hole where the photo is lit: 10 of 200 pixels
    out[..., 5:9, 12:18] = 0.0  # black where the photo is dark too: a style may darken shadows
    assert dark_spots(out, photo) == pytest.approx(5.0)
    # The thresholds are on luma, strictly: a dark blue (luma above the cut) is not a spot.
    out[..., 2:4, 2:7] = torch.tensor([0.0, 0.0, (DARK_SPOT_OUTPUT + 0.01) / 0.114]).view(1, 3, 1, 1)
    assert dark_spots(out, photo) == 0.0
    assert dark_spots(torch.zeros_like(photo), torch.full_like(photo, DARK_SPOT_CONTENT)) == 0.0
    with pytest.raises(ValueError, match="size"):
        dark_spots(out, photo[..., :5])


def test_photo_metrics_of_the_photo_itself_and_of_a_hole():
    photo = smooth_image()
    assert photo_metrics(photo, photo) == pytest.approx({"ssim": 1.0, "dark_spots": 0.0})
    holed = photo.clone()
    holed[..., :8, :8] = 0.0
    expected = 100.0 * float((luminance(photo[..., :8, :8]) > DARK_SPOT_CONTENT).float().sum()) / luminance(photo).numel()
    got = photo_metrics(holed, photo)
    assert expected > 0 and got["dark_spots"] == pytest.approx(expected) and got["ssim"] < 1.0


def test_diff_stats_and_psnr():
    x = smooth_image()
    assert diff_stats(x, x) == {"max_abs": 0.0, "mean_abs": 0.0, "psnr": PSNR_CAP}
    y = x + 0.1
    stats = diff_stats(y, x)
    assert stats["max_abs"] == pytest.approx(0.1, rel=1e-5) and stats["mean_abs"] == pytest.approx(0.1, rel=1e-5)
    assert psnr(y, x) == pytest.approx(20.0, abs=1e-4)  # 10 log10(1 / 0.01)


def brute_force_p(differences, statistic):
    """Two-sided p by enumerating every sign assignment (the definition of both exact tests)."""
    nonzero = [d for d in differences if d != 0]
    observed = statistic(nonzero)
    values = [statistic([s * abs(d) for s, d in zip(signs, nonzero)])
              for signs in itertools.product((1, -1), repeat=len(nonzero))]
    lower = sum(v <= observed + 1e-9 for v in values) / len(values)
    upper = sum(v >= observed - 1e-9 for v in values) / len(values)
    return min(1.0, 2 * min(lower, upper))


def test_paired_tests_are_exact():
    assert sign_test([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)
    assert wilcoxon_signed_rank([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)
    assert sign_test([]) == wilcoxon_signed_rank([0, 0]) == 1.0
    assert wilcoxon_signed_rank([1, -1]) == 1.0

    def positive_rank_sum(ds):
        mags = sorted(abs(d) for d in ds)
        rank = {m: (2 * mags.index(m) + mags.count(m) + 1) / 2 for m in mags}  # average ranks
        return sum(rank[abs(d)] for d in ds if d > 0)

    gen = torch.Generator().manual_seed(0)
    for trial in range(6):
        n = 5 + trial
        ds = [round(float(v), 1) for v in torch.randn(n, generator=gen) + 0.4]  # rounding makes ties
        ds[0] = 0.0 if trial % 2 else ds[0]  # zeros are dropped
        assert wilcoxon_signed_rank(ds) == pytest.approx(brute_force_p(ds, positive_rank_sum), abs=1e-12)
        assert sign_test(ds) == pytest.approx(brute_force_p(ds, lambda v: sum(d > 0 for d in v)), abs=1e-12)


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


# ----------------------------------------------------------------------------- one image, several models


def test_stylize_each_and_grid_are_shared_by_the_server(make_checkpoint):
    stylizers = {name: Stylizer.from_checkpoint(make_checkpoint(norm, trained=True, style_name=name), "cpu",
                                                fast=False)
                 for name, norm in (("m-instance", "instance"), ("m-batch", "batch"))}
    image = LoadedImage(smooth_image(40, 56))
    outputs = stylize_each(image, stylizers)
    assert [(o.name, o.norm) for o in outputs] == [("m-instance", "instance"), ("m-batch", "batch")]
    assert all(o.image.rgb.shape == (1, 3, 40, 56) and o.elapsed_s > 0 for o in outputs)
    assert re.fullmatch(r"m-batch \(batch, \d+ ms\)", outputs[1].label)
    grid = comparison_grid(image.rgb, outputs, cell=64)
    assert grid.width > 3 * 56 and grid.height > 40

    async def run():
        async def submit(name):
            return SimpleNamespace(image=stylizers[name].stylize_image(image), elapsed_s=0.25)

        return await stylize_each_async(["m-batch", "m-instance"], submit, lambda name: stylizers[name].info)

    async_outputs = asyncio.run(run())
    assert [(o.name, o.norm, o.elapsed_s) for o in async_outputs] == [("m-batch", "batch", 0.25),
                                                                       ("m-instance", "instance", 0.25)]
    assert torch.equal(async_outputs[0].image.rgb, outputs[1].image.rgb)
    with pytest.raises(ValueError):
        image_grid([[image.rgb]], ["a", "b"])


def test_checkpoints_are_grouped_by_norm_when_seeds_differ(make_checkpoint, tmp_path):
    paths = [make_checkpoint("instance", path=tmp_path / f"in{seed}.safetensors", training={"seed": seed})
             for seed in (0, 1)] + [make_checkpoint("batch", path=tmp_path / "bn.safetensors", training={"seed": 0})]
    assert [(a.label, a.name, a.seed) for a in arms_from_checkpoints(paths)] == [
        ("instance", "in0", 0), ("instance", "in1", 1), ("batch", "bn", 0)]
    same_seed = [make_checkpoint("layer", path=tmp_path / f"ln{k}.safetensors", training={"seed": 0}) for k in (0, 1)]
    assert [a.label for a in arms_from_checkpoints(same_seed)] == ["ln0", "ln1"]


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
