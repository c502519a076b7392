"""ASGI middleware: the upload size cap, and request metrics."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import MalformedRequest, UploadTooLarge, response_for
from .metrics import Metrics


class BodySizeLimit:
    """Refuse bodies over ``limit`` bytes with 413 — by Content-Length when given, else while reading.

    The body is read (at most ``limit`` bytes) before the app runs, so a client that sends no
    Content-Length (chunked) cannot make the server spool an unbounded upload. ``limits`` gives paths a
    limit of their own (a video's upload is larger than a photo's).
    """

    def __init__(self, app: ASGIApp, limit: int, limits: dict[str, int] | None = None) -> None:
        self.app, self.limit, self.limits = app, limit, limits or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"].rstrip("/"), self.limit)
        message_too_large = f"upload larger than the limit of {limit} bytes"
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    await response_for(UploadTooLarge(message_too_large))(scope, receive, send)
                    return
            except ValueError:
                await response_for(MalformedRequest("invalid Content-Length"))(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await response_for(UploadTooLarge(message_too_large))(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        chunks.reverse()

        async def replay() -> Message:
            # The chunks as they came, each handed over once (never joined: a video's upload would be
            # held twice).
            if chunks:
                return {"type": "http.request", "body": chunks.pop(), "more_body": bool(chunks)}
            return await receive()

        await self.app(scope, replay, send)


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
