"""Stylizing: tiling without seams for every norm, strength, colour preservation, size bounds."""

from __future__ import annotations

import contextlib

import pytest
import torch

import style_transfer.stylize as stylize_module
from style_transfer.network import TransformerConfig, TransformerNet
from style_transfer.norms import NORM_NAMES
from style_transfer.imageio import LoadedImage
from style_transfer.imageio import resize_max
from style_transfer.stylize import (DEFAULT_PAINT_SIZE, Stylizer, StylizeOptions, default_max_size, fit_image, luma,
                                    paint_size_option, preserve_color, rgb_to_ycbcr, upscale_painting, ycbcr_to_rgb)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean().clamp(min=1e-12)))


def photo_like(h: int = 133, w: int = 200) -> torch.Tensor:
    """A smooth, structured test image (gradients + blobs), deterministic."""
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    r = 0.5 + 0.4 * torch.sin(6 * x + 3 * y)
    g = 0.5 + 0.4 * torch.cos(5 * y - 2 * x * y)
    b = (x * y + 0.2 * torch.sin(20 * x)).clamp(0, 1)
    return torch.stack([r, g, b])[None].clamp(0, 1)


def tiny_stylizer(norm: str) -> Stylizer:
    torch.manual_seed(0)
    model = TransformerNet(TransformerConfig(norm=norm, width=8, num_residual=1))
    if norm == "batch":  # give the running statistics non-trivial values
        model.train()
        with torch.no_grad():
            model(torch.rand(4, 3, 64, 64))
    return Stylizer(model, fast=False)  # plain fp32: exactness checks; the fast path is tested below


@pytest.mark.parametrize("norm", NORM_NAMES)
def test_tiled_equals_whole_image(norm):
    stylizer, image = tiny_stylizer(norm), photo_like()
    whole = stylizer.stylize(image)
    tiled = stylizer.stylize(image, StylizeOptions(tile=100, tile_overlap=48))
    assert tiled.shape == whole.shape
    assert psnr(tiled, whole) > 45


@pytest.mark.parametrize("norm", ["instance", "group", "layer"])
def test_shared_statistics_are_what_removes_seams(norm, monkeypatch):
    """Without frozen statistics each tile normalizes itself and the result differs visibly."""
    stylizer, image = tiny_stylizer(norm), photo_like()
    whole = stylizer.stylize(image)
    options = StylizeOptions(tile=100, tile_overlap=48)
    good = psnr(stylizer.stylize(image, options), whole)
    monkeypatch.setattr(stylize_module, "frozen_statistics", lambda model, ref, **forward: contextlib.nullcontext())
    naive = psnr(stylizer.stylize(image, options), whole)
    assert good > naive + 10


def test_tiling_odd_sizes_and_large_images_cover_every_pixel():
    stylizer = tiny_stylizer("instance")
    image = photo_like(301, 157)
    out = stylizer.stylize(image, StylizeOptions(tile=64))
    assert out.shape == image.shape
    assert torch.isfinite(out).all()
    # overlap 16 px is below the receptive field: close, not exact
    assert psnr(out, stylizer.stylize(image)) > 30


def test_strength_blends_with_the_content():
    stylizer, image = tiny_stylizer("instance"), photo_like()
    full = stylizer.stylize(image)
    assert torch.equal(stylizer.stylize(image, StylizeOptions(strength=0.0)), image)
    half = stylizer.stylize(image, StylizeOptions(strength=0.5))
    torch.testing.assert_close(half, (0.5 * full + 0.5 * image).clamp(0, 1), atol=1e-5, rtol=0)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="strength"):
            StylizeOptions(strength=bad)


