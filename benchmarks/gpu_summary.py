"""Summary of a benchmarks/gpu_server.sh run: the tables and issue 18's goals, from what the run wrote.

Reads OUT/raw.json (benchmarks/raw_pipeline.py) and OUT/load.jsonl (benchmarks/load_test.py, one line per
load level), and writes OUT/summary.txt (for a person) and OUT/summary.json (the goals' verdicts and the
figures behind them). A goal whose measurement is missing (a QUICK run, a phase that failed or was
skipped) is "not measured", never met.

    python benchmarks/gpu_summary.py --out /tmp/gpu_dry
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

# Issue 18's goals for the server on one GPU.
NETWORK_MS = 1.5  # network alone, 1024x1024, batch 1
SERVER_VS_RAW = 0.85  # server at 16 clients, 1024 px JPEG in and out, against the raw pipeline
ONE_CLIENT_P99_MS = 30.0  # one client, 1024 px JPEG round trip
GOAL_SIZE, GOAL_CLIENTS = 1024, 16


def read_loads(path: Path) -> list[dict]:
    """The load levels of load.jsonl, skipping a line cut short by a killed run."""
    if not path.exists():
        return []
    loads = []
    for line in path.read_text().splitlines():
        try:
            loads.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return loads


def server_errors(record: dict) -> dict[str, int]:
    """What a load level got that the API does not allow: 5xx other than 503, transport errors (-1),
    and 503 answers without Retry-After."""
    bad = {code: n for code, n in record["codes"].items() if int(code) < 0 or (int(code) >= 500 and code != "503")}
    if record.get("busy_without_retry_after"):
        bad["503 without Retry-After"] = record["busy_without_retry_after"]
    return bad


def _verdict(value: float | None, limit: float, at_most: bool) -> str:
    if value is None:
        return "not measured"
    return "met" if (value <= limit if at_most else value >= limit) else "NOT met"


def evaluate_goals(raw: dict, loads: list[dict]) -> list[dict]:
    """Issue 18's four goals, each with its verdict ("met", "NOT met", "not measured") and figures."""
    goals = []
    network = raw.get("network", {}).get("sizes", {}).get(str(GOAL_SIZE), {}).get("network", {})
    timing = network.get("gpu_ms") or network.get("wall_ms")
    value = timing["median"] if timing else None
    compiled = raw.get("network_compiled", {}).get("sizes", {}).get(str(GOAL_SIZE), {}).get("network", {})
    compiled_timing = compiled.get("gpu_ms") or compiled.get("wall_ms")
    goals.append({"goal": f"network {GOAL_SIZE}x{GOAL_SIZE} batch 1 <= {NETWORK_MS} ms (server default: eager)",
                  "verdict": _verdict(value, NETWORK_MS, at_most=True), "ms": value,
                  "timer": "cuda events" if network.get("gpu_ms") else "wall clock",
                  "compiled_ms": compiled_timing["median"] if compiled_timing else None})

    raw_sizes = raw.get("pipeline", {}).get("sizes", {}).get(str(GOAL_SIZE), {})
    raw_best = raw_sizes.get("best_images_per_s")
    raw_same = raw_sizes.get("threads", {}).get(str(GOAL_CLIENTS), {}).get("images_per_s")
    level = next((r for r in loads if r["size"] == GOAL_SIZE and r["clients"] == GOAL_CLIENTS
                  and r["format"] == "jpeg"), None)
    served = level["throughput"] if level else None
    ratio = served / raw_best if served is not None and raw_best else None
    same = served / raw_same if served is not None and raw_same else None
    goals.append({"goal": f"server, {GOAL_CLIENTS} clients, {GOAL_SIZE} px JPEG in and out >= "
                          f"{SERVER_VS_RAW:.0%} of the raw pipeline (its best thread count)",
                  "verdict": _verdict(ratio, SERVER_VS_RAW, at_most=False), "ratio": ratio,
                  "server_images_per_s": served, "raw_best_images_per_s": raw_best,
                  f"ratio_vs_raw_{GOAL_CLIENTS}_threads": same})

    one = next((r for r in loads if r["size"] == GOAL_SIZE and r["clients"] == 1 and r["format"] == "jpeg"), None)
    p99 = one["latency_ms"]["p99"] if one else None
    goals.append({"goal": f"one client, {GOAL_SIZE} px JPEG round trip p99 <= {ONE_CLIENT_P99_MS:.0f} ms",
                  "verdict": _verdict(p99, ONE_CLIENT_P99_MS, at_most=True), "p99_ms": p99,
                  "requests": one["ok"] if one else None})

    errors = {f"{r['size']} px, {r['clients']} clients": server_errors(r) for r in loads}
    errors = {level: bad for level, bad in errors.items() if bad}
    levels = [f"{r['size']}x{r['clients']}" for r in loads]
    goals.append({"goal": "zero 5xx at any load; only 503 with Retry-After past the queue",
                  "verdict": "not measured" if not loads else ("NOT met" if errors else "met"),
                  "levels": levels, "errors": errors,
                  "busy_503": sum(r["codes"].get("503", 0) for r in loads)})
    return goals


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _codes(record: dict) -> str:
    """'200: 950, 503: 12' (-1: a transport error), with the 503s that lacked Retry-After."""
    text = ", ".join(f"{code}: {n}" for code, n in record["codes"].items())
    missing = record.get("busy_without_retry_after")
    return f"{text} ({missing} 503 without Retry-After)" if missing else text


