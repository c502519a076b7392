"""Image files <-> tensors: every PIL mode we meet, EXIF orientation, alpha, encoding, atomic saves."""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

import style_transfer.imageio as imageio
from benchmarks.bench_colour_profiles import DISPLAY_P3, cmyk_icc, grey_icc, icc_with_primaries, ink_lab, srgb_icc
from style_transfer.imageio import (
    AVIF,
    HEIF,
    INPUT_FORMATS,
    CorruptImage,
    LoadedImage,
    UnsupportedImageFormat,
    decode_image,
    encode_image,
    load_rgb,
    resize_max,
    save_image,
    to_pil,
)

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _bytes(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _rgb_at(loaded: LoadedImage, y: int, x: int) -> list[float]:
    return [round(float(v), 3) for v in loaded.rgb[0, :, y, x]]


def _close(a, b, tol=0.02) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b))


# ----------------------------------------------------------------------------- decode_image


def test_decode_rgb_png_exact_from_bytes_and_path(tmp_path):
    arr = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3) * 4
    data = _bytes(Image.fromarray(arr, "RGB"), "PNG")
    loaded = decode_image(data)
    assert loaded.rgb.shape == (1, 3, 4, 5)
    assert loaded.rgb.dtype == torch.float32
    assert loaded.alpha is None
    expected = torch.from_numpy(arr).permute(2, 0, 1).float()[None] / 255
    assert torch.allclose(loaded.rgb, expected, atol=1e-6)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    assert torch.equal(decode_image(path).rgb, loaded.rgb)
    assert torch.equal(decode_image(str(path)).rgb, loaded.rgb)
    assert torch.equal(load_rgb(path), loaded.rgb)


