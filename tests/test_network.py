"""The transformer network: any input size in, same size out, for every norm; config and fairness."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import torch.nn.functional as F

from style_transfer.kernels import pad2d
from style_transfer.network import TransformerConfig, TransformerNet, count_parameters
from style_transfer.norms import NORM_NAMES, ConditionalInstanceNorm2d


def _net(norm: str, width: int = 8, num_residual: int = 1, seed: int = 0) -> TransformerNet:
    torch.manual_seed(seed)
    return TransformerNet(TransformerConfig(norm=norm, width=width, num_residual=num_residual))


@pytest.mark.parametrize("norm", NORM_NAMES)
@pytest.mark.parametrize("size", [(32, 32), (16, 24), (33, 47), (31, 31), (9, 18)])
def test_output_shape_matches_input(norm, size):
    model = _net(norm).train()
    x = torch.rand(2, 3, *size)
    y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    model.eval()
    with torch.no_grad():
        assert model(x).shape == x.shape


@pytest.mark.parametrize("norm", NORM_NAMES)
@pytest.mark.parametrize("size", [(3, 5), (1, 1), (1, 9), (7, 2)])
def test_tiny_inputs_keep_their_shape(norm, size):
    model = _net(norm).eval()  # batch norm: batch size 1 needs running statistics
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("norm", NORM_NAMES)
def test_gradient_reaches_every_parameter(norm):
    model = _net(norm).train()
    model(torch.rand(2, 3, 17, 20)).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("norm", NORM_NAMES)
def test_no_transposed_convolutions(norm):
    model = _net(norm, num_residual=2)
    kinds = {type(m) for m in model.modules()}
    assert not any(issubclass(k, nn.modules.conv._ConvTransposeNd) for k in kinds)
    assert nn.Conv2d in kinds


def test_half_width_has_about_a_quarter_of_the_parameters():
    full = count_parameters(_net("instance", width=32, num_residual=5))
    half = count_parameters(_net("instance", width=16, num_residual=5))
    assert 0.24 < half / full < 0.27, (half, full)
    # the standard Johnson et al. network is ~1.7M parameters
    assert 1.5e6 < full < 1.9e6


@pytest.mark.parametrize("norm", NORM_NAMES)
def test_each_residual_block_adds_two_3x3_convs(norm):
    w = 8
    c = 4 * w
    conv = 2 * (9 * c * c + c)  # two 3x3 convs with bias
    affine = {"instance": 2 * 2 * c, "batch": 2 * 2 * c, "group": 2 * 2 * c, "layer": 2 * 2 * c, "none": 0,
              "conditional_instance": 2 * 2 * c}[norm]  # one style: one (gamma, beta) pair
    one = count_parameters(_net(norm, width=w, num_residual=1))
    three = count_parameters(_net(norm, width=w, num_residual=3))
    assert three - one == 2 * (conv + affine)


def test_parameter_counts_differ_only_by_norm_affines():
    counts = {norm: count_parameters(_net(norm)) for norm in NORM_NAMES}
    assert counts["instance"] == counts["batch"] == counts["group"] == counts["layer"]
    assert counts["none"] < counts["instance"]


def test_config_rejects_unknown_norm_listing_valid_names():
    with pytest.raises(ValueError) as excinfo:
        TransformerConfig(norm="spectral")
    message = str(excinfo.value)
    assert "spectral" in message
    for name in NORM_NAMES:
        assert name in message


@pytest.mark.parametrize("kwargs", [{"width": 0}, {"num_residual": -1}])
def test_config_rejects_bad_sizes(kwargs):
    with pytest.raises(ValueError):
        TransformerConfig(**kwargs)


@pytest.mark.parametrize("norm", NORM_NAMES)
def test_config_json_round_trip(norm):
    config = TransformerConfig(norm=norm, width=8, num_residual=2, groups=4)
    text = config.to_json()
    data = json.loads(text)
    # num_styles only where it means something, so other networks' configs read as before it existed.
    styles = {"num_styles": 1} if norm == "conditional_instance" else {}
    assert data == {"norm": norm, "width": 8, "num_residual": 2, "groups": 4, **styles}
    assert TransformerConfig.from_dict(data) == config


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="colour"):
        TransformerConfig.from_dict({"norm": "instance", "colour": "blue"})


def test_group_count_comes_from_the_config():
    model = TransformerNet(TransformerConfig(norm="group", width=8, num_residual=1, groups=4))
    groups = {m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)}
    assert groups == {4}


@pytest.mark.parametrize("width, groups", [(12, 8), (8, 3), (16, 32)])
def test_config_refuses_a_group_count_that_does_not_divide_the_width(width, groups):
    """Refused when the config is built (before a training run scans data or loads VGG), naming both."""
    with pytest.raises(ValueError) as excinfo:
        TransformerConfig(norm="group", width=width, groups=groups)
    message = str(excinfo.value)
    assert f"width={width}" in message and f"groups={groups}" in message, message


def test_config_refuses_group_norm_without_groups():
    with pytest.raises(ValueError, match="at least one group"):
        TransformerConfig(norm="group", groups=0)


def test_group_count_is_checked_only_for_the_group_norm():
    # other norms ignore groups, so an old checkpoint's groups=8 with width 12 stays loadable
    assert TransformerConfig(norm="instance", width=12, groups=8).width == 12
    # the widths whose every layer (w, 2w, 4w) group norm accepts are exactly the multiples of groups
    for width in (8, 16, 24):
        TransformerNet(TransformerConfig(norm="group", width=width, num_residual=0, groups=8))


def _conv_weights(model: nn.Module) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    return [(name, m.weight, m.bias) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def test_seeded_construction_gives_identical_conv_weights_across_norms():
    """Fairness: arms that differ only in the norm start from exactly the same conv weights."""
    reference = _conv_weights(_net("instance", seed=0))
    assert len(reference) == 2 * 1 + 6  # head, down1, down2, 2 residual convs, up1, up2, tail
    for norm in NORM_NAMES:
        convs = _conv_weights(_net(norm, seed=0))
        assert [n for n, _, _ in convs] == [n for n, _, _ in reference], norm
        for (name, w, b), (_, w_ref, b_ref) in zip(convs, reference):
            assert torch.equal(w, w_ref), (norm, name)
            assert torch.equal(b, b_ref), (norm, name)
    # ... and the seed matters (the test above is not trivially true)
    other = _conv_weights(_net("instance", seed=1))
    assert not torch.equal(other[0][1], reference[0][1])


def test_last_layer_has_no_norm_and_no_activation():
    model = _net("instance")
    # the output must be able to go negative/above 1 before clamping: no ReLU at the end
    assert not isinstance(list(model.tail.children())[-1], (nn.ReLU, nn.InstanceNorm2d))
    torch.manual_seed(0)
    with torch.no_grad():
        y = model(torch.rand(1, 3, 16, 16))
    assert (y < 0).any()


def test_config_norm_name_is_case_insensitive():
    assert TransformerConfig(norm=" Instance ").norm == "instance"
    assert TransformerConfig(norm="GROUP").norm == "group"


def _plain_twin(model: TransformerNet) -> TransformerNet:
    """The same network and weights, built to run the plain layers instead of kernels.py's rewrites."""
    plain = TransformerNet(model.config, rewrites=False)
    plain.load_state_dict(model.state_dict())
    return plain.to(next(model.parameters()).dtype).train(model.training)