class ColourSwap(torch.nn.Module):
    """A stand-in "style": swaps colour channels and lowers contrast, staying inside [0, 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.6 * x.flip(1) + 0.2


def test_preserve_color_keeps_content_chroma_and_styled_luminance():
    stylizer, image = Stylizer(ColourSwap(), fast=False), 0.25 + 0.5 * photo_like()
    styled = stylizer.stylize(image)
    kept = stylizer.stylize(image, StylizeOptions(preserve_color=True))
    ycc_kept, ycc_img, ycc_styled = rgb_to_ycbcr(kept), rgb_to_ycbcr(image), rgb_to_ycbcr(styled)
    torch.testing.assert_close(ycc_kept[:, :1], ycc_styled[:, :1], atol=1e-4, rtol=0)
    torch.testing.assert_close(ycc_kept[:, 1:], ycc_img[:, 1:], atol=1e-4, rtol=0)
    assert (ycc_styled[:, 1:] - ycc_img[:, 1:]).abs().mean() > 0.02  # the swap did change the colours


def test_ycbcr_round_trip():
    image = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(image)), image, atol=1e-5, rtol=0)
    grey = torch.full((1, 3, 4, 4), 0.3)
    assert rgb_to_ycbcr(grey)[:, 1:].abs().max() < 1e-6
    torch.testing.assert_close(preserve_color(grey, grey), grey)


def test_max_size_bounds_the_long_side():
    stylizer, image = tiny_stylizer("instance"), photo_like(120, 200)
    out = stylizer.stylize(image, StylizeOptions(max_size=50))
    assert out.shape[-2:] == (30, 50)
    assert stylizer.stylize(image, StylizeOptions(max_size=1000)).shape == image.shape  # never upscales


def test_a_cap_only_ever_lowers_max_size():
    assert StylizeOptions().capped(1024).max_size == 1024
    assert StylizeOptions(max_size=300).capped(1024).max_size == 300
    assert StylizeOptions(max_size=4000, strength=0.5).capped(1024) == StylizeOptions(max_size=1024, strength=0.5)
    assert StylizeOptions(max_size=4000).capped(None).max_size == 4000
    assert (default_max_size("cpu"), default_max_size(torch.device("cuda", 0))) == (1024, 2048)


def test_only_images_past_the_tile_size_are_tiled(monkeypatch):
    options = StylizeOptions(tile=64)
    assert not options.tiles(64, 40) and options.tiles(40, 65) and not StylizeOptions().tiles(5000, 5000)
    stylizer, tiled = tiny_stylizer("instance"), []
    real = stylizer.run_tiled
    monkeypatch.setattr(stylizer, "run_tiled", lambda *args: tiled.append(args[0].shape) or real(*args))
    stylizer.stylize(photo_like(64, 40), options)
    assert tiled == []
    # The decision is taken after max_size: 130 px bounded to 64 is not tiled, bounded to 100 it is.
    stylizer.stylize(photo_like(130, 80), StylizeOptions(tile=64, max_size=64))
    assert tiled == []
    stylizer.stylize(photo_like(130, 80), StylizeOptions(tile=64, max_size=100))
    assert tiled == [(1, 3, 100, 62)]


# ----------------------------------------------------------------------------- stroke size (paint_size)


def fine_photo(h: int = 120, w: int = 200) -> torch.Tensor:
    """photo_like with fine detail a downscale loses: a one-pixel checker and a sharp edge."""
    image = photo_like(h, w)
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    image = image + 0.15 * (((x + y) % 2).float() - 0.5)
    image[..., :, w // 2:] *= 0.6
    return image.clamp(0, 1)


def test_upscaling_a_painting_brings_the_photos_luminance_back():
    """With a painter that paints nothing (its output is its input), the painting brought to full size has
    the photo's luminance exactly: the detail the downscale removed comes back. Upsampled alone it is blurred."""
    photo = fine_photo()
    small = resize_max(photo, 64)
    out = upscale_painting(small.clone(), small, photo)
    assert out.shape == photo.shape
    assert torch.allclose(luma(out), luma(photo), atol=1e-5)
    upsampled = torch.nn.functional.interpolate(small, size=photo.shape[-2:], mode="bicubic", align_corners=False)
    assert (luma(upsampled) - luma(photo)).abs().mean() > 0.05  # what the detail layer is for
    # The detail is luminance alone, equal in R, G and B: the painting's colours are its own.
    assert torch.allclose((out - upsampled).std(dim=1), torch.zeros(1, *photo.shape[-2:]), atol=1e-5)
    # At the photo's own size there is nothing to bring back.
    assert upscale_painting(photo, photo, photo) is photo


def test_the_network_paints_at_paint_size_and_the_output_keeps_the_size(monkeypatch):
    stylizer, photo, seen = tiny_stylizer("instance"), fine_photo(120, 200), []
    real = stylizer.run
    monkeypatch.setattr(stylizer, "run", lambda images, style=None: seen.append(images.shape) or real(images, style))
    painted = stylizer.stylize(photo, StylizeOptions(paint_size=100))
    assert seen == [(1, 3, 60, 100)] and painted.shape == photo.shape
    assert psnr(painted, stylizer.stylize(photo)) < 40  # painted smaller is not painted at full size
    # An image that fits paint_size is painted at its size: the same as without the option.
    assert torch.equal(stylizer.stylize(photo, StylizeOptions(paint_size=200)), stylizer.stylize(photo))
    # max_size applies first: the output is bounded, and painted at paint_size within it.
    seen.clear()
    bounded = stylizer.stylize(photo, StylizeOptions(max_size=150, paint_size=75))
    assert bounded.shape[-2:] == (90, 150) and seen == [(1, 3, 45, 75)]
    # painted_size says it beforehand, roundings included (a server warms those shapes up).
    for (h, w), options in [((120, 200), StylizeOptions(max_size=150, paint_size=75)),
                            ((121, 199), StylizeOptions(max_size=147, paint_size=67)),
                            ((199, 121), StylizeOptions(paint_size=64)), ((120, 200), StylizeOptions())]:
        seen.clear()
        stylizer.stylize(fine_photo(h, w), options)
        assert seen == [(1, 3, *options.painted_size(h, w))], (h, w, options)


