"""The HTTP service through the ASGI app: every endpoint and every documented error."""

from __future__ import annotations

import asyncio
import io
import shutil
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.errors import ERRORS
from server.inference import (Busy, DeadlineExceeded, InferenceError, InferenceWorker, NotReady, TooLargeForDevice,
                              UnknownModel)
from style_transfer.device import is_out_of_memory
from server.metrics import Metrics
from server.settings import Settings
from server.routes import stylize as stylize_routes
from style_transfer.imageio import AVIF, HEIF, INPUT_FORMATS, LoadedImage
from style_transfer.stylize import StylizeOptions

from .test_imageio import HEIC, WITHOUT_HEIF

REPO_ROOT = Path(__file__).resolve().parents[1]


def png_bytes(w: int = 48, h: int = 32, mode: str = "RGB", seed: int = 0, **save) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    arr = rng.integers(0, 255, (h, w, channels), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format=save.pop("format", "PNG"), **save)
    return buf.getvalue()


@pytest.fixture
def weights(make_checkpoint, tmp_path) -> Path:
    folder = tmp_path / "weights"
    make_checkpoint("instance", path=folder / "tiny-instance.safetensors", trained=True)
    make_checkpoint("batch", path=folder / "tiny-batch.safetensors", trained=True)
    return folder


