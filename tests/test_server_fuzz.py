"""Property test of the upload path: whatever the client sends, the answer is never a 5xx."""

from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from server.app import create_app
from server.settings import Settings

from .test_server import wait_ready


def _valid_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


VALID = _valid_png()

# Byte strings biased towards the interesting cases: image magic numbers, mangled and cut valid files.
payloads = st.one_of(
    st.binary(max_size=512),
    st.builds(lambda magic, tail: magic + tail,
              st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"GIF89a"]),
              st.binary(max_size=256)),
    st.builds(lambda cut: VALID[:cut], st.integers(0, len(VALID))),
    st.builds(lambda i, b: VALID[:i] + bytes([b]) + VALID[i + 1:], st.integers(0, len(VALID) - 1),
              st.integers(0, 255)),
)
text = st.text(max_size=40)
fields = st.fixed_dictionaries({}, optional={
    "model": st.one_of(st.sampled_from(["tiny-instance", "../tiny-instance", "%2e%2e", "/etc/passwd"]), text),
    "strength": st.one_of(text, st.floats(allow_nan=True).map(str)),
    "preserve_color": st.one_of(text, st.sampled_from(["true", "false"])),
    "max_size": st.one_of(text, st.integers(-10, 10_000).map(str)),
    "paint_size": st.one_of(text, st.integers(-10, 10_000).map(str)),
    "format": st.one_of(text, st.sampled_from(["png", "jpeg"])),
})


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    import torch

    from style_transfer.checkpoint import ModelInfo, save_model
    from style_transfer.network import TransformerConfig, TransformerNet

    weights = tmp_path_factory.mktemp("weights")
    config = TransformerConfig(norm="instance", width=8, num_residual=1)
    torch.manual_seed(0)
    save_model(weights / "tiny-instance.safetensors", TransformerNet(config), ModelInfo(config))
    with TestClient(create_app(Settings(weights=weights, device="cpu", warmup_size=16, max_size=64)),
                    raise_server_exceptions=False) as c:
        wait_ready(c)
        yield c


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=payloads, data=fields, endpoint=st.sampled_from(["/v1/stylize", "/v1/compare"]),
       filename=st.text(max_size=20))
def test_upload_path_never_answers_5xx(client, payload, data, endpoint, filename):
    if endpoint == "/v1/compare" and "model" in data:
        data = {**data, "models": data.pop("model")}
    r = client.post(endpoint, files={"file": (filename or "f", payload)}, data=data)
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        assert "error" in r.json()
