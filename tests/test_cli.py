"""The `style-transfer` command line, end to end: stylize (every option), models, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from style_transfer.checkpoint import ModelInfo, save_model
import style_transfer.cli as cli
from style_transfer.cli import main
from style_transfer.network import TransformerConfig, TransformerNet


@pytest.fixture
def weights(tmp_path) -> Path:
    """A weights folder with two tiny models."""
    folder = tmp_path / "weights"
    for name, norm in (("tiny-instance", "instance"), ("tiny-batch", "batch")):
        torch.manual_seed(1)
        config = TransformerConfig(norm=norm, width=8, num_residual=1)
        save_model(folder / f"{name}.safetensors", TransformerNet(config),
                   ModelInfo(config, style_name="test-style", steps=7, losses={"total": 1.5}))
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(folder / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (33, 21, 3), dtype=np.uint8)).save(folder / "sub" / "b.png")
    rgba = rng.integers(0, 255, (24, 24, 4), dtype=np.uint8)
    rgba[..., 3] = np.linspace(0, 255, 24, dtype=np.uint8)[None, :]
    Image.fromarray(rgba, "RGBA").save(folder / "c.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def run(*args: str) -> int:
    return main([*map(str, args)])


def test_stylize_one_file_to_a_file(weights, photos, tmp_path, monkeypatch):
    out = tmp_path / "out.jpg"
    kept = []  # on a CPU it keeps the memory an image frees (device.keep_freed_memory)
    monkeypatch.setattr("style_transfer.cli.keep_freed_memory", lambda: kept.append(1) or True)
    assert run("stylize", photos / "a.jpg", "--model", "tiny-instance", "--weights", weights, "--out", out) == 0
    assert kept == [1]
    with Image.open(out) as img:
        assert img.format == "JPEG" and img.size == (60, 40)


def test_stylize_folder_recursively_to_a_folder(weights, photos, tmp_path):
    out = tmp_path / "out"
    assert run("stylize", photos, "--model", weights / "tiny-batch.safetensors", "--out", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_tiny-batch.png", "b_tiny-batch.png", "c_tiny-batch.png"]
    with Image.open(out / "c_tiny-batch.png") as img:  # alpha carried over
        assert img.mode == "RGBA"
        assert np.asarray(img)[..., 3][0, 0] == 0 and np.asarray(img)[..., 3][0, -1] == 255


def _photo(path: Path, seed: int, size=(20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def test_inputs_that_share_a_name_get_outputs_of_their_own(weights, tmp_path, caplog):
    """A phone numbers its photos again in each folder, and photo.jpg may sit beside photo.png: every input
    gets its own output (before, the last one overwrote the others), and the log says which is which."""
    src = tmp_path / "DCIM"
    first, second = _photo(src / "100APPLE" / "IMG_0001.jpg", 1), _photo(src / "101APPLE" / "IMG_0001.jpg", 2)
    jpg, png, alone = _photo(src / "photo.jpg", 3), _photo(src / "photo.png", 4), _photo(src / "other.png", 5)
    out = tmp_path / "out"
    assert run("stylize", src, "--model", "tiny-instance", "--weights", weights, "--out", out) == 0
    names = {"100APPLE_IMG_0001": first, "101APPLE_IMG_0001": second, "photo_jpg": jpg, "photo_png": png,
             "other": alone}
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}_tiny-instance.png" for n in names)
    for name, source in names.items():  # each output is its own input's
        alone_out = tmp_path / "one" / f"{name}.png"
        assert run("stylize", source, "--model", "tiny-instance", "--weights", weights, "--out", alone_out) == 0
        together = np.asarray(Image.open(out / f"{name}_tiny-instance.png"))
        assert np.array_equal(together, np.asarray(Image.open(alone_out)))
    assert "written as 101APPLE_IMG_0001_tiny-instance.png" in caplog.text and "other.png" not in caplog.text
    # The same name in two folders named on the command line, and one file named twice (stylized once).
    other = _photo(tmp_path / "elsewhere" / "photo.jpg", 6)
    out2 = tmp_path / "out2"
    assert run("stylize", jpg, other, jpg, "--model", "tiny-instance", "--weights", weights, "--out", out2) == 0
    assert sorted(p.name for p in out2.iterdir()) == ["photo-2_tiny-instance.png", "photo_tiny-instance.png"]


def test_output_names_that_differ_only_in_case_are_told_apart():
    """On macOS's and Windows' file systems IMG_0001.png and img_0001.png are one file."""
    rels = [Path("100APPLE/IMG_0001.JPG"), Path("img_0001.jpg"), Path("a.jpg"), Path("A.png"), Path("b.jpg")]
    assert cli.output_stems(rels) == ["100APPLE_IMG_0001", "img_0001", "a_jpg", "A_png", "b"]
    assert cli.output_stems([Path("x/Photo.jpg"), Path("y/photo.jpg")]) == ["x_Photo", "y_photo"]
    assert cli.output_stems([Path("Photo.jpg"), Path("photo.jpg")]) == ["Photo", "photo-2"]


def test_a_file_name_for_several_outputs_is_refused(weights, photos, tmp_path, caplog):
    out = tmp_path / "result.png"
    assert run("stylize", photos, "--model", "tiny-instance", "--weights", weights, "--out", out) == 2
    assert "names one file, but there are 3 input(s)" in caplog.text and not out.exists()


def test_several_models_or_all_of_them(weights, photos, tmp_path, caplog):
    """--model repeated, or all (the weights folder's every model): one output per input and model, each
    the one that model alone writes."""
    out = tmp_path / "out"
    assert run("stylize", photos / "a.jpg", photos / "sub" / "b.png", "--model", "tiny-instance", "--model",
               "tiny-batch", "--model", "tiny-instance", "--weights", weights, "--out", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_tiny-batch.png", "a_tiny-instance.png", "b_tiny-batch.png",
                                                      "b_tiny-instance.png"]
    alone = tmp_path / "alone.png"
    assert run("stylize", photos / "a.jpg", "--model", "tiny-batch", "--weights", weights, "--out", alone) == 0
    assert np.array_equal(np.asarray(Image.open(alone)), np.asarray(Image.open(out / "a_tiny-batch.png")))
    every = tmp_path / "every"
    assert run("stylize", photos / "a.jpg", "--model", "all", "--weights", weights, "--out", every) == 0
    assert sorted(p.name for p in every.iterdir()) == ["a_tiny-batch.png", "a_tiny-instance.png"]
    # One image file cannot hold two models' outputs.
    assert run("stylize", photos / "a.jpg", "--model", "all", "--weights", weights, "--out", tmp_path / "x.png") == 2
    assert "1 input(s) and 2 model(s): give a folder" in caplog.text
    # A style for ordinary models only: checked against each (not silently dropped).
    assert run("stylize", photos / "a.jpg", "--model", "all", "--weights", weights, "--out", every,
               "--style", "nope") == 2
    assert "tiny-batch: unknown style(s) nope" in caplog.text
    # Two checkpoints of one name (from two folders) would write the same files.
    other = tmp_path / "other" / "tiny-batch.safetensors"
    other.parent.mkdir()
    other.write_bytes((weights / "tiny-batch.safetensors").read_bytes())
    assert run("stylize", photos / "a.jpg", "--model", "tiny-batch", "--model", other, "--weights", weights,
               "--out", every) == 2
    assert "two models named tiny-batch" in caplog.text


def test_an_output_folder_inside_the_input_folder_is_not_read_again(weights, tmp_path, monkeypatch):
    src = tmp_path / "photos"
    _photo(src / "a.jpg", 1)
    monkeypatch.chdir(src)  # `style-transfer stylize .`: the default --out, ./stylized, is inside the input
    for _ in range(2):
        assert run("stylize", ".", "--model", "tiny-instance", "--weights", weights) == 0
        assert sorted(p.name for p in (src / "stylized").iterdir()) == ["a_tiny-instance.png"]
    # Named on the command line, an image inside it is an input like any other.
    assert run("stylize", "stylized/a_tiny-instance.png", "--model", "tiny-batch", "--weights", weights) == 0
    assert (src / "stylized" / "a_tiny-instance_tiny-batch.png").exists()


def test_skip_existing_goes_on_where_an_interrupted_run_stopped(weights, photos, tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO")
    out = tmp_path / "out"
    assert run("stylize", photos, "--model", "tiny-instance", "--weights", weights, "--out", out) == 0
    (out / "b_tiny-instance.png").unlink()  # the run was killed before b
    done = (out / "a_tiny-instance.png").stat().st_mtime_ns
    decoded = []
    real = cli.decode_image
    monkeypatch.setattr("style_transfer.cli.decode_image", lambda path: decoded.append(path.name) or real(path))
    assert run("stylize", photos, "--model", "tiny-instance", "--weights", weights, "--out", out,
               "--skip-existing") == 0
    assert decoded == ["b.png"] and (out / "b_tiny-instance.png").exists()
    assert (out / "a_tiny-instance.png").stat().st_mtime_ns == done
    assert "skipping 2 of 3 image(s)" in caplog.text
    decoded.clear()  # without the flag every output is written again
    assert run("stylize", photos, "--model", "tiny-instance", "--weights", weights, "--out", out) == 0
    assert sorted(decoded) == ["a.jpg", "b.png", "c.png"]


def test_stylize_several_files_with_every_option(weights, photos, tmp_path):
    out = tmp_path / "out"
    code = run("stylize", photos / "a.jpg", photos / "sub" / "b.png", "--model", "tiny-instance",
               "--weights", weights, "--out", out, "--format", "jpeg", "--max-size", "32", "--strength", "0.5",
               "--preserve-color", "--tile", "32", "--tile-overlap", "8", "--precision", "bf16", "--device", "cpu")
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a_tiny-instance.jpg", "b_tiny-instance.jpg"]
    with Image.open(out / "a_tiny-instance.jpg") as img:
        assert img.size == (32, 21)  # max-size bounds the long side


def test_options_change_the_output(weights, photos, tmp_path):
    def stylize(*extra: str) -> np.ndarray:
        target = tmp_path / f"o{len(list(tmp_path.iterdir()))}.png"
        assert run("stylize", photos / "a.jpg", "--model", "tiny-instance", "--weights", weights,
                   "--out", target, *extra) == 0
        return np.asarray(Image.open(target), dtype=np.float32)

    original = np.asarray(Image.open(photos / "a.jpg"), dtype=np.float32)
    full = stylize()
    assert np.abs(stylize("--strength", "0") - original).max() <= 1
    half = stylize("--strength", "0.5")
    assert np.abs(half - (full + original) / 2).max() <= 2
    assert np.abs(stylize("--preserve-color") - full).mean() > 1


def test_paint_size_paints_smaller_and_keeps_the_size(weights, tmp_path, capsys):
    photo = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (100, 150, 3), dtype=np.uint8)).save(photo)

    def stylize(*extra: str) -> np.ndarray:
        target = tmp_path / f"o{len(list(tmp_path.iterdir()))}.png"
        assert run("stylize", photo, "--model", "tiny-instance", "--weights", weights, "--out", target, *extra) == 0
        with Image.open(target) as img:
            assert img.size == (150, 100)
            return np.asarray(img, dtype=np.float32)

    full = stylize("--paint-size", "0")
    assert np.array_equal(stylize(), full)  # the default (1024 px) paints a 150 px image at its size
    assert np.abs(stylize("--paint-size", "64") - full).mean() > 1
    with pytest.raises(SystemExit):
        run("stylize", photo, "--model", "tiny-instance", "--weights", weights, "--paint-size", "10")
    assert "--paint-size: give 0 (the image's size) or at least 64 px" in capsys.readouterr().err


def test_unknown_model_lists_available(weights, photos, tmp_path, caplog):
    assert run("stylize", photos / "a.jpg", "--model", "nope", "--weights", weights, "--out", tmp_path / "x") == 2
    assert "tiny-batch" in caplog.text and "tiny-instance" in caplog.text


@pytest.mark.parametrize("name", ["../weights/tiny-instance", "/etc/passwd", "tiny\x00instance", "..", "%2e%2e"])
def test_model_names_cannot_escape_the_weights_folder(weights, photos, tmp_path, name, caplog):
    assert run("stylize", photos / "a.jpg", "--model", name, "--weights", weights, "--out", tmp_path / "x") == 2


def test_missing_input_and_unreadable_input(weights, photos, tmp_path, caplog):
    assert run("stylize", tmp_path / "missing.jpg", "--model", "tiny-instance", "--weights", weights) == 2
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    assert run("stylize", bad, photos / "a.jpg", "--model", "tiny-instance", "--weights", weights,
               "--out", tmp_path / "o") == 1
    assert (tmp_path / "o" / "a_tiny-instance.png").exists()  # the good one still done
    assert "bad.jpg" in caplog.text


def test_an_image_too_large_for_memory_is_skipped_with_what_to_do(weights, photos, tmp_path, monkeypatch, caplog):
    """Out of memory on one image of a folder: the others are still written, the log says how to make it fit,
    and the exit status says something failed. Any other error still stops the run."""
    from style_transfer.stylize import Stylizer

    real = Stylizer.stylize_image

    def short_of_memory(self, image, options):
        if image.rgb.shape[-1] == 60:  # a.jpg, 60x40
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(self, image, options)

    monkeypatch.setattr(Stylizer, "stylize_image", short_of_memory)
    out = tmp_path / "out"
    assert run("stylize", photos, "--model", "tiny-instance", "--weights", weights, "--out", out) == 1
    assert sorted(p.name for p in out.iterdir()) == ["b_tiny-instance.png", "c_tiny-instance.png"]
    assert "out of memory stylizing" in caplog.text and "a.jpg (painted at 60x40)" in caplog.text
    assert "--paint-size" in caplog.text and "1 of 3 file(s) could not be stylized" in caplog.text
    monkeypatch.setattr(Stylizer, "stylize_image", lambda *a: (_ for _ in ()).throw(RuntimeError("a bug")))
    assert run("stylize", photos, "--model", "tiny-instance", "--weights", weights, "--out", out) == 2


def test_a_command_out_of_memory_says_what_to_change(monkeypatch, caplog, tmp_path):
    def short_of_memory(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    monkeypatch.setattr(cli, "_cmd_train", short_of_memory)
    assert run("train", "--content", tmp_path, "--style", tmp_path / "s.jpg", "--out", tmp_path / "m.safetensors") == 2
    assert "Tried to allocate" in caplog.text and "smaller --batch-size or --image-size" in caplog.text


def test_models_lists_metadata(weights, capsys):
    assert run("models", "--weights", weights, "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["tiny-batch", "tiny-instance"]
    assert rows[0]["norm"] == "batch" and rows[0]["steps"] == 7 and rows[0]["style"] == "test-style"
    assert run("models", "--weights", weights) == 0
    table = capsys.readouterr().out
    assert "tiny-instance" in table and "instance" in table
    # A checkpoint whose file name is no model name is listed with what to do, not left out silently.
    (weights / "my painting.safetensors").write_bytes((weights / "tiny-instance.safetensors").read_bytes())
    assert run("models", "--weights", weights) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("my painting.safetensors")]
    assert len(line) == 1 and "not usable" in line[0] and "rename the file" in line[0]
    assert run("models", "--weights", weights, "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[-1]["name"] == "my painting.safetensors" and "rename the file" in rows[-1]["error"]


def test_train_rejects_unknown_norm(caplog):
    # Checked by the run spec (any case is accepted), before the files: one clear line, exit code 2.
    assert main(["train", "--content", ".", "--style", "x.jpg", "--out", "m.safetensors", "--norm", "weird"]) == 2
    assert "unknown norm 'weird'" in caplog.text and "instance" in caplog.text


def test_console_script_runs(weights, photos, tmp_path):
    script = Path(sys.executable).with_name("style-transfer")
    proc = subprocess.run([str(script), "stylize", str(photos / "a.jpg"), "--model", "tiny-instance",
                           "--weights", str(weights), "--out", str(tmp_path / "s.png")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "s.png").exists()


def test_a_closed_pipe_is_not_an_error(weights):
    """`style-transfer models | head -1`: the reader leaves early; no traceback, exit 0."""
    proc = subprocess.Popen([sys.executable, "-m", "style_transfer", "models", "--weights", str(weights)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and b"Traceback" not in err and b"Exception ignored" not in err
