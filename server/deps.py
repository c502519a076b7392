"""Dependencies shared by the routes, as Annotated aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .inference import InferenceWorker
from .metrics import Metrics
from .settings import Settings


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _worker(request: Request) -> InferenceWorker:
    return request.app.state.worker


def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(_settings)]
WorkerDep = Annotated[InferenceWorker, Depends(_worker)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
