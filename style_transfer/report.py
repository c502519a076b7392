"""The comparison report: grid, plots, tables (HTML and Markdown) and the numbers (JSON, CSV).

``write_report(evaluation, out)`` writes into ``out``:

* ``report.html`` -- one page with everything; no scripts, no external resources, the images are the
  PNG files beside it (so the folder can be committed and viewed anywhere, and nothing is stored twice);
* ``README.md`` -- the same tables and images in Markdown (rendered by GitHub and similar);
* ``grid.png`` (rows: photos, columns: the original and each arm), ``curves.png`` (training curves per
  loss term: mean over seeds, min-max band), ``metrics.png`` (the metrics per arm);
* ``metrics.json`` (everything), ``metrics.csv`` (one row per arm and image), ``summary.csv``,
  ``paired.csv``, ``batch.csv``, ``curves.csv`` (training logs, at most 1000 points per arm).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .evaluation import BATCH_TESTS, METRICS, Evaluation
from .imageio import atomic_write_bytes
from .rundir import TERMS, term_mean

# Fixed colours per norm (colour-blind-safe Okabe-Ito palette); other labels cycle through the rest.
NORM_COLOURS = {"instance": "#0072B2", "batch": "#D55E00", "group": "#009E73", "layer": "#CC79A7", "none": "#555555",
                "conditional_instance": "#56B4E9"}
_OTHER_COLOURS = ("#E69F00", "#56B4E9", "#F0E442", "#000000")
CURVE_POINTS = 1000  # rows per arm in curves.csv


def _colour(label: str, labels: Sequence[str]) -> str:
    if label in NORM_COLOURS:
        return NORM_COLOURS[label]
    others = [lab for lab in labels if lab not in NORM_COLOURS]
    return _OTHER_COLOURS[others.index(label) % len(_OTHER_COLOURS)]


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if value == 0:
        return "0"
    if abs(value) >= 10**digits:  # no exponent notation for large values: 1,234 and 160, not 1.6e+02
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _fmt_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what there is so far)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _save_png(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    atomic_write_bytes(path, _optimize_png(buf.getvalue()))


def _optimize_png(data: bytes) -> bytes:
    """Re-encode a plot PNG with a palette when it has few colours (plots do): much smaller, lossless."""
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    if img.getcolors(256) is not None:  # at most 256 distinct colours: a palette is lossless
        img = img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue() if len(buf.getvalue()) < len(data) else data


# ----------------------------------------------------------------------------- plots


def require_plotting() -> None:
    """Fail at once, before a long evaluation, when matplotlib (the 'train' extra) is missing."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise RuntimeError("the report's plots need matplotlib: pip install 'style-transfer[train]'")