def wait_ready(client: TestClient, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("server never became ready")


@pytest.fixture
def make_client(weights):
    clients = []

    def make(**overrides) -> TestClient:
        settings = Settings(weights=weights, device="cpu", warmup_size=16, **overrides)
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        wait_ready(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


def error_code(response) -> str:
    body = response.json()
    assert set(body) == {"error"} and body["error"]["message"]
    return body["error"]["code"]


# ----------------------------------------------------------------------------- endpoints


def test_health_ready_and_models(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    body = client.get("/v1/models").json()
    assert body["device"] == "cpu" and body["ready"] is True
    assert body["input_formats"] == list(INPUT_FORMATS)  # what the web page offers, by people's names
    names = dict(zip(body["input_formats"], body["input_format_names"]))
    assert names["PNG"] == "PNG" and names["WEBP"] == "WebP" and names.get("HEIF", "HEIC") == "HEIC"
    assert "image/webp" in body["input_media_types"] and ("image/heic" in body["input_media_types"]) == HEIF
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == {"tiny-instance", "tiny-batch"}
    assert by_name["tiny-batch"]["norm"] == "batch"
    assert by_name["tiny-instance"]["parameters"] > 1000 and by_name["tiny-instance"]["steps"] == 7


def test_readyz_is_503_until_models_are_loaded(weights, monkeypatch):
    release = threading.Event()
    real_load = InferenceWorker._load

    def slow_load(self):
        release.wait(10)
        real_load(self)

    monkeypatch.setattr(InferenceWorker, "_load", slow_load)
    with TestClient(create_app(Settings(weights=weights, device="cpu", warmup_size=16))) as client:
        assert client.get("/healthz").status_code == 200  # alive while loading
        response = client.get("/readyz")
        assert response.status_code == 503 and response.headers["retry-after"]
        r = client.post("/v1/stylize", files={"file": ("a.png", png_bytes())}, data={"model": "tiny-instance"})
        assert r.status_code == 503 and error_code(r) == "not_ready" and r.headers["retry-after"] == "5"
        release.set()
        wait_ready(client)


def test_stylize_png_and_jpeg(client):
    r = client.post("/v1/stylize", files={"file": ("a.png", png_bytes(48, 32))},
                    data={"model": "tiny-instance"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-model"] == "tiny-instance" and float(r.headers["x-elapsed-ms"]) > 0
    assert r.headers["x-image-size"] == "48x32"
    assert Image.open(io.BytesIO(r.content)).size == (48, 32)
    r = client.post("/v1/stylize", files={"file": ("a.png", png_bytes())},
                    data={"model": "tiny-batch", "format": "jpeg", "strength": "0.5", "preserve_color": "true"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).format == "JPEG"


def test_stylize_matches_the_library(client, weights):
    from style_transfer.imageio import decode_image
    from style_transfer.stylize import Stylizer

    data = png_bytes(40, 40)
    r = client.post("/v1/stylize", files={"file": ("a.png", data)}, data={"model": "tiny-instance"})
    served = np.asarray(Image.open(io.BytesIO(r.content)), dtype=np.int16)
    local = Stylizer.from_checkpoint(weights / "tiny-instance.safetensors", "cpu").stylize(decode_image(data).rgb)
    expected = (local[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.int16)
    assert np.abs(served - expected).max() <= 1


def test_exif_orientation_applied_and_no_metadata_in_output(client):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    exif[0x010F] = "SecretCam"
    data = png_bytes(40, 20, format="JPEG", exif=exif.tobytes())
    r = client.post("/v1/stylize", files={"file": ("a.jpg", data)}, data={"model": "tiny-instance", "format": "jpeg"})
    assert r.status_code == 200
    out = Image.open(io.BytesIO(r.content))
    assert out.size == (20, 40)
    assert not out.getexif() and b"SecretCam" not in r.content and "icc_profile" not in out.info


def test_alpha_is_kept_in_png(client):
    r = client.post("/v1/stylize", files={"file": ("a.png", png_bytes(24, 24, "RGBA"))},
                    data={"model": "tiny-instance"})
    assert Image.open(io.BytesIO(r.content)).mode == "RGBA"


def test_animated_webp_uses_first_frame(client):
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, append_images=frames[1:], lossless=True)
    r = client.post("/v1/stylize", files={"file": ("a.webp", buf.getvalue())},
                    data={"model": "tiny-instance", "strength": "0"})
    assert r.status_code == 200
    assert np.asarray(Image.open(io.BytesIO(r.content)))[..., 0].mean() > 200  # red: the first frame


def test_max_size_from_client_and_server_cap(make_client):
    client = make_client(max_size=40)
    r = client.post("/v1/stylize", files={"file": ("a.png", png_bytes(100, 50))},
                    data={"model": "tiny-instance", "max_size": "20"})
    assert Image.open(io.BytesIO(r.content)).size == (20, 10)
    r = client.post("/v1/stylize", files={"file": ("a.png", png_bytes(100, 50))},
                    data={"model": "tiny-instance", "max_size": "4000"})
    assert Image.open(io.BytesIO(r.content)).size == (40, 20)  # the server's cap wins


def test_paint_size_from_client_and_server(make_client):
    def stylize(client, **data) -> np.ndarray:
        r = client.post("/v1/stylize", files={"file": ("a.png", png_bytes(150, 90))},
                        data={"model": "tiny-instance", **data})
        assert r.status_code == 200, r.text
        out = Image.open(io.BytesIO(r.content))
        assert out.size == (150, 90)  # painted smaller or not, the output keeps its size
        return np.asarray(out, dtype=np.float32)

    client = make_client()
    assert client.get("/v1/models").json()["paint_size"] == 1024
    full = stylize(client)
    assert np.array_equal(stylize(client, paint_size="0"), full)
    small = stylize(client, paint_size="64")
    assert np.abs(small - full).mean() > 1
    r = client.post("/v1/stylize", files={"file": ("a.png", png_bytes(150, 90))},
                    data={"model": "tiny-instance", "paint_size": "10"})
    assert r.status_code == 422 and error_code(r) == "invalid_request"
    assert r.json()["error"]["message"] == "paint_size: give 0 (the image's size) or at least 64 px, got 10"
    # The operator's paint size is the default a request can override; 0 paints at the image's size.
    painting = make_client(paint_size=64)
    assert painting.get("/v1/models").json()["paint_size"] == 64
    assert np.array_equal(stylize(painting), small) and np.array_equal(stylize(painting, paint_size="0"), full)
    with pytest.raises(ValueError, match="paint_size"):
        Settings(paint_size=10)


def test_large_images_are_tiled(make_client):
    client = make_client(tile_size=64, max_size=200)
    r = client.post("/v1/stylize", files={"file": ("a.png", png_bytes(150, 90))}, data={"model": "tiny-instance"})
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (150, 90)


def test_compare_json_and_grid(client):
    r = client.post("/v1/compare", files={"file": ("a.png", png_bytes(48, 32))},
                    data={"models": "tiny-instance, tiny-batch"})
    assert r.status_code == 200
    body = r.json()
    assert (body["width"], body["height"]) == (48, 32)
    assert [x["model"] for x in body["results"]] == ["tiny-instance", "tiny-batch"]
    assert [x["norm"] for x in body["results"]] == ["instance", "batch"]
    assert all(x["elapsed_ms"] > 0 and x["image"].startswith("data:image/png;base64,") for x in body["results"])
    assert all(-1 <= x["ssim"] <= 1 and 0 <= x["dark_spots"] <= 100 for x in body["results"])
    r = client.post("/v1/compare", files={"file": ("a.png", png_bytes(48, 32))},
                    data={"models": "tiny-instance,tiny-batch", "output": "image"})
    grid = Image.open(io.BytesIO(r.content))
    assert r.headers["content-type"] == "image/png" and grid.width > 3 * 48


def test_metrics_count_requests(client):
    client.post("/v1/stylize", files={"file": ("a.png", png_bytes())}, data={"model": "tiny-instance"})
    client.post("/v1/stylize", files={"file": ("a.png", b"junk")}, data={"model": "tiny-instance"})
    text = client.get("/metrics").text
    assert 'style_transfer_requests_total{method="POST",path="/v1/stylize",status="200"} 1.0' in text
    assert 'style_transfer_requests_total{method="POST",path="/v1/stylize",status="415"} 1.0' in text
    assert "style_transfer_request_seconds_bucket" in text
    assert "style_transfer_queue_depth" in text and "style_transfer_batch_size_bucket" in text


def test_openapi_documents_the_interface(client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/models", "/v1/stylize", "/v1/compare", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    assert {"413", "415", "503", "504"} <= set(spec["paths"]["/v1/stylize"]["post"]["responses"])
    summary = spec["components"]["schemas"]["ModelSummary"]
    assert "ab_group" in summary["required"] and summary["properties"]["ab_group"]["description"]


def test_models_publish_their_norm_ab_set(client):
    """Two models trained alike but for the norm (the fixture's) share an ab_group: spec.ab_group."""
    from style_transfer.spec import ab_group

    models = client.get("/v1/models").json()["models"]
    assert [m["ab_group"] for m in models] == [ab_group(m["training"], m["style_sha256"]) for m in models]
    assert len({m["ab_group"] for m in models}) == 1


def test_shipped_starry_night_arms_form_one_ab_set_apart_from_the_flagship():
    """What the web page's A/B button reads: starry-night-{instance,batch,group,layer} differ only in the
    norm; the flagship starry-night was trained without gradient clipping (weights/zoo.toml)."""
    with TestClient(create_app(Settings(weights=REPO_ROOT / "weights", device="cpu", warmup_size=16))) as c:
        wait_ready(c)
        models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
    arms = {f"starry-night-{norm}" for norm in ("instance", "batch", "group", "layer")}
    (group,) = {models[name]["ab_group"] for name in arms}
    assert {name for name, m in models.items() if m["ab_group"] == group} == arms
    assert models["starry-night"]["ab_group"] != group
    assert models["starry-night"]["style"] == models["starry-night-instance"]["style"]  # same style, other set


def test_web_page_is_served(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]


# ----------------------------------------------------------------------------- bad input


def _bomb_png(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of side x side px whose compressed size is tiny."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("payload, status, code", [
    (b"GIF89a" + b"\x00" * 30, 415, "unsupported_media_type"),
    (b"BM" + b"\x00" * 60, 415, "unsupported_media_type"),
    (b"hello, this is text", 415, "unsupported_media_type"),
    (b"", 400, "empty_file"),
])
def test_bad_files(client, payload, status, code):
    r = client.post("/v1/stylize", files={"file": ("photo.png", payload)}, data={"model": "tiny-instance"})
    assert r.status_code == status and error_code(r) == code


def test_real_gif_and_bmp_refused_by_content_even_named_png(client):
    for fmt in ("GIF", "BMP", "TIFF"):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, format=fmt)
        r = client.post("/v1/stylize", files={"file": ("photo.png", buf.getvalue())}, data={"model": "tiny-instance"})
        assert r.status_code == 415, fmt


@pytest.mark.skipif(not AVIF, reason="this Pillow was built without libavif")
def test_avif_uploads_are_stylized_and_checked_like_the_others(make_client):
    avif = png_bytes(40, 30, format="AVIF", quality=90)
    r = make_client().post("/v1/stylize", files={"file": ("phone.avif", avif)}, data={"model": "tiny-instance"})
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (40, 30)
    r = make_client(max_pixels=1000).post("/v1/stylize", files={"file": ("a", avif)}, data={"model": "tiny-instance"})
    assert r.status_code == 413 and error_code(r) == "image_too_large"  # from the header, before decoding
    r = make_client().post("/v1/stylize", files={"file": ("a", avif[:len(avif) // 2])}, data={"model": "tiny-instance"})
    assert r.status_code == 422 and error_code(r) == "corrupt_image"


def test_the_415_message_names_the_accepted_formats_and_what_to_do_with_a_heic(client, monkeypatch):
    r = client.post("/v1/stylize", files={"file": ("a", b"hello, this is text")}, data={"model": "tiny-instance"})
    message = r.json()["error"]["message"]
    assert all(name in message for name in ("PNG", "JPEG", "WebP")) and ("AVIF" in message) == AVIF
    assert ("HEIC" in message) == HEIF
    # A server without the optional HEIC support: an iPhone's photo gets what to do with it.
    monkeypatch.setattr(stylize_routes, "ACCEPTED_FORMATS", WITHOUT_HEIF)
    r = client.post("/v1/stylize", files={"file": ("IMG_0001.HEIC", HEIC)}, data={"model": "tiny-instance"})
    assert r.status_code == 415 and error_code(r) == "unsupported_media_type"
    message = r.json()["error"]["message"]
    assert "HEIC, " not in message.split(" (recognised")[0] and "export them as JPEG" in message


@pytest.mark.skipif(not HEIF, reason="the optional HEIC support (pillow-heif) is not installed")
def test_heic_photos_are_stylized(client):
    photo = Image.open(io.BytesIO(png_bytes(48, 32)))
    buf = io.BytesIO()
    photo.save(buf, format="HEIF", quality=95)
    r = client.post("/v1/stylize", files={"file": ("IMG_0001.HEIC", buf.getvalue())}, data={"model": "tiny-instance"})
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (48, 32)
    r = client.post("/v1/stylize", files={"file": ("IMG_0002.HEIC", HEIC)}, data={"model": "tiny-instance"})
    assert r.status_code == 422 and error_code(r) == "corrupt_image"  # a damaged HEIC, as a cut JPEG


def test_truncated_images_are_422(client):
    for data in (png_bytes(64, 64), png_bytes(64, 64, format="JPEG")):
        r = client.post("/v1/stylize", files={"file": ("a", data[: len(data) // 2])}, data={"model": "tiny-instance"})
        assert r.status_code == 422 and error_code(r) == "corrupt_image"


def test_decompression_bomb_and_pixel_cap(make_client):
    client = make_client(max_pixels=1000)
    bomb = _bomb_png()
    assert len(bomb) < 200_000
    r = client.post("/v1/stylize", files={"file": ("b.png", bomb)}, data={"model": "tiny-instance"})
    assert r.status_code == 413 and error_code(r) == "image_too_large"
    r = client.post("/v1/stylize", files={"file": ("a.png", png_bytes(40, 40))}, data={"model": "tiny-instance"})
    assert r.status_code == 413


def test_upload_size_cap_with_and_without_content_length(make_client):
    client = make_client(max_upload_bytes=4096)
    big = png_bytes(200, 200)
    r = client.post("/v1/stylize", files={"file": ("a.png", big)}, data={"model": "tiny-instance"})
    assert r.status_code == 413 and error_code(r) == "payload_too_large"

    def chunks():
        for i in range(0, 20000, 1000):
            yield b"x" * 1000

    r = client.post("/v1/stylize", content=chunks(), headers={"content-type": "multipart/form-data; boundary=zz"})
    assert "content-length" not in r.request.headers
    assert r.status_code == 413


def _run_body_limit(limit: int, chunks: list[bytes], app_answer: int = 200) -> tuple[list[int], list[dict]]:
    """BodySizeLimit around an app that reads the whole body and answers ``app_answer``: how many chunks the
    client had sent each time the app got one, and what the client received."""
    from server.middleware import BodySizeLimit

    sent, seen_at, out = 0, [], []

    async def client_receive():
        nonlocal sent
        sent += 1
        return {"type": "http.request", "body": chunks[sent - 1], "more_body": sent < len(chunks)}

    async def client_send(message):
        out.append(message)

    async def app(scope, receive, send):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                await send({"type": "http.response.start", "status": 400, "headers": []})
                await send({"type": "http.response.body", "body": b"client gone"})
                return
            seen_at.append(sent)
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": app_answer, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    scope = {"type": "http", "method": "POST", "path": "/v1/stylize", "headers": []}
    asyncio.run(BodySizeLimit(app, limit)(scope, client_receive, client_send))
    return seen_at, out


def test_the_upload_limit_streams_the_body_and_answers_413_in_place_of_the_app():
    # Under the limit: each chunk reaches the app as it arrives (nothing is held back to be counted first).
    seen_at, out = _run_body_limit(10_000, [b"x" * 1000] * 5)
    assert seen_at == [1, 2, 3, 4, 5] and out[0]["status"] == 200
    # Over it (no Content-Length): the app gets no byte past the limit, and its answer to the cut-off
    # body is replaced by the 413.
    seen_at, out = _run_body_limit(2500, [b"x" * 1000] * 5)
    assert seen_at == [1, 2]
    assert [m["status"] for m in out if m["type"] == "http.response.start"] == [413]
    assert b"payload_too_large" in b"".join(m.get("body", b"") for m in out)


@pytest.mark.parametrize("data, files, status", [
    ({"model": "tiny-instance"}, None, 422),  # no file
    ({}, {"file": ("a.png", png_bytes())}, 422),  # no model
    ({"model": "tiny-instance", "strength": "2"}, {"file": ("a.png", png_bytes())}, 422),
    ({"model": "tiny-instance", "strength": "abc"}, {"file": ("a.png", png_bytes())}, 422),
    ({"model": "tiny-instance", "format": "gif"}, {"file": ("a.png", png_bytes())}, 422),
    ({"model": "tiny-instance", "max_size": "0"}, {"file": ("a.png", png_bytes())}, 422),
])
def test_missing_and_invalid_fields(client, data, files, status):
    r = client.post("/v1/stylize", data=data, files=files)
    assert r.status_code == status and error_code(r) == "invalid_request"


def test_not_multipart_at_all(client):
    r = client.post("/v1/stylize", content=b"{}", headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500


@pytest.mark.parametrize("name, status", [
    ("nope", 404), ("../tiny-instance", 400), ("..", 400), ("%2e%2e", 400), ("%2e%2e/tiny-instance", 400),
    ("/etc/passwd", 400), ("tiny\x00instance", 400), ("weights/tiny-instance", 400), ("", 422),
])
def test_model_names(client, name, status):
    r = client.post("/v1/stylize", files={"file": ("a.png", png_bytes())}, data={"model": name})
    assert r.status_code == status
    if status == 404:
        assert error_code(r) == "unknown_model" and "tiny-instance" in r.json()["error"]["message"]


def test_compare_errors(client):
    r = client.post("/v1/compare", files={"file": ("a.png", png_bytes())}, data={"models": "tiny-instance,nope"})
    assert r.status_code == 404
    r = client.post("/v1/compare", files={"file": ("a.png", png_bytes())}, data={"models": " , "})
    assert r.status_code == 422


def test_unknown_routes_are_json_404(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and error_code(r) == "not_found"


# ----------------------------------------------------------------------------- the worker


def _worker(weights: Path, **overrides) -> InferenceWorker:
    worker = InferenceWorker(Settings(weights=weights, device="cpu", warmup_size=16, **overrides), Metrics())
    worker.start()
    assert worker.ready.wait(60)
    return worker


def _image(seed: int = 0, size: int = 24) -> LoadedImage:
    return LoadedImage(torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed)))


def test_full_queue_answers_503_at_once(weights):
    worker = _worker(weights, queue_size=1)
    gate = threading.Event()
    stylizer = worker.stylizers["tiny-instance"]
    real = stylizer.stylize_image
    stylizer.stylize_image = lambda image, options: (gate.wait(10), real(image, options))[1]

    async def scenario():
        first = asyncio.ensure_future(worker.submit("tiny-instance", _image(), StylizeOptions()))
        await asyncio.sleep(0.2)  # the worker has taken it and is blocked
        second = asyncio.ensure_future(worker.submit("tiny-instance", _image(), StylizeOptions()))
        await asyncio.sleep(0.05)  # queued
        t0 = time.monotonic()
        with pytest.raises(Busy) as refused:
            await worker.submit("tiny-instance", _image(), StylizeOptions())
        assert time.monotonic() - t0 < 0.5
        gate.set()
        await first
        await second
        return refused.value

    try:
        err = asyncio.run(scenario())
        assert err.retry_after_s == 1
    finally:
        gate.set()
        worker.stop()


def test_expired_request_answers_504_and_is_not_run(weights):
    worker = _worker(weights, request_timeout_s=0.1)
    gate = threading.Event()
    calls = []
    stylizer = worker.stylizers["tiny-instance"]
    real = stylizer.stylize_image

    def slow(image, options):
        calls.append(image)
        gate.wait(10)
        return real(image, options)

    stylizer.stylize_image = slow

    async def scenario():
        first = asyncio.ensure_future(worker.submit("tiny-instance", _image(0), StylizeOptions()))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(worker.submit("tiny-instance", _image(1), StylizeOptions()))
        await asyncio.sleep(0.3)  # past the second job's deadline while the first still runs
        gate.set()
        await first
        with pytest.raises(DeadlineExceeded) as expired:
            await second
        return expired.value

    try:
        err = asyncio.run(scenario())
        assert "past its deadline" in str(err)
        assert len(calls) == 1  # the expired job never ran
    finally:
        gate.set()
        worker.stop()


@pytest.mark.parametrize("model", ["tiny-batch", "tiny-instance"])
def test_batched_outputs_do_not_depend_on_the_batch(weights, model):
    worker = _worker(weights, max_batch_size=4, batch_wait_ms=200)

    async def scenario():
        return await asyncio.gather(*(worker.submit(model, _image(i), StylizeOptions()) for i in range(4)))

    try:
        results = asyncio.run(scenario())
        assert [r.batch_size for r in results] == [4, 4, 4, 4]
        alone = worker.stylizers[model]
        for i, r in enumerate(results):
            torch.testing.assert_close(r.image.rgb, alone.stylize(_image(i).rgb), atol=1e-5, rtol=0)
    finally:
        worker.stop()


def _short_of_memory(stylizer, monkeypatch, fits: int):
    """The stylizer's device holds at most ``fits`` pixels of images at once: more fails as CUDA does."""
    real_batch, real_image = stylizer.stylize_batch, stylizer.stylize_image

    def check(pixels: int) -> None:
        if pixels > fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(stylizer, "stylize_batch", lambda images, options: check(images[:, 0].numel()) or
                        real_batch(images, options))
    monkeypatch.setattr(stylizer, "stylize_image", lambda image, options: check(image.rgb[:, 0].numel()) or
                        real_image(image, options))


def test_a_batch_out_of_memory_runs_one_at_a_time_and_an_image_too_big_alone_is_413(weights, monkeypatch):
    """Issue 18: no 5xx at any load. A batch of N needs N times the activations; when the device runs out,
    its images run one by one and each gets its own picture. One that does not fit alone is refused with
    413 (a smaller max_size helps; retrying does not), and the worker goes on serving."""
    worker = _worker(weights, max_batch_size=4, batch_wait_ms=300)
    _short_of_memory(worker.stylizers["tiny-instance"], monkeypatch, fits=2 * 24 * 24)

    async def four(size=24):
        return await asyncio.gather(*(worker.submit("tiny-instance", _image(i, size), StylizeOptions())
                                      for i in range(4)), return_exceptions=True)

    try:
        results = asyncio.run(four())
        assert [r.batch_size for r in results] == [1, 1, 1, 1]
        alone = worker.stylizers["tiny-instance"]
        for i, r in enumerate(results):
            torch.testing.assert_close(r.image.rgb, alone.stylize(_image(i).rgb), atol=1e-5, rtol=0)
        too_big = asyncio.run(four(size=40))
        assert all(isinstance(r, TooLargeForDevice) for r in too_big), too_big
        assert "40x40 image needs more memory" in str(too_big[0]) and "smaller max_size" in str(too_big[0])
        assert worker.metrics.rejected.labels("out_of_memory")._value.get() == 4
        assert asyncio.run(worker.submit("tiny-instance", _image(), StylizeOptions())).image is not None
    finally:
        worker.stop()


def test_out_of_memory_over_http_is_413_not_500(weights, monkeypatch):
    with TestClient(create_app(Settings(weights=weights, device="cpu", warmup_size=16))) as c:
        wait_ready(c)
        _short_of_memory(c.app.state.worker.stylizers["tiny-instance"], monkeypatch, fits=16 * 16)
        r = c.post("/v1/stylize", files={"file": ("a.png", png_bytes())}, data={"model": "tiny-instance"})
        assert r.status_code == 413 and error_code(r) == "too_large_for_device", r.text
        assert "retry-after" not in r.headers
        r = c.post("/v1/stylize", files={"file": ("a.png", png_bytes())}, data={"model": "tiny-instance",
                                                                               "max_size": "16"})
        assert r.status_code == 200


def test_what_counts_as_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory")) and is_out_of_memory(MemoryError())
    with pytest.raises(RuntimeError) as cpu:
        torch.empty(1 << 62, dtype=torch.uint8)  # what the CPU allocator raises
    assert is_out_of_memory(cpu.value)
    assert not is_out_of_memory(RuntimeError("Given groups=1, weight of size [32, 3, 9, 9]"))


def test_broken_checkpoint_is_reported_not_fatal(weights, client):
    (weights / "broken.safetensors").write_bytes(b"\x00" * 100)
    # A file name that is no model name (a space): not served, and said so rather than silently missing.
    shutil.copy(weights / "tiny-instance.safetensors", weights / "my painting.safetensors")
    with TestClient(create_app(Settings(weights=weights, device="cpu", warmup_size=16))) as c:
        wait_ready(c)
        body = c.get("/v1/models").json()
        assert "broken" in body["errors"] and {m["name"] for m in body["models"]} == {"tiny-instance", "tiny-batch"}
        assert "rename the file" in body["errors"]["my painting.safetensors"]


def test_busy_server_refuses_before_decoding(weights, monkeypatch):
    """Under load a refused request must not pay for decoding its upload."""
    import server.routes.stylize as routes

    decoded = []
    real = routes.decode_image
    monkeypatch.setattr(routes, "decode_image", lambda *a, **k: decoded.append(1) or real(*a, **k))
    with TestClient(create_app(Settings(weights=weights, device="cpu", warmup_size=16, queue_size=1))) as c:
        wait_ready(c)
        monkeypatch.setattr(c.app.state.worker._queue, "qsize", lambda: 1)  # the queue is full
        r = c.post("/v1/stylize", files={"file": ("a.png", png_bytes())}, data={"model": "tiny-instance"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and error_code(r) == "busy"
        assert decoded == []


def test_readiness_and_models_are_checked_once_per_request(client, monkeypatch):
    worker = client.app.state.worker
    calls = []
    for name in ("check_ready", "check_model", "check_capacity"):
        real = getattr(worker, name)
        monkeypatch.setattr(worker, name, lambda *args, _real=real, _name=name: calls.append(_name) or _real(*args))
    r = client.post("/v1/stylize", files={"file": ("a.png", png_bytes())}, data={"model": "tiny-instance"})
    assert r.status_code == 200 and calls == ["check_ready", "check_model", "check_capacity"]
    calls.clear()
    r = client.post("/v1/compare", files={"file": ("a.png", png_bytes())}, data={"models": "tiny-instance,tiny-batch"})
    assert r.status_code == 200 and calls == ["check_ready", "check_model", "check_model", "check_capacity"]


def test_every_worker_error_has_an_http_status():
    """The worker raises its own types; errors.py must map each, or a client would see a bare 500."""
    assert set(InferenceError.__subclasses__()) <= set(ERRORS)


def test_the_worker_answers_an_unchecked_unknown_model_and_keeps_serving(weights):
    worker = _worker(weights)
    try:
        with pytest.raises(UnknownModel, match="tiny-instance"):
            asyncio.run(worker.submit("nope", _image(), StylizeOptions()))
        result = asyncio.run(worker.submit("tiny-instance", _image(), StylizeOptions()))
        assert result.image.rgb.shape == (1, 3, 24, 24)
    finally:
        worker.stop()


def test_after_a_failed_start_up_jobs_are_refused_not_left_waiting(weights, monkeypatch):
    def broken(self):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(InferenceWorker, "_warm_up", broken)
    worker = InferenceWorker(Settings(weights=weights, device="cpu", warmup_size=16), Metrics())
    worker.start()
    try:
        end = time.monotonic() + 60
        while worker.failed is None and time.monotonic() < end:
            time.sleep(0.02)
        with pytest.raises(NotReady, match="start-up failed: out of memory"):
            worker.check_ready()

        async def submit():
            return await asyncio.wait_for(worker.submit("tiny-instance", _image(), StylizeOptions()), 10)

        with pytest.raises(NotReady, match="out of memory"):
            asyncio.run(submit())
    finally:
        worker.stop()


def test_tiled_jobs_run_alone_and_fitted_images_batch_whatever_bound_they_asked_for(weights):
    worker = _worker(weights, max_batch_size=4, batch_wait_ms=300, tile_size=64)

    async def scenario(size, options):
        return await asyncio.gather(*(worker.submit("tiny-instance", _image(i, size), o)
                                      for i, o in enumerate(options)))

    try:
        small = asyncio.run(scenario(24, [worker.options(max_size=m) for m in (None, 100, 40)]))
        assert [r.batch_size for r in small] == [3, 3, 3]
        tiled = asyncio.run(scenario(80, [worker.options()] * 2))
        assert [r.batch_size for r in tiled] == [1, 1]
    finally:
        worker.stop()
