"""Timing helpers shared by the benchmark scripts: alternate the contenders, report medians and ranges."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


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


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"CUDA: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