def profile_table(path: Path, top: int = 25) -> list[str]:
    """Where the server's process spent its samples (py-spy's raw format: one folded stack and its count a
    line), by the frame each sample was in and by the project's own functions on the stack: the
    server's one core is what limits it on a GPU (docs/benchmarks.md), this says what fills it."""
    own, inside, total = Counter(), Counter(), 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n, frames = int(count), stack.split(";")
        total += n
        own[frames[-1]] += n
        for frame in {f for f in frames if "style_transfer/" in f or "server/" in f}:
            inside[frame] += n
    if not total:
        return []
    lines = ["", f"server process, sampled by py-spy during the profiled level ({total} samples of its busy threads):",
             "| % of samples | frame they were in |", "|---|---|"]
    lines += [f"| {100 * n / total:.1f} | {frame[:140]} |" for frame, n in own.most_common(top)]
    lines += ["", "| % of samples with it on the stack | the project's frame |", "|---|---|"]
    lines += [f"| {100 * n / total:.1f} | {frame[:140]} |" for frame, n in inside.most_common(top)]
    return lines


def render(raw: dict, loads: list[dict], goals: list[dict], phases: list[str], profile: list[str] = ()) -> str:
    """summary.txt: where the run went, the tables, the goals."""
    lines = ["GPU server benchmark (issue 18, part 1): benchmarks/gpu_server.sh", ""]
    if raw.get("machine"):
        lines.append(f"machine: {raw['machine']}, {raw.get('cpu_count')} CPUs")
    if phases:
        lines += ["phases (name, exit status, seconds):", *(f"  {p}" for p in phases)]
    for key in ("network", "network_compiled"):
        section = raw.get(key)
        if not section:
            continue
        c = section["config"]
        lines += ["", f"{key}: {c['model']} on {c['device']}, {c['precision']}, compile={c['compile']} "
                      "(median ms, batch 1; GPU = CUDA events, wall = to a synchronize)",
                  "| size | network GPU | network wall | Stylizer.run GPU | Stylizer.run wall |",
                  "|---|---|---|---|---|"]
        for size, t in section["sizes"].items():
            cells = [_fmt(t[k].get(m, {}).get("median"), ".3f")
                     for k in ("network", "run") for m in ("gpu_ms", "wall_ms")]
            lines.append(f"| {size} | {' | '.join(cells)} |")
    pipeline = raw.get("pipeline")
    if pipeline:
        lines += ["", "raw pipeline, no HTTP (decode JPEG -> stylize -> encode JPEG; stylize one at a time):",
                  "| size | threads | images/s | decode ms | stylize ms | encode ms | p99 ms |",
                  "|---|---|---|---|---|---|---|"]
        for size, s in pipeline["sizes"].items():
            for threads, r in s["threads"].items():
                st = r["stages_ms"]
                lines.append(f"| {size} | {threads} | {r['images_per_s']:.2f} | {st['decode']['median']:.1f} | "
                             f"{st['stylize']['median']:.1f} | {st['encode']['median']:.1f} | "
                             f"{_fmt(r['latency_p99_ms'])} |")
    if loads:
        lines += ["", f"server over HTTP on loopback (model {loads[0]['model']}, {loads[0]['photo']}; "
                      "vs raw = against the raw pipeline's best at that size):",
                  "| size | clients | out | images/s | vs raw | p50 ms | p99 ms | statuses | server CPU cores | "
                  "load generator CPU cores |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in loads:
            best = (pipeline or {}).get("sizes", {}).get(str(r["size"]), {}).get("best_images_per_s")
            lat = r["latency_ms"]
            server_cpu = r["server_cpu_s"] / r["elapsed_s"] if r.get("server_cpu_s") else None
            lines.append(f"| {r['size']} | {r['clients']} | {r['format']} | {r['throughput']:.2f} | "
                         f"{_fmt(r['throughput'] / best if best else None, '.2f')} | {_fmt(lat['p50'])} | "
                         f"{_fmt(lat['p99'])} | {_codes(r)} | {_fmt(server_cpu, '.2f')} | "
                         f"{r['client_cpu_s'] / r['elapsed_s']:.2f} |")
    lines += list(profile)
    lines += ["", "goals:"]
    for g in goals:
        detail = {k: v for k, v in g.items() if k not in ("goal", "verdict")}
        lines.append(f"- {g['verdict']}: {g['goal']}  {json.dumps(detail)}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the folder gpu_server.sh wrote to")
    parser.add_argument("--phases", type=Path, help="a file of 'name rc seconds' lines from gpu_server.sh")
    args = parser.parse_args()
    raw_path = args.out / "raw.json"
    try:
        raw = json.loads(raw_path.read_text()) if raw_path.exists() else {}
    except json.JSONDecodeError:
        raw = {}
    loads = read_loads(args.out / "load.jsonl")
    phases = args.phases.read_text().splitlines() if args.phases and args.phases.exists() else []
    goals = evaluate_goals(raw, loads)
    profile_path = args.out / "server_profile.txt"
    text = render(raw, loads, goals, phases, profile_table(profile_path) if profile_path.exists() else [])
    (args.out / "summary.txt").write_text(text)
    (args.out / "summary.json").write_text(json.dumps({"goals": goals, "phases": phases}, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
