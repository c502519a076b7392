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
share a batch (a batch runs with one set of weights: its first job's). Only equal sizes share a batch:
padding images to a common size would change their outputs (docs/benchmarks.md, "Size buckets").

On a GPU the worker also decodes and encodes JPEGs there (issue 18; ``image_codec``): a route hands it
an :class:`~style_transfer.imageio.EncodedJpeg` whose header it has checked, and asks for JPEG bytes
back; the worker decodes a batch's files in one nvJPEG call, runs the network, and encodes the outputs
in another, so the pixels cross the bus only as compressed files. A file nvJPEG cannot decode is
answered :class:`UndecodableOnDevice`, and the route decodes it with Pillow, whose answer (a picture or
an error) is the CPU path's. Other uploads arrive decoded, in pinned memory, and are copied to the
device without blocking. torchvision's codecs work on CUDA streams of their own; imageio.decode_jpegs
and encode_jpegs order them with the caller's (the worker's default stream).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gc
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
from style_transfer.device import is_out_of_memory, keep_freed_memory, resolve_device
from style_transfer.imageio import (EncodedJpeg, LoadedImage, decode_jpegs, encode_image, encode_jpegs, fitted_size,
                                    jpeg_refusal, probe_image)
from style_transfer.network import count_parameters
from style_transfer.spec import ab_group
from style_transfer.stylize import (Stylizer, StylizeOptions, default_max_size, fit_image,
                                    paint_size_option, parse_mix, style_mixes, style_names)
from style_transfer.zoo import NOT_A_NAME, is_valid_name, list_models, unnamed_checkpoints

from .metrics import Metrics
from .settings import Settings, parse_sizes

log = logging.getLogger("server.inference")

# Sizes a GPU server warms up when its operator lists none (STYLE_TRANSFER_WARMUP_SIZES): the issue-18
# benchmark sizes ...
GPU_WARMUP_SIZES = "512,1024"
# ... and the shapes the network paints the photos clients send most at: a phone's 4:3, a camera's 3:2 and
# a screen's 16:9, in either orientation, bounded to the server's max_size and painted at its paint_size
# (a 4032x3024 phone photo on a GPU server: 2048x1536, painted at 1024x768). Without them the first request
# of each such shape would pay cuDNN's autotuning (and a compile, with STYLE_TRANSFER_COMPILE).
PHOTO_SIZES = ((3024, 4032), (4000, 6000), (2160, 3840))
JPEG_QUALITY = 92  # encode_image's default, so that both encoders write the same quality


def resolve_codec(name: str, device: torch.device) -> str:
    """The JPEG codec the worker uses: 'torchvision' (on its device) or 'pillow' (auto: torchvision on a GPU)."""
    if name == "auto":
        return "torchvision" if device.type == "cuda" else "pillow"
    return name


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


class TooLargeForDevice(InferenceError):
    """The image alone needs more memory than the device has: retrying the same request will not help, a
    smaller ``max_size`` (or ``paint_size``) will."""


class UndecodableOnDevice(Exception):
    """The device's JPEG decoder could not decode a job's file; the route decodes it with Pillow instead.
    Not an InferenceError: it never reaches a client."""


@dataclass(eq=False)  # a job is itself, whatever its fields: found in the queue by identity
class Job:
    """One image for one model. ``image`` is decoded and already bounded in size, or a JPEG the worker
    decodes on its device (and bounds to ``options.max_size``)."""

    model: str
    image: LoadedImage | EncodedJpeg
    options: StylizeOptions
    deadline: float
    future: asyncio.Future | None  # None: a warm-up job, run directly
    loop: asyncio.AbstractEventLoop | None
    encode: str | None = None  # "JPEG": the route wants a JPEG file, which the worker writes if its codec can
    enqueued: float = field(default_factory=time.monotonic)

    def size(self) -> tuple[int, int]:
        """(height, width) of the image as the network gets it (an undecoded JPEG's: oriented and bounded)."""
        if isinstance(self.image, EncodedJpeg):
            return fitted_size(*self.image.header.size, self.options.max_size)
        h, w = self.image.rgb.shape[-2:]
        return h, w

    def batch_key(self) -> tuple | None:
        """Jobs with equal keys may run as one batch; None: this job runs alone, because it is tiled or
        not yet bounded to its max_size (stylize_batch tiles only a batch of one, and does not bound sizes).
        Equal sizes and options paint at equal sizes, so painted jobs batch too."""
        h, w = self.size()
        if self.options.tiles(h, w) or (self.options.max_size is not None and max(h, w) > self.options.max_size):
            return None
        # The image fits (or will, once decoded), so max_size no longer changes the output: requests that
        # asked for different bounds batch together. Every other option stays in the key, the style weights
        # included: a batch runs with its first job's options. The size is exact: see the module docstring.
        return (self.model, (h, w), dataclasses.replace(self.options, max_size=None))


