"""Multi-style models over HTTP (issue 17): ``style`` and ``mix`` on /v1/stylize and /v1/compare, the
styles in /v1/models, and a worker that never batches jobs of different styles together."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.inference import InferenceWorker
from server.metrics import Metrics
from server.settings import Settings
from style_transfer.checkpoint import ModelInfo, save_model
from style_transfer.imageio import LoadedImage, decode_image
from style_transfer.network import TransformerConfig, TransformerNet
from style_transfer.stylize import StylizeOptions, Stylizer

from .test_conditional import STYLES, three_style_model
from .test_server import error_code, png_bytes, wait_ready

MULTI = "multi"  # a 3-style conditional instance norm network: starry, wave, scream
PLAIN = "tiny-instance"  # an ordinary one-style model
PLAIN_STYLE = "test_style"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("styles") / "weights"
    folder.mkdir()
    model = three_style_model()
    save_model(folder / f"{MULTI}.safetensors", model,
               ModelInfo(model.config, style_name=" + ".join(STYLES), steps=5, extra={"styles": STYLES}))
    torch.manual_seed(1)
    plain = TransformerNet(TransformerConfig(norm="instance", width=8, num_residual=1)).eval()
    save_model(folder / f"{PLAIN}.safetensors", plain, ModelInfo(plain.config, style_name=PLAIN_STYLE, steps=3))
    return folder


@pytest.fixture(scope="module")
def client(weights):
    with TestClient(create_app(Settings(weights=weights, device="cpu", warmup_size=16))) as c:
        wait_ready(c)
        yield c


PHOTO = png_bytes(48, 40, seed=3)


def stylize(client: TestClient, model: str = MULTI, **fields):
    return client.post("/v1/stylize", files={"file": ("a.png", PHOTO)}, data={"model": model, **fields})


def ok(response) -> bytes:
    assert response.status_code == 200, response.text
    return response.content


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)), dtype=np.int16)


def test_models_list_each_models_styles_in_order(client):
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert models[MULTI]["styles"] == STYLES and models[MULTI]["norm"] == "conditional_instance"
    assert models[PLAIN]["styles"] == [PLAIN_STYLE] and models[PLAIN]["style"] == PLAIN_STYLE


def test_openapi_documents_style_and_mix(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for path in ("/v1/stylize", "/v1/compare"):
        ref = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
        form = schemas[ref.rsplit("/", 1)[-1]]["properties"]
        assert "not with `mix`" in form["style"]["description"].lower()
        assert "starry=0.6,wave=0.4" in form["mix"]["description"]
    assert "styles" in schemas["ModelSummary"]["required"]
    assert schemas["ModelSummary"]["properties"]["styles"]["description"]


def test_each_style_is_served_and_the_styles_differ(client, weights):
    outputs = {name: ok(stylize(client, style=name)) for name in STYLES}
    for i, a in enumerate(STYLES):
        for b in STYLES[:i]:
            assert np.abs(pixels(outputs[a]) - pixels(outputs[b])).mean() > 2, (a, b)
    assert ok(stylize(client)) == outputs["starry"]  # no style: the first
    # What the library gives for that style, as for an ordinary model (test_stylize_matches_the_library).
    local = Stylizer.from_checkpoint(weights / f"{MULTI}.safetensors", "cpu").stylize(
        decode_image(PHOTO).rgb, StylizeOptions(style=(0.0, 0.0, 1.0)))
    expected = (local[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.int16)
    assert np.abs(pixels(outputs["scream"]) - expected).max() <= 1


def test_a_mix_blends_and_a_weight_of_one_is_exactly_the_style(client):
    wave = ok(stylize(client, style="wave"))
    for mix in ("wave=1", "starry=0,wave=1", " starry = 0 , wave=1.0 , scream=0"):
        assert ok(stylize(client, mix=mix)) == wave, mix  # byte-identical PNG
    starry = ok(stylize(client, style="starry"))
    blend = ok(stylize(client, mix="starry=0.5,wave=0.5"))
    assert blend not in (wave, starry)
    # Between the two: closer to each than they are to each other.
    apart = np.abs(pixels(wave) - pixels(starry)).mean()
    assert np.abs(pixels(blend) - pixels(wave)).mean() < apart
    assert np.abs(pixels(blend) - pixels(starry)).mean() < apart


@pytest.mark.parametrize("fields, message", [
    ({"style": "sea"}, "unknown style(s) sea; this model has: starry, wave, scream"),
    ({"mix": "sea=1"}, "unknown style(s) sea"),
    ({"mix": "starry:0.5,wave:0.5"}, "mix: expected NAME=WEIGHT"),
    ({"mix": "starry=half,wave=0.5"}, "mix: expected NAME=WEIGHT"),
    ({"mix": " , "}, "mix: give at least one NAME=WEIGHT"),
    ({"mix": "starry=0.7,wave=0.7"}, "must sum to 1"),
    ({"mix": "starry=-1,wave=2"}, "must be >= 0"),
    ({"mix": "starry=nan,wave=1"}, "must be >= 0"),
    ({"style": "wave", "mix": "wave=1"}, "give a style or a mix, not both"),
])
def test_bad_styles_and_mixes_are_refused_with_the_reason(client, fields, message):
    r = stylize(client, **fields)
    assert r.status_code == 422 and error_code(r) == "invalid_style"
    assert message in r.json()["error"]["message"]


def test_an_ordinary_model_takes_only_its_own_style_like_the_cli(client):
    plain = ok(stylize(client, PLAIN))
    assert ok(stylize(client, PLAIN, style=PLAIN_STYLE)) == plain
    assert ok(stylize(client, PLAIN, mix=f"{PLAIN_STYLE}=1")) == plain
    r = stylize(client, PLAIN, style="wave")
    assert r.status_code == 422 and error_code(r) == "invalid_style"
    assert f"this model has: {PLAIN_STYLE}" in r.json()["error"]["message"]


def compare(client: TestClient, models: str, **fields):
    return client.post("/v1/compare", files={"file": ("a.png", PHOTO)}, data={"models": models, **fields})


def results(response) -> dict[str, dict]:
    assert response.status_code == 200, response.text
    return {r["model"]: r for r in response.json()["results"]}


def png_of(data_url: str) -> bytes:
    return base64.b64decode(data_url.split(",", 1)[1])


def test_compare_applies_a_style_or_mix_to_its_multi_style_models(client):
    got = results(compare(client, f"{MULTI},{PLAIN}", style="wave"))
    assert png_of(got[MULTI]["image"]) == ok(stylize(client, style="wave"))
    assert got[MULTI]["style"] == "wave"
    # The ordinary model beside it runs its one style, as without the field.
    assert png_of(got[PLAIN]["image"]) == ok(stylize(client, PLAIN))
    assert got[PLAIN]["style"] == PLAIN_STYLE

    got = results(compare(client, f"{MULTI},{PLAIN}", mix="starry=0.6,wave=0.4"))
    assert png_of(got[MULTI]["image"]) == ok(stylize(client, mix="wave=0.4,starry=0.6"))
    assert got[MULTI]["style"] == "starry=0.6,wave=0.4"
    assert results(compare(client, f"{MULTI},{PLAIN}"))[MULTI]["style"] == "starry"  # its default, by name
    r = compare(client, f"{MULTI},{PLAIN}", style="scream", output="image")
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).width > 3 * 48  # the grid, as without it


def test_compare_refuses_styles_its_models_cannot_take(client):
    r = compare(client, f"{MULTI},{PLAIN}", style="sea")
    assert r.status_code == 422 and error_code(r) == "invalid_style"
    assert r.json()["error"]["message"].startswith(f"{MULTI}: unknown style(s) sea")
    # No multi-style model to apply it to: checked against every model, never silently dropped.
    r = compare(client, f"{PLAIN}", style="wave")
    assert r.status_code == 422 and error_code(r) == "invalid_style"
    assert results(compare(client, f"{PLAIN}", style=PLAIN_STYLE))[PLAIN]["style"] == PLAIN_STYLE


def _image(seed: int, size: int = 24) -> LoadedImage:
    return LoadedImage(torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed)))


def test_jobs_of_different_styles_never_share_a_batch(weights):
    worker = InferenceWorker(Settings(weights=weights, device="cpu", warmup_size=16, max_batch_size=4,
                                      batch_wait_ms=300), Metrics())
    worker.start()
    assert worker.ready.wait(60)
    chosen = ["starry", "wave", "starry", "wave"]
    options = [worker.options(style=worker.style_weights([MULTI], style=s)[MULTI]) for s in chosen]

    async def scenario():
        return await asyncio.gather(*(worker.submit(MULTI, _image(i), o) for i, o in enumerate(options)))

    try:
        got = asyncio.run(scenario())
        # The two starry jobs ran as one batch, and no batch ran a job with another job's style.
        assert [r.batch_size for r in got][0::2] == [2, 2]
        alone = worker.stylizers[MULTI]
        for i, (r, o) in enumerate(zip(got, options)):
            torch.testing.assert_close(r.image.rgb, alone.stylize(_image(i).rgb, o), atol=1e-5, rtol=0)
    finally:
        worker.stop()