def plot_curves(evaluation: Evaluation, path: Path) -> bool:
    """Training curves: per loss term, per label, the smoothed mean over seeds with a min-max band.

    Top row: the whole run (log scale). Bottom row: the second half, linear, where the arms separate.
    Returns False (and writes nothing) when no arm has a training log.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    record = evaluation.record
    labels = record["labels"]
    arms = [a for a in record["arms"] if evaluation.curves.get(a["name"])]
    if not arms:
        return False
    longest = max(len(evaluation.curves[a["name"]]) for a in arms)
    last_step = max(evaluation.curves[a["name"]][-1]["step"] for a in arms)
    window = max(1, round(longest / 25))
    fig, axes = plt.subplots(2, len(TERMS), figsize=(4.2 * len(TERMS), 7.2), dpi=100, squeeze=False)
    for label in labels:
        runs = [evaluation.curves[a["name"]] for a in arms if a["label"] == label]
        if not runs:
            continue
        n = min(len(r) for r in runs)
        steps = [e["step"] for e in runs[0][:n]]
        colour = _colour(label, labels)
        for col, term in enumerate(TERMS):
            smoothed = [smooth([e[term] for e in r[:n]], window) for r in runs]
            mean = [sum(v) / len(v) for v in zip(*smoothed)]
            low = [min(v) for v in zip(*smoothed)]
            high = [max(v) for v in zip(*smoothed)]
            for row in (0, 1):
                ax = axes[row][col]
                # Bottom row: the second half of the longest run, the same steps for every arm.
                start = 0 if row == 0 else next((i for i, s in enumerate(steps) if s > last_step // 2), n)
                ax.plot(steps[start:], mean[start:], color=colour, lw=1.6,
                        label=f"{label} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")
                if len(runs) > 1:
                    ax.fill_between(steps[start:], low[start:], high[start:], color=colour, alpha=0.18, lw=0)
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    for col, term in enumerate(TERMS):
        top, bottom = axes[0][col], axes[1][col]
        top.set_yscale("log")
        top.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        top.yaxis.set_major_formatter(plain)
        top.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        bottom.set_xlim(last_step // 2, last_step)
        top.set_title(f"{term} loss", fontsize=11)
        bottom.set_title(f"{term} loss, second half", fontsize=11)
        for ax in (top, bottom):
            ax.grid(True, alpha=0.3, which="major")
            ax.set_xlabel("step", fontsize=9)
            ax.tick_params(labelsize=8)
    axes[0][0].legend(fontsize=8, frameon=False)
    fig.suptitle(f"Training losses (weighted, as logged), moving average over {window} step(s); "
                 "band: min-max over seeds", fontsize=11)
    fig.tight_layout()
    _save_png(fig, path)
    plt.close(fig)
    return True


def plot_metrics(evaluation: Evaluation, path: Path) -> None:
    """Bars per label: mean over images and seeds, error bar sd over images, dots: per-seed means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    record = evaluation.record
    labels, summary = record["labels"], record["summary"]
    panels = ["content", "style", "ssim", "colour", "dark_spots", "time"]
    fig, axes = plt.subplots(2, 4, figsize=(18, 7.4), dpi=100)
    axes = axes.ravel()
    x = list(range(len(labels)))
    colours = [_colour(lab, labels) for lab in labels]
    for ax, metric in zip(axes, panels):
        if metric == "time":
            width = 0.38
            for k, (key, name, hatch) in enumerate((("time_ms", "fast path", ""), ("time_plain_ms", "plain fp32", "//"))):
                means = [summary[lab].get(key, {}).get("mean", math.nan) for lab in labels]
                sds = [summary[lab].get(key, {}).get("sd_images", 0.0) for lab in labels]
                pos = [i + (k - 0.5) * width for i in x]
                ax.bar(pos, means, width, yerr=sds, color=colours, hatch=hatch, edgecolor="white",
                       capsize=3, label=name, alpha=1.0 if k == 0 else 0.6)
            ax.set_title("time per image (ms): solid fast path, hatched plain fp32", fontsize=10)
        else:
            stats = [summary[lab].get(metric, {}) for lab in labels]
            means = [s.get("mean", math.nan) for s in stats]
            sds = [s.get("sd_images", 0.0) for s in stats]
            # Losses, distances and percentages cannot go below 0: clip the lower error bar there
            # (a skewed metric such as dark spots has an sd larger than its mean).
            low = sds if metric == "ssim" else [min(sd, m) if not math.isnan(m) else sd for sd, m in zip(sds, means)]
            ax.bar(x, means, 0.65, yerr=[low, sds], color=colours, capsize=4, alpha=0.85)
            for i, s in enumerate(stats):
                seeds = s.get("seed_means", [])
                if len(seeds) > 1:
                    ax.scatter([i] * len(seeds), seeds, color="black", s=12, zorder=3)
            info = METRICS[metric]
            arrow = {"content": "lower: closer to the photo", "style": "lower: closer to the style",
                     "ssim": "higher: more photo structure", "colour": "lower: palette closer to the style",
                     "dark_spots": "lower: fewer droplets/holes"}[metric]
            unit = f" ({info['unit']})" if info["unit"] else ""
            ax.set_title(f"{info['title']}{unit}: {arrow}", fontsize=10)
            if metric == "ssim":
                low = min((m - s for m, s in zip(means, sds) if not math.isnan(m)), default=0)
                ax.set_ylim(max(0.0, low - 0.05), 1.0)
        ax.set_xticks(x, labels, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        ax.tick_params(axis="y", labelsize=8)
    # Batch behaviour: mean absolute difference, log scale (exact zeros drawn at the floor).
    axes[7].axis("off")
    ax = axes[6]
    batch = record["batch"]
    tests = [("train_vs_eval", "train vs eval mode"), ("batch_vs_alone_train", "batch vs alone (train mode)"),
             ("batch_vs_alone_eval", "batch vs alone (eval mode)")]
    floor = 1e-7
    width = 0.26
    for k, (test, name) in enumerate(tests):
        values = [max(floor, batch.get(lab, {}).get(test, {}).get("mean_abs", math.nan)) for lab in labels]
        pos = [i + (k - 1) * width for i in x]
        ax.bar(pos, values, width, color=colours, alpha=[1.0, 0.65, 0.35][k], edgecolor="black", lw=0.4,
               hatch=["", "//", ".."][k], label=name)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(facecolor="#999999", alpha=[1.0, 0.65, 0.35][k], hatch=["", "//", ".."][k],
                             edgecolor="black", lw=0.4, label=name) for k, (_, name) in enumerate(tests)],
              fontsize=7, frameon=False, loc="upper right")
    ax.set_yscale("log")
    ax.set_ylim(floor, 100.0)  # headroom above 1 (the largest possible |Δ|) for the legend
    ax.set_xticks(x, labels, fontsize=9)
    ax.set_title("output change, mean |Δ| (log; 1e-7 = none)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.tick_params(axis="y", labelsize=8)
    n_images = len(record["images"])
    seeds = max((len(summary[lab].get("style", {}).get("seed_means", [])) for lab in labels), default=1)
    fig.suptitle(f"{n_images} held-out photos x {seeds} seed(s): bars = mean, error bars = sd over photos, "
                 "dots = per-seed means", fontsize=11)
    fig.tight_layout()
    _save_png(fig, path)
    plt.close(fig)


# ----------------------------------------------------------------------------- tables


def _metric_header(metric: str) -> str:
    info = METRICS[metric]
    return info["title"] + (f" ({info['unit']})" if info["unit"] else "")


def summary_table(record: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Rows: labels; cells 'mean ± sd over images (sd over seeds)'; plus parameters."""
    params = {a["label"]: a["parameters"] for a in record["arms"]}
    header = ["arm"] + [_metric_header(m) for m in METRICS] + ["parameters"]
    rows = []
    for label in record["labels"]:
        cells = [label]
        for metric in METRICS:
            s = record["summary"][label].get(metric)
            if not s:
                cells.append("–")
                continue
            cell = f"{_fmt(s['mean'])} ± {_fmt(s['sd_images'], 2)}"
            if len(s["seeds"]) > 1:
                cell += f" ({_fmt(s['sd_seeds'], 2)})"
            cells.append(cell)
        cells.append(f"{params[label]:,}")
        rows.append(cells)
    return header, rows


def paired_table(record: dict[str, Any], baseline: str | None = None) -> tuple[list[str], list[list[str]]]:
    """Paired differences A − B per image (seeds averaged); only pairs with ``baseline`` if given."""
    header = ["A − B", "metric", "mean diff ± sd", "A lower in", "sign test p", "Wilcoxon p"]
    rows = []
    for p in record["paired"]:
        if baseline is not None and baseline not in (p["a"], p["b"]):
            continue
        rows.append([f"{p['a']} − {p['b']}", METRICS[p["metric"]]["title"],
                     f"{_fmt(p['mean_diff'])} ± {_fmt(p['sd_diff'], 2)}", f"{p['a_lower']}/{p['n']}",
                     _fmt_p(p["p_sign"]), _fmt_p(p["p_wilcoxon"])])
    return header, rows


def batch_table(record: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["arm"] + [BATCH_TESTS[t] for t in BATCH_TESTS]
    rows = []
    for label in record["labels"]:
        cells = [label]
        for test in BATCH_TESTS:
            s = record["batch"].get(label, {}).get(test)
            if not s:
                cells.append("–")
            elif s["max_abs"] == 0:
                cells.append("identical")
            else:
                psnr = "≥ 100" if s["psnr_min"] >= 100 else f"{s['psnr_min']:.1f}"
                cells.append(f"{_fmt(s['mean_abs'], 2)} (max {_fmt(s['max_abs'], 2)}, PSNR {psnr} dB)")
        rows.append(cells)
    return header, rows


def training_table(record: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["arm", "steps"] + [f"final {t} loss" for t in TERMS]
    rows = []
    for label in record["labels"]:
        t = record["training"].get(label)
        if not t:
            continue
        cells = [label, ", ".join(str(s) for s in t["steps"])]
        for term in TERMS:
            cell = _fmt(t[term]["mean"])
            if len(t[term]["seed_finals"]) > 1:
                cell += f" ± {_fmt(t[term]['sd_seeds'], 2)}"
            cells.append(cell)
        rows.append(cells)
    return header, rows


def training_paired_table(record: dict[str, Any], baseline: str | None = None) -> tuple[list[str], list[list[str]]]:
    header = ["A − B", "loss term", "mean diff (2nd half)", "A lower at"]
    rows = []
    for p in record["training_paired"]:
        if p["term"] not in ("style", "content") or (baseline is not None and baseline not in (p["a"], p["b"])):
            continue
        rows.append([f"{p['a']} − {p['b']}", p["term"], _fmt(p["mean_diff"]),
                     f"{100 * p['frac_a_lower']:.0f}% of {p['n']} (seed, step) pairs"])
    return header, rows


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- text


def _setup_lines(record: dict[str, Any]) -> list[str]:
    """What was compared, on what, how (one line each, plain text)."""
    lines = []
    study = record.get("study")
    if study:  # the study's base spec, by flat names (spec.py)
        clip = f", gradient norm clipped to {study['clip_grad_norm']}" if study.get("clip_grad_norm") else ""
        lines.append(
            f"Training: {study['steps']} steps per arm, batch {study['batch_size']} of {study['image_size']} px crops, "
            f"Adam lr {study['lr']}{clip}, width {study['width']}, {study['num_residual']} residual blocks, "
            f"{study['precision']} autocast; loss weights content {study['content_weight']}, style "
            f"{study['style_weight']}, TV {study['tv_weight']}, style image at {study['style_size']} px; content: "
            + ", ".join("/".join(Path(p).parts[-2:]) for p in study["content"]) + ".")
    seeds = sorted({a["seed"] for a in record["arms"] if a["seed"] is not None})
    lines.append(f"Arms: {', '.join(record['labels'])}; seeds: {', '.join(map(str, seeds)) or '–'} "
                 f"({len(record['arms'])} checkpoints).")
    sizes = sorted({(i["width"], i["height"]) for i in record["images"]})
    lines.append(f"Evaluation: {len(record['images'])} held-out photos at {record['settings']['size']} px long side "
                 f"({', '.join(f'{w}x{h}' for w, h in sizes)}), style image {record['style']['name']}; batch tests on "
                 f"{min(len(record['images']), record['settings']['batch_images'])} centre crops of "
                 f"{record['batch_crop']} px.")
    env = record["environment"]
    lines.append(f"Machine: {env['device']} ({env['processor']}, {env['threads']} thread(s)), torch {env['torch']}.")
    return lines


def _metric_notes() -> list[str]:
    return [f"{m['title']}: {m['note']}." for m in METRICS.values()]


def write_report(evaluation: Evaluation, out: Path | str, title: str | None = None) -> dict[str, Path]:
    """Write every file of the report into ``out``; returns name -> path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = evaluation.record
    title = title or f"Norm comparison: {record['style']['name']}"
    files: dict[str, Path] = {}

    buf = io.BytesIO()
    evaluation.grid.save(buf, format="PNG", optimize=True)
    atomic_write_bytes(out / "grid.png", buf.getvalue())
    files["grid"] = out / "grid.png"
    if plot_curves(evaluation, out / "curves.png"):
        files["curves"] = out / "curves.png"
    plot_metrics(evaluation, out / "metrics.png")
    files["metrics_plot"] = out / "metrics.png"

    atomic_write_bytes(out / "metrics.json", (json.dumps(record, indent=1, allow_nan=False, default=str) + "\n").encode())
    files["json"] = out / "metrics.json"
    files.update(_write_csvs(evaluation, out))

    labels = record["labels"]
    baseline = labels[0]
    tables = {
        "summary": summary_table(record),
        "paired_baseline": paired_table(record, baseline),
        "paired_all": paired_table(record),
        "batch": batch_table(record),
        "training": training_table(record),
        "training_paired": training_paired_table(record, baseline),
    }
    atomic_write_bytes(out / "report.html", _html(record, title, tables, "curves" in files).encode())
    files["html"] = out / "report.html"
    atomic_write_bytes(out / "README.md", _markdown(record, title, tables, "curves" in files).encode())
    files["readme"] = out / "README.md"
    return files


def _write_csvs(evaluation: Evaluation, out: Path) -> dict[str, Path]:
    record = evaluation.record

    def write(name: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        atomic_write_bytes(out / name, buf.getvalue().encode())
        return out / name

    metric_keys = list(METRICS)
    files = {"csv": write("metrics.csv", ["label", "arm", "norm", "seed", "image"] + metric_keys,
                          [[r["label"], r["arm"], r["norm"], r["seed"], r["image"]] + [r[m] for m in metric_keys]
                           for r in record["per_image"]])}
    files["summary_csv"] = write(
        "summary.csv", ["label", "metric", "mean", "sd_images", "sd_seeds", "n_images", "seed_means"],
        [[lab, m, s["mean"], s["sd_images"], s["sd_seeds"], s["n_images"], " ".join(f"{v:.6g}" for v in s["seed_means"])]
         for lab, metrics in record["summary"].items() for m, s in metrics.items()])
    files["paired_csv"] = write(
        "paired.csv", ["a", "b", "metric", "n", "mean_diff", "sd_diff", "a_lower", "a_higher", "p_sign", "p_wilcoxon"],
        [[p[k] for k in ("a", "b", "metric", "n", "mean_diff", "sd_diff", "a_lower", "a_higher", "p_sign", "p_wilcoxon")]
         for p in record["paired"]])
    files["batch_csv"] = write(
        "batch.csv", ["label", "test", "mean_abs", "max_abs", "psnr_min", "psnr_mean"],
        [[lab, t, s["mean_abs"], s["max_abs"], s["psnr_min"], s["psnr_mean"]]
         for lab, tests in record["batch"].items() for t, s in tests.items()])
    rows = []
    for arm in record["arms"]:
        entries = evaluation.curves.get(arm["name"]) or []
        size = max(1, math.ceil(len(entries) / CURVE_POINTS))
        for i in range(0, len(entries), size):
            chunk = entries[i : i + size]  # bins of consecutive steps, averaged (the step is the bin's last)
            rows.append([arm["label"], arm["name"], arm["seed"], chunk[-1]["step"]]
                        + [term_mean(chunk, t) for t in TERMS])
    if rows:
        files["curves_csv"] = write("curves.csv", ["label", "arm", "seed", "step"] + list(TERMS), rows)
    return files


_CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.8em 0;font-size:13px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.note{color:#555;font-size:13px}.warn{background:#fff4e0;border-left:4px solid #e69f00;padding:.4em .8em}
@media (prefers-color-scheme:dark){body{background:#181818;color:#ddd}th{background:#2a2a2a}th,td{border-color:#444}
.note{color:#aaa}.warn{background:#3a2d10}}
"""


def _html(record: dict[str, Any], title: str, tables: dict[str, tuple], has_curves: bool) -> str:
    esc = html.escape
    baseline = record["labels"][0]
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<meta name='viewport' content='width=device-width,initial-scale=1'><style>{_CSS}</style></head><body>",
             f"<h1>{esc(title)}</h1>", "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in _setup_lines(record)) + "</ul>"]
    for w in record["warnings"]:
        parts.append(f"<p class='warn'>⚠ {esc(w)}</p>")
    parts += ["<h2>Outputs</h2>", "<p class='note'>Rows: held-out photos; columns: the original and each arm "
              "(its first seed).</p>", "<img src='grid.png' alt='grid of outputs'>"]
    if has_curves:
        parts += ["<h2>Training curves</h2>", "<img src='curves.png' alt='training curves'>",
                  _html_table(*tables["training"]),
                  "<p class='note'>Final = mean over the last 10% of steps, ± sd over seeds. Arms with the same seed "
                  "saw the same batch at every step, so their losses are paired step by step:</p>",
                  _html_table(*tables["training_paired"])]
    parts += ["<h2>Metrics on held-out photos</h2>", "<img src='metrics.png' alt='metrics'>",
              _html_table(*tables["summary"]),
              "<p class='note'>mean ± sd over photos (sd over seeds). "
              + esc(" ".join(_metric_notes())) + "</p>",
              f"<h3>Paired differences against {esc(baseline)}</h3>", _html_table(*tables["paired_baseline"]),
              "<p class='note'>Per photo, A − B with each arm's seeds averaged; two-sided sign and Wilcoxon tests (exact up to 50 photos, 13 with ties).</p>",
              "<details><summary>All pairs</summary>" + _html_table(*tables["paired_all"]) + "</details>",
              "<h2>Batch behaviour</h2>", _html_table(*tables["batch"]),
              "<p class='note'>Mean absolute output difference in [0, 1] units (max over pixels, and the lowest PSNR over photos). "
              "Training mode normalizes with the statistics of the batch at hand (batch norm) — what a model "
              "left in training mode, or trained and served differently, does. The server runs models in eval "
              "mode.</p>",
              "<h2>Files</h2><p>metrics.json (everything), metrics.csv (per arm and photo), summary.csv, paired.csv, "
              f"batch.csv{', curves.csv' if has_curves else ''}.</p></body></html>"]
    return "\n".join(parts)


def _markdown(record: dict[str, Any], title: str, tables: dict[str, tuple], has_curves: bool) -> str:
    baseline = record["labels"][0]
    parts = [f"# {title}", "", *[f"* {line}" for line in _setup_lines(record)], ""]
    for w in record["warnings"]:
        parts += [f"> ⚠ {w}", ""]
    parts += ["## Outputs", "", "Rows: held-out photos; columns: the original and each arm (its first seed).", "",
              "![grid of outputs](grid.png)", ""]
    if has_curves:
        parts += ["## Training curves", "", "![training curves](curves.png)", "", _md_table(*tables["training"]), "",
                  "Final = mean over the last 10% of steps, ± sd over seeds. Arms with the same seed saw the same "
                  "batch at every step, so their losses are paired step by step:", "",
                  _md_table(*tables["training_paired"]), ""]
    parts += ["## Metrics on held-out photos", "", "![metrics](metrics.png)", "", _md_table(*tables["summary"]), "",
              "mean ± sd over photos (sd over seeds). " + " ".join(_metric_notes()), "",
              f"### Paired differences against {baseline}", "", _md_table(*tables["paired_baseline"]), "",
              "Per photo, A − B with each arm's seeds averaged; two-sided sign and Wilcoxon tests (exact up to 50 photos, 13 with ties). All pairs: "
              "[paired.csv](paired.csv), [report.html](report.html).", "",
              "## Batch behaviour", "", _md_table(*tables["batch"]), "",
              "Mean absolute output difference in [0, 1] units (max over pixels, and the lowest PSNR over photos). Training mode "
              "normalizes with the statistics of the batch at hand (batch norm). The server runs models in eval mode.",
              "", "## Files", "",
              "[metrics.json](metrics.json) (everything), [metrics.csv](metrics.csv) (per arm and photo), "
              "[summary.csv](summary.csv), [paired.csv](paired.csv), [batch.csv](batch.csv), "
              + ("[curves.csv](curves.csv), " if has_curves else "") + "[report.html](report.html).", ""]
    return "\n".join(parts)
