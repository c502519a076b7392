"""Video jobs: a clip uploaded, stylized frame by frame in the background, fetched when done.

A clip takes far longer than a request may wait (the 2-core CPU paints 720p at ~2.5 frames/s: a
30 fps minute in 12 minutes), so the API is a job: ``POST /v1/videos`` answers 202 at once with the
job's id, ``GET /v1/videos/{id}`` says how far it got, ``GET /v1/videos/{id}/result`` is the MP4 and
``DELETE`` cancels it and removes its files. The choices:

* **One clip at a time**, in arrival order, from a bounded queue (``max_video_jobs`` queued or running;
  past it 503 busy). Two clips at once would only share the same device and both finish later.
* **Frames go through the inference worker's queue**, as image requests do (a few frames at a time), so
  the worker still alone owns the device and batches, and an image request waits for at most one video
  batch, not for a clip. A frame refused because that queue is full (or late) is sent again: the clip
  yields to images under load instead of failing.
* **Frames are written by style_transfer.video.stylize_video**, the CLI's code: colours by the file's
  matrix, a phone's rotation, sound kept, every frame's timestamp, nothing half-written.
* **Files live in ``video_dir``** (default: a temporary folder removed at shutdown). The upload is removed
  when its job ends; a result ``video_ttl_s`` after it was finished, or when it is deleted, so a server
  left running does not fill its disk; in a ``video_dir`` of the operator's, folders an earlier run left
  are removed at start once that old.
* **Limits are checked before the job is queued**: the upload's size (the body limit), that it is a video
  (by content: FFmpeg reads a PNG as a one-frame video too), and its frame count from the header
  (``max_video_frames``); a header that understates it is stopped at the limit while painting.

Job state is this process's: on Ray Serve a poll may reach another replica, so video is off there
(:mod:`server.ray_serve`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

from style_transfer.imageio import VIDEO_SUFFIXES, LoadedImage
from style_transfer.stylize import StylizeOptions, fit_image
from style_transfer.video import BATCH, VideoProbe, VideoSupportMissing, probe_video, require_av, stylize_video

from .inference import Busy, DeadlineExceeded, InferenceError, InferenceFailed, InferenceWorker
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger("server.videos")

RETRY_S = 0.5  # how long a frame refused by a full (or slow) inference queue waits before it is sent again
POLL_S = 0.25  # how often a waiting frame checks whether its job was cancelled
# The media types a file picker offers for VIDEO_SUFFIXES (what the server reads is decided by content).
VIDEO_MEDIA_TYPES = ["video/mp4", "video/quicktime", "video/x-matroska", "video/webm", "video/x-msvideo"]
_JOB_ID = re.compile(r"[0-9a-f]{32}")


class VideoUnavailable(Exception):
    """This server takes no videos (PyAV missing, switched off, or Ray Serve); the message says why."""


class UnknownVideoJob(Exception):
    """No such job: never made, deleted, or expired."""


class VideoNotFinished(Exception):
    """The job's result was asked for before it was done."""


class UnsupportedVideo(Exception):
    """The upload is not a video the server reads."""


class VideoTooLong(Exception):
    """The clip has more frames than the server takes."""


class CorruptVideo(Exception):
    """The clip could not be decoded to the end (a damaged file, a size change mid-stream)."""


class VideoBusy(Busy):
    """As many video jobs are queued or running as the server takes."""

    retry_after_s = 30  # a slot frees when a clip finishes: tens of seconds at the least


class _Cancelled(Exception):
    """Raised inside a running job when it is deleted or the server stops."""


