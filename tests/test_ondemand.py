"""OnDemandWorker (server/ondemand.py): the plain app, its models loaded on first use through a cache.

Ray Serve's ``@serve.multiplexed`` is that cache in production (tests/test_ray_serve.py); here a small LRU
stands in for it, so these run without Ray, in a fraction of a second each.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.metrics import Metrics
from server.ondemand import OnDemandWorker
from server.settings import Settings
from style_transfer.imageio import LoadedImage
from style_transfer.stylize import Stylizer

MODELS = ("tiny-batch", "tiny-instance")


class LruCache:
    """What @serve.multiplexed does for a replica, without Ray: an LRU of ``capacity`` models, one load at
    a time; it records every load."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.models: OrderedDict[str, Stylizer] = OrderedDict()
        self.loads: list[str] = []
        self.worker: OnDemandWorker | None = None
        self._lock = asyncio.Lock()

    def make_worker(self, settings: Settings, metrics: Metrics) -> OnDemandWorker:
        self.worker = OnDemandWorker(settings, metrics, self.load)
        return self.worker

    async def load(self, name: str) -> Stylizer:
        async with self._lock:
            if name not in self.models:
                if len(self.models) >= self.capacity:
                    self.models.popitem(last=False)
                self.loads.append(name)
                self.models[name] = await asyncio.to_thread(self.worker.open, name)
            self.models.move_to_end(name)
            return self.models[name]


def png_bytes(w: int = 40, h: int = 24, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def weights(make_checkpoint, tmp_path) -> Path:
    folder = tmp_path / "weights"
    make_checkpoint("batch", path=folder / f"{MODELS[0]}.safetensors", trained=True)
    make_checkpoint("instance", path=folder / f"{MODELS[1]}.safetensors", trained=True)
    return folder


@pytest.fixture
def settings(weights) -> Settings:
    return Settings(weights=weights, device="cpu", warmup_size=16)


@pytest.fixture
def serve(settings):
    """``serve(capacity) -> (client, cache)``: the app over an OnDemandWorker with an LRU of that size."""
    opened = []

    def make(capacity: int = 2) -> tuple[TestClient, LruCache]:
        cache = LruCache(capacity)
        client = TestClient(create_app(settings, worker_factory=cache.make_worker))
        client.__enter__()
        opened.append(client)
        return client, cache

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@contextlib.contextmanager
def plain_client(settings: Settings) -> Iterator[TestClient]:
    """The plain server (every model loaded at start), ready."""
    with TestClient(create_app(settings)) as client:
        end = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < end, "the plain server never became ready"
            time.sleep(0.02)
        yield client


def stylize(client: TestClient, model: str, seed: int = 0):
    return client.post("/v1/stylize", data={"model": model}, files={"file": ("p.png", png_bytes(seed=seed))})


def test_ready_at_start_with_the_plain_servers_catalog_and_nothing_loaded(serve, settings):
    client, cache = serve()
    # start() returned once the catalog was read: ready at once, with no model resident.
    assert client.get("/readyz").json() == {"status": "ready", "models": 0}
    with plain_client(settings) as plain:
        expected = plain.get("/v1/models").json()["models"]
    # The same summaries (parameters counted on a weightless model), from headers alone.
    assert client.get("/v1/models").json()["models"] == expected
    assert cache.loads == []


def test_loads_only_what_is_asked_and_answers_as_the_plain_server(serve, settings):
    client, cache = serve()
    response = stylize(client, MODELS[1])
    assert response.status_code == 200 and response.headers["x-model"] == MODELS[1]
    assert cache.loads == [MODELS[1]]
    assert client.get("/readyz").json()["models"] == 1
    assert stylize(client, MODELS[1], seed=1).status_code == 200
    assert cache.loads == [MODELS[1]]  # resident: not loaded again
    with plain_client(settings) as plain:
        expected = stylize(plain, MODELS[1]).content
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(response.content))),
                          np.asarray(Image.open(io.BytesIO(expected))))


def test_only_what_the_cache_holds_stays_loaded(serve):
    client, cache = serve(capacity=1)
    # One comparison submits both models at once: loading the second evicts the first from the cache,
    # perhaps while the first's job still waits in the queue; both run.
    response = client.post("/v1/compare", data={"models": ",".join(MODELS)}, files={"file": ("p.png", png_bytes())})
    assert response.status_code == 200, response.text
    assert [r["model"] for r in response.json()["results"]] == list(MODELS)
    assert cache.loads == list(MODELS)
    gc.collect()
    assert set(cache.worker.stylizers) == {MODELS[1]}  # the memory bound is the cache's
    assert stylize(client, MODELS[0]).status_code == 200
    gc.collect()
    assert set(cache.worker.stylizers) == {MODELS[0]} and cache.loads == [*MODELS, MODELS[0]]


def test_a_queued_job_keeps_its_model_loaded_whatever_the_cache_evicts(settings):
    async def scenario() -> None:
        cache = LruCache(capacity=1)
        worker = cache.make_worker(settings, Metrics())
        worker.start()  # returns with the catalog read ...
        worker.stop()  # ... and with no thread left to run jobs, a submitted job waits in the queue
        job = asyncio.create_task(worker.submit(MODELS[0], LoadedImage(torch.rand(1, 3, 8, 8)), worker.options()))
        for _ in range(500):
            if MODELS[0] in worker.stylizers:
                break
            await asyncio.sleep(0.01)
        await cache.load(MODELS[1])
        gc.collect()
        assert list(cache.models) == [MODELS[1]]  # evicted from the cache ...
        assert MODELS[0] in worker.stylizers  # ... but still loaded for its queued job
        job.cancel()  # the job is gone (as when its client hangs up) ...
        with contextlib.suppress(asyncio.CancelledError):
            await job
        gc.collect()
        assert MODELS[0] not in worker.stylizers  # ... and so is its model

    asyncio.run(scenario())


def test_names_are_checked_against_the_catalog(serve):
    client, cache = serve()
    unknown = stylize(client, "nope")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_model"
    assert all(name in unknown.json()["error"]["message"] for name in MODELS)
    invalid = stylize(client, "../tiny-batch")
    assert invalid.status_code == 400 and invalid.json()["error"]["code"] == "invalid_model_name"
    assert cache.loads == []


def test_a_checkpoint_gone_since_start_is_an_inference_failure(serve, weights):
    client, _ = serve()
    (weights / f"{MODELS[0]}.safetensors").unlink()
    response = stylize(client, MODELS[0])
    assert response.status_code == 500 and response.json()["error"]["code"] == "inference_failed"
    assert MODELS[0] in response.json()["error"]["message"]
    assert stylize(client, MODELS[1]).status_code == 200  # the others still serve
