"""Load test of the HTTP service: many concurrent clients on loopback for a bounded time.

Starts `python -m server` (or uses --url), sends 512x512 JPEG uploads from N client threads, and at the
same time probes /healthz. Reports status codes, throughput, p50/p99 latency, /healthz latency while
busy, and the server's peak resident memory. Fails (exit 1) on any 5xx other than the documented
503 (queue full) and 504 (deadline), or when /healthz stops answering quickly.

    python benchmarks/load_test.py --quick
    python benchmarks/load_test.py --clients 16 --seconds 60 --size 512
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def photo_jpeg(size: int) -> bytes:
    """A photo-like test image: the first BSDS500 test photo when ../shared/data is there, else a gradient."""
    candidates = sorted((ROOT.parent / "shared" / "data" / "content" / "bsds500" / "test").glob("*.jpg"))
    if candidates:
        img = Image.open(candidates[0]).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    else:
        y, x = np.mgrid[0:size, 0:size] / size
        img = Image.fromarray((np.stack([x, y, (x + y) / 2], -1) * 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tiny_weights(folder: Path) -> str:
    """A default-size network with random weights (speed does not depend on the weights)."""
    import torch

    from style_transfer.checkpoint import ModelInfo, save_model
    from style_transfer.network import TransformerConfig, TransformerNet

    torch.manual_seed(0)
    config = TransformerConfig()
    save_model(folder / "bench.safetensors", TransformerNet(config), ModelInfo(config, style_name="bench"))
    return "bench"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an already running server (default: start one)")
    parser.add_argument("--model", help="model name (default: the first one the server lists)")
    parser.add_argument("--weights", type=Path, help="weights folder for the started server "
                        "(default: a temporary one with a random default-size network)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--queue-size", type=int, default=8)
    parser.add_argument("--timeout-s", type=float, default=20, help="server request deadline")
    parser.add_argument("--quick", action="store_true", help="8 clients, 15 s, 256 px")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.seconds, args.size = 8, 15, 256

    proc = None
    tmp = tempfile.TemporaryDirectory()
    base = args.url
    if base is None:
        weights = args.weights
        if weights is None:
            weights = Path(tmp.name)
            tiny_weights(weights)
        port = free_port()
        env = {**os.environ, "STYLE_TRANSFER_WEIGHTS": str(weights), "STYLE_TRANSFER_QUEUE_SIZE": str(args.queue_size),
               "STYLE_TRANSFER_REQUEST_TIMEOUT_S": str(args.timeout_s), "STYLE_TRANSFER_MAX_SIZE": str(args.size)}
        proc = subprocess.Popen([sys.executable, "-m", "server", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or (proc and proc.poll() is not None):
                print("server did not become ready", file=sys.stderr)
                return 1
            time.sleep(0.5)
        model = args.model or httpx.get(base + "/v1/models").json()["models"][0]["name"]
        payload = photo_jpeg(args.size)
        stop = time.monotonic() + args.seconds
        codes: Counter[int] = Counter()
        latencies: list[float] = []
        health: list[float] = []
        peak_rss = [0]
        lock = threading.Lock()

        def client_loop() -> None:
            with httpx.Client(timeout=120) as http:
                while time.monotonic() < stop:
                    t0 = time.perf_counter()
                    try:
                        r = http.post(base + "/v1/stylize", files={"file": ("p.jpg", payload)}, data={"model": model})
                        code = r.status_code
                    except httpx.TransportError:
                        code = -1
                    dt = time.perf_counter() - t0
                    with lock:
                        codes[code] += 1
                        if code == 200:
                            latencies.append(dt)
                    if code == 503:
                        time.sleep(0.05)  # a polite client honours "retry shortly"

        def prober() -> None:
            with httpx.Client(timeout=10) as http:
                while time.monotonic() < stop:
                    t0 = time.perf_counter()
                    ok = http.get(base + "/healthz").status_code == 200
                    health.append(time.perf_counter() - t0 if ok else float("inf"))
                    if proc:
                        peak_rss[0] = max(peak_rss[0], rss_bytes(proc.pid))
                    time.sleep(0.2)

        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(args.clients + 1) as pool:
            futures = [pool.submit(client_loop) for _ in range(args.clients)] + [pool.submit(prober)]
            for f in futures:
                f.result()
        elapsed = time.monotonic() - start
    finally:
        if proc:
            proc.terminate()
            proc.wait(30)
        tmp.cleanup()

    ok = codes.get(200, 0)
    bad = {c: n for c, n in codes.items() if c >= 500 and c not in (503, 504) or c < 0}
    print(f"load test: {args.clients} clients, {args.seconds:.0f} s, {args.size}x{args.size} JPEG, model {model}")
    print(f"| metric | value |\n|---|---|")
    print(f"| responses by status | {dict(sorted(codes.items()))} |")
    print(f"| throughput (200/s) | {ok / elapsed:.2f} |")
    print(f"| latency p50 / p99 (s) | {percentile(latencies, 50):.2f} / {percentile(latencies, 99):.2f} |")
    print(f"| /healthz while busy p50 / max (ms) | {percentile(health, 50) * 1e3:.1f} / {max(health) * 1e3:.1f} |")
    if proc:
        print(f"| server peak RSS (MB) | {peak_rss[0] / 1e6:.0f} |")
    failures = []
    if bad:
        failures.append(f"unexpected statuses {bad}")
    if not health or max(health) > 1.0:
        failures.append("/healthz took over 1 s while busy")
    if ok == 0:
        failures.append("no request succeeded")
    for failure in failures:
        print("FAIL:", failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
