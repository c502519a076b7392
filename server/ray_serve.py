"""The HTTP service on Ray Serve: the same FastAPI app on many replicas, over many machines (issue 18).

Run it (``pip install -e '.[ray]'``; docs/deploy.md has the whole story)::

    serve run server.ray_serve:build_app                                  # defaults, env STYLE_TRANSFER_*
    serve run server.ray_serve:build_app weights=/models max_replicas=8   # Settings and RayServeOptions fields
    serve run deploy/serve-config.yaml                                    # the same, as a Serve config file

How, and why:

* **The same app.** One deployment whose ingress is :func:`server.app.create_app` (``@serve.ingress``,
  built on the replica by ``__serve_build_asgi_app__``, so nothing is pickled but settings): the same routes,
  the same JSON errors, ``/healthz``, ``/readyz`` and ``/metrics`` (each replica's own registry: a scrape
  through the proxy sees one replica; Ray's metrics export has the fleet). Only its worker differs: an
  :class:`~server.ondemand.OnDemandWorker`, the same queue and batching with models loaded on first use.
* **Multiplexing.** Models load through ``@serve.multiplexed``: an LRU of ``max_models_per_replica`` per
  replica, so a replica holds the styles it is asked for, not the whole zoo. Ray's proxy routes a
  request whose ``serve_multiplexed_model_id`` header names its model to a replica that already holds
  that model (or is loading it); without the header any replica serves it, loading the model on a
  miss. The form's ``model`` field is always what runs; the header only picks the replica.
* **Why one deployment**, not a thin ingress calling a separate model deployment (which could route by
  the form field without the header): every image would cross between actors twice as pickled tensors,
  and the worker's bounded queue, batching and deadlines would have to be rebuilt on Ray's. One
  deployment keeps the plain server's code path; the price is one header for locality.
* **Autoscaling** on ongoing requests per replica (Ray's policy): a replica runs one batch at a time, so
  ``target_ongoing_requests=2`` keeps its device busy with one request queued behind the running one,
  and ``max_ongoing_requests=4`` leaves the rest waiting in the proxy, where a new or idle replica can
  take them, rather than in one replica's queue. ``num_replicas`` turns autoscaling off.
* **Health.** Ray calls :meth:`StyleTransfer.check_health` every ``health_check_period_s``; a replica
  whose worker failed to start, or that died, is replaced.
* Every response says which replica answered (``X-Replica``, the id at the end of its actor's name):
  the key to that replica's logs and ``/metrics``, and how the tests see the proxy's routing.

Arguments come from ``serve run`` ``key=value`` pairs or a config file's ``args``: any :class:`Settings`
field (``weights``, ``device``, ``queue_size``, ...) for every replica, and the :class:`RayServeOptions`
fields. A replica reads its own ``STYLE_TRANSFER_*`` environment for the settings not given as
arguments, as ``python -m server`` does (``host`` and ``port`` are Ray's proxy's business here).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from ray import serve
from ray.serve import Application
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from style_transfer.stylize import Stylizer

from .app import create_app
from .metrics import Metrics
from .ondemand import OnDemandWorker
from .settings import Settings

# The request header that Ray's proxy routes multiplexed requests by (ray.serve.get_multiplexed_model_id).
MODEL_HEADER = "serve_multiplexed_model_id"
# The response header naming the replica that answered.
REPLICA_HEADER = "X-Replica"


class RayServeOptions(BaseSettings):
    """How the app is spread over Ray: replicas, autoscaling, models per replica; env STYLE_TRANSFER_RAY_*."""

    model_config = SettingsConfigDict(env_prefix="STYLE_TRANSFER_RAY_", extra="forbid")

    # A fixed number of replicas (autoscaling off); None: autoscale between min and max_replicas.
    num_replicas: int | None = Field(None, ge=1)
    # One replica always up: a request never waits for a replica to start (tens of seconds with torch).
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(4, ge=1)
    # Per replica: one batch on the device and one waiting, so the device never idles between requests.
    target_ongoing_requests: float = Field(2.0, gt=0)
    # Per replica; beyond it requests wait in Ray's proxy, where any replica (a new one too) can take them.
    max_ongoing_requests: int = Field(4, ge=1)
    # Resident models per replica (LRU). A shipped model is 3.4 MB of weights, but a loaded, used one
    # measured ~0.1 GB more resident (CPU, 1024 px) against 0.8 GB for the replica itself; 3 keeps a
    # replica near 1.1 GB and covers a style and its A/B neighbours.
    max_models_per_replica: int = Field(3, ge=1)
    # Ray resources per replica: one CPU (its inference thread); num_gpus=1 for one GPU each.
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    # How often Ray checks each replica (check_health); a dead or failed replica is replaced after it.
    health_check_period_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _replica_bounds(self) -> "RayServeOptions":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``."""
        options: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "health_check_period_s": self.health_check_period_s,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
        }
        if self.num_replicas is not None:
            options["num_replicas"] = self.num_replicas
        else:
            options["autoscaling_config"] = {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                             "target_ongoing_requests": self.target_ongoing_requests}
        return options