@dataclass
class Result:
    """A stylized image and how long the device spent on it (its share of the batch)."""

    image: LoadedImage | None  # on the CPU; None when the worker wrote the file (``data``)
    elapsed_s: float
    batch_size: int
    data: bytes | None = None  # the JPEG file a job asked for, when the worker's codec wrote it
    size: tuple[int, int] | None = None  # (width, height) of the output; from ``image`` when not given

    def __post_init__(self) -> None:
        if self.size is None and self.image is not None:
            h, w = self.image.rgb.shape[-2:]
            self.size = (w, h)


class InferenceWorker:
    """Loads the models, warms them up, then serves jobs one batch at a time."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.device = resolve_device(settings.device)
        # The size cap of every request: the operator's, else the device's default (stylize.DEFAULT_MAX_SIZE).
        self.max_size = settings.max_size if settings.max_size is not None else default_max_size(self.device)
        self.codec = resolve_codec(settings.image_codec, self.device)
        if self.device.type != "cuda" and settings.keep_freed_memory:
            keep_freed_memory()
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

    def _checkpoints(self) -> dict[str, Path]:
        """The weights folder's checkpoints by model name (a warning when there are none). A checkpoint
        whose file name is no model name (a space in it, say) is not served, and says so in load_errors
        (GET /v1/models "errors"), not only by its absence."""
        folder = Path(self.settings.weights)
        found = list_models(folder)
        for path in unnamed_checkpoints(folder):
            self.load_errors[path.name] = NOT_A_NAME
            log.error("not serving %s: %s", path.name, NOT_A_NAME)
        if not found:
            log.warning("no models (*.safetensors) in %s", folder.resolve())
        return found

    def _summarize(self, name: str, path: Path, info: ModelInfo, parameters: int) -> None:
        """What /v1/models says about a model."""
        self.summaries[name] = {"name": name, "bytes": path.stat().st_size, **info.summary(parameters),
                                "styles": style_names(info), "ab_group": ab_group(info.training, info.style_sha256),
                                # a stability term in training (train --stability-weight) makes a video model
                                "for_video": bool(info.training.get("stability_weight"))}

    def _load(self) -> None:
        for name, path in self._checkpoints().items():
            try:
                stylizer = Stylizer.from_checkpoint(path, str(self.device), self.settings.precision,
                                                    self.settings.fast, self.settings.compile)
            except (CheckpointError, OSError, RuntimeError) as exc:
                self.load_errors[name] = str(exc)
                log.error("not serving %s: %s", name, exc)
                continue
            self.stylizers[name] = stylizer
            info = stylizer.info
            self._summarize(name, path, info, count_parameters(stylizer.model))
            log.info("loaded %s (%s norm, style %s)", name, info.norm, info.style_name)

    def warmup_shapes(self) -> list[tuple[int, int]]:
        """(height, width) of every image each model runs before the server is ready: ``warmup_size``, then
        ``warmup_sizes`` (by default none more on the CPU; on a GPU, GPU_WARMUP_SIZES and the shapes the
        PHOTO_SIZES are painted at)."""
        square = self.settings.warmup_size
        if self.settings.warmup_sizes is not None or self.device.type != "cuda":
            more = list(parse_sizes(self.settings.warmup_sizes or ""))
        else:
            options = self.options()
            more = [*parse_sizes(GPU_WARMUP_SIZES),
                    *(options.painted_size(*size) for h, w in PHOTO_SIZES for size in ((h, w), (w, h)))]
        return list(dict.fromkeys([(square, square), *more]))

    def warmup_batch_sizes(self) -> list[int]:
        """The batch sizes each warm-up shape runs at: every one a batch can have on a GPU (cuDNN's autotuner
        and torch.compile pay per input shape, the batch size included); 1 and the largest on the CPU, where
        only the first run of the network pays anything."""
        limit = self.settings.max_batch_size
        return list(range(1, limit + 1)) if self.device.type == "cuda" else sorted({1, limit})

    def _warmup_job(self, name: str, height: int, width: int) -> Job:
        """A job like a request's, of a random image: a JPEG when the worker decodes them, else decoded."""
        image = LoadedImage(torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0)))
        encoded = self.device_jpeg(encode_image(image.rgb, "JPEG"), ("JPEG",), None) \
            if self.codec == "torchvision" else None
        return Job(name, encoded or image, self.options(), float("inf"), None, None, encode="JPEG")

    def _warm_up(self) -> None:
        """Every model warmed up (:meth:`warm_model`) before /readyz says ready."""
        self._check_codec()
        if self.settings.compile and self.device.type == "cuda":
            import torch._dynamo

            config = torch._dynamo.config  # recompile_limit was cache_size_limit before torch 2.6
            limit = getattr(config, "recompile_limit", None) or getattr(config, "cache_size_limit", 8)
            graphs = len(self.stylizers) * len(self.warmup_shapes()) * len(self.warmup_batch_sizes())
            if graphs > limit:
                log.warning("compile: %d models x warm-up shapes x batch sizes = %d graphs, but torch.compile keeps "
                            "at most %d (models of one norm share them); the rest run uncompiled. Serve fewer "
                            "models, STYLE_TRANSFER_WARMUP_SIZES or a smaller STYLE_TRANSFER_MAX_BATCH_SIZE",
                            len(self.stylizers), graphs, limit)
        for name, stylizer in self.stylizers.items():
            self.warm_model(name, stylizer)

    def warm_model(self, name: str, stylizer: Stylizer) -> None:
        """Run every warm-up shape at every warm-up batch size through the path a request takes (on a GPU:
        nvJPEG decode, the network, nvJPEG encode), so that cuDNN's autotuner, torch.compile and the codecs
        pay their one-time costs before the model serves."""
        shapes, batch_sizes = self.warmup_shapes(), self.warmup_batch_sizes()
        t0 = time.perf_counter()
        for height, width in shapes:
            job = self._warmup_job(name, height, width)
            for size in batch_sizes if job.batch_key() is not None else [1]:
                if not all(isinstance(o, Result) for o in self._execute(stylizer, [job] * size)):
                    raise RuntimeError(f"the warm-up JPEG of {width}x{height} could not be decoded on {self.device}")
        log.info("warmed up %s in %.0f ms: %s at batch sizes %s, JPEG codec %s", name,
                 (time.perf_counter() - t0) * 1e3, ", ".join(f"{w}x{h}" for h, w in shapes), batch_sizes, self.codec)

    def _check_codec(self) -> None:
        """With the torchvision codec: one JPEG encoded and decoded on the device (which also creates its
        nvJPEG state); if that fails (a torchvision built without nvJPEG, say), Pillow serves every JPEG."""
        if self.codec != "torchvision":
            return
        image = LoadedImage(torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)).to(self.device))
        try:
            decode_jpegs(encode_jpegs([image], JPEG_QUALITY), [1], self.device)
        except (RuntimeError, ValueError) as exc:
            log.warning("torchvision cannot encode or decode JPEGs on %s (%s): Pillow does", self.device, exc)
            self.codec = "pillow"

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
        """``first`` plus same-key jobs, up to max_batch_size: those set aside by earlier gathers (they
        arrived first), then those arriving within batch_wait_ms."""
        batch = [first]
        limit = self.settings.max_batch_size
        key = first.batch_key()
        if limit == 1 or key is None:
            return batch
        for job in list(self._pending):
            if len(batch) == limit or job is None:  # None: a stop request; what follows it is not served
                break
            if job.batch_key() == key:
                self._pending.remove(job)
                batch.append(job)
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
        try:
            outcomes = self._execute(stylizer, live)
        except Exception as exc:  # noqa: BLE001 -- one bad job must not kill the worker
            if not is_out_of_memory(exc):
                log.exception("inference failed for %s", first.model)
                for job in live:
                    self._resolve(job, exc=InferenceFailed(f"inference failed: {exc}"))
                return
            outcomes = self._one_at_a_time(stylizer, live)
        ran = [o for o in outcomes if isinstance(o, Result)]
        if ran and ran[0].batch_size == len(ran):
            self.metrics.batch_size.observe(len(ran))
            self.metrics.inference.labels(first.model).observe(ran[0].elapsed_s * len(ran))
        else:  # run one at a time
            for result in ran:
                self.metrics.batch_size.observe(1)
                self.metrics.inference.labels(first.model).observe(result.elapsed_s)
        for job, outcome in zip(live, outcomes):
            if isinstance(outcome, Result):
                self._resolve(job, result=outcome)
            else:
                self._resolve(job, exc=outcome)

    def _free_memory(self) -> None:
        gc.collect()  # the failed batch's tensors, held by its traceback's frames
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _one_at_a_time(self, stylizer: Stylizer, jobs: list[Job]) -> list[Result | UndecodableOnDevice | Exception]:
        """After a batch ran out of memory: each job alone (a batch of N needs N times the activations; the
        issue-18 goal is no 5xx at any load). One that runs out alone is TooLargeForDevice (413: a smaller
        max_size helps, retrying does not)."""
        self._free_memory()
        if len(jobs) > 1:
            log.warning("out of memory on %s for a batch of %d: running its images one at a time",
                        self.device, len(jobs))
        outcomes: list[Result | UndecodableOnDevice | Exception] = []
        for job in jobs:
            try:
                outcomes += self._execute(stylizer, [job])
            except Exception as exc:  # noqa: BLE001 -- answered to its client, the worker goes on
                if not is_out_of_memory(exc):
                    log.exception("inference failed for %s", job.model)
                    outcomes.append(InferenceFailed(f"inference failed: {exc}"))
                    continue
                self._free_memory()
                self.metrics.rejected.labels("out_of_memory").inc()
                h, w = job.size()
                log.warning("out of memory on %s for one %dx%d image of %s", self.device, w, h, job.model)
                outcomes.append(TooLargeForDevice(
                    f"a {w}x{h} image needs more memory than this server's {self.device.type.upper()} has free; "
                    f"send a smaller max_size (or paint_size)"))
        return outcomes

    def _execute(self, stylizer: Stylizer, jobs: list[Job]) -> list[Result | UndecodableOnDevice]:
        """Run ``jobs`` as one batch: their images onto the device, the network, then each output as the
        JPEG file its job asked for (when the worker's codec writes it) or as an image on the CPU.
        A job whose JPEG the device could not decode gets UndecodableOnDevice and is left out of the batch."""
        t0 = time.perf_counter()
        inputs = self._inputs(jobs)
        run = [(job, image) for job, image in zip(jobs, inputs) if isinstance(image, LoadedImage)]
        if not run:
            return inputs  # type: ignore[return-value]
        first = run[0][0]
        if len(run) == 1:
            outputs = [stylizer.stylize_image(run[0][1], first.options)]
        else:
            styled = stylizer.stylize_batch(torch.cat([image.rgb for _, image in run]), first.options)
            outputs = [LoadedImage(styled[i : i + 1], image.alpha) for i, (_, image) in enumerate(run)]
        finished = iter(self._outputs([job for job, _ in run], outputs))
        elapsed = (time.perf_counter() - t0) / len(run)
        results: list[Result | UndecodableOnDevice] = []
        for image in inputs:
            if isinstance(image, LoadedImage):
                out, data, size = next(finished)
                results.append(Result(out, elapsed, len(run), data, size))
            else:
                results.append(image)
        return results

    def _inputs(self, jobs: list[Job]) -> list[LoadedImage | UndecodableOnDevice]:
        """Each job's image as the network gets it, on the worker's device on a GPU: JPEGs decoded there
        (one call for the batch), oriented and bounded to their max_size; decoded uploads copied there."""
        cuda = self.device.type == "cuda"
        images: list[LoadedImage | UndecodableOnDevice | None] = [None] * len(jobs)
        encoded = [i for i, job in enumerate(jobs) if isinstance(job.image, EncodedJpeg)]
        if encoded:
            files = [jobs[i].image for i in encoded]
            decoded = self._decode(files)  # type: ignore[arg-type]
            for i, rgb in zip(encoded, decoded):
                images[i] = (UndecodableOnDevice() if rgb is None
                             else fit_image(LoadedImage(rgb), jobs[i].options.max_size))
        for i, job in enumerate(jobs):
            if images[i] is None:
                image: LoadedImage = job.image  # type: ignore[assignment] -- the EncodedJpegs are done
                if cuda:  # from pinned memory (stage), the copy does not block this thread
                    image = LoadedImage(image.rgb.to(self.device, non_blocking=True),
                                        None if image.alpha is None else image.alpha.to(self.device, non_blocking=True))
                images[i] = image
        return images  # type: ignore[return-value]

    def _decode(self, files: list[EncodedJpeg]) -> list[torch.Tensor | None]:
        """The files decoded on the device in one call; if that fails, one by one (None: could not)."""
        orientations = [f.header.orientation for f in files]
        try:
            return decode_jpegs([f.data for f in files], orientations, self.device)  # type: ignore[return-value]
        except (RuntimeError, ValueError):
            if len(files) == 1:
                log.info("%s could not decode a JPEG; Pillow decodes it", self.codec)
                return [None]
        return [self._decode([f])[0] for f in files]

    def _outputs(self, jobs: list[Job], outputs: list[LoadedImage]
                 ) -> list[tuple[LoadedImage | None, bytes | None, tuple[int, int]]]:
        """(image on the CPU, None, size) or (None, JPEG file, size) for each output: the file where the job
        asked for one and the worker's codec can write it on the output's device, else the image."""
        sizes = [(o.rgb.shape[-1], o.rgb.shape[-2]) for o in outputs]
        here = [i for i, (job, out) in enumerate(zip(jobs, outputs))
                if job.encode == "JPEG" and self.codec == "torchvision" and out.rgb.device.type == self.device.type]
        files: dict[int, bytes] = {}
        if here:
            try:
                files = dict(zip(here, encode_jpegs([outputs[i] for i in here], JPEG_QUALITY)))
            except (RuntimeError, ValueError):  # the route encodes them with Pillow instead
                log.exception("%s could not encode JPEGs on %s", self.codec, self.device)
        return [(None, files[i], size) if i in files
                else (LoadedImage(out.rgb.cpu(), None if out.alpha is None else out.alpha.cpu()), None, size)
                for i, (out, size) in enumerate(zip(outputs, sizes))]

    @staticmethod
    def _resolve(job: Job, result: Result | None = None, exc: Exception | None = None) -> None:
        if job.future is None:  # a warm-up job
            return

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
                max_size: int | None = None, style: tuple[float, ...] | None = None,
                paint_size: int | None = None) -> StylizeOptions:
        """A request's options under this server's limits: its ``max_size`` capped at ``self.max_size``,
        and images past ``tile_size`` stylized in tiles (bounded memory); ``style`` from :meth:`style_weights`;
        ``paint_size`` as the API takes it (None: the server's ``paint_size``; 0: the image's size)."""
        paint = paint_size_option(self.settings.paint_size if paint_size is None else paint_size)
        return StylizeOptions(strength=strength, preserve_color=preserve_color, max_size=max_size, paint_size=paint,
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
        and changes nothing). Several models (a comparison): :func:`~style_transfer.stylize.style_mixes`.
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
        try:
            return style_mixes({name: self.info(name) for name in names}, style, parsed)
        except ValueError as exc:
            raise InvalidStyle(str(exc)) from None

    def _unknown(self, name: str) -> UnknownModel:
        return UnknownModel(f"no model named {name!r}; available: {', '.join(self.stylizers) or 'none'}")

    def check_capacity(self, jobs: int = 1) -> None:
        """Busy at once when the queue cannot take ``jobs`` more (submit re-checks atomically)."""
        if self._queue.qsize() + jobs > self.settings.queue_size:
            raise self._busy()

    def _busy(self) -> Busy:
        self.metrics.rejected.labels("queue_full").inc()
        return Busy("the server is at capacity; retry shortly")

    def stage(self, image: LoadedImage) -> LoadedImage:
        """A decoded upload made ready for the worker's device: on a GPU, copied into pinned (page-locked)
        memory, so that the worker's copy to the device does not block it; elsewhere ``image`` itself.
        Runs in the request's thread, off the worker's."""
        if self.device.type != "cuda":
            return image
        return LoadedImage(image.rgb.pin_memory(), None if image.alpha is None else image.alpha.pin_memory())

    def device_jpeg(self, data: bytes, formats: tuple[str, ...], max_pixels: int | None) -> EncodedJpeg | None:
        """The upload as a JPEG for the worker to decode on its device, or None when Pillow should decode it
        (another format, or a JPEG torchvision does not decode as Pillow does: imageio.jpeg_refusal).
        Raises decode_image's errors for a bad header (format, pixel limit), so a refusal is the same either way."""
        if self.codec != "torchvision":
            return None
        header = probe_image(data, formats, max_pixels)
        return EncodedJpeg(data, header) if jpeg_refusal(header, data) is None else None

    async def submit(self, model: str, image: LoadedImage | EncodedJpeg, options: StylizeOptions,
                     encode: str | None = None) -> Result:
        """Queue one job and wait for its result; ``encode="JPEG"`` asks for the output as a JPEG file,
        which the worker writes when its codec can (``Result.data``; else the route encodes ``Result.image``).

        Raises Busy when the queue is full, DeadlineExceeded past the deadline, InferenceFailed,
        UndecodableOnDevice for an EncodedJpeg the device could not decode; a model that is not loaded is
        answered UnknownModel, and jobs submitted while loading wait for it.
        """
        loop = asyncio.get_running_loop()
        job = Job(model, image, options, time.monotonic() + self.settings.request_timeout_s,
                  loop.create_future(), loop, encode)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise self._busy() from None
        self.metrics.queue_depth.set(self._queue.qsize())
        return await job.future
