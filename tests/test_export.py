"""ONNX export (issue 17, part 6): every norm round-trips through ONNX Runtime, with the metadata, and runs
without this package."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
import onnxruntime as ort  # noqa: E402

from style_transfer.checkpoint import load_model, read_model_info  # noqa: E402
from style_transfer.cli import main  # noqa: E402
from style_transfer.export import MIN_PSNR, export_onnx  # noqa: E402
from style_transfer.metrics import psnr  # noqa: E402
from style_transfer.norms import NORM_NAMES  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("norm", NORM_NAMES)
def test_every_norm_round_trips_at_two_sizes_with_its_metadata(norm, make_checkpoint, tmp_path, random_image):
    checkpoint = make_checkpoint(norm, trained=True)
    result = export_onnx(checkpoint, tmp_path / "m.onnx")
    assert set(result["psnr_db"]) == {"256x256", "193x255"} and min(result["psnr_db"].values()) >= MIN_PSNR
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    model, info = load_model(checkpoint)
    model.eval()
    # Sizes the export never saw, odd ones and a batch of two: the height, width and batch are dynamic.
    for shape in ((1, 3, 37, 50), (2, 3, 64, 41)):
        image = random_image(shape[2], shape[3], batch=shape[0])
        got = torch.from_numpy(session.run(None, {"image": image.numpy()})[0])
        with torch.no_grad():
            expected = model(image)
        assert got.shape == expected.shape
        assert psnr(got.clamp(0, 1), expected.clamp(0, 1)) >= MIN_PSNR
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["style_name"] == info.style_name and meta["steps"] == str(info.steps)
    assert f'"norm": "{norm}"' in meta["config"]


def test_cli_export_and_a_refused_export_writes_nothing(make_checkpoint, tmp_path, monkeypatch, capsys):
    checkpoint = make_checkpoint("instance", trained=True)
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "a.onnx")]) == 0
    assert (tmp_path / "a.onnx").is_file() and "dB" in capsys.readouterr().out
    import style_transfer.export as export_module

    monkeypatch.setattr(export_module, "MIN_PSNR", 1e9)  # no model can pass: the file must not appear
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "b.onnx")]) == 2
    assert not (tmp_path / "b.onnx").exists()


def test_the_readme_example_runs_on_a_shipped_model_without_this_package(tmp_path, shared_data):
    """The README's snippet, as written, with `style_transfer` made unimportable."""
    shipped = REPO / "weights" / "starry-night.safetensors"
    export_onnx(shipped, tmp_path / "starry-night.onnx")
    shutil.copy(shared_data / "content" / "bsds500" / "test" / "69000.jpg", tmp_path / "photo.jpg")
    readme = (REPO / "README.md").read_text()
    snippet = re.search(r"<!-- onnx-example -->\n```python\n(.*?)```", readme, re.S).group(1)
    blocker = "import sys; sys.modules['style_transfer'] = None\n"
    proc = subprocess.run([sys.executable, "-c", blocker + snippet], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == read_model_info(shipped).style_name
    from PIL import Image

    with Image.open(tmp_path / "stylized.png") as out, Image.open(tmp_path / "photo.jpg") as photo:
        assert out.size == photo.size
        assert np.asarray(out).std() > 10  # an image, not a blank
