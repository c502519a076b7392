"""The FastAPI application: create_app() builds it; models load in the lifespan, never at import."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from style_transfer import __version__

from .errors import install_error_handlers
from .inference import InferenceWorker
from .metrics import Metrics
from .middleware import BodySizeLimit, RequestMetrics
from .routes import health, stylize, videos
from .settings import Settings
from .videos import VideoJobs

log = logging.getLogger("server")
STATIC = Path(__file__).parent / "static"


def create_app(settings: Settings | None = None,
               worker_factory: Callable[[Settings, Metrics], InferenceWorker] = InferenceWorker,
               video_unavailable: str | None = None) -> FastAPI:
    """Build the app. The inference worker starts (and loads models in its own thread) in the lifespan.

    ``worker_factory`` builds that worker; the default loads every model of the weights folder. Ray Serve
    (:mod:`server.ray_serve`) passes one whose models load on demand, so the routes, errors and metrics
    stay the same code on either engine. ``video_unavailable``: why this app takes no video jobs (Ray
    Serve's reason), told to clients by a 501.
    """
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = worker_factory(settings, metrics)
        app.state.worker = worker
        app.state.videos = jobs = VideoJobs(settings, worker, metrics, video_unavailable)
        log.info("serving models from %s on %s", Path(settings.weights).resolve(), worker.describe_device())
        if not jobs.enabled:
            log.info("no video jobs: %s", jobs.reason)
        # Loading and warm-up run in the worker thread: /healthz answers at once, /readyz says 503
        # until they are done.
        worker.start()
        jobs.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            jobs.stop()  # first: a running clip waits on the worker
            worker.stop()

    app = FastAPI(
        title="style-transfer",
        version=__version__,
        summary="Fast neural style transfer with swappable normalization layers",
        description="Upload a photo, pick a model (a style and a norm), get the stylized image. "
                    "`/v1/compare` puts several models side by side; `/v1/videos` stylizes a clip as a job. "
                    "Errors are JSON: "
                    '`{"error": {"code": ..., "message": ...}}`.',
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(stylize.router)
    app.include_router(videos.router)
    app.include_router(health.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST", "DELETE"],
                       expose_headers=["X-Model", "X-Elapsed-Ms", "X-Image-Size", "Location"])
    app.add_middleware(BodySizeLimit, limit=settings.max_upload_bytes,
                       limits={"/v1/videos": settings.max_video_bytes})
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app