def test_rewrites_are_chosen_per_network_and_change_no_weight():
    """The kernel choice belongs to one network (a construction argument, not a class-level switch): a
    plain and a rewritten network coexist, with the same state_dict keys and shapes, and each runs its
    own kernels. The plain one calls the upsampling and output convs as modules; the rewritten one, on
    an even size, computes them from their weights instead."""
    fast = _net("instance").eval()
    plain = _plain_twin(fast).eval()
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in fast.state_dict().items()}
    calls = {"fast": 0, "plain": 0}

    def count(key):
        def hook(module, args, output):
            calls[key] += 1
        return hook

    for key, model in (("fast", fast), ("plain", plain)):
        for conv in (model.up1.conv[1], model.up2.conv[1], model.tail[1]):
            conv.register_forward_hook(count(key))
    x = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        fast(x)
        plain(x)
    assert calls == {"fast": 0, "plain": 3}


@pytest.mark.parametrize("norm", NORM_NAMES)
@pytest.mark.parametrize("size", [(24, 32), (20, 36), (17, 26)])  # odd sizes fall back to the plain layers
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_rewritten_layers_match_the_plain_formulation_with_gradients(norm, size, layout):
    """Sub-pixel upsampling convs and the space-to-depth output conv: same outputs and same weight
    gradients as nearest-upsample + 3x3 conv and a plain 9x9 conv (fp64, so only rounding differs),
    in both memory layouts (the fast path runs channels_last)."""
    fast = _net(norm, num_residual=2).double().train().to(memory_format=layout)
    plain = _plain_twin(fast).to(memory_format=layout)
    x = torch.rand(2, 3, *size, dtype=torch.float64).contiguous(memory_format=layout)

    def run(model):
        y = model(x)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        return y.detach(), {n: p.grad for n, p in model.named_parameters()}

    fast_y, fast_grads = run(fast)
    plain_y, plain_grads = run(plain)
    torch.testing.assert_close(fast_y, plain_y, rtol=0, atol=1e-10)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("norm", NORM_NAMES)
