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
from collections.abc import Callable, Iterator
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


def sample_photo() -> tuple[Image.Image, str]:
    """The photo the HTTP benchmarks send, and where it came from: the first BSDS500 test photo when
    ../shared/data is there (the development machines), else scikit-image's astronaut (the device
    machine has scikit-image but not ../shared), else a gradient (which compresses unrealistically well)."""
    candidates = sorted((ROOT.parent / "shared" / "data" / "content" / "bsds500" / "test").glob("*.jpg"))
    if candidates:
        return Image.open(candidates[0]).convert("RGB"), f"bsds500/test/{candidates[0].name}"
    try:
        from skimage import data

        return Image.fromarray(data.astronaut()), "skimage.data.astronaut"
    except (ImportError, OSError, ValueError):  # no scikit-image, or a wheel without its sample files
        y, x = np.mgrid[0:512, 0:512] / 512
        return Image.fromarray((np.stack([x, y, (x + y) / 2], -1) * 255).astype(np.uint8)), "gradient"


def photo_jpeg(size: int) -> bytes:
    """A photo-like test image (:func:`sample_photo`) resized to size x size, as a JPEG of quality 90."""
    img = sample_photo()[0].resize((size, size), Image.Resampling.LANCZOS)
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 where /proc cannot tell)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (proc(5))
    except (OSError, IndexError, ValueError):
        return 0.0


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


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
        wait_ready(base, 300, lambda: proc.poll() is None)
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(30)


def wait_ready(base: str, timeout_s: float = 300, alive: Callable[[], bool] = lambda: True) -> float:
    """Poll ``base``/readyz until it answers 200; the seconds waited. RuntimeError past ``timeout_s`` or
    once ``alive()`` says the server process has gone."""
    t0 = time.monotonic()
    while True:
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.TransportError:
            pass
        if time.monotonic() - t0 > timeout_s or not alive():
            raise RuntimeError(f"server at {base} did not become ready in {time.monotonic() - t0:.0f} s")
        time.sleep(0.5)


@dataclass
class LoadResult:
    codes: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # of 200 responses
    health: list[float] = field(default_factory=list)
    peak_rss: int = 0
    elapsed: float = 0.0
    busy_without_retry_after: int = 0  # 503 answers that did not say when to retry (the API promises it)
    response_bytes: int = 0  # of 200 responses, in all
    client_cpu_s: float = 0.0  # this (load-generating) process: near `elapsed` per core means it was the limit
    server_cpu_s: float = 0.0  # the server process (when its pid is known)

    @property
    def throughput(self) -> float:
        return self.codes.get(200, 0) / self.elapsed if self.elapsed else 0.0


def drive(base: str, model: str, payload: bytes, clients: int, seconds: float, pid: int | None = None,
          probe_health: bool = True, fields: dict[str, str] | None = None) -> LoadResult:
    """``clients`` threads posting ``payload`` to /v1/stylize for ``seconds``; optionally probe /healthz.

    ``fields`` are extra form fields of each request (e.g. ``{"format": "jpeg"}``)."""
    result = LoadResult()
    form = {"model": model, **(fields or {})}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    response = http.post(base + "/v1/stylize", files={"file": ("p.jpg", payload)}, data=form)
                    code, size = response.status_code, len(response.content)
                    no_retry_after = code == 503 and "retry-after" not in response.headers
                except httpx.TransportError:
                    code, size, no_retry_after = -1, 0, False
                dt = time.perf_counter() - t0
                with lock:
                    result.codes[code] += 1
                    result.busy_without_retry_after += no_retry_after
                    if code == 200:
                        result.latencies.append(dt)
                        result.response_bytes += size
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
    start, client_cpu, server_cpu = time.monotonic(), time.process_time(), cpu_seconds(pid) if pid else 0.0
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.elapsed = time.monotonic() - start
    result.client_cpu_s = time.process_time() - client_cpu
    if pid:
        result.server_cpu_s = cpu_seconds(pid) - server_cpu
    return result
