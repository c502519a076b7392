"""Helpers for the HTTP benchmarks: start a server process, drive it with client threads."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
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


def bench_weights(folder: Path) -> str:
    """A default-size instance-norm network (speed does not depend on the weights' values)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.reference import bench_model
    from style_transfer.checkpoint import ModelInfo, save_model

    model = bench_model("instance")
    save_model(folder / "bench.safetensors", model, ModelInfo(model.config, style_name="bench"))
    return "bench"


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@contextlib.contextmanager
def running_server(weights: Path, **settings: object) -> Iterator[tuple[str, subprocess.Popen]]:
    """`python -m server` on a free port with STYLE_TRANSFER_<KEY>=value settings; waits for /readyz."""
    port = free_port()
    env = {**os.environ, "STYLE_TRANSFER_WEIGHTS": str(weights),
           **{f"STYLE_TRANSFER_{k.upper()}": str(v) for k, v in settings.items()}}
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
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("server did not become ready")
            time.sleep(0.5)
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(30)


@dataclass
class LoadResult:
    codes: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # of 200 responses
    health: list[float] = field(default_factory=list)
    peak_rss: int = 0
    elapsed: float = 0.0

    @property
    def throughput(self) -> float:
        return self.codes.get(200, 0) / self.elapsed if self.elapsed else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def drive(base: str, model: str, payload: bytes, clients: int, seconds: float, pid: int | None = None,
          probe_health: bool = True) -> LoadResult:
    """``clients`` threads posting ``payload`` to /v1/stylize for ``seconds``; optionally probe /healthz."""
    result = LoadResult()
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    code = http.post(base + "/v1/stylize", files={"file": ("p.jpg", payload)},
                                     data={"model": model}).status_code
                except httpx.TransportError:
                    code = -1
                dt = time.perf_counter() - t0
                with lock:
                    result.codes[code] += 1
                    if code == 200:
                        result.latencies.append(dt)
                if code == 503:
                    time.sleep(0.05)  # a polite client honours "retry shortly"

    def prober() -> None:
        with httpx.Client(timeout=10) as http:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                ok = http.get(base + "/healthz").status_code == 200
                result.health.append(time.perf_counter() - t0 if ok else float("inf"))
                if pid:
                    result.peak_rss = max(result.peak_rss, rss_bytes(pid))
                time.sleep(0.2)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    if probe_health:
        threads.append(threading.Thread(target=prober))
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.elapsed = time.monotonic() - start
    return result
