"""API errors: every failure is a JSON body {"error": {"code", "message"}} with a fitting status.

Errors are raised as the type that says what went wrong, where it went wrong -- the inference worker's
(:mod:`server.inference`), the image decoder's (:mod:`style_transfer.imageio`), or the request's own,
below -- and :data:`ERRORS` is the one place that gives each type its HTTP status and stable code.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from style_transfer.imageio import CorruptImage, ImageTooLarge, UnsupportedImageFormat

from .inference import (Busy, DeadlineExceeded, InferenceFailed, InvalidModelName, InvalidStyle, NotReady,
                        TooLargeForDevice, UnknownModel)
from .videos import CorruptVideo, UnknownVideoJob, UnsupportedVideo, VideoNotFinished, VideoTooLong, VideoUnavailable


class RequestError(Exception):
    """A request the API cannot take as sent; the message is for the client."""


class EmptyUpload(RequestError):
    """The uploaded file has no bytes."""


class InvalidField(RequestError):
    """A form field that is present and well-typed but unusable (e.g. an empty list of models)."""


class UploadTooLarge(RequestError):
    """The body is over the upload limit (by Content-Length, or while reading it)."""


class MalformedRequest(RequestError):
    """The request itself is broken (e.g. a Content-Length that is not a number)."""


# exception type -> (HTTP status, stable code). A subclass maps like its nearest listed ancestor.
ERRORS: dict[type[Exception], tuple[int, str]] = {
    EmptyUpload: (400, "empty_file"),
    MalformedRequest: (400, "bad_request"),
    InvalidModelName: (400, "invalid_model_name"),
    UnknownModel: (404, "unknown_model"),
    UnknownVideoJob: (404, "unknown_video"),
    VideoNotFinished: (409, "not_finished"),
    UploadTooLarge: (413, "payload_too_large"),
    ImageTooLarge: (413, "image_too_large"),
    TooLargeForDevice: (413, "too_large_for_device"),
    VideoTooLong: (413, "video_too_long"),
    UnsupportedImageFormat: (415, "unsupported_media_type"),
    UnsupportedVideo: (415, "unsupported_media_type"),
    InvalidField: (422, "invalid_request"),
    InvalidStyle: (422, "invalid_style"),  # a bad form value, like InvalidField; its own code for clients
    CorruptImage: (422, "corrupt_image"),
    CorruptVideo: (422, "corrupt_video"),
    InferenceFailed: (500, "inference_failed"),
    VideoUnavailable: (501, "video_unsupported"),
    NotReady: (503, "not_ready"),
    Busy: (503, "busy"),
    DeadlineExceeded: (504, "deadline_exceeded"),
}

# Starlette's own errors (unknown route, wrong method, ...): status -> code.
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 400: "bad_request"}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error body used everywhere."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def status_and_code(exc: Exception) -> tuple[int, str]:
    """The HTTP status and stable code of an exception of a type in :data:`ERRORS`."""
    return next(ERRORS[cls] for cls in type(exc).__mro__ if cls in ERRORS)


def response_for(exc: Exception) -> JSONResponse:
    """The response for an exception of a type in :data:`ERRORS` (also used by the middleware, which
    answers before the app's exception handlers run)."""
    status, code = status_and_code(exc)
    retry = getattr(exc, "retry_after_s", None)  # InferenceError: when a retry may succeed
    return error_response(status, code, str(exc), {"Retry-After": str(retry)} if retry is not None else None)


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception type to a JSON error; unexpected ones become a logged 500, never a crash."""

    async def _mapped(request: Request, exc: Exception) -> JSONResponse:
        return response_for(exc)

    for cls in ERRORS:
        app.add_exception_handler(cls, _mapped)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query"))
            # A field's own rule (a ValueError in its validator) says it best; pydantic would prefix "Value error, ".
            cause = err.get("ctx", {}).get("error") if err.get("type") == "value_error" else None
            problems.append(f"{where or 'request'}: {cause if cause is not None else err.get('msg', 'invalid')}")
        return error_response(422, "invalid_request", "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"), str(exc.detail),
                              getattr(exc, "headers", None))
