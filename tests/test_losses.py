"""Perceptual losses: Gram matrix, total variation, and the combined PerceptualLoss."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from style_transfer.imageio import load_rgb
from style_transfer.losses import LossConfig, PerceptualLoss, gram_matrix, total_variation

# Cheap settings for the loss network: two shallow layers are enough to test the arithmetic.
SMALL = LossConfig(content_layers=("relu2_2",), style_layers=("relu1_2", "relu2_2"))


# ----------------------------------------------------------------------------- gram_matrix


def test_gram_matches_hand_computation():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    g = gram_matrix(x)
    assert g.shape == (2, 3, 3)
    b, c, h, w = x.shape
    for i in range(b):
        for j in range(c):
            for k in range(c):
                expected = float((x[i, j] * x[i, k]).sum()) / (c * h * w)
                assert abs(float(g[i, j, k]) - expected) < 1e-5
    # symmetric and positive semi-definite
    assert torch.allclose(g, g.transpose(1, 2))
    assert (torch.linalg.eigvalsh(g.double()) > -1e-6).all()


def test_gram_is_fp32_for_bf16_input_and_accurate():
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(1, 8, 32, 32, generator=gen) * 50).to(torch.bfloat16)
    reference = gram_matrix(x.double()).double()  # from the same (bf16-rounded) values, in fp64
    g = gram_matrix(x)
    assert g.dtype == torch.float32
    # a bf16 matmul would be off by ~1e-2 relative; fp32 accumulation is ~1e-6
    assert torch.allclose(g.double(), reference, rtol=1e-5, atol=0)


def test_gram_is_fp32_inside_bf16_autocast():
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(1, 8, 32, 32, generator=gen) * 50
    reference = gram_matrix(x.double()).double()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g = gram_matrix(x)
        # sanity: autocast really is active (a plain bmm here comes out in bf16)
        assert torch.bmm(x.view(1, 8, -1), x.view(1, 8, -1).transpose(1, 2)).dtype == torch.bfloat16
    assert g.dtype == torch.float32
    assert torch.allclose(g.double(), reference, rtol=1e-5, atol=0)


def test_gram_gradient_is_exact_in_fp64():
    # The Gram has a hand-written backward (dF = (dG + dG^T) F): check it against finite differences.
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gram_matrix, (x,))


@pytest.mark.parametrize("autocast", [False, True])
def test_gram_gradient_for_bf16_features_is_within_bf16_rounding(autocast):
    gen = torch.Generator().manual_seed(5)
    x = (torch.rand(2, 8, 16, 16, generator=gen) * 20).to(torch.bfloat16).requires_grad_(True)
    x64 = x.detach().double().requires_grad_(True)
    weight = torch.randn(2, 8, 8, generator=gen, dtype=torch.float64)  # not symmetric: dG^T matters
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        g = gram_matrix(x)
    (g * weight.float()).sum().backward()
    (gram_matrix(x64) * weight).sum().backward()
    assert x.grad.dtype == torch.bfloat16  # the features' own precision, as autograd would give
    error = (x.grad.double() - x64.grad).abs().max() / x64.grad.abs().max()
    assert error < 1e-2, error  # bf16 keeps 8 bits: ~4e-3 relative


def test_gram_is_invariant_to_image_size_for_tiled_pattern():
    gen = torch.Generator().manual_seed(3)
    pattern = torch.randn(1, 4, 8, 8, generator=gen)
    g1 = gram_matrix(pattern)
    g2 = gram_matrix(pattern.repeat(1, 1, 2, 2))  # 16x16
    g4 = gram_matrix(pattern.repeat(1, 1, 4, 4))  # 32x32
    assert torch.allclose(g2, g1, rtol=1e-5, atol=1e-6)
    assert torch.allclose(g4, g1, rtol=1e-5, atol=1e-6)
    # normalized by C as well: the diagonal of a constant map of value v is v^2 / C
    const = torch.full((1, 4, 5, 5), 3.0)
    assert torch.allclose(gram_matrix(const), torch.full((1, 4, 4), 9.0 / 4))


# ----------------------------------------------------------------------------- total_variation


def test_total_variation_zero_on_constant():
    assert float(total_variation(torch.full((2, 3, 9, 7), 0.3))) == 0.0


def test_total_variation_on_ramps():
    h, w = 6, 10
    cols = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w) * 0.1
    rows = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1) * 0.05
    horizontal = cols.expand(2, 3, h, w)
    vertical = rows.expand(2, 3, h, w)
    assert float(total_variation(horizontal)) == pytest.approx(0.1, rel=1e-5)
    assert float(total_variation(vertical)) == pytest.approx(0.05, rel=1e-5)
    assert float(total_variation(horizontal + vertical)) == pytest.approx(0.15, rel=1e-5)
    # anisotropic: a descending ramp counts the same as an ascending one
    assert float(total_variation(horizontal.flip(-1))) == pytest.approx(0.1, rel=1e-5)


def test_total_variation_checkerboard():
    board = (torch.arange(8).view(1, 8) + torch.arange(8).view(8, 1)) % 2
    assert float(total_variation(board.float().expand(1, 3, 8, 8))) == pytest.approx(2.0)


# ----------------------------------------------------------------------------- LossConfig


@pytest.mark.parametrize("name", ["content_weight", "style_weight", "tv_weight"])
def test_loss_config_rejects_negative_weights(name):
    with pytest.raises(ValueError, match=name):
        LossConfig(**{name: -1e-3})
    LossConfig(**{name: 0.0})  # zero switches a term off and is allowed


def test_loss_config_stores_tuples():
    cfg = LossConfig(content_layers=["relu3_3"], style_layers=["relu1_2"])
    assert cfg.content_layers == ("relu3_3",) and cfg.style_layers == ("relu1_2",)
    hash(cfg)  # frozen and hashable


# ----------------------------------------------------------------------------- PerceptualLoss


@pytest.fixture(scope="module")
def style_image(style_path) -> torch.Tensor:
    return load_rgb(style_path, max_size=48)


@pytest.fixture(scope="module")
def loss_fn(style_image) -> PerceptualLoss:
    return PerceptualLoss(style_image, SMALL)


@pytest.fixture
def content(random_image) -> torch.Tensor:
    return random_image(32, 32, batch=2, seed=4)


def test_terms_and_total(loss_fn, content):
    output = content.flip(-1)
    terms = loss_fn(output, content)
    assert set(terms) == {"content", "style", "tv", "total"}
    for name, value in terms.items():
        assert value.dim() == 0 and torch.isfinite(value) and value >= 0, name
    assert torch.allclose(terms["total"], terms["content"] + terms["style"] + terms["tv"])
    assert terms["content"] > 0 and terms["style"] > 0 and terms["tv"] > 0


def test_content_term_is_zero_when_output_equals_content(loss_fn, content):
    terms = loss_fn(content.clone(), content)
    assert float(terms["content"]) == pytest.approx(0.0, abs=1e-12)
    assert float(loss_fn(content.flip(-2), content)["content"]) > 0


def test_style_term_smaller_for_the_style_image_than_for_noise(loss_fn, style_image, random_image):
    noise = random_image(*style_image.shape[-2:], seed=5)
    own = float(loss_fn(style_image, style_image)["style"])
    other = float(loss_fn(noise, noise)["style"])
    assert own == pytest.approx(0.0, abs=1e-9)
    assert other > 0
    # and a half-size crop of the style image is still much closer in style than noise
    h, w = style_image.shape[-2:]
    crop = style_image[..., : h // 2 + 8, : w // 2 + 8]
    assert float(loss_fn(crop, crop)["style"]) < 0.5 * other


def test_weights_scale_terms_linearly(style_image, content):
    output = content.flip(-1)
    base = PerceptualLoss(style_image, SMALL)(output, content)
    double = PerceptualLoss(
        style_image, dataclasses.replace(SMALL, style_weight=2 * SMALL.style_weight,
                                         content_weight=3 * SMALL.content_weight, tv_weight=0.5))
    terms = double(output, content)
    assert float(terms["style"]) == pytest.approx(2 * float(base["style"]), rel=1e-5)
    assert float(terms["content"]) == pytest.approx(3 * float(base["content"]), rel=1e-5)
    assert float(terms["tv"]) == pytest.approx(0.5 * float(base["tv"]), rel=1e-5)
    off = PerceptualLoss(style_image, dataclasses.replace(SMALL, style_weight=0.0))(output, content)
    assert float(off["style"]) == 0.0
    assert float(off["total"]) == pytest.approx(float(base["content"] + base["tv"]), rel=1e-5)


def test_style_gram_buffers_have_one_entry_per_style_layer(loss_fn):
    grams = loss_fn.style_grams()
    assert [g.shape for g in grams] == [(1, 64, 64), (1, 128, 128)]
    assert all(g.dtype == torch.float32 and not g.requires_grad for g in grams)


def test_gradient_flows_to_output_not_to_vgg(loss_fn, content):
    output = content.flip(-1).clone().requires_grad_(True)
    loss_fn(output, content)["total"].backward()
    assert output.grad is not None
    assert torch.isfinite(output.grad).all()
    assert output.grad.abs().sum() > 0
    for name, p in loss_fn.named_parameters():
        assert p.grad is None, name
    # the content target is computed without a graph: no gradient leaks into the content image
    content_with_grad = content.clone().requires_grad_(True)
    output2 = output.detach().clone().requires_grad_(True)
    loss_fn(output2, content_with_grad)["total"].backward()
    assert output2.grad is not None
    assert content_with_grad.grad is None


def test_batch_loss_is_mean_of_single_losses(loss_fn, content):
    """Each image in a batch is compared with the same style Gram; terms are batch means."""
    output = content.flip(-1)
    batch = loss_fn(output, content)
    singles = [loss_fn(output[i : i + 1], content[i : i + 1]) for i in range(2)]
    for name in ("content", "style"):
        mean = sum(float(s[name]) for s in singles) / 2
        assert float(batch[name]) == pytest.approx(mean, rel=1e-4)


def test_loss_config_needs_layers():
    with pytest.raises(ValueError, match="at least one"):
        LossConfig(style_layers=())
    with pytest.raises(ValueError, match="at least one"):
        LossConfig(content_layers=())
