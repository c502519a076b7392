"""A worker whose models load on first use, kept or dropped by a model cache that something else owns.

The plain :class:`~server.inference.InferenceWorker` loads every checkpoint of the weights folder at start.
Spread over many replicas (Ray Serve, :mod:`server.ray_serve`; issue 18), a replica should instead hold
only the models it is asked for, and at most a bounded number of them, so that adding styles adds
replicas rather than memory to every replica. :class:`OnDemandWorker` is that worker. It is the plain one
-- the same queue, batching, deadlines, typed errors and metrics; the routes cannot tell them apart --
with three differences:

* At start it reads only the checkpoints' headers (:func:`~style_transfer.checkpoint.read_model_info`),
  the *catalog*: enough for ``GET /v1/models``, for checking a model name and for a model's
  :class:`~style_transfer.checkpoint.ModelInfo`. It is ready in milliseconds, not after loading and
  warming up every model.
* :meth:`~OnDemandWorker.submit` first asks ``load(name)`` for the model: the cache, which calls
  :meth:`~OnDemandWorker.open` (load and warm up) on a miss and evicts as it sees fit (Ray's
  ``@serve.multiplexed`` is an LRU of ``max_num_models_per_replica``).
* ``stylizers`` holds weak references. The cache's references keep a model resident; a queued job's
  submit holds one until the job is done, so an eviction never pulls a model from under a job; once
  neither holds it, it is freed. The cache alone bounds memory, with no eviction callback to keep in step.

It knows nothing of Ray: any ``async (name) -> Stylizer`` cache serves (the tests use a dict).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import torch

from style_transfer.checkpoint import CheckpointError, ModelInfo, read_model_info
from style_transfer.network import TransformerNet, count_parameters
from style_transfer.stylize import Stylizer

from .inference import InferenceFailed, InferenceWorker, UnknownModel
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger("server.ondemand")

# How long start() waits for the catalog (headers only: milliseconds on a local disk).
CATALOG_TIMEOUT_S = 30.0


class OnDemandWorker(InferenceWorker):
    """The inference worker, with models loaded on first use through ``load`` (a bounded cache)."""

    def __init__(self, settings: Settings, metrics: Metrics, load: Callable[[str], Awaitable[Stylizer]]) -> None:
        super().__init__(settings, metrics)
        self.load = load
        # name -> (checkpoint, what its header says), for every servable checkpoint of the weights folder.
        self.catalog: dict[str, tuple[Path, ModelInfo]] = {}
        # The resident models: weak, so that the cache (and in-flight jobs) decide what stays loaded. The
        # plain worker's code only gets, tests membership, counts and iterates: a mapping serves.
        self.stylizers = weakref.WeakValueDictionary()  # type: ignore[assignment]

    def start(self) -> None:
        """Start the worker thread and return once the catalog is read: an engine that routes requests
        to a replica as soon as its app has started (Ray does) then never meets a replica that says
        not_ready. A catalog that takes longer still only delays readiness (/readyz says loading)."""
        super().start()
        self.ready.wait(CATALOG_TIMEOUT_S)

    def _load(self) -> None:
        """The catalog: every checkpoint's header, and its parameter count from a weightless (meta) model."""
        for name, path in self._checkpoints().items():
            try:
                info = read_model_info(path)
                with torch.device("meta"):  # shapes only: no memory, no weights read
                    parameters = count_parameters(TransformerNet(info.config))
            except (CheckpointError, OSError, ValueError) as exc:
                self.load_errors[name] = str(exc)
                log.error("not serving %s: %s", name, exc)
                continue
            self.catalog[name] = (path, info)
            self._summarize(name, path, info, parameters)
        log.info("catalog: %d model(s), loaded on demand", len(self.catalog))

    def _warm_up(self) -> None:
        """Nothing is loaded yet: each model is warmed up as it loads (:meth:`open`); only the codec is checked."""
        self._check_codec()

    def open(self, name: str) -> Stylizer:
        """Load one model of the catalog and warm it up (blocking: the cache runs it off the event loop)."""
        path, _ = self.catalog[name]
        t0 = time.perf_counter()
        stylizer = Stylizer.from_checkpoint(path, str(self.device), self.settings.precision, self.settings.fast,
                                            self.settings.compile)
        # The same warm-up as the plain worker's: one-time costs are paid here, not by the first request.
        self.warm_model(name, stylizer)
        log.info("loaded and warmed up %s in %.0f ms", name, (time.perf_counter() - t0) * 1e3)
        return stylizer

    # ------------------------------------------------------------------ API for the routes

    def info(self, name: str) -> ModelInfo | None:
        """What a model of the catalog says about itself (from its header: it need not be loaded)."""
        entry = self.catalog.get(name)
        return entry[1] if entry is not None else None

    def check_model(self, name: str) -> None:
        """A model of the catalog, loaded or not; else the plain worker's InvalidModelName / UnknownModel."""
        if name not in self.catalog:
            super().check_model(name)
            raise self._unknown(name)  # a valid name that is loaded but not in the catalog cannot happen

    def _unknown(self, name: str) -> UnknownModel:
        return UnknownModel(f"no model named {name!r}; available: {', '.join(self.catalog) or 'none'}")

    async def submit(self, model: str, *args: Any, **kwargs: Any) -> Any:
        """Make ``model`` resident (through the cache), then the plain worker's submit. The reference
        held here keeps the model loaded until its job is done, whatever the cache evicts meanwhile."""
        try:
            stylizer = await self.load(model)
        except (CheckpointError, OSError, RuntimeError) as exc:  # e.g. the file changed since the catalog
            log.error("could not load %s: %s", model, exc)
            raise InferenceFailed(f"could not load model {model!r}: {exc}") from None
        self.stylizers[model] = stylizer
        try:
            return await super().submit(model, *args, **kwargs)
        finally:
            # Held until the job is done, no longer: not by a traceback through this frame either.
            del stylizer