def test_painted_batches_equal_single_images_and_tile_at_the_painted_size(monkeypatch):
    stylizer = tiny_stylizer("instance")
    photos = torch.cat([fine_photo(120, 200), fine_photo(120, 200).flip(-1)])
    options = StylizeOptions(paint_size=100, strength=0.8)
    batch = stylizer.stylize_batch(photos, options)
    for k in range(2):
        assert torch.allclose(batch[k:k + 1], stylizer.stylize(photos[k:k + 1], options), atol=1e-5)
    # Tiling is decided on the painted size: 200 px painted at 100 fits a 128 px tile, at 160 it does not.
    assert not StylizeOptions(tile=128, paint_size=100).tiles(120, 200)
    assert StylizeOptions(tile=128, paint_size=160).tiles(120, 200)
    tiled = []
    real = stylizer.run_tiled
    monkeypatch.setattr(stylizer, "run_tiled", lambda *args: tiled.append(args[0].shape) or real(*args))
    out = stylizer.stylize(photos[:1], StylizeOptions(tile=128, tile_overlap=32, paint_size=160))
    assert tiled == [(1, 3, 96, 160)] and out.shape == photos[:1].shape
    with pytest.raises(ValueError, match="tiled"):
        stylizer.stylize_batch(photos, StylizeOptions(tile=128, paint_size=160))


def test_paint_size_as_the_cli_and_the_api_take_it():
    assert paint_size_option(None) == DEFAULT_PAINT_SIZE and paint_size_option(0) is None
    assert paint_size_option(512) == 512
    with pytest.raises(ValueError, match="paint_size"):
        StylizeOptions(paint_size=63)


def test_fit_image_resizes_the_alpha_with_the_colours():
    alpha = torch.zeros(1, 1, 60, 100)
    alpha[..., :, :50] = 1.0  # left half opaque
    image = LoadedImage(photo_like(60, 100), alpha)
    assert fit_image(image, 100) is image and fit_image(image, None) is image
    fitted = fit_image(image, 50)
    assert fitted.rgb.shape == (1, 3, 30, 50) and fitted.alpha.shape == (1, 1, 30, 50)
    assert fitted.alpha[..., :, :20].min() == 1.0 and fitted.alpha[..., :, 30:].max() == 0.0
    # stylize_image bounds a file the same way: the output and its alpha match what fit_image gives.
    out = tiny_stylizer("instance").stylize_image(image, StylizeOptions(max_size=50))
    assert out.rgb.shape == fitted.rgb.shape and torch.equal(out.alpha, fitted.alpha)


def test_bad_options_and_inputs_are_refused():
    with pytest.raises(ValueError, match="tile"):
        StylizeOptions(tile=8)
    with pytest.raises(ValueError, match="tile_overlap"):
        StylizeOptions(tile=64, tile_overlap=40)
    with pytest.raises(ValueError, match="shape"):
        tiny_stylizer("none").stylize(torch.rand(3, 16, 16))


# ----------------------------------------------------------------------------- the fast path


def full_size_model(norm: str) -> TransformerNet:
    """The default-size network with non-trivial norm parameters and statistics."""
    torch.manual_seed(0)
    model = TransformerNet(TransformerConfig(norm=norm))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "weight" in name and p.dim() == 1:  # norm scales around 1
                p.uniform_(0.5, 1.5)
            elif "bias" in name and p.dim() == 1 and norm != "none":
                p.uniform_(-0.2, 0.2)
    if norm == "batch":
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(photo_like(64, 64) * torch.rand(1, 3, 1, 1))
    return model.eval()


@pytest.mark.parametrize("norm", NORM_NAMES)
@pytest.mark.parametrize("size", [(64, 64), (50, 37)])  # even sizes take every rewrite; odd ones fall back
def test_fast_path_matches_fp32_within_psnr_bound(norm, size):
    model = full_size_model(norm)
    image = photo_like(*size)
    reference = Stylizer(model, fast=False).stylize(image)
    fast = Stylizer(model, precision="bf16").stylize(image)
    assert fast.shape == reference.shape
    assert psnr(fast, reference) >= 35


