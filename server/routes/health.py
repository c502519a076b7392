"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deps import MetricsDep, WorkerDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="200 once every model is loaded and warmed up, 503 before",
            responses={503: {"description": "still loading (or start-up failed)"}})
async def readyz(worker: WorkerDep) -> JSONResponse:
    if worker.ready.is_set():
        return JSONResponse({"status": "ready", "models": len(worker.stylizers)})
    body = {"status": "failed", "message": worker.failed} if worker.failed else {"status": "loading"}
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