class ReplicaHeader:
    """ASGI middleware: add ``X-Replica: <id>`` to every HTTP response."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app, self.replica = app, replica

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_replica(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append(REPLICA_HEADER, self.replica)
            await send(message)

        await self.app(scope, receive, send_with_replica)


# A video job lives in the replica that took it (its queue, thread and files), and Serve routes each poll
# to any replica, so a job's status and result would 404 elsewhere. Video stays with `python -m server`.
VIDEO_ON_RAY = ("video jobs are not served on Ray Serve (a job lives in the replica that took it, and a poll may "
                "reach another); stylize videos with `python -m server` or the CLI")


@serve.deployment(name="StyleTransfer")
@serve.ingress()
class StyleTransfer:
    """One replica: the FastAPI app of :func:`server.app.create_app` over an :class:`OnDemandWorker`."""

    def __init__(self, settings: dict[str, Any], max_models_per_replica: int) -> None:
        # Built here, on the replica: its own STYLE_TRANSFER_* environment fills in what was not given.
        self.settings = Settings(**settings)
        self.worker: OnDemandWorker | None = None

        async def load_model(name: str) -> Stylizer:
            # On a cache miss: load and warm up off the event loop, which keeps serving meanwhile.
            return await asyncio.to_thread(self.worker.open, name)

        # Wrapped here rather than on the class, so the bound is an argument of the deployment.
        self.load_model = serve.multiplexed(max_num_models_per_replica=max_models_per_replica)(load_model)

    def __serve_build_asgi_app__(self) -> FastAPI:
        """The app, built after __init__ on the replica; Ray runs its lifespan (which starts the worker)."""

        def make_worker(settings: Settings, metrics: Metrics) -> OnDemandWorker:
            self.worker = OnDemandWorker(settings, metrics, self.load_model)
            return self.worker

        app = create_app(self.settings, worker_factory=make_worker, video_unavailable=VIDEO_ON_RAY)
        # Outermost, so error responses from the app's own middleware say it too.
        app.add_middleware(ReplicaHeader, replica=serve.get_replica_context().replica_id.unique_id)
        return app

    def check_health(self) -> None:
        """Ray's periodic check: raising marks the replica unhealthy, and Ray replaces it."""
        if self.worker is not None and self.worker.failed:
            raise RuntimeError(self.worker.failed)


def build_app(args: dict[str, Any] | None = None) -> Application:
    """The Serve application (``serve run server.ray_serve:build_app key=value ...``).

    ``args``: :class:`RayServeOptions` fields, and :class:`Settings` fields for every replica. Both are
    checked here, so a typo fails at ``serve run``, not in every replica.
    """
    args = dict(args or {})
    ray_fields, server_fields = set(RayServeOptions.model_fields), set(Settings.model_fields)
    unknown = sorted(set(args) - ray_fields - server_fields)
    if unknown:
        raise ValueError(f"unknown argument(s) {', '.join(unknown)}; valid: Ray options "
                         f"{', '.join(sorted(ray_fields))}; server settings {', '.join(sorted(server_fields))}")
    options = RayServeOptions(**{k: v for k, v in args.items() if k in ray_fields})
    settings = {k: v for k, v in args.items() if k in server_fields}
    Settings(**settings)  # validate now; each replica builds its own (with its own environment)
    return StyleTransfer.options(**options.deployment_options()).bind(settings, options.max_models_per_replica)
