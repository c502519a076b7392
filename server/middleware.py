"""ASGI middleware: the upload size cap, and request metrics."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import MalformedRequest, UploadTooLarge, response_for
from .metrics import Metrics


class BodySizeLimit:
    """Refuse bodies over ``limit`` bytes with 413 — by Content-Length when given, else while reading.

    The body streams through as the app reads it, counted: the app never gets more than ``limit``
    bytes, so a client that sends no Content-Length (chunked) cannot make the server spool an
    unbounded upload, and nothing here holds the body. (It used to be read whole before the app ran,
    which held a 200 MB video upload in memory beside the copy the form parser spools to disk.) Once
    the count passes the limit, the app is told the client went away (its form parsing stops), its own
    answer to that is dropped, and the client gets the 413. ``limits`` gives paths a limit of their own
    (a video's upload is larger than a photo's).
    """

    def __init__(self, app: ASGIApp, limit: int, limits: dict[str, int] | None = None) -> None:
        self.app, self.limit, self.limits = app, limit, limits or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"].rstrip("/"), self.limit)
        too_large = UploadTooLarge(f"upload larger than the limit of {limit} bytes")
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    await response_for(too_large)(scope, receive, send)
                    return
            except ValueError:
                await response_for(MalformedRequest("invalid Content-Length"))(scope, receive, send)
                return
        size, tripped, started = 0, False, False

        async def counted() -> Message:
            nonlocal size, tripped
            if tripped:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit and not started:
                    tripped = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if tripped:
                return  # the app's answer to the "disconnect"; the 413 below replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not tripped:
                raise
        if tripped:
            await response_for(too_large)(scope, receive, send)


class RequestMetrics:
    """Count requests by route template and status, and time them."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: dict[str, Any] = {"code": 500}

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or ("/static" if scope["path"].startswith("/static/") else "other")
            self.metrics.requests.labels(path, scope["method"], str(status["code"])).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)
