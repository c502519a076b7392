"""The inference worker: one thread owns the device and runs jobs from a bounded queue.

* :class:`InferenceWorker` loads every checkpoint of the weights folder, warms the models up, and
  serves :class:`Job` s one batch at a time; the routes ask it for a request's :class:`StylizeOptions`
  (the server's size cap and tile size, applied by :mod:`style_transfer.stylize`), check a request
  once before decoding its upload (:meth:`~InferenceWorker.check_ready`, :meth:`~InferenceWorker.check_model`,
  :meth:`~InferenceWorker.style_weights`, :meth:`~InferenceWorker.check_capacity`) and
  :meth:`~InferenceWorker.submit` its jobs.
* Its refusals are typed (:class:`InferenceError` and its subclasses: not ready, invalid or unknown
  model name, invalid style, busy, deadline exceeded, inference failed); ``errors.py`` alone turns them
  into HTTP statuses and JSON codes. Nothing here knows HTTP.

Heavy work never runs on the event loop. A full queue is refused at once (:class:`Busy`); a job that
waited past its deadline is answered :class:`DeadlineExceeded` and not run. Same-size jobs for the same
model and options may be batched (``max_batch_size`` > 1); models are in eval mode, so a job's output
never depends on what else was in its batch (batch norm uses its running statistics, not the batch's).
The options include a multi-style model's style weights, so jobs for different styles or mixes never
share a batch (a batch runs with one set of weights: its first job's).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from style_transfer.checkpoint import CheckpointError, ModelInfo
from style_transfer.device import resolve_device
from style_transfer.imageio import LoadedImage
from style_transfer.network import count_parameters
from style_transfer.spec import ab_group
from style_transfer.stylize import Stylizer, StylizeOptions, default_max_size, parse_mix, style_mix, style_names
from style_transfer.zoo import is_valid_name, list_models

from .metrics import Metrics
from .settings import Settings

log = logging.getLogger("server.inference")


class InferenceError(Exception):
    """Why the worker cannot serve a request; the message is for the client."""

    retry_after_s: int | None = None  # when a retry may succeed (seconds); None: retrying will not help


class NotReady(InferenceError):
    """The models are still loading and warming up, or start-up failed."""

    retry_after_s = 5  # loading takes seconds


class InvalidModelName(InferenceError):
    """Not a model name at all (a path, '..', a NUL byte, ...)."""


class UnknownModel(InferenceError):
    """A valid name, but no such model is loaded."""


class InvalidStyle(InferenceError):
    """A style or mix a model cannot take: an unknown style name, a malformed mix, weights that are
    negative or do not sum to 1, or a style and a mix at once."""


class Busy(InferenceError):
    """The queue cannot take the request's jobs."""

    retry_after_s = 1  # a queue slot frees as soon as a job finishes


class DeadlineExceeded(InferenceError):
    """The job waited in the queue past its deadline and was not run."""


class InferenceFailed(InferenceError):
    """The model raised while running the job."""


@dataclass
class Job:
    """One image for one model; ``image`` is already bounded in size."""

    model: str
    image: LoadedImage
    options: StylizeOptions
    deadline: float
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.monotonic)

    def batch_key(self) -> tuple | None:
        """Jobs with equal keys may run as one batch; None: this job runs alone, because it is tiled or
        not yet bounded to its max_size (stylize_batch neither tiles nor resizes)."""
        h, w = self.image.rgb.shape[-2:]
        if self.options.tiles(h, w) or (self.options.max_size is not None and max(h, w) > self.options.max_size):
            return None
        # The image already fits, so max_size no longer changes the output: requests that asked for
        # different bounds batch together. Every other option stays in the key, the style weights
        # included: a batch runs with its first job's options.
        return (self.model, tuple(self.image.rgb.shape), dataclasses.replace(self.options, max_size=None))


@dataclass
class Result:
    """A stylized image and how long the device spent on it (its share of the batch)."""

    image: LoadedImage
    elapsed_s: float
    batch_size: int