def test_channels_last_stays_channels_last_through_every_layer(norm):
    """The fast path's speed rests on no layer converting a channels_last activation back to NCHW
    (each conversion costs a copy there and another in the next conv; issue 5 profile)."""
    model = _net(norm, num_residual=1).eval().to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, 32, 40).contiguous(memory_format=torch.channels_last)
    layouts = {}

    def record(name):
        def hook(module, args, output):
            if output.shape[1] > 1 and output.shape[-2:].numel() > 1:  # otherwise both layouts coincide
                layouts[name] = output.is_contiguous(memory_format=torch.channels_last)
        return hook

    for name, module in model.named_modules():
        if name and (not list(module.children()) or isinstance(module, ConditionalInstanceNorm2d)):
            module.register_forward_hook(record(name))
    for name in ("up1", "up2", "tail"):
        getattr(model, name).register_forward_hook(record(name))
    with torch.no_grad():
        model(x)
    assert {"up1", "up2", "tail", "up1.conv.2", "residuals.0.body.0.2"} <= set(layouts)
    assert [name for name, cl in layouts.items() if not cl] == []


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
@pytest.mark.parametrize("pad", [1, 2, 4])
@pytest.mark.parametrize("shape", [(1, 5, 9, 9), (2, 3, 6, 11), (1, 16, 5, 8)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_pad2d_equals_f_pad_and_keeps_channels_last(mode, pad, shape, dtype):
    """The channels_last padding writes borders by hand (issue 5 profile); every value must be F.pad's,
    corners included, and the gradient must flow back to the same input pixels."""
    x = torch.randn(shape, dtype=torch.float64).to(dtype).contiguous(memory_format=torch.channels_last)
    if mode == "reflect" and pad >= min(shape[-2:]):
        pytest.skip("reflection needs pad < size")
    ours = pad2d(x, pad, mode)
    assert ours.is_contiguous(memory_format=torch.channels_last) and not ours.is_contiguous()
    assert torch.equal(ours, F.pad(x, (pad,) * 4, mode=mode))
    if dtype == torch.float64:
        a = x.clone().requires_grad_()
        b = x.clone().requires_grad_()
        weights = torch.randn(ours.shape, dtype=dtype)
        (pad2d(a, pad, mode) * weights).sum().backward()
        (F.pad(b, (pad,) * 4, mode=mode) * weights).sum().backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)


def test_pad2d_passes_nchw_and_errors_through_to_f_pad():
    x = torch.randn(1, 4, 3, 3)
    assert torch.equal(pad2d(x, 1, "reflect"), F.pad(x, (1,) * 4, mode="reflect"))
    with pytest.raises(RuntimeError):  # reflection wider than the image: F.pad's own error
        pad2d(x.contiguous(memory_format=torch.channels_last), 3, "reflect")
    with pytest.raises(ValueError, match="reflect"):
        pad2d(torch.randn(1, 4, 6, 6), 1, "circular")
