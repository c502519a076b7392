"""The norm study's evaluation (`style-transfer compare`): checkpoints on held-out photos, measured.

:func:`evaluate` runs the arms of a norm study -- or any checkpoints (:class:`EvalArm`, from
:func:`arms_from_study` or :func:`arms_from_checkpoints`) -- on held-out photos (:func:`pick_images`) and
measures, per arm and image (:data:`METRICS`): the training losses (same VGG19 Gram losses and weights),
luminance SSIM to the photo and dark spots (:func:`sidebyside.photo_metrics`, shared with the server),
colour distance to the style image, run time, parameters; and the batch-norm behaviours users meet
(:data:`BATCH_TESTS`: eval vs training mode, batch dependence). It aggregates over images and seeds
(:func:`summarize`), runs paired tests between arms (:func:`paired_comparisons`), reads the training
curves (:func:`summarize_training`, :func:`paired_training`) and returns one JSON-ready record in an
:class:`Evaluation`, which :mod:`report` turns into the report.

Metrics are computed on the *plain fp32* network (``fast=False``) so arms are compared on their exact
outputs; the default fast path (reduced precision, rewritten graph) is timed as well, since that is
what users run.

One photo through several models (the server's ``/v1/compare``) is :mod:`sidebyside`; the grid drawing
is :mod:`grid`.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from .balance import is_auto
from .checkpoint import MODEL_SUFFIX, ModelInfo, file_sha256, load_model, read_model_info
from .device import resolve_device
from .grid import image_grid
from .imageio import find_images, load_rgb, resize_max, spread
from .losses import LossConfig, PerceptualLoss
from .metrics import colour_distance, diff_stats, mean_sd, sign_test, wilcoxon_signed_rank
from .network import count_parameters
from .rundir import TERMS, RunDir, read_log, term_mean
from .sidebyside import photo_metrics
from .spec import ab_group
from .stylize import Stylizer

log = logging.getLogger(__name__)

# metric key -> its title, unit and how to read it (the report's column headers and notes).
METRICS: dict[str, dict[str, str]] = {
    "content": {"title": "content loss", "unit": "", "note": "VGG relu2_2 feature MSE to the photo (weighted as in training); lower = closer to the photo"},
    "style": {"title": "style loss", "unit": "", "note": "Gram MSE to the style image (weighted as in training); lower = closer to the style"},
    "ssim": {"title": "SSIM (luminance)", "unit": "", "note": "structure of the photo kept: 1 = identical luminance structure"},
    "colour": {"title": "colour distance", "unit": "RGB", "note": "W2 between Gaussian fits of output and style-image RGB pixels; lower = palette closer to the style"},
    "dark_spots": {"title": "dark spots", "unit": "%", "note": "pixels painted near-black (luma < 0.05) where the photo is lit (luma > 0.25): droplets and holes; lower = fewer"},
    "time_ms": {"title": "time, fast path", "unit": "ms", "note": "default inference path (what users run), per image, fastest of the repeats"},
    "time_plain_ms": {"title": "time, plain fp32", "unit": "ms", "note": "plain network in fp32, per image, fastest of the repeats"},
}
# Batch-behaviour tests: key -> description.
BATCH_TESTS: dict[str, str] = {
    "train_vs_eval": "training mode vs eval mode, image alone",
    "train_batch_vs_eval": "training mode in a batch vs eval mode alone",
    "batch_vs_alone_eval": "in a batch vs alone, eval mode",
    "batch_vs_alone_train": "in a batch vs alone, training mode",
}


@dataclass(frozen=True)
class EvalArm:
    """One checkpoint to evaluate, and the group (column) it belongs to."""

    label: str  # the arm group: its norm for a study (seeds are averaged), else a unique name
    name: str  # unique, e.g. "instance-s0"
    norm: str
    seed: int | None
    checkpoint: Path
    log_path: Path | None = None  # training log (log.jsonl), if there is one
    target_steps: int | None = None


def arms_from_study(study: Any) -> list[EvalArm]:
    """The arms of a study that have a checkpoint (the others are reported and skipped)."""
    arms = []
    for arm in study.arms:
        if not arm.checkpoint.is_file():
            log.warning("arm %s has no checkpoint yet; left out of the comparison", arm.name)
            continue
        arms.append(EvalArm(arm.norm, arm.name, arm.norm, arm.seed, arm.checkpoint,
                            arm.log_path if arm.log_path.is_file() else None, study.steps))
    if not arms:
        raise ValueError(f"{study.root}: no arm has a checkpoint yet")
    return arms


def _recipe(info: ModelInfo) -> str:
    """The A/B set a checkpoint belongs to whatever its seed (:func:`spec.ab_group` with the seed set
    aside): checkpoints with one recipe are seeds of each other, or norm arms of one study."""
    return ab_group({k: v for k, v in info.training.items() if k != "seed"}, info.style_sha256)


def arms_from_checkpoints(paths: Sequence[Path]) -> list[EvalArm]:
    """Arms from checkpoint files, named after their file (a study arm's ``model.safetensors`` after
    its folder); the training log is the run folder's (:class:`rundir.RunDir`).

    A label averages its arms over seeds and is paired with the others seed by seed (the same seed
    saw the same batches), so arms share a label named after their norm only when that is a fair A/B
    (issue 15): they have one recipe but for norm and seed, and each norm's seeds are recorded and
    distinct -- then the arms of each seed form one :func:`spec.ab_group`. When the checkpoints hold
    several recipes, the one that covers the most such norms (then the most arms) is grouped by norm,
    e.g. the shipped Starry Night A/B set beside its flagship, which was trained without clipping.
    Every other arm is a label of its own (its name).
    """
    infos = [(Path(p), read_model_info(p)) for p in paths]
    recipes = [_recipe(info) for _, info in infos]
    seeds: dict[str, dict[str, list[Any]]] = {}  # recipe -> norm -> the seeds of its checkpoints
    for (_, info), recipe in zip(infos, recipes):
        seeds.setdefault(recipe, {}).setdefault(info.norm, []).append(info.training.get("seed"))
    # recipe -> its norms whose seeds are recorded and distinct -> how many arms each has
    poolable = {recipe: {norm: len(s) for norm, s in by_norm.items() if None not in s and len(set(s)) == len(s)}
                for recipe, by_norm in seeds.items()}
    grouped = max(poolable, key=lambda r: (len(poolable[r]), sum(poolable[r].values())), default=None)
    arms = []
    for (path, info), recipe in zip(infos, recipes):
        name = path.name.removesuffix(MODEL_SUFFIX)
        if name == "model":  # a study arm's checkpoint: name it after its folder
            name = path.parent.name
        label = info.norm if recipe == grouped and info.norm in poolable[recipe] else name
        log_path = RunDir.of(path).log
        arms.append(EvalArm(label, name, info.norm, info.training.get("seed"), path,
                            log_path if log_path.is_file() else None, info.training.get("total_steps")))
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"two checkpoints have the same name: {sorted(n for n in names if names.count(n) > 1)}")
    return arms


def pick_images(folder: Path | str, count: int) -> list[Path]:
    """``count`` images spread evenly over the sorted images of ``folder`` (all when fewer)."""
    found = find_images(folder)
    if not found:
        raise FileNotFoundError(f"no images in {folder}")
    return spread(found, count)


@dataclass
class EvalSettings:
    """How to evaluate."""

    size: int = 256  # long side of the evaluation images
    grid_rows: int = 4  # content images (rows) in the grid
    cell: int = 256  # grid cell size, px
    device: str = "cpu"
    time_fast: bool = True  # also time the default fast path (what users run)
    batch_images: int = 8  # images in the batch-dependence test (square centre crops)
    # Each time is the fastest of this many runs: the run least disturbed by whatever else the machine does.
    timing_repeats: int = 3


@dataclass
class Evaluation:
    """What :func:`evaluate` produces: the JSON-ready record, the grid and the training curves."""

    record: dict[str, Any]
    grid: Image.Image
    curves: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # arm name -> log entries


def _square_crops(images: Sequence[torch.Tensor], count: int) -> torch.Tensor:
    """Centre crops of the same side (the smallest short side, a multiple of 4) -> (N, 3, S, S)."""
    chosen = list(images[:count])
    side = min(min(img.shape[-2:]) for img in chosen) // 4 * 4
    crops = []
    for img in chosen:
        h, w = img.shape[-2:]
        top, left = (h - side) // 2, (w - side) // 2
        crops.append(img[..., top : top + side, left : left + side])
    return torch.cat(crops)


@torch.no_grad()
def _batch_behaviour(model: torch.nn.Module, crops: torch.Tensor) -> dict[str, list[dict[str, float]]]:
    """Per image: the four batch-behaviour differences (see BATCH_TESTS)."""
    eval_model = model.eval()
    train_model = copy.deepcopy(model).train()  # a copy: training mode updates batch-norm running stats
    eval_alone = [eval_model(c[None]).float().clamp(0, 1) for c in crops]
    eval_batch = eval_model(crops).float().clamp(0, 1)
    train_alone = [train_model(c[None]).float().clamp(0, 1) for c in crops]
    train_batch = train_model(crops).float().clamp(0, 1)
    out: dict[str, list[dict[str, float]]] = {k: [] for k in BATCH_TESTS}
    for i in range(len(crops)):
        out["train_vs_eval"].append(diff_stats(train_alone[i], eval_alone[i]))
        out["train_batch_vs_eval"].append(diff_stats(train_batch[i : i + 1], eval_alone[i]))
        out["batch_vs_alone_eval"].append(diff_stats(eval_batch[i : i + 1], eval_alone[i]))
        out["batch_vs_alone_train"].append(diff_stats(train_batch[i : i + 1], train_alone[i]))
    return out


def _timed(fn: Callable[[], torch.Tensor], repeats: int = 1) -> tuple[torch.Tensor, float]:
    """The first output of ``fn`` and its fastest time over ``repeats`` runs (s)."""
    out, best = None, math.inf
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
        out = result if out is None else out
    return out, best


def _style_for(info: ModelInfo, style_image: Path, style_sha: str) -> tuple[float, ...] | None:
    """For a multi-style network, the style weights of the compared painting (found by its sha256,
    else by its file name), so it is compared in that style (issue 17: an N-style network against
    single-style ones, painting by painting); None for other networks, or when it lacks the painting
    (then its first style is compared, and the style mismatch is warned about)."""
    names = info.extra.get("styles") or []
    if len(names) < 2:
        return None
    shas = info.extra.get("style_sha256s") or []
    index = shas.index(style_sha) if style_sha in shas else (
        names.index(style_image.stem) if style_image.stem in names else None)
    return None if index is None else tuple(float(i == index) for i in range(len(names)))


def _loss_config(info: ModelInfo, chosen: tuple[float, ...] | None) -> LossConfig:
    """The loss a model was trained with; under --style-weight auto with the weight its run ended at
    (for a multi-style network, the compared style's), so its weighted style term is what it trained."""
    loss_cfg = LossConfig(**info.training["loss"]) if "loss" in info.training else LossConfig()
    used = info.training.get("style_weight_used")
    if is_auto(loss_cfg.style_weight) and used is not None:
        if isinstance(used, list):
            used = used[chosen.index(1.0)] if chosen is not None and len(chosen) == len(used) else used[0]
        loss_cfg = dataclasses.replace(loss_cfg, style_weight=float(used))
    return loss_cfg


def evaluate(arms: Sequence[EvalArm], images: Sequence[Path], style_image: Path,
             settings: EvalSettings = EvalSettings(), progress: bool = True,
             training_images: set[str] | None = None, study: dict[str, Any] | None = None) -> Evaluation:
    """Run every arm on every image and measure it; see the module docstring and METRICS."""
    if not arms:
        raise ValueError("nothing to compare: no checkpoints")
    if not images:
        raise ValueError("nothing to compare on: no content images")
    device = resolve_device(settings.device)
    warnings: list[str] = []
    if training_images is not None:
        seen = [p for p in images if os.path.realpath(p) in training_images]
        if seen:
            warnings.append(f"{len(seen)} of the {len(images)} evaluation images were training images "
                            f"({', '.join(p.name for p in seen[:5])}): use photos the arms were not trained on")
    style_sha = file_sha256(style_image)
    contents = [resize_max(load_rgb(p), settings.size) for p in images]
    crops = _square_crops(contents, settings.batch_images)
    labels = list(dict.fromkeys(a.label for a in arms))
    criteria: dict[str, PerceptualLoss] = {}
    styles: dict[int, torch.Tensor] = {}

    per_image: list[dict[str, Any]] = []
    arm_rows: list[dict[str, Any]] = []
    batch_rows: dict[str, dict[str, list[dict[str, float]]]] = {}
    grid_outputs: dict[str, list[torch.Tensor]] = {}
    grid_arm: dict[str, str] = {}
    for arm in sorted(arms, key=lambda a: (labels.index(a.label), a.seed if a.seed is not None else -1)):
        grid_arm.setdefault(arm.label, arm.name)
    curves = {a.name: read_log(a.log_path) for a in arms}

    bar = tqdm(arms, desc="compare", unit="arm", disable=not progress)
    for arm in bar:
        bar.set_postfix_str(arm.name)
        model, info = load_model(arm.checkpoint, device)
        chosen = _style_for(info, style_image, style_sha)  # a multi-style network runs in this painting's style
        if chosen is None and info.style_sha256 and info.style_sha256 != style_sha:
            warnings.append(f"{arm.name} was trained on another style image ({info.style_name}) than "
                            f"{style_image.name}: its style loss and colour distance are against {style_image.name}")
        loss_cfg = _loss_config(info, chosen)
        key = json.dumps(dataclasses.asdict(loss_cfg), sort_keys=True)
        if key not in criteria:
            if loss_cfg.style_size not in styles:
                styles[loss_cfg.style_size] = load_rgb(style_image, loss_cfg.style_size).to(device)
            criteria[key] = PerceptualLoss(styles[loss_cfg.style_size], loss_cfg).to(device)
        criterion, style = criteria[key], styles[loss_cfg.style_size].cpu()
        plain = Stylizer(model, info, device, precision="fp32", fast=False)
        fast = Stylizer(copy.deepcopy(model), info, device, precision="auto", fast=True) if settings.time_fast else None
        # Warm-up (allocations, one-time kernel choices) on the first image, untimed.
        plain.run(contents[0], chosen)
        if fast is not None:
            fast.run(contents[0], chosen)
        outputs = []
        for path, content in zip(images, contents):
            out, t_plain = _timed(lambda: plain.run(content, chosen), settings.timing_repeats)
            t_fast = _timed(lambda: fast.run(content, chosen), settings.timing_repeats)[1] if fast is not None else None
            with torch.no_grad():
                terms = criterion(out.to(device), content.to(device))
            row = {"label": arm.label, "arm": arm.name, "norm": arm.norm, "seed": arm.seed, "image": path.name,
                   "content": float(terms["content"]), "style": float(terms["style"]),
                   **photo_metrics(out, content), "colour": colour_distance(out, style),
                   "time_ms": t_fast * 1e3 if t_fast is not None else None, "time_plain_ms": t_plain * 1e3}
            per_image.append(row)
            outputs.append(out)
        if arm.name == grid_arm[arm.label]:
            grid_outputs[arm.label] = outputs[: settings.grid_rows]
        batch_rows[arm.name] = _batch_behaviour(plain.model, crops.to(device))
        arm_rows.append({"label": arm.label, "name": arm.name, "norm": arm.norm, "seed": arm.seed,
                         "checkpoint": str(arm.checkpoint), "steps": info.steps, "target_steps": arm.target_steps,
                         "parameters": count_parameters(model), "style": info.style_name,
                         "config": json.loads(info.config.to_json()),
                         "loss": json.loads(key), "precision": info.training.get("precision")})
        if arm.target_steps and info.steps < arm.target_steps:
            warnings.append(f"{arm.name} is unfinished: {info.steps} of {arm.target_steps} steps")
    for w in warnings:
        log.warning("%s", w)

    rows = [[contents[i]] + [grid_outputs[label][i] for label in labels] for i in range(min(settings.grid_rows, len(images)))]
    grid = image_grid(rows, ["original"] + [f"{label} ({grid_arm[label]})" if label != grid_arm[label] else label
                                            for label in labels], settings.cell)
    record = {
        "format": "style-transfer-comparison",
        "format_version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                        "machine": platform.machine(), "processor": platform.processor() or platform.machine()},
        "settings": dataclasses.asdict(settings),
        "style": {"name": style_image.stem, "path": str(style_image), "sha256": style_sha},
        "study": study,
        "images": [{"name": p.name, "width": int(c.shape[-1]), "height": int(c.shape[-2])} for p, c in zip(images, contents)],
        "batch_crop": int(crops.shape[-1]),
        "labels": labels,
        "grid_arms": grid_arm,
        "metrics": METRICS,
        "batch_tests": BATCH_TESTS,
        "arms": arm_rows,
        "per_image": per_image,
        "summary": summarize(per_image, labels),
        "paired": paired_comparisons(per_image, labels),
        "batch": summarize_batch(batch_rows, arms, labels),
        "training": summarize_training(curves, arms, labels),
        "training_paired": paired_training(curves, arms, labels),
        "warnings": warnings,
    }
    return Evaluation(record, grid, curves)


# ----------------------------------------------------------------------------- aggregation


def _by_label_seed_image(per_image: Sequence[dict[str, Any]], label: str, metric: str) -> dict[Any, dict[str, float]]:
    table: dict[Any, dict[str, float]] = {}
    for row in per_image:
        if row["label"] == label and row.get(metric) is not None and not math.isnan(row[metric]):  # None: not measured
            table.setdefault(row["seed"], {})[row["image"]] = row[metric]
    return table


def summarize(per_image: Sequence[dict[str, Any]], labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per label and metric: mean over images and seeds, sd over images (of the seed means of each
    image), sd over seeds (of each seed's image mean), and the per-seed means."""
    out: dict[str, dict[str, Any]] = {}
    for label in labels:
        out[label] = {}
        for metric in METRICS:
            table = _by_label_seed_image(per_image, label, metric)
            if not table:
                continue
            images = sorted({img for seed_rows in table.values() for img in seed_rows})
            image_means = [mean_sd([table[s][img] for s in table if img in table[s]])[0] for img in images]
            seed_means = [mean_sd(list(table[s].values()))[0] for s in table]
            mean, sd_images = mean_sd(image_means)
            out[label][metric] = {"mean": mean, "sd_images": sd_images, "sd_seeds": mean_sd(seed_means)[1],
                                  "seed_means": seed_means, "seeds": list(table), "n_images": len(images)}
    return out


def paired_comparisons(per_image: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[dict[str, Any]]:
    """Every pair of labels, every metric: per image, A minus B (each averaged over its seeds).

    Images are the pairing unit (seeds are averaged first: two seeds of one image are not independent
    evidence). Reports the mean and sd of the differences, in how many images A is lower, and
    two-sided sign-test and Wilcoxon signed-rank p-values (exact up to 50 images, 13 when differences
    tie; beyond, scipy's normal approximation with continuity correction: metrics.py).
    """
    def image_means(label: str, metric: str) -> dict[str, float]:
        table = _by_label_seed_image(per_image, label, metric)
        images = {img for seed_rows in table.values() for img in seed_rows}
        return {img: mean_sd([table[s][img] for s in table if img in table[s]])[0] for img in images}

    out = []
    for a, b in itertools.combinations(labels, 2):
        for metric in METRICS:
            ma, mb = image_means(a, metric), image_means(b, metric)
            common = sorted(set(ma) & set(mb))
            if not common:
                continue
            diffs = [ma[i] - mb[i] for i in common]
            mean, sd = mean_sd(diffs)
            out.append({"a": a, "b": b, "metric": metric, "n": len(diffs), "mean_diff": mean, "sd_diff": sd,
                        "a_lower": sum(d < 0 for d in diffs), "a_higher": sum(d > 0 for d in diffs),
                        "p_sign": sign_test(diffs), "p_wilcoxon": wilcoxon_signed_rank(diffs)})
    return out


def summarize_batch(rows: Mapping[str, Mapping[str, list[dict[str, float]]]], arms: Sequence[EvalArm],
                    labels: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per label and test: mean absolute difference (mean over images and seeds), the largest absolute
    difference of any pixel, and the lowest PSNR."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for label in labels:
        names = [a.name for a in arms if a.label == label and a.name in rows]
        out[label] = {}
        for test in BATCH_TESTS:
            stats = [s for n in names for s in rows[n][test]]
            if stats:
                out[label][test] = {"mean_abs": sum(s["mean_abs"] for s in stats) / len(stats),
                                    "max_abs": max(s["max_abs"] for s in stats),
                                    "psnr_min": min(s["psnr"] for s in stats),
                                    "psnr_mean": sum(s["psnr"] for s in stats) / len(stats)}
    return out


def final_window(n_steps: int) -> int:
    """How many last steps make a run's 'final' loss: 10% of the run (at least 1)."""
    return max(1, n_steps // 10)


def summarize_training(curves: Mapping[str, list[dict[str, float]]], arms: Sequence[EvalArm],
                       labels: Sequence[str]) -> dict[str, Any]:
    """Per label and loss term: the final training loss (mean over the last 10% of steps) per seed,
    and its mean and sd over seeds."""
    out: dict[str, Any] = {}
    for label in labels:
        finals: dict[str, list[float]] = {t: [] for t in TERMS}
        steps = []
        for arm in arms:
            entries = curves.get(arm.name) or []
            if arm.label != label or not entries:
                continue
            window = entries[-final_window(len(entries)):]
            steps.append(entries[-1]["step"])
            for t in TERMS:
                finals[t].append(term_mean(window, t))
        if steps:
            out[label] = {"steps": steps, **{t: {"seed_finals": v, "mean": mean_sd(v)[0], "sd_seeds": mean_sd(v)[1]}
                                             for t, v in finals.items()}}
    return out


def paired_training(curves: Mapping[str, list[dict[str, float]]], arms: Sequence[EvalArm],
                    labels: Sequence[str]) -> list[dict[str, Any]]:
    """Training curves compared step by step over the second half of training.

    Arms with the same seed see the same batch at every step, so their losses at step t are paired
    observations. For every pair of labels and loss term: the mean difference A − B over (seed, step)
    pairs and the fraction of those where A is lower. (Consecutive steps are correlated, so no p-value.)
    """
    by_label_seed = {(a.label, a.seed): {e["step"]: e for e in curves.get(a.name) or []} for a in arms}
    out = []
    for a, b in itertools.combinations(labels, 2):
        seeds = sorted({s for (lab, s) in by_label_seed if lab == a} & {s for (lab, s) in by_label_seed if lab == b},
                       key=lambda s: (s is None, s))
        for term in TERMS:
            diffs = []
            for seed in seeds:
                ca, cb = by_label_seed[(a, seed)], by_label_seed[(b, seed)]
                common = sorted(set(ca) & set(cb))
                for step in common[len(common) // 2:]:
                    diffs.append(ca[step][term] - cb[step][term])
            if diffs:
                out.append({"a": a, "b": b, "term": term, "n": len(diffs), "seeds": seeds,
                            "mean_diff": sum(diffs) / len(diffs), "frac_a_lower": sum(d < 0 for d in diffs) / len(diffs)})
    return out
