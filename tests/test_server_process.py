"""A real uvicorn process started by the test: start, stylize under concurrent load, stop."""

from __future__ import annotations

import concurrent.futures
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def photo(w: int = 64, h: int = 48) -> bytes:
    arr = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def server(make_checkpoint, tmp_path, free_port):
    weights = tmp_path / "weights"
    make_checkpoint("instance", path=weights / "tiny-instance.safetensors")
    port = free_port()
    env = {**os.environ, "STYLE_TRANSFER_WEIGHTS": str(weights), "STYLE_TRANSFER_DEVICE": "cpu",
           "STYLE_TRANSFER_WARMUP_SIZE": "16", "STYLE_TRANSFER_QUEUE_SIZE": "4"}
    log = open(tmp_path / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("server did not become ready:\n" + (tmp_path / "server.log").read_text())
        yield base, proc, tmp_path / "server.log"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


def test_real_server_stylizes_under_load_and_stops_cleanly(server):
    base, proc, log = server
    r = httpx.post(base + "/v1/stylize", files={"file": ("a.jpg", photo())}, data={"model": "tiny-instance"},
                   timeout=60)
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (64, 48)

    def one(i: int) -> int:
        return httpx.post(base + "/v1/stylize", files={"file": ("a.jpg", photo())},
                          data={"model": "tiny-instance"}, timeout=60).status_code

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(one, range(36)))
    # a queue of 4 with 12 clients: some are refused with 503 at once, never anything else
    assert set(codes) <= {200, 503} and codes.count(200) >= 4
    assert httpx.get(base + "/healthz", timeout=5).status_code == 200
    metrics = httpx.get(base + "/metrics", timeout=5).text
    assert 'path="/v1/stylize",status="200"' in metrics

    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    text = log.read_text()
    assert "inference on CPU" in text and "Application shutdown complete" in text
