"""Timing helpers shared by the benchmark scripts: alternate the contenders, report medians and ranges."""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def stats_ms(samples: list[float]) -> dict[str, float | int]:
    """Median, p90, min and max of times in seconds, as ms."""
    ms = [t * 1e3 for t in samples]
    return {"median": statistics.median(ms), "p90": percentile(ms, 90), "min": min(ms), "max": max(ms), "n": len(ms)}


def time_calls(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> dict[str, dict]:
    """``fn`` timed call by call after ``warmup`` calls: wall clock to a synchronize, and on a GPU also
    CUDA events around the call (the device's time, without the host's wait for it)."""
    cuda = device.type == "cuda"
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize(device)
    wall, events = [], []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        fn()
        if cuda:
            end.record()
            torch.cuda.synchronize(device)
            events.append((start, end))
        wall.append(time.perf_counter() - t0)
    out = {"wall_ms": stats_ms(wall)}
    if cuda:
        out["gpu_ms"] = stats_ms([s.elapsed_time(e) / 1e3 for s, e in events])
    return out


def alternate(contenders: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every contender ``warmup`` times, then ``repeats`` rounds of all of them in turn, so slow
    drifts of the machine (other load, clocks) hit each contender alike."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            times[name].append(timed(fn))
    return times


def summary(samples: list[float]) -> str:
    """'median (min-max)' in ms; two decimals below 10 ms (GPU times), where whole ms would hide them."""
    ms = [t * 1e3 for t in samples]
    fmt = "{:.0f}" if statistics.median(ms) >= 10 else "{:.2f}"
    return f"{fmt.format(statistics.median(ms))} ({fmt.format(min(ms))}-{fmt.format(max(ms))})"


def frame_rate(seconds: list[float], frames: int) -> str:
    """'median (min-max)' frames per second of runs of ``frames`` frames that took ``seconds``."""
    fps = [frames / t for t in seconds]
    return f"{statistics.median(fps):.2f} ({min(fps):.2f}-{max(fps):.2f})"


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"CUDA: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")


def train_step_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options of the training-step benchmarks: a 256x256 batch of 4, 5 repeats (3 with --quick)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    return parser


def train_step_setup(args: argparse.Namespace) -> tuple[torch.device, str, Callable[[], None]]:
    """The device, training precision (as `train` resolves it) and a sync for timing, of the parsed options."""
    from style_transfer.device import resolve_device, resolve_precision

    if args.quick:
        args.repeats = 3
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return device, resolve_precision("auto", device, training=True), sync