@dataclass(eq=False)
class VideoJob:
    id: str
    model: str
    style: str  # what the frames are painted with (a multi-style model's style or mix)
    options: StylizeOptions
    folder: Path
    source: Path
    filename: str  # the result's file name: <upload's stem>_<model>.mp4, as the CLI names it
    probe: VideoProbe
    status: str = "queued"  # queued, running, done, failed, cancelled
    frames_done: int = 0
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    width: int | None = None
    height: int | None = None
    audio: str | None = None
    error: Exception | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def target(self) -> Path:
        return self.folder / self.filename

    @property
    def frames_total(self) -> int | None:
        if self.status == "done":
            return self.frames_done
        return self.probe.frames

    def elapsed_s(self, now: float) -> float:
        """Seconds painting (0 while queued)."""
        if self.started is None:
            return 0.0
        return (self.finished or now) - self.started

    def eta_s(self, now: float) -> float | None:
        """Seconds left at the rate so far; None before the first frames or without a frame count."""
        total = self.frames_total
        if self.status != "running" or not self.frames_done or not total:
            return None
        return max(0.0, self.elapsed_s(now) / self.frames_done * (total - self.frames_done))


def output_name(upload_name: str | None, model: str) -> str:
    """``clip_starry-night.mp4`` for ``clip.MOV``: the upload's stem, kept to safe characters, and the model."""
    stem = Path(upload_name or "").stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")[:80] or "video"
    return f"{stem}_{model}.mp4"


class _ThroughWorker:
    """What stylize_video takes as its stylizer: every frame a job on the inference worker's queue."""

    def __init__(self, worker: InferenceWorker, model: str, loop: asyncio.AbstractEventLoop,
                 cancel: threading.Event) -> None:
        self.worker, self.model, self.loop, self.cancel = worker, model, loop, cancel
        self.device = worker.device

    def stylize(self, batch: torch.Tensor, options: StylizeOptions) -> torch.Tensor:
        """``batch`` (B, 3, H, W) as Stylizer.stylize paints it (bounded to max_size), each frame its own job,
        all of them queued before the first is awaited, so the worker may batch them."""
        images = [self.worker.stage(fit_image(LoadedImage(frame[None]), options.max_size)) for frame in batch]
        pending = {i: self._send(image, options) for i, image in enumerate(images)}
        outputs: dict[int, torch.Tensor] = {}
        while pending:
            for i, future in list(pending.items()):
                try:
                    outputs[i] = self._wait(future).image.rgb
                    del pending[i]
                except (Busy, DeadlineExceeded):  # images come first under load: this frame waits its turn
                    if self.cancel.wait(RETRY_S):
                        raise _Cancelled from None
                    pending[i] = self._send(images[i], options)
        return torch.cat([outputs[i] for i in range(len(images))])

    def _send(self, image: LoadedImage, options: StylizeOptions) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(self.worker.submit(self.model, image, options), self.loop)

    def _wait(self, future: concurrent.futures.Future):
        while True:
            try:
                return future.result(timeout=POLL_S)
            except concurrent.futures.TimeoutError:
                if self.cancel.is_set():
                    future.cancel()
                    raise _Cancelled from None