def test_exif_orientation_is_applied():
    # stored 20 wide x 10 high: left half red, right half blue; orientation 6 = rotate 90 deg clockwise
    img = Image.new("RGB", (20, 10), RED)
    img.paste(Image.new("RGB", (10, 10), BLUE), (10, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    loaded = decode_image(_bytes(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert loaded.rgb.shape == (1, 3, 20, 10)  # displayed 10 wide x 20 high
    # after a clockwise turn the stored left (red) half is on top, the right (blue) half at the bottom
    assert _close(_rgb_at(loaded, 3, 5), (1, 0, 0), 0.15)
    assert _close(_rgb_at(loaded, 16, 5), (0, 0, 1), 0.15)


def test_exif_orientation_8_turns_the_other_way():
    img = Image.new("RGB", (20, 10), RED)
    img.paste(Image.new("RGB", (10, 10), BLUE), (10, 0))
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 deg counter-clockwise
    loaded = decode_image(_bytes(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert loaded.rgb.shape == (1, 3, 20, 10)
    assert _close(_rgb_at(loaded, 3, 5), (0, 0, 1), 0.15)
    assert _close(_rgb_at(loaded, 16, 5), (1, 0, 0), 0.15)


def test_rgba_returns_alpha_and_composites_over_white():
    img = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    img.putpixel((1, 0), (0, 255, 0, 0))  # fully transparent garbage colour
    img.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black
    loaded = decode_image(_bytes(img, "PNG"))
    assert loaded.rgb.shape == (1, 3, 2, 4)
    assert loaded.alpha is not None and loaded.alpha.shape == (1, 1, 2, 4)
    assert float(loaded.alpha[0, 0, 0, 0]) == 1.0
    assert float(loaded.alpha[0, 0, 0, 1]) == 0.0
    assert float(loaded.alpha[0, 0, 0, 2]) == pytest.approx(128 / 255)
    assert _rgb_at(loaded, 0, 0) == [1.0, 0.0, 0.0]
    assert _rgb_at(loaded, 0, 1) == [1.0, 1.0, 1.0]  # white, not the hidden green
    grey = 1 - 128 / 255
    assert _close(_rgb_at(loaded, 0, 2), (grey, grey, grey), 0.002)


def test_la_greyscale_with_alpha():
    img = Image.new("LA", (2, 1), (0, 255))
    img.putpixel((1, 0), (0, 0))
    loaded = decode_image(_bytes(img, "PNG"))
    assert loaded.alpha is not None
    assert _rgb_at(loaded, 0, 0) == [0.0, 0.0, 0.0]
    assert _rgb_at(loaded, 0, 1) == [1.0, 1.0, 1.0]


def test_palette_without_transparency():
    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2])
    loaded = decode_image(_bytes(img, "PNG"))
    assert loaded.alpha is None
    assert loaded.rgb.shape == (1, 3, 1, 3)
    assert [_rgb_at(loaded, 0, x) for x in range(3)] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]


def test_palette_with_transparency():
    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2])
    loaded = decode_image(_bytes(img, "PNG", transparency=1))  # index 1 (green) is transparent
    assert loaded.alpha is not None
    assert loaded.alpha.flatten().tolist() == [1.0, 0.0, 1.0]
    assert [_rgb_at(loaded, 0, x) for x in range(3)] == [[1, 0, 0], [1, 1, 1], [0, 0, 1]]


def test_greyscale_l():
    img = Image.new("L", (3, 2), 128)
    img.putpixel((0, 0), 0)
    img.putpixel((2, 1), 255)
    loaded = decode_image(_bytes(img, "PNG"))
    assert loaded.rgb.shape == (1, 3, 2, 3)
    assert loaded.alpha is None
    assert _rgb_at(loaded, 0, 0) == [0, 0, 0]
    assert _rgb_at(loaded, 1, 2) == [1, 1, 1]
    assert torch.allclose(loaded.rgb[0, :, 0, 1], torch.full((3,), 128 / 255))


def test_one_bit():
    img = Image.new("1", (4, 1), 0)
    img.putpixel((1, 0), 1)
    img.putpixel((3, 0), 1)
    loaded = decode_image(_bytes(img, "PNG"))
    assert loaded.rgb.shape == (1, 3, 1, 4)
    assert loaded.rgb[0, 0, 0].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert torch.equal(loaded.rgb[0, 0], loaded.rgb[0, 1])


def test_cmyk_jpeg():
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red
    img.paste((255, 0, 255, 0), (8, 0, 16, 16))  # green on the right
    data = _bytes(img, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    loaded = decode_image(data)
    assert loaded.rgb.shape == (1, 3, 16, 16)
    assert _close(_rgb_at(loaded, 8, 2), (1, 0, 0), 0.1)
    assert _close(_rgb_at(loaded, 8, 13), (0, 1, 0), 0.1)


def test_sixteen_bit_greyscale_is_not_clipped():
    arr = np.array([[65535, 32768, 0, 1000]], dtype=np.uint16)
    data = _bytes(Image.fromarray(arr), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    loaded = decode_image(data)
    assert loaded.rgb.shape == (1, 3, 1, 4)
    values = loaded.rgb[0, 0, 0].tolist()
    assert values[0] == pytest.approx(1.0)
    assert values[1] == pytest.approx(0.5, abs=1e-3)
    assert values[2] == 0.0
    assert values[3] == pytest.approx(1000 / 65535, rel=1e-3)


def test_dark_sixteen_bit_greyscale_keeps_its_scale():
    """All values <= 255 in a 16-bit file are still 16-bit values: 200/65535 is nearly black."""
    arr = np.array([[200, 100]], dtype=np.uint16)
    loaded = decode_image(_bytes(Image.fromarray(arr), "PNG"))
    assert loaded.rgb.max() < 0.01


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (8, 6), RED), Image.new("RGB", (8, 6), BLUE)]
    data = _bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(io.BytesIO(data)) as check:
        assert getattr(check, "n_frames", 1) == 2
    loaded = decode_image(data)
    assert loaded.rgb.shape == (1, 3, 6, 8)
    assert _close(_rgb_at(loaded, 3, 4), (1, 0, 0), 0.01)


def test_webp_decodes():
    loaded = decode_image(_bytes(Image.new("RGB", (10, 7), BLUE), "WEBP", lossless=True))
    assert loaded.rgb.shape == (1, 3, 7, 10)
    assert _close(_rgb_at(loaded, 3, 3), (0, 0, 1), 0.01)


def test_garbage_raises():
    with pytest.raises(Exception):
        decode_image(b"definitely not an image")


# ----------------------------------------------------------------------------- encode / save


def _gradient(h: int = 24, w: int = 32) -> torch.Tensor:
    ys = torch.linspace(0, 1, h).view(h, 1).expand(h, w)
    xs = torch.linspace(0, 1, w).view(1, w).expand(h, w)
    return torch.stack([ys, xs, (ys + xs) / 2])[None]


def test_png_round_trip_is_exact_on_8bit_values():
    rgb = torch.randint(0, 256, (1, 3, 9, 11), generator=torch.Generator().manual_seed(0)).float() / 255
    data = encode_image(rgb, "png")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert torch.allclose(decode_image(data).rgb, rgb, atol=1e-6)


def test_encode_clamps_out_of_range_values():
    rgb = torch.tensor([-0.5, 0.5, 1.7]).view(1, 3, 1, 1)
    out = decode_image(encode_image(rgb, "PNG")).rgb.flatten().tolist()
    assert out[0] == 0.0 and out[2] == 1.0
    assert out[1] == pytest.approx(128 / 255)  # rounded, not truncated


def test_jpeg_round_trip_is_close():
    rgb = _gradient()
    data = encode_image(rgb, "JPEG", quality=95)
    assert data[:2] == b"\xff\xd8"
    out = decode_image(data).rgb
    assert out.shape == rgb.shape
    assert (out - rgb).abs().mean() < 0.02
    assert encode_image(rgb, "jpg")[:2] == b"\xff\xd8"


def test_jpeg_quality_matters():
    rgb = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert len(encode_image(rgb, "JPEG", quality=30)) < len(encode_image(rgb, "JPEG", quality=95))


def test_encode_rejects_unknown_format():
    with pytest.raises(ValueError, match="unsupported"):
        encode_image(_gradient(), "GIF")


def test_encode_carries_no_exif_from_input():
    exif = Image.Exif()
    exif[0x010F] = "SpyCam"  # Make
    exif[0x0131] = "secret-software"  # Software
    src = _bytes(Image.new("RGB", (16, 16), BLUE), "JPEG", exif=exif.tobytes())
    assert Image.open(io.BytesIO(src)).getexif().get(0x010F) == "SpyCam"
    loaded = decode_image(src)
    for fmt in ("JPEG", "PNG", "WEBP"):
        out = encode_image(loaded.rgb, fmt)
        assert b"SpyCam" not in out and b"secret-software" not in out, fmt
        with Image.open(io.BytesIO(out)) as img:
            assert "exif" not in img.info, fmt
            assert len(img.getexif()) == 0, fmt


def test_png_keeps_alpha():
    rgb = torch.zeros(1, 3, 2, 2)
    rgb[:, 0] = 1
    alpha = torch.tensor([[1.0, 0.0], [0.5, 1.0]]).view(1, 1, 2, 2)
    with Image.open(io.BytesIO(encode_image(rgb, "PNG", alpha=alpha))) as img:
        assert img.mode == "RGBA"
        assert img.getpixel((1, 0))[3] == 0
        assert img.getpixel((0, 1))[3] == 128


def test_jpeg_with_alpha_composites_over_white():
    rgb = torch.zeros(1, 3, 16, 16)
    rgb[:, 0] = 1.0  # red
    alpha = torch.ones(1, 1, 16, 16)
    alpha[..., 8:] = 0.0  # right half transparent
    with Image.open(io.BytesIO(encode_image(rgb, "JPEG", alpha=alpha, quality=95))) as img:
        assert img.mode == "RGB"
        left, right = img.getpixel((2, 8)), img.getpixel((13, 8))
    assert _close([v / 255 for v in left], (1, 0, 0), 0.1)
    assert _close([v / 255 for v in right], (1, 1, 1), 0.1)


def test_save_image_formats_by_suffix(tmp_path):
    rgb = _gradient()
    for name, fmt in [("a.png", "PNG"), ("b.jpg", "JPEG"), ("c.JPEG", "JPEG"), ("d.webp", "WEBP")]:
        save_image(rgb, tmp_path / "out" / name)
        with Image.open(tmp_path / "out" / name) as img:
            assert img.format == fmt, name
            assert img.size == (32, 24)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.jpg", "c.JPEG", "d.webp"]


@pytest.mark.parametrize("name", ["x.gif", "x.bmp", "x", "x.png.tmp"])
def test_save_image_rejects_unsupported_suffix(tmp_path, name):
    with pytest.raises(ValueError, match="suffix"):
        save_image(_gradient(), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_save_image_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    save_image(torch.zeros(1, 3, 4, 4), path)
    old = path.read_bytes()
    save_image(torch.ones(1, 3, 4, 4), path)  # overwrite works and leaves no temp file
    assert path.read_bytes() != old
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    current = path.read_bytes()

    import style_transfer.imageio as imageio_module

    def crash(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(imageio_module.os, "replace", crash)
    with pytest.raises(OSError, match="disk on fire"):
        save_image(torch.rand(1, 3, 4, 4), path)
    # a crash before the rename leaves the old file intact and no half-written temp file behind
    assert path.read_bytes() == current
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_to_pil_accepts_3d_and_4d():
    rgb = _gradient(5, 7)
    assert to_pil(rgb).size == (7, 5)
    assert to_pil(rgb[0]).size == (7, 5)
    assert to_pil(rgb, torch.ones(1, 1, 5, 7)).mode == "RGBA"


# ----------------------------------------------------------------------------- resize_max


def test_resize_max_never_upscales():
    rgb = torch.rand(1, 3, 20, 30)
    assert resize_max(rgb, 30) is rgb or torch.equal(resize_max(rgb, 30), rgb)
    assert resize_max(rgb, 1000).shape == (1, 3, 20, 30)


@pytest.mark.parametrize("shape, max_size, expected", [
    ((1, 3, 20, 40), 20, (10, 20)),
    ((1, 3, 40, 20), 20, (20, 10)),
    ((2, 3, 100, 100), 64, (64, 64)),
    ((1, 3, 3, 300), 30, (1, 30)),  # the short side never drops to zero
])
def test_resize_max_limits_the_long_side(shape, max_size, expected):
    out = resize_max(torch.rand(*shape), max_size)
    assert out.shape[-2:] == expected
    assert out.shape[:2] == shape[:2]
    assert out.min() >= 0 and out.max() <= 1


def test_resize_max_keeps_colour():
    rgb = torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1).expand(1, 3, 64, 48).contiguous()
    out = resize_max(rgb, 16)
    assert out.shape[-2:] == (16, 12)
    assert torch.allclose(out, torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1).expand_as(out), atol=1e-4)


def test_load_rgb_max_size(tmp_path, make_image_file):
    path = make_image_file(tmp_path / "big.png", size=(80, 40), color=(10, 20, 30))
    assert load_rgb(path, max_size=20).shape == (1, 3, 10, 20)
    assert load_rgb(path).shape == (1, 3, 40, 80)
    assert isinstance(path, Path)


# ----------------------------------------------------------------------------- colour profiles

def _srgb_decode(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _srgb_encode(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0, 1)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055)


def _expected_srgb(pixels: np.ndarray, primaries) -> np.ndarray:
    """Matrix-shaper arithmetic, done independently of LittleCMS: the profile's RGB -> XYZ (D50) -> sRGB."""
    srgb = ImageCms.createProfile("sRGB")
    to_xyz = np.array(primaries).T
    from_xyz = np.linalg.inv(np.array([srgb.red_colorant[0], srgb.green_colorant[0], srgb.blue_colorant[0]]).T)
    linear = _srgb_decode(pixels / 255.0) @ (from_xyz @ to_xyz).T
    return _srgb_encode(linear)


COLOURS = np.array([[[200, 60, 60], [60, 160, 80], [40, 70, 190], [128, 128, 128], [250, 240, 20], [0, 0, 0]]],
                   dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_a_display_p3_photo_is_converted_to_srgb(fmt):
    save = {"lossless": True} if fmt == "WEBP" else {}
    data = _bytes(Image.fromarray(COLOURS), fmt, icc_profile=icc_with_primaries(), **save)
    got = decode_image(data).rgb[0].permute(1, 2, 0).numpy()
    want = _expected_srgb(COLOURS.astype(np.float64), DISPLAY_P3)
    assert np.abs(got - want).max() <= 1.5 / 255, (got * 255).round()
    # P3 holds more saturated colours than sRGB: the same numbers are a more saturated red in sRGB ...
    assert got[0, 0, 0] > 200 / 255 and got[0, 0, 1] < 60 / 255
    # ... and the white point is shared, so greys stay grey.
    assert np.ptp(got[0, 3]) <= 1 / 255 and abs(got[0, 3, 0] - 128 / 255) <= 1 / 255


def test_an_srgb_profile_leaves_the_pixels_as_they_are():
    untagged = decode_image(_bytes(Image.fromarray(COLOURS), "PNG")).rgb
    srgb = ImageCms.createProfile("sRGB")
    # Another maker's sRGB profile: its colorants rounded a little differently.
    other = tuple(tuple(v + 4e-4 for v in c[0]) for c in (srgb.red_colorant, srgb.green_colorant, srgb.blue_colorant))
    for icc in (srgb_icc(), icc_with_primaries(other)):
        tagged = decode_image(_bytes(Image.fromarray(COLOURS), "PNG", icc_profile=icc)).rgb
        assert torch.equal(tagged, untagged)


def test_an_unusable_profile_is_ignored():
    untagged = decode_image(_bytes(Image.fromarray(COLOURS), "PNG")).rgb
    for icc in (b"not a profile", srgb_icc()[:100]):
        assert torch.equal(decode_image(_bytes(Image.fromarray(COLOURS), "PNG", icc_profile=icc)).rgb, untagged)


def test_a_profiled_rgba_image_keeps_its_alpha():
    rgba = np.concatenate([COLOURS, np.array([[[255], [0], [128], [255], [64], [255]]], dtype=np.uint8)], -1)
    loaded = decode_image(_bytes(Image.fromarray(rgba, "RGBA"), "PNG", icc_profile=icc_with_primaries()))
    assert torch.equal((loaded.alpha[0, 0] * 255).round().to(torch.uint8), torch.from_numpy(rgba[..., 3]))
    opaque = decode_image(_bytes(Image.fromarray(COLOURS), "PNG", icc_profile=icc_with_primaries())).rgb
    assert torch.allclose(loaded.rgb[..., 0], opaque[..., 0])  # the opaque pixel: converted alike


def _lab_to_srgb(lab) -> np.ndarray:
    """CIELAB (D50) -> sRGB in [0, 1], done independently of LittleCMS (CIE 15 formulas, then sRGB's
    D50-adapted colorants as its ICC profile stores them, as _expected_srgb does)."""
    lightness, a, b = lab
    fy = (lightness + 16) / 116
    f = np.array([fy + a / 500, fy, fy - b / 200])
    xyz = np.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * np.array([0.9642, 1.0, 0.8249])
    srgb = ImageCms.createProfile("sRGB")
    colorants = np.array([srgb.red_colorant[0], srgb.green_colorant[0], srgb.blue_colorant[0]]).T
    return _srgb_encode(np.linalg.solve(colorants, xyz))


# Paper, each ink alone, and all four: the exact points of cmyk_icc's table.
INKS = [(0, 0, 0, 0), (1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1), (1, 1, 1, 1)]


def _cmyk_patches(inks=INKS) -> Image.Image:
    """8x8 patches side by side (JPEG's blocks: each patch is flat in its own)."""
    row = np.concatenate([np.full((8, 8, 4), np.array(ink) * 255, dtype=np.uint8) for ink in inks], axis=1)
    return Image.fromarray(row, "CMYK")


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_a_cmyk_image_is_converted_with_its_profile(fmt):
    """A print workflow's CMYK file: each ink mix is the colour its profile says it prints as (paper
    white, cyan ink a mid blue), not Pillow's plain inversion (cyan = (0, 255, 255))."""
    data = _bytes(_cmyk_patches(), fmt, icc_profile=cmyk_icc(), **({"quality": 100} if fmt == "JPEG" else {}))
    got = decode_image(data).rgb[0, :, 4, 4::8].T.numpy()
    want = np.stack([_lab_to_srgb(ink_lab(*ink)) for ink in INKS])
    assert np.abs(got - want).max() <= 2 / 255, (got * 255).round()
    assert got[1, 1] < 0.7  # cyan: plain inversion would give full green
    assert 0.1 < got[4].mean() < 0.2 and np.ptp(got[4]) < 1 / 255  # black ink: the paper's dark grey
    plain = decode_image(_bytes(_cmyk_patches(), fmt)).rgb[0, :, 4, 4::8].T.numpy()
    assert np.allclose(plain, 1 - np.clip(np.array(INKS)[:, :3] + np.array(INKS)[:, 3:], 0, 1), atol=1 / 255)


def test_a_greyscale_image_is_converted_with_its_profile():
    """A grey profile whose tone curve is linear light: grey 128 is half the light, which sRGB writes as
    188. The alpha of a grey image with alpha stays as it is."""
    levels = np.array([[0, 64, 128, 192, 255]], dtype=np.uint8)
    got = decode_image(_bytes(Image.fromarray(levels), "PNG", icc_profile=grey_icc())).rgb[0].numpy()
    assert np.abs(got - _srgb_encode(levels / 255.0)).max() <= 1.5 / 255, (got * 255).round()
    with_alpha = Image.fromarray(np.stack([levels, levels[:, ::-1]], -1), "LA")
    loaded = decode_image(_bytes(with_alpha, "PNG", icc_profile=grey_icc()))
    assert torch.equal((loaded.alpha[0, 0] * 255).round().to(torch.uint8), torch.from_numpy(levels[:, ::-1].copy()))
    opaque = loaded.rgb[0, :, 0, -1].numpy()  # alpha 255 there, so no white shows through
    assert np.allclose(opaque, got[:, 0, -1], atol=1 / 255)


def test_a_profile_of_another_colour_space_than_the_pixels_is_ignored():
    """A broken file: a CMYK profile on RGB pixels, an RGB one on CMYK, a grey one on RGB. The pixels are
    read as an unmanaged viewer reads them."""
    untagged = decode_image(_bytes(Image.fromarray(COLOURS), "PNG")).rgb
    for icc in (cmyk_icc(), grey_icc()):
        assert torch.equal(decode_image(_bytes(Image.fromarray(COLOURS), "PNG", icc_profile=icc)).rgb, untagged)
    plain = decode_image(_bytes(_cmyk_patches(), "TIFF")).rgb
    assert torch.equal(decode_image(_bytes(_cmyk_patches(), "TIFF", icc_profile=icc_with_primaries())).rgb, plain)


def test_the_cache_of_profiles_is_bounded_and_keeps_no_upload_bytes(monkeypatch):
    """Every upload may carry its own profile: at most 32 are kept, by digest, and none over 1 MB."""
    monkeypatch.setattr(imageio, "_TRANSFORMS", type(imageio._TRANSFORMS)())
    pixels = Image.fromarray(COLOURS)
    for i in range(40):
        primaries = ((DISPLAY_P3[0][0] + i * 1e-3,) + DISPLAY_P3[0][1:],) + DISPLAY_P3[1:]
        decode_image(_bytes(pixels, "PNG", icc_profile=icc_with_primaries(primaries)))
    assert len(imageio._TRANSFORMS) == 32 and all(len(key) == 32 for key in imageio._TRANSFORMS)
    # A profile padded past 1 MB (ICC readers ignore bytes past the tags) still converts, and is not kept.
    big = icc_with_primaries() + bytes(imageio._TRANSFORM_CACHED_BYTES)
    converted = decode_image(_bytes(pixels, "JPEG", icc_profile=big)).rgb  # PNG caps a profile's size
    assert torch.equal(converted, decode_image(_bytes(pixels, "JPEG", icc_profile=icc_with_primaries())).rgb)
    assert len(imageio._TRANSFORMS) == 32 and hashlib.sha256(big).digest() not in imageio._TRANSFORMS


def test_profiled_jpegs_decode_alike_on_many_threads():
    """The server decodes on several threads with one cached transform per profile."""
    data = _bytes(Image.fromarray(np.tile(COLOURS, (40, 10, 1))), "JPEG", icc_profile=icc_with_primaries())
    want = decode_image(data).rgb
    got, errors = [], []

    def decode():
        try:
            for _ in range(20):
                got.append(decode_image(data).rgb)
        except Exception as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    threads = [threading.Thread(target=decode) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(got) == 160 and all(torch.equal(g, want) for g in got)


def test_a_photo_saved_in_display_p3_decodes_as_the_srgb_original():
    """What a phone does: the same colours, stored as Display P3 numbers with the profile attached."""
    rng = np.random.default_rng(3)
    original = rng.integers(30, 226, (16, 24, 3), dtype=np.uint8)  # inside both gamuts, away from clipping
    p3 = ImageCms.ImageCmsProfile(io.BytesIO(icc_with_primaries()))
    stored = ImageCms.profileToProfile(Image.fromarray(original), ImageCms.createProfile("sRGB"), p3,
                                       renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
    assert np.abs(np.asarray(stored, dtype=int) - original).max() > 10  # other numbers ...
    data = _bytes(stored, "PNG", icc_profile=icc_with_primaries())
    got = (decode_image(data).rgb[0].permute(1, 2, 0).numpy() * 255).round()
    assert np.abs(got - original).max() <= 2  # ... the same colours


# ----------------------------------------------------------------------------- AVIF


@pytest.mark.skipif(not AVIF, reason="this Pillow was built without libavif")
def test_avif_decodes_with_alpha_and_orientation(tmp_path):
    rgba = np.zeros((20, 40, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[:, :10] = (255, 0, 0, 255)  # a red band on the left ...
    rgba[:, 30:, 3] = 0  # and a transparent band on the right
    img = Image.fromarray(rgba, "RGBA")
    exif = img.getexif()
    exif[0x0112] = 6  # ... which a quarter turn clockwise puts at the top
    (tmp_path / "a.avif").write_bytes(_bytes(img, "AVIF", quality=95, exif=exif.tobytes()))
    loaded = decode_image(tmp_path / "a.avif")
    assert loaded.rgb.shape == (1, 3, 40, 20) and loaded.alpha is not None
    assert loaded.alpha[0, 0, 0].min() > 0.95 and loaded.alpha[0, 0, -1].max() < 0.05  # the bottom: transparent
    assert _close(_rgb_at(loaded, 0, 10), [1, 0, 0], 0.05) and _close(_rgb_at(loaded, 25, 10), [0, 0, 0], 0.05)


HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200)  # an iPhone photo's first bytes
MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(200)


@pytest.mark.skipif(not AVIF, reason="this Pillow was built without libavif")
def test_a_cut_avif_is_corrupt_not_unsupported():
    avif = _bytes(Image.new("RGB", (32, 24), RED), "AVIF")
    for cut in (avif[:len(avif) // 2], avif[:40]):
        with pytest.raises(CorruptImage, match="AVIF"):
            decode_image(cut)
    with pytest.raises(CorruptImage):
        decode_image(avif[:len(avif) - 10])  # identified, then its pixels are missing
    with pytest.raises(UnsupportedImageFormat):
        decode_image(avif[:len(avif) // 2], formats=("PNG", "JPEG"))  # AVIF not accepted: another format


# Formats without HEIF: what a decoder reads where the optional HEIC support is not installed.
WITHOUT_HEIF = tuple(f for f in INPUT_FORMATS if f != "HEIF")


def test_a_heic_photo_is_refused_with_what_to_do_without_the_heic_support(tmp_path):
    (tmp_path / "IMG_0001.HEIC").write_bytes(HEIC)
    for source in (HEIC, tmp_path / "IMG_0001.HEIC"):
        with pytest.raises(UnsupportedImageFormat, match="HEIC") as refused:
            decode_image(source, formats=WITHOUT_HEIF)
        assert "JPEG" in refused.value.hint and "style-transfer[heif]" in refused.value.hint
    with pytest.raises(UnsupportedImageFormat) as refused:
        decode_image(MP4)  # other ISO media: no hint
    assert refused.value.hint == "" and "HEIC" not in str(refused.value)


def _heic(img: Image.Image, **save) -> bytes:
    return _bytes(img, "HEIF", quality=95, **save)


@pytest.mark.skipif(not HEIF, reason="the optional HEIC support (pillow-heif) is not installed")
def test_heic_photos_are_read_oriented_and_colour_managed():
    """An iPhone's photo: HEIC, rotated by its container (pillow-heif turns EXIF orientation 6 into the
    HEIF rotation it applies itself, and resets the EXIF tag), tagged Display P3."""
    img = Image.new("RGB", (64, 32), RED)
    img.paste(BLUE, (0, 0, 16, 32))  # the left quarter blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    loaded = decode_image(_heic(img, exif=exif.tobytes()))
    assert loaded.rgb.shape == (1, 3, 64, 32)  # rotated once, not twice
    assert _close(_rgb_at(loaded, 2, 16), [0, 0, 1], 0.1) and _close(_rgb_at(loaded, 60, 16), [1, 0, 0], 0.1)
    tagged = decode_image(_heic(Image.fromarray(np.repeat(np.repeat(COLOURS, 16, 0), 16, 1)),
                                icc_profile=icc_with_primaries())).rgb
    plain = decode_image(_heic(Image.fromarray(np.repeat(np.repeat(COLOURS, 16, 0), 16, 1)))).rgb
    # The P3 red comes out a more saturated sRGB red than the same numbers untagged (see the PNG test).
    assert tagged[0, 0, 8, 8] > plain[0, 0, 8, 8] + 0.02 and tagged[0, 1, 8, 8] < plain[0, 1, 8, 8] - 0.02


def test_colorants_from_xy_are_what_icc_profiles_store():
    """sRGB's primaries and D65 white, Bradford-adapted to D50, give LittleCMS's own sRGB colorants (so a
    profile made from them is recognised as sRGB and converts nothing), and Display P3's give Apple's."""
    srgb = ImageCms.createProfile("sRGB")
    made = imageio.colorants([(0.64, 0.33), (0.30, 0.60), (0.15, 0.06)], (0.3127, 0.3290))
    assert np.abs(made - [srgb.red_colorant[0], srgb.green_colorant[0], srgb.blue_colorant[0]]).max() < 1e-4
    assert imageio._to_srgb(imageio.profile_with_colorants(made)) is None
    p3 = imageio.colorants([(0.68, 0.32), (0.265, 0.69), (0.15, 0.06)], (0.3127, 0.3290))
    assert np.abs(p3 - np.array(DISPLAY_P3)).max() < 2e-5


@pytest.mark.skipif(not HEIF, reason="the optional HEIC support (pillow-heif) is not installed")
def test_a_heic_whose_nclx_box_says_display_p3_is_converted_like_a_p3_profile():
    """A HEIC file may give its colours as an nclx box (H.273 codes) instead of an ICC profile: Display P3
    primaries (12) with sRGB's curve (13) are converted as the Display P3 profile is; sRGB's primaries,
    and an HDR curve (PQ, 16: it would need tone mapping), leave the pixels as they are."""
    patches = Image.fromarray(np.repeat(np.repeat(COLOURS, 16, 0), 16, 1))

    def nclx(primaries, transfer):
        return _heic(patches, color_primaries=primaries, transfer_characteristics=transfer, matrix_coefficients=6,
                     full_range_flag=1)

    as_srgb = decode_image(nclx(1, 13)).rgb
    assert Image.open(io.BytesIO(nclx(12, 13))).info["nclx_profile"]["color_primaries"] == 12
    p3 = decode_image(nclx(12, 13)).rgb
    # What the codec kept, converted from Display P3 independently of LittleCMS (see the PNG test).
    kept = as_srgb[0, :, 8, 8::16].T.numpy() * 255
    assert np.abs(p3[0, :, 8, 8::16].T.numpy() - _expected_srgb(kept.astype(np.float64), DISPLAY_P3)).max() <= 2 / 255
    assert torch.equal(decode_image(nclx(2, 13)).rgb, as_srgb)  # unspecified primaries: sRGB
    assert torch.equal(decode_image(nclx(9, 16)).rgb, decode_image(nclx(1, 16)).rgb)  # BT.2020 PQ: as it is
    # An ICC profile, where both are given, is the one that counts.
    assert torch.equal(decode_image(_heic(patches, icc_profile=srgb_icc(), color_primaries=12,
                                          transfer_characteristics=13)).rgb, as_srgb)


@pytest.mark.skipif(not HEIF, reason="the optional HEIC support (pillow-heif) is not installed")
def test_a_cut_heic_is_corrupt_not_unsupported():
    heic = _heic(Image.new("RGB", (32, 24), RED))
    for cut in (heic[:len(heic) // 2], heic[:40], HEIC):
        with pytest.raises(CorruptImage, match="HEIF"):
            decode_image(cut)
    with pytest.raises(UnsupportedImageFormat):
        decode_image(heic, formats=WITHOUT_HEIF)  # HEIF not accepted: refused, with the hint
