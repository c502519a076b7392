"""Two checkouts of the project against each other, side by side: did a change cost the CPU path speed?

``--baseline`` is a checkout of the code before the change (``git worktree add --detach /tmp/base <commit>``);
the other is this one. Both run with this interpreter (the same venv, torch and threads), each importing
its own ``style_transfer`` and ``server`` (the child process runs from its checkout, which it puts first on
``sys.path``; the script checks that it does).

* ``server``: both servers are started at once (``python -m server``, the same weights and settings:
  bench_server.py's, a default-size instance-norm network, 512 px JPEG in, PNG out, batching off), and the
  rounds alternate which of them ``--clients`` clients load for ``--seconds`` (after a short unmeasured
  warm-up), so that a machine whose load drifts (another job) hits both alike.
* ``cli``: ``style-transfer stylize`` (``python -m style_transfer``) on the same photos from each
  checkout in turn, whole-process wall time, alternating.

Prints each round, then per checkout the median (min-max) and the ratio of this checkout to the baseline.

    git worktree add --detach /tmp/base HEAD
    python benchmarks/bench_ab.py server --baseline /tmp/base --rounds 4 --seconds 30
    python benchmarks/bench_ab.py cli --baseline /tmp/base --rounds 4
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine  # noqa: E402
from benchmarks.serving import bench_weights, drive, free_port, photo_jpeg, wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def check_imports(checkout: Path) -> None:
    """The child processes of ``checkout`` must import its code, not this one's (or an installed copy)."""
    out = subprocess.run([sys.executable, "-c", "import server, style_transfer; print(server.__file__); "
                          "print(style_transfer.__file__)"], cwd=checkout, capture_output=True, text=True,
                         env=child_env(checkout), check=True).stdout.split()
    if not all(Path(p).resolve().is_relative_to(checkout.resolve()) for p in out):
        raise SystemExit(f"{checkout}: its processes import {out}, not its own code")


def child_env(checkout: Path, **settings: object) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(checkout),
            **{f"STYLE_TRANSFER_{k.upper()}": str(v) for k, v in settings.items()}}


@contextlib.contextmanager
def server(checkout: Path, weights: Path, **settings: object) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "server", "--port", str(port)], cwd=checkout,
                            env=child_env(checkout, weights=weights, **settings),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, 300, lambda: proc.poll() is None)
        yield base
    finally:
        proc.terminate()
        proc.wait(30)


def report(times: dict[str, list[float]], unit: str, higher_is_better: bool) -> None:
    med = {name: statistics.median(v) for name, v in times.items()}
    for name, values in times.items():
        print(f"| {name} | {med[name]:.2f} ({min(values):.2f}-{max(values):.2f}) {unit} |")
    ratio = med["this"] / med["baseline"] if higher_is_better else med["baseline"] / med["this"]
    print(f"\nthis / baseline (speed, > 1 is faster): {ratio:.3f}")


def bench_server(args: argparse.Namespace, checkouts: dict[str, Path]) -> None:
    payload = photo_jpeg(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp)
        model = bench_weights(weights)
        with contextlib.ExitStack() as stack:
            bases = {name: stack.enter_context(server(path, weights, max_size=args.size,
                                                      queue_size=4 * args.clients))
                     for name, path in checkouts.items()}
            throughput: dict[str, list[float]] = {name: [] for name in checkouts}
            print(f"| round | checkout | images/s | p50 latency (s) | statuses |\n|---|---|---|---|---|")
            for r in range(args.rounds):
                order = list(checkouts) if r % 2 == 0 else list(reversed(checkouts))
                for name in order:
                    drive(bases[name], model, payload, args.clients, 3, probe_health=False)  # warm the path
                    result = drive(bases[name], model, payload, args.clients, args.seconds, probe_health=False)
                    throughput[name].append(result.throughput)
                    p50 = statistics.median(result.latencies) if result.latencies else float("nan")
                    print(f"| {r + 1} | {name} | {result.throughput:.2f} | {p50:.2f} | {dict(result.codes)} |",
                          flush=True)
    print(f"\n{args.clients} clients, {args.size} px JPEG in, PNG out, {args.seconds:.0f} s per round; images/s:\n")
    print("| checkout | images/s, median (min-max) |\n|---|---|")
    report(throughput, "", higher_is_better=True)


def bench_cli(args: argparse.Namespace, checkouts: dict[str, Path]) -> None:
    photos = [photo_jpeg(args.size)] * args.images
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bench_weights(folder)
        inputs = []
        for i, data in enumerate(photos):
            (folder / f"in{i}.jpg").write_bytes(data)
            inputs.append(str(folder / f"in{i}.jpg"))
        seconds: dict[str, list[float]] = {name: [] for name in checkouts}
        print("| round | checkout | seconds |\n|---|---|---|")
        for r in range(args.rounds + 1):  # round 0 warms the file cache and is not counted
            order = list(checkouts) if r % 2 == 0 else list(reversed(checkouts))
            for name in order:
                cmd = [sys.executable, "-m", "style_transfer", "stylize", *inputs, "--model", "bench",
                       "--weights", str(folder), "--out", str(folder / f"out-{name}")]
                t0 = time.perf_counter()
                subprocess.run(cmd, cwd=checkouts[name], env=child_env(checkouts[name]), check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                elapsed = time.perf_counter() - t0
                if r > 0:
                    seconds[name].append(elapsed)
                print(f"| {r} | {name} | {elapsed:.2f}{'' if r else ' (warm-up)'} |", flush=True)
    print(f"\nstyle-transfer stylize, {args.images} photos of {args.size} px, whole process; seconds:\n")
    print("| checkout | seconds, median (min-max) |\n|---|---|")
    report(seconds, "s", higher_is_better=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("server", "cli"))
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the code before the change")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--size", type=int, default=512, help="square JPEG size (px)")
    parser.add_argument("--seconds", type=float, default=30, help="server: load per round")
    parser.add_argument("--images", type=int, default=4, help="cli: photos per run")
    args = parser.parse_args()
    checkouts = {"baseline": args.baseline.resolve(), "this": ROOT}
    for path in checkouts.values():
        check_imports(path)
    head = {name: subprocess.run(["git", "-C", str(p), "describe", "--always", "--dirty"], capture_output=True,
                                 text=True).stdout.strip() for name, p in checkouts.items()}
    print(f"machine: {machine()}; baseline {checkouts['baseline']} ({head['baseline']}), this {ROOT} ({head['this']})")
    (bench_server if args.what == "server" else bench_cli)(args, checkouts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