class VideoJobs:
    """The video jobs of one server: a queue, one thread that runs them, and their files."""

    def __init__(self, settings: Settings, worker: InferenceWorker, metrics: Metrics,
                 unavailable: str | None = None) -> None:
        self.settings, self.worker, self.metrics = settings, worker, metrics
        self.reason = unavailable or self._missing()
        self._jobs: dict[str, VideoJob] = {}
        self._queue: collections.deque[VideoJob] = collections.deque()
        self._lock = threading.Condition()
        self._stopping = False
        self._folder: Path | None = None
        self._own_folder = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name="videos", daemon=True)

    def _missing(self) -> str | None:
        if not self.settings.video:
            return "video jobs are switched off on this server (STYLE_TRANSFER_VIDEO=false)"
        try:
            require_av()
        except VideoSupportMissing as exc:
            return str(exc)
        return None

    @property
    def enabled(self) -> bool:
        return self.reason is None

    # ------------------------------------------------------------------ lifecycle

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the job thread; ``loop`` is the one the routes (and so worker.submit) run on."""
        if not self.enabled:
            return
        self._loop = loop
        if self.settings.video_dir is None:
            self._folder, self._own_folder = Path(tempfile.mkdtemp(prefix="style-transfer-videos-")), True
        else:
            self._folder = Path(self.settings.video_dir)
            self._folder.mkdir(parents=True, exist_ok=True)
            self._remove_stale()
        self._thread.start()

    def _remove_stale(self) -> None:
        """Job folders an earlier run of the server left in ``video_dir`` (it stopped, or was killed, before
        their results expired): no job of this process knows them, so they are removed once older than
        ``video_ttl_s``, as they would have been. Younger ones may be another live server's (two sharing the
        folder), and are left alone."""
        cutoff = time.time() - self.settings.video_ttl_s
        for folder in self._folder.iterdir():
            if folder.is_dir() and _JOB_ID.fullmatch(folder.name) and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                log.info("removed %s, a video job folder left by an earlier run", folder)

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel every job, wait for the running one to stop, and remove a temporary folder."""
        with self._lock:
            self._stopping = True
            for job in self._jobs.values():
                job.cancel.set()
            self._lock.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._own_folder and self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    # ------------------------------------------------------------------ API for the routes

    def check_available(self) -> None:
        if self.reason is not None:
            raise VideoUnavailable(self.reason)

    def check_capacity(self) -> None:
        """VideoBusy when the queue cannot take a job (``create`` re-checks under the lock)."""
        with self._lock:
            self._check_capacity()

    def _check_capacity(self) -> None:
        active = sum(job.status in ("queued", "running") for job in self._jobs.values())
        if active >= self.settings.max_video_jobs:
            self.metrics.rejected.labels("video_queue_full").inc()
            raise VideoBusy(f"this server takes {self.settings.max_video_jobs} video job(s) at a time, queued or "
                            "running; retry when one has finished")

    def create(self, upload: BinaryIO, upload_name: str | None, model: str, style: str,
               options: StylizeOptions) -> VideoJob:
        """Store the upload, check it is a video within the limits, and queue its job (runs in a thread:
        copying and probing a large file takes a while). Raises UnsupportedVideo, VideoTooLong, VideoBusy."""
        job_id = secrets.token_hex(16)
        folder = self._folder / job_id
        folder.mkdir()
        try:
            suffix = Path(upload_name or "").suffix.lower()
            source = folder / f"upload{suffix if suffix in VIDEO_SUFFIXES else ''}"
            with source.open("wb") as out:
                shutil.copyfileobj(upload, out, 1 << 20)
            try:
                probe = probe_video(source)
            except ValueError as exc:
                raise UnsupportedVideo(f"not a video this server reads ({', '.join(VIDEO_SUFFIXES)}): {exc}") from None
            limit = self.settings.max_video_frames
            if probe.frames is not None and probe.frames > limit:
                seconds = f", {probe.seconds:.1f} s" if probe.seconds else ""
                raise VideoTooLong(f"the clip has {probe.frames} frames{seconds}; this server paints at most {limit} "
                                   "per video (STYLE_TRANSFER_MAX_VIDEO_FRAMES): send a shorter clip")
            job = VideoJob(job_id, model, style, options, folder, source, output_name(upload_name, model), probe)
            with self._lock:
                if self._stopping:
                    raise _Cancelled
                self._check_capacity()
                self._jobs[job_id] = job
                self._queue.append(job)
                self._gauge()
                self._lock.notify_all()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        log.info("video %s queued: %s, %s frames, model %s", job_id, upload_name, probe.frames or "?", model)
        return job

    def get(self, job_id: str) -> VideoJob:
        """The job, or UnknownVideoJob (also for ids that cannot be one, and expired jobs)."""
        with self._lock:
            self._purge_expired()
            job = self._jobs.get(job_id) if _JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise UnknownVideoJob(f"no video job {job_id!r}: never made, deleted, or expired "
                                  f"(results are kept {self.settings.video_ttl_s:g} s after they are done)")
        return job

    def queue_position(self, job: VideoJob) -> int | None:
        """0 for the next job to run; None once it runs."""
        with self._lock:
            return self._queue.index(job) if job in self._queue else None

    def result(self, job_id: str) -> VideoJob:
        """The job, once done (VideoNotFinished before)."""
        job = self.get(job_id)
        if job.status != "done":
            raise VideoNotFinished(f"video job {job_id} is {job.status}; its result is there once it is done"
                                   + (f" ({job.error})" if job.error is not None else ""))
        return job

    def delete(self, job_id: str) -> None:
        """Cancel the job if it has not ended, forget it and remove its files (the running job's thread
        stops at its next frame and removes what it wrote)."""
        job = self.get(job_id)
        with self._lock:
            self._jobs.pop(job.id, None)
            if job in self._queue:
                self._queue.remove(job)
                self._end(job, "cancelled")
            job.cancel.set()
            self._gauge()
        if job.status != "running":
            shutil.rmtree(job.folder, ignore_errors=True)

    # ------------------------------------------------------------------ the job thread

    def _main(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._lock.wait(timeout=60)  # wakes now and then to remove expired results
                    self._purge_expired()
                if self._stopping:
                    return
                job = self._queue.popleft()
                job.status, job.started = "running", time.monotonic()
                self._gauge()
            self._run(job)

    def _run(self, job: VideoJob) -> None:
        limit = self.settings.max_video_frames

        def on_frames(done: int) -> None:
            job.frames_done = done
            self.metrics.video_frames.inc(done - self._counted)
            self._counted = done
            if job.cancel.is_set():
                raise _Cancelled
            if done >= limit and (job.probe.frames is None or job.probe.frames > limit):
                raise VideoTooLong(f"the clip has more than the {limit} frames this server paints per video "
                                   "(its header said fewer); send a shorter clip")

        self._counted = 0
        stylizer = _ThroughWorker(self.worker, job.model, self._loop, job.cancel)
        batch = BATCH.get(self.worker.device.type, 1)
        status, error = "failed", None
        try:
            result = stylize_video(stylizer, job.options, job.source, job.target, progress=False,
                                   on_frames=on_frames, batch_size=batch)
            job.width, job.height, job.audio, job.frames_done = result.width, result.height, result.audio, result.frames
            status = "done"
        except _Cancelled:
            status = "cancelled"
        except (VideoTooLong, InferenceError) as exc:
            error = exc
        except ValueError as exc:  # stylize_video's: undecodable, or a frame size that changes
            error = CorruptVideo(str(exc))
        except Exception as exc:  # noqa: BLE001 -- one bad clip must not stop the job thread
            if type(exc).__module__.startswith("av"):  # FFmpeg's errors: a damaged file
                error = CorruptVideo(f"the clip could not be decoded: {exc}")
            else:
                log.exception("video %s failed", job.id)
                error = InferenceFailed(f"the video failed: {exc}")
        job.source.unlink(missing_ok=True)  # the upload is not needed once its job ended
        with self._lock:
            job.error = error
            self._end(job, status)
            if job.id not in self._jobs:  # deleted while it ran
                shutil.rmtree(job.folder, ignore_errors=True)
            self._gauge()
        log.info("video %s %s: %d frames in %.1f s%s", job.id, status, job.frames_done,
                 job.elapsed_s(time.monotonic()), f" ({error})" if error is not None else "")

    def _end(self, job: VideoJob, status: str) -> None:
        job.status, job.finished = status, time.monotonic()
        self.metrics.video_jobs.labels(status).inc()

    def _purge_expired(self) -> None:
        """Forget ended jobs older than video_ttl_s and remove their files (call with the lock held)."""
        now = time.monotonic()
        for job in [j for j in self._jobs.values() if j.finished is not None
                    and now - j.finished >= self.settings.video_ttl_s]:
            del self._jobs[job.id]
            shutil.rmtree(job.folder, ignore_errors=True)

    def _gauge(self) -> None:
        for state in ("queued", "running"):
            self.metrics.video_active.labels(state).set(sum(j.status == state for j in self._jobs.values()))

    def expires_in_s(self, job: VideoJob) -> float | None:
        if job.finished is None:
            return None
        return max(0.0, self.settings.video_ttl_s - (time.monotonic() - job.finished))