@pytest.mark.parametrize("norm", NORM_NAMES)
def test_fast_rewrites_are_exact_in_fp32(norm):
    """Batch-norm folding, sub-pixel upsampling and the space-to-depth tail change nothing but rounding."""
    model = full_size_model(norm)
    image = photo_like(64, 80)
    plain = Stylizer(model, fast=False).run(image)
    rewritten = Stylizer(model, precision="fp32").run(image)
    torch.testing.assert_close(rewritten, plain, atol=2e-5, rtol=0)


def test_fast_path_tiles_without_seams():
    model = full_size_model("instance")
    image = photo_like(160, 200)
    fast = Stylizer(model, precision="bf16")
    assert psnr(fast.stylize(image, StylizeOptions(tile=128, tile_overlap=60)), fast.stylize(image)) > 35


def test_fast_path_is_the_default():
    stylizer = Stylizer(full_size_model("instance"))
    assert stylizer.fast and stylizer.net is not stylizer.model


def test_conv_autotune_is_on_only_inside_and_only_on_cuda():
    from style_transfer.device import conv_autotune

    before = torch.backends.cudnn.benchmark
    with conv_autotune(torch.device("cuda")):  # only sets a flag: runs without a GPU
        assert torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.benchmark == before
    with conv_autotune(torch.device("cpu")):
        assert torch.backends.cudnn.benchmark == before


@pytest.mark.parametrize("fast", [True, False])
def test_only_the_fast_path_autotunes_its_convs(fast, monkeypatch):
    seen = []
    monkeypatch.setattr(stylize_module, "conv_autotune", lambda device: seen.append(device) or contextlib.nullcontext())
    stylizer = Stylizer(full_size_model("instance"), fast=fast)
    stylizer.run(photo_like(32, 32))
    stylizer.run_tiled(photo_like(160, 160), tile=128)
    assert seen == ([torch.device("cpu")] * 2 if fast else [])


@pytest.mark.parametrize("device, dynamic", [("cpu", True), ("cuda", False)])
def test_compile_specializes_shapes_on_gpus_only(device, dynamic, monkeypatch):
    import style_transfer.fast as fast_module

    calls = []
    monkeypatch.setattr(fast_module.torch, "compile", lambda module, **kw: calls.append(kw) or module)
    net = torch.nn.Identity()
    assert fast_module.compiled(net, torch.device(device)) is net
    assert calls == [{"dynamic": dynamic}]


@pytest.mark.parametrize("norm", NORM_NAMES)
def test_fp16_fast_path_matches_fp32_within_psnr_bound(norm):
    """fp16 is what a GPU gets by default (device.resolve_precision); the CPU runs the same arithmetic."""
    model = full_size_model(norm)
    image = photo_like(64, 64)
    fp16 = Stylizer(model, precision="fp16")
    assert fp16.precision == "fp16"
    assert psnr(fp16.stylize(image), Stylizer(model, fast=False).stylize(image)) >= 35


def test_auto_precision_is_fp16_for_gpu_inference_and_bf16_for_gpu_training(monkeypatch):
    from style_transfer.device import resolve_precision

    cuda = torch.device("cuda")  # resolution only reads capability flags: runs without a GPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **kw: True)
    assert resolve_precision("auto", cuda) == "fp16"
    assert resolve_precision("auto", cuda, training=True) == "bf16"
    assert resolve_precision("fp32", cuda) == "fp32" and resolve_precision("bf16", cuda) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **kw: False)
    assert resolve_precision("auto", cuda, training=True) == "fp16"


def test_an_fp16_overflow_is_recomputed_in_fp32_not_returned_blank(caplog):
    model = TransformerNet(TransformerConfig(norm="none", width=8, num_residual=1)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(30)  # activations past fp16's 65504
    image = photo_like(32, 32)
    fp16 = Stylizer(model, precision="fp16")
    with torch.no_grad():
        assert not torch.isfinite(fp16.runner(image)).all()  # the premise: the raw fp16 network overflows
    out = fp16.run(image)
    plain = Stylizer(model, fast=False)
    torch.testing.assert_close(out, plain.run(image))
    assert "recomputed in fp32" in caplog.text
    big = photo_like(96, 80)
    torch.testing.assert_close(fp16.run_tiled(big, tile=64), plain.run_tiled(big, tile=64))
