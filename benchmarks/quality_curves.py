"""Quality per training step (issue 16, part 4): the validation measures each run of a plan logged.

Every sample step of a run with validation photos logs ``val_ssim`` (kept: luminance SSIM of the
outputs to the held-out photos) and ``val_style`` (their style loss relative to the photos' own; lower
= more of the painting) in its log.jsonl (validation.py). This reads them for every run of a plan and
prints one table per measure (a row per run, a column per sample step) and, with ``--plot``, draws both
against the step, so recipes can be compared at equal steps: which reaches today's 3000-step quality in
1500 steps or fewer.

    python benchmarks/quality_curves.py --plan benchmarks/quality-plan.toml --runs runs/quality
    python benchmarks/quality_curves.py --plan benchmarks/quality-plan.toml --runs runs/quality --plot docs/quality-curves.png

``--plan``/``--runs`` may be given several times, in pairs, to put runs of several plans in one table:
the `--extend` curves of benchmarks/multistyle-plan.toml beside the single-style runs of the quality plan
(issue 17), e.g. ``--plan benchmarks/quality-plan.toml --runs runs/quality --plan
benchmarks/multistyle-plan.toml --runs runs/multistyle --only warm-auto-picabia --only extend-picabia``.

``--grad`` adds the gradient norms (before clipping) of the steps between sample steps: median, 99th
percentile and largest, per painting for a multi-style run (each step trains one painting, logged as
its ``style_index``). They tell a run that is heading for divergence (docs/multi-style.md, "Stability").
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from style_transfer.balance import BASE_WEIGHT, is_auto  # noqa: E402
from style_transfer.validation import paintings_measured  # noqa: E402
from style_transfer.zoo_build import load_plan, select  # noqa: E402

MEASURES = {"val_ssim": "kept (luminance SSIM; higher keeps more of the photo)",
            "val_style": "style (relative to the photo's own; lower = more of the painting)",
            "style_weight": "style weight (where --style-weight auto had it; a fixed weight throughout)"}
GRADIENTS = {"grad_median": "gradient norm before clipping, median of the steps since the previous sample",
             "grad_p99": "gradient norm before clipping, 99th percentile of those steps",
             "grad_max": "gradient norm before clipping, the largest of those steps"}
FORMATS = {"style_weight": "{:.3g}", **dict.fromkeys(GRADIENTS, "{:.1f}")}


def curves(plan: Path, runs: Path, only: list[str] | None = None, per_painting: bool = False,
           grad: bool = False) -> dict[str, dict[str, dict[int, float]]]:
    """Run name -> measure -> {step: value}, for every run of the plan that has logged validation.

    A multi-style run (its log has each painting's ``val_ssim/<painting>``) gives a row per painting,
    ``<run>/<painting>``; with ``per_painting`` its steps are each painting's share (the step divided
    by the number of paintings it trains, one painting per step), the steps a single-style run of that
    painting would have had: the study's equal-steps comparison (docs/multi-style.md). ``grad`` adds
    :data:`GRADIENTS` (:func:`gradients`).
    """
    out: dict[str, dict[str, dict[int, float]]] = {}
    for m in select(load_plan(plan), only):
        if m.waits_for is not None:  # an extension whose base is not trained: no run yet
            continue
        log = m.run(runs).read_log()
        entries = [e for e in log if "val_ssim" in e]
        if not entries:
            continue
        paintings = paintings_measured(entries[-1])
        share = len(paintings) if per_painting and paintings else 1
        steps = [int(e["step"]) for e in entries]
        # A multi-style run's paintings in the order of their style numbers (an extension's start after
        # its base's styles).
        indices = sorted({int(e["style_index"]) for e in log if "style_index" in e}) if grad else []
        for i, painting in enumerate(paintings or [""]):
            suffix = f"/{painting}" if painting else ""
            row = {key: {int(e["step"]) // share: float(e[key + suffix]) for e in entries if key + suffix in e}
                   for key in ("val_ssim", "val_style")}
            weights = _weights(log, steps, m.spec.loss.style_weight, "style_weight" + suffix)
            row["style_weight"] = {step // share: w for step, w in weights.items()}
            if grad:
                index = indices[i] if painting and i < len(indices) else None
                for key, values in gradients(log, steps, index).items():
                    row[key] = {step // share: v for step, v in values.items()}
            out[m.name + suffix] = row
    return out


def several(plans: list[tuple[Path, Path]], only: list[str] | None = None,
            per_painting: bool = False, grad: bool = False) -> dict[str, dict[str, dict[int, float]]]:
    """:func:`curves` of several (plan, runs folder) pairs in one table, in the order given; ``only``
    names runs of any of them (a name in none is an error, as for one plan)."""
    entries = {path: [m.name for m in load_plan(path)] for path, _ in plans}
    missing = sorted(set(only or ()) - {n for names in entries.values() for n in names})
    if missing:
        raise SystemExit(f"not in {', '.join(map(str, entries))}: {', '.join(missing)}")
    out: dict[str, dict[str, dict[int, float]]] = {}
    for path, folder in plans:
        mine = [n for n in only if n in entries[path]] if only else None
        if mine != []:
            out.update(curves(path, folder, mine, per_painting, grad))
    return out


def gradients(log: list[dict], steps: list[int], style_index: int | None = None) -> dict[str, dict[int, float]]:
    """:data:`GRADIENTS` at each of ``steps``, over the logged gradient norms of the steps after the
    previous one (of those that trained style number ``style_index`` only, when given); a step with no
    such steps before it is left out."""
    norms = [(int(e["step"]), float(e["grad_norm"])) for e in log if "grad_norm" in e
             and (style_index is None or e.get("style_index") == style_index)]
    out: dict[str, dict[int, float]] = {key: {} for key in GRADIENTS}
    for previous, step in zip([0, *steps], steps):
        window = sorted(g for s, g in norms if previous < s <= step)
        if window:
            out["grad_median"][step] = statistics.median(window)
            out["grad_p99"][step] = window[min(len(window) - 1, math.ceil(0.99 * len(window)) - 1)]
            out["grad_max"][step] = window[-1]
    return out


def _weights(log: list[dict], steps: list[int], setting: float | str, key: str = "style_weight") -> dict[int, float]:
    """The style weight in force at each of ``steps``: the last auto update at or before it (balance.py;
    logged under ``key``: ``style_weight/<painting>`` for each painting of a multi-style run), else the
    start (a fixed weight throughout)."""
    weight = BASE_WEIGHT if is_auto(setting) else float(setting)
    updates = {int(e["step"]): float(e[key]) for e in log if key in e}
    out = {}
    for step in steps:
        done = [s for s in updates if s <= step]
        out[step] = updates[max(done)] if done else weight
    return out


def table(data: dict[str, dict[str, dict[int, float]]], measure: str) -> str:
    """One measure as a Markdown table: a row per run, a column per step any run logged."""
    steps = sorted({s for run in data.values() for s in run[measure]})
    lines = ["| run | " + " | ".join(str(s) for s in steps) + " |", "| --- |" + " ---: |" * len(steps)]
    for name, run in data.items():
        cells = [FORMATS.get(measure, "{:.3f}").format(run[measure][s]) if s in run[measure] else "" for s in steps]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(data: dict[str, dict[str, dict[int, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MEASURES), figsize=(5.5 * len(MEASURES), 4), constrained_layout=True)
    for ax, (key, title) in zip(axes, MEASURES.items()):
        for name, run in data.items():
            steps = sorted(run[key])
            ax.plot(steps, [run[key][s] for s in steps], marker="o", label=name)
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].axhline(0.40, color="grey", linestyle="--", linewidth=1)  # validation.LOST_PHOTO_SSIM
    axes[2].set_yscale("log", base=2)
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, action="append",
                        help="a plan (repeatable, each with its --runs; default: benchmarks/quality-plan.toml)")
    parser.add_argument("--runs", type=Path, action="append", help="its runs folder (default: runs/quality)")
    parser.add_argument("--only", action="append", help="a run name of any of the plans (repeatable)")
    parser.add_argument("--plot", type=Path, help="also draw the curves into this PNG")
    parser.add_argument("--per-painting", action="store_true",
                        help="a multi-style run's steps as each painting's share (step / paintings), to set "
                             "its rows beside single-style runs at equal steps per painting")
    parser.add_argument("--grad", action="store_true",
                        help="also the gradient norms between sample steps (median, p99, largest)")
    args = parser.parse_args()
    plans = args.plan or [ROOT / "benchmarks" / "quality-plan.toml"]
    runs = args.runs or [ROOT / "runs" / "quality"]
    if len(plans) != len(runs):
        parser.error(f"give one --runs per --plan ({len(plans)} plans, {len(runs)} runs folders)")
    data = several(list(zip(plans, runs)), args.only, args.per_painting, args.grad)
    if not data:
        raise SystemExit(f"no run of {', '.join(map(str, plans))} has logged validation measures yet")
    for key, title in {**MEASURES, **(GRADIENTS if args.grad else {})}.items():
        print(f"\n{title}\n\n{table(data, key)}")
    if args.plot:
        plot(data, args.plot)
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