class InferenceWorker:
    """Loads the models, warms them up, then serves jobs one batch at a time."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.device = resolve_device(settings.device)
        # The size cap of every request: the operator's, else the device's default (stylize.DEFAULT_MAX_SIZE).
        self.max_size = settings.max_size if settings.max_size is not None else default_max_size(self.device)
        self.stylizers: dict[str, Stylizer] = {}
        self.summaries: dict[str, dict[str, Any]] = {}
        self.load_errors: dict[str, str] = {}
        self.ready = threading.Event()
        self.failed: str | None = None
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=settings.queue_size)
        self._pending: collections.deque[Job] = collections.deque()
        self._thread = threading.Thread(target=self._main, name="inference", daemon=True)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread.is_alive():
            self._queue.put(None)  # blocks only while the queue is full; the worker drains it
            self._thread.join(timeout)

    def describe_device(self) -> str:
        if self.device.type == "cuda":
            return f"GPU {torch.cuda.get_device_name(self.device)}"
        return f"CPU ({torch.get_num_threads()} threads)"

    def _load(self) -> None:
        folder = Path(self.settings.weights)
        found = list_models(folder)
        if not found:
            log.warning("no models (*.safetensors) in %s", folder.resolve())
        for name, path in found.items():
            try:
                stylizer = Stylizer.from_checkpoint(path, str(self.device), self.settings.precision,
                                                    self.settings.fast, self.settings.compile)
            except (CheckpointError, OSError, RuntimeError) as exc:
                self.load_errors[name] = str(exc)
                log.error("not serving %s: %s", name, exc)
                continue
            self.stylizers[name] = stylizer
            info = stylizer.info
            self.summaries[name] = {"name": name, "bytes": path.stat().st_size,
                                    **info.summary(count_parameters(stylizer.model)),
                                    "styles": style_names(info),
                                    "ab_group": ab_group(info.training, info.style_sha256)}
            log.info("loaded %s (%s norm, style %s)", name, info.norm, info.style_name)

    def _warm_up(self) -> None:
        size = self.settings.warmup_size
        image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        for name, stylizer in self.stylizers.items():
            t0 = time.perf_counter()
            stylizer.stylize(image)
            if self.settings.max_batch_size > 1:
                stylizer.stylize_batch(image.expand(self.settings.max_batch_size, -1, -1, -1))
            log.info("warmed up %s in %.0f ms", name, (time.perf_counter() - t0) * 1e3)

    def _main(self) -> None:
        try:
            log.info("inference on %s", self.describe_device())
            self._load()
            self._warm_up()
        except Exception as exc:  # noqa: BLE001 -- reported by /readyz, never silently lost
            self.failed = f"start-up failed: {exc}"
            log.exception("inference worker start-up failed")
            self._refuse_all()
            return
        self.ready.set()
        log.info("ready: %d model(s)", len(self.stylizers))
        while True:
            job = self._next_job(block=True)
            if job is None:
                break
            batch = self._gather(job)
            self._run(batch)

    def _refuse_all(self) -> None:
        """After a failed start-up: answer every job NotReady until stopped (none waits forever)."""
        while (job := self._next_job(block=True)) is not None:
            self._resolve(job, exc=NotReady(self.failed))

    # ------------------------------------------------------------------ queue

    def _next_job(self, block: bool, timeout: float | None = None) -> Job | None:
        if self._pending:
            return self._pending.popleft()
        job = self._queue.get(block=block, timeout=timeout)
        self.metrics.queue_depth.set(self._queue.qsize())
        return job

    def _gather(self, first: Job) -> list[Job]:
        """``first`` plus same-key jobs arriving within batch_wait_ms, up to max_batch_size."""
        batch = [first]
        limit = self.settings.max_batch_size
        key = first.batch_key()
        if limit == 1 or key is None:
            return batch
        end = time.monotonic() + self.settings.batch_wait_ms / 1e3
        while len(batch) < limit:
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            try:
                job = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            self.metrics.queue_depth.set(self._queue.qsize())
            if job is None:  # stop request: finish this batch first, then stop
                self._pending.append(job)  # type: ignore[arg-type]
                break
            if job.batch_key() == key:
                batch.append(job)
            else:
                self._pending.append(job)
        return batch

    def _run(self, batch: list[Job]) -> None:
        now = time.monotonic()
        live = []
        for job in batch:
            if now > job.deadline:
                self.metrics.rejected.labels("deadline").inc()
                waited = now - job.enqueued
                self._resolve(job, exc=DeadlineExceeded(
                    f"the request waited {waited:.1f} s in the queue, past its deadline"))
            else:
                live.append(job)
        if not live:
            return
        first = live[0]
        stylizer = self.stylizers.get(first.model)
        if stylizer is None:  # submitted without check_model: refuse it, never let the thread die
            for job in live:
                self._resolve(job, exc=self._unknown(first.model))
            return
        t0 = time.perf_counter()
        try:
            if len(live) == 1:
                outputs = [stylizer.stylize_image(first.image, first.options)]
            else:
                styled = stylizer.stylize_batch(torch.cat([j.image.rgb for j in live]), first.options)
                outputs = [LoadedImage(styled[i : i + 1], j.image.alpha) for i, j in enumerate(live)]
        except Exception as exc:  # noqa: BLE001 -- one bad job must not kill the worker
            log.exception("inference failed for %s", first.model)
            for job in live:
                self._resolve(job, exc=InferenceFailed(f"inference failed: {exc}"))
            return
        elapsed = time.perf_counter() - t0
        self.metrics.batch_size.observe(len(live))
        self.metrics.inference.labels(first.model).observe(elapsed)
        for job, out in zip(live, outputs):
            self._resolve(job, result=Result(out, elapsed / len(live), len(live)))

    @staticmethod
    def _resolve(job: Job, result: Result | None = None, exc: Exception | None = None) -> None:
        def settle() -> None:
            if job.future.done():  # the client went away
                return
            if exc is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)

        job.loop.call_soon_threadsafe(settle)

    # ------------------------------------------------------------------ API for the routes

    def options(self, strength: float = 1.0, preserve_color: bool = False,
                max_size: int | None = None, style: tuple[float, ...] | None = None) -> StylizeOptions:
        """A request's options under this server's limits: its ``max_size`` capped at ``self.max_size``,
        and images past ``tile_size`` stylized in tiles (bounded memory); ``style`` from :meth:`style_weights`."""
        return StylizeOptions(strength=strength, preserve_color=preserve_color, max_size=max_size,
                              tile=self.settings.tile_size, style=style).capped(self.max_size)

    def info(self, name: str) -> ModelInfo | None:
        """What a loaded model says about itself."""
        return self.stylizers[name].info

    # Each check runs once per request, before its upload is decoded, so that a request refused under
    # load or for a bad name costs next to nothing; submit() trusts them.

    def check_ready(self) -> None:
        """NotReady until every model is loaded and warmed up (or for good when start-up failed)."""
        if not self.ready.is_set():
            raise NotReady(self.failed or "models are still loading; retry shortly")

    def check_model(self, name: str) -> None:
        """InvalidModelName / UnknownModel for names that are not servable (with the list of those that are)."""
        if not is_valid_name(name):
            raise InvalidModelName("a model name is a file stem (letters, digits, '-', '_', '.'); "
                                   "paths are not accepted")
        if name not in self.stylizers:
            raise self._unknown(name)

    def style_weights(self, names: Sequence[str], style: str | None = None, mix: str | None = None
                      ) -> dict[str, tuple[float, ...] | None]:
        """Each (checked) model's ``StylizeOptions.style`` for a request's ``style`` name or ``mix``
        (``"starry=0.6,wave=0.4"``), by the library's rules (:func:`~style_transfer.stylize.style_mix`,
        as the CLI's ``--style``/``--mix``); InvalidStyle when they do not fit.

        One model: the style or mix must name its styles (an ordinary model's only style is accepted,
        and changes nothing). Several models (a comparison): the style or mix applies to the multi-style
        models among them, each of which must have every named style; the single-style models beside
        them run their one style. A comparison puts a style or a blend next to ordinary models (the
        same style trained alone, other norms); refusing them would forbid exactly that, and their
        style names are the style images' (``vangogh_starry_night_1889``), not the multi-style model's
        (``starry``). A comparison with no multi-style model is checked like a single model, so a
        style or mix is never silently dropped.
        """
        if style is None and mix is None:
            return {name: None for name in names}
        if style is not None and mix is not None:
            raise InvalidStyle("give a style or a mix, not both")
        try:
            parsed = parse_mix(mix, "mix") if mix is not None else None
        except ValueError as exc:
            raise InvalidStyle(str(exc)) from None
        if mix is not None and not parsed:
            raise InvalidStyle("mix: give at least one NAME=WEIGHT")
        infos = {name: self.info(name) for name in names}
        targets = [name for name, info in infos.items() if len(style_names(info)) > 1] or list(names)
        weights: dict[str, tuple[float, ...] | None] = {name: None for name in names}
        for name in targets:
            try:
                weights[name] = style_mix(infos[name], style, parsed)
            except ValueError as exc:
                raise InvalidStyle(f"{name}: {exc}" if len(names) > 1 else str(exc)) from None
        return weights

    def _unknown(self, name: str) -> UnknownModel:
        return UnknownModel(f"no model named {name!r}; available: {', '.join(self.stylizers) or 'none'}")

    def check_capacity(self, jobs: int = 1) -> None:
        """Busy at once when the queue cannot take ``jobs`` more (submit re-checks atomically)."""
        if self._queue.qsize() + jobs > self.settings.queue_size:
            raise self._busy()

    def _busy(self) -> Busy:
        self.metrics.rejected.labels("queue_full").inc()
        return Busy("the server is at capacity; retry shortly")

    async def submit(self, model: str, image: LoadedImage, options: StylizeOptions) -> Result:
        """Queue one job and wait for its result.

        Raises Busy when the queue is full, DeadlineExceeded past the deadline, InferenceFailed; a
        model that is not loaded is answered UnknownModel, and jobs submitted while loading wait for it.
        """
        loop = asyncio.get_running_loop()
        job = Job(model, image, options, time.monotonic() + self.settings.request_timeout_s,
                  loop.create_future(), loop)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise self._busy() from None
        self.metrics.queue_depth.set(self._queue.qsize())
        return await job.future
