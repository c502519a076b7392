"""The norm module: every name builds, each norm normalizes over the right axes, names are read in any
case and bad ones refused, instance norm keeps channels_last, and frozen statistics normalize tiles alike."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from style_transfer.norms import (
    DEFAULT_GROUPS,
    NORM_NAMES,
    frozen_statistics,
    get_norm_layer,
    has_batch_statistics,
    norm_name,
)

C = 16


def _input(batch: int = 3, channels: int = C, size: int = 8, seed: int = 0) -> torch.Tensor:
    """Random input whose samples and channels have very different means and scales."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, size, size, generator=gen)
    chan_offset = torch.arange(channels, dtype=torch.float32).view(1, channels, 1, 1) * 2.0
    chan_scale = torch.linspace(0.5, 3.0, channels).view(1, channels, 1, 1)
    sample_offset = torch.arange(batch, dtype=torch.float32).view(batch, 1, 1, 1) * 5.0 - 4.0
    return x * chan_scale + chan_offset + sample_offset


def _mean_std(x: torch.Tensor, dims) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(dim=dims), x.std(dim=dims, unbiased=False)


def test_norm_names_are_the_documented_norms():
    assert set(NORM_NAMES) == {"instance", "batch", "group", "layer", "none", "conditional_instance"}


@pytest.mark.parametrize("name", NORM_NAMES)
def test_every_norm_builds_and_keeps_shape(name):
    factory = get_norm_layer(name)
    assert callable(factory)
    module = factory(C)
    assert isinstance(module, nn.Module)
    x = _input()
    y = module.train()(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", NORM_NAMES)
def test_every_norm_accepts_any_spatial_size(name):
    module = get_norm_layer(name)(C).eval()
    for h, w in [(5, 7), (16, 3), (2, 2)]:
        x = torch.randn(2, C, h, w)
        assert module(x).shape == (2, C, h, w)


@pytest.mark.parametrize("batch", [1, 3])
def test_instance_norm_on_channels_last_matches_pytorch_and_keeps_the_layout(batch):
    """The channels_last branch (batch norm with batch statistics, image by image) gives PyTorch's
    instance norm up to rounding, forward and backward, without converting the layout."""
    torch.manual_seed(0)
    ours = get_norm_layer("instance")(C).double()
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2)
        ours.bias.uniform_(-1, 1)
    plain = nn.InstanceNorm2d(C, affine=True).double()
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(batch, C, 9, 11, dtype=torch.float64) * 3 + 1
    grad_out = torch.randn_like(x)
    results = []
    for module, layout in ((ours, torch.channels_last), (plain, torch.contiguous_format)):
        xi = x.contiguous(memory_format=layout).requires_grad_()
        y = module(xi)
        y.backward(grad_out)
        results.append((y, xi.grad, module.weight.grad, module.bias.grad))
    y = results[0][0]
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    for a, b in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_instance_normalizes_each_sample_and_channel():
    module = get_norm_layer("instance")(C)
    assert isinstance(module, nn.InstanceNorm2d)
    assert module.affine, "instance norm should have a learnable per-channel affine"
    x = _input()
    for mode in (True, False):  # instance norm uses per-image statistics in train and eval alike
        y = module.train(mode)(x)
        mean, std = _mean_std(y, (2, 3))  # (B, C)
        assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
        assert torch.allclose(std, torch.ones_like(std), atol=1e-3)


def test_layer_normalizes_over_channels_and_space_per_sample():
    module = get_norm_layer("layer")(C)
    # per-channel affine (not nn.LayerNorm's per-pixel affine, which would fix the input size)
    params = dict(module.named_parameters())
    assert {k: tuple(v.shape) for k, v in params.items()} == {"weight": (C,), "bias": (C,)}
    x = _input()
    y = module(x)
    mean, std = _mean_std(y, (1, 2, 3))  # per sample
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
    assert torch.allclose(std, torch.ones_like(std), atol=1e-3)
    # ... but not per channel: the channel offsets of the input survive
    chan_mean = y.mean(dim=(2, 3))
    assert chan_mean.abs().max() > 0.5
    # and not across the batch: each sample is normalized on its own
    y0 = module(x[:1])
    assert torch.allclose(y0, y[:1], atol=1e-5)


def test_group_normalizes_each_group_of_channels():
    module = get_norm_layer("group", groups=8)(C)
    assert isinstance(module, nn.GroupNorm) and module.num_groups == 8
    x = _input()
    y = module(x)
    grouped = y.reshape(y.shape[0], 8, -1)  # (B, 8, 2*H*W): 2 channels per group
    mean, std = _mean_std(grouped, (2,))
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
    assert torch.allclose(std, torch.ones_like(std), atol=1e-3)
    # the two channels of a group have different input offsets, so per-channel means are not zero
    chan_mean = y.mean(dim=(2, 3))
    assert chan_mean.abs().max() > 0.3


def test_group_default_group_count():
    module = get_norm_layer("group")(64)
    assert module.num_groups == DEFAULT_GROUPS
    assert get_norm_layer("group", groups=4)(C).num_groups == 4


def test_batch_uses_batch_statistics_in_train_mode():
    module = get_norm_layer("batch")(C)
    assert has_batch_statistics(module)
    module.train()
    x = _input(batch=4)
    y = module(x)
    mean, std = _mean_std(y, (0, 2, 3))  # per channel, over the batch
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
    assert torch.allclose(std, torch.ones_like(std), atol=1e-3)
    # samples with different offsets keep different means: the statistics are shared, not per image
    sample_mean = y.mean(dim=(1, 2, 3))
    assert sample_mean.max() - sample_mean.min() > 1.0
    # the output of one sample depends on the rest of the batch
    assert not torch.allclose(module(x[:2])[:1], y[:1], atol=1e-3)
    # running statistics were updated
    assert not torch.allclose(module.running_mean, torch.zeros(C))


def test_batch_eval_mode_uses_running_statistics():
    module = get_norm_layer("batch")(C)
    x = _input(batch=4)
    module.train()
    for _ in range(50):
        module(x)
    module.eval()
    # per-sample results no longer depend on the batch
    assert torch.allclose(module(x[:1]), module(x)[:1], atol=1e-5)


def test_only_batch_norm_has_batch_statistics():
    for name in NORM_NAMES:
        assert has_batch_statistics(get_norm_layer(name)(C)) == (name == "batch")


def test_none_is_identity():
    module = get_norm_layer("none")(C)
    assert list(module.parameters()) == []
    assert list(module.buffers()) == []
    x = _input()
    assert torch.equal(module.train()(x), x)
    assert torch.equal(module.eval()(x), x)


def test_unknown_name_lists_all_valid_names():
    with pytest.raises(ValueError) as excinfo:
        get_norm_layer("weight")
    message = str(excinfo.value)
    assert "weight" in message
    for name in NORM_NAMES:
        assert name in message


@pytest.mark.parametrize("bad", ["", "instancenorm", "bn"])
def test_other_unknown_names_are_refused(bad):
    with pytest.raises(ValueError, match="valid names"):
        get_norm_layer(bad)


@pytest.mark.parametrize("channels, groups", [(12, 8), (16, 3), (10, 4)])
def test_group_with_indivisible_channels_names_both_numbers(channels, groups):
    factory = get_norm_layer("group", groups=groups)
    with pytest.raises(ValueError) as excinfo:
        factory(channels)
    message = str(excinfo.value)
    assert re.search(rf"\b{channels}\b", message), message
    assert re.search(rf"\b{groups}\b", message), message


def test_group_count_below_one_is_refused():
    with pytest.raises(ValueError):
        get_norm_layer("group", groups=0)


@pytest.mark.parametrize("spelling, expected", [
    ("Instance", nn.InstanceNorm2d),
    ("INSTANCE", nn.InstanceNorm2d),
    ("Batch", nn.BatchNorm2d),
    (" group ", nn.GroupNorm),
    ("Layer", nn.GroupNorm),
])
def test_names_are_case_insensitive(spelling, expected):
    assert isinstance(get_norm_layer(spelling)(C), expected)


@pytest.mark.parametrize("text, expected", [(" Instance ", "instance"), ("BATCH", "batch"), ("group", "group"),
                                            ("Layer\n", "layer"), ("None", "none")])
def test_norm_name_gives_the_canonical_name(text, expected):
    assert norm_name(text) == expected


@pytest.mark.parametrize("bad", ["", "instancenorm", "in", None, 3])
def test_norm_name_refuses_the_rest_listing_valid_names(bad):
    with pytest.raises(ValueError) as excinfo:
        norm_name(bad)
    message = str(excinfo.value)
    assert repr(bad) in message
    for name in NORM_NAMES:
        assert name in message


def test_none_case_insensitive_is_identity():
    x = torch.randn(1, C, 4, 4)
    assert torch.equal(get_norm_layer("None")(C)(x), x)


# ----------------------------------------------------------------------------- frozen_statistics


@pytest.mark.parametrize("name", ["instance", "group", "layer"])
def test_frozen_statistics_normalize_with_the_reference_statistics(name):
    module = get_norm_layer(name)(C)
    groups = {"instance": C, "group": DEFAULT_GROUPS, "layer": 1}[name]
    reference = _input(batch=1, seed=1)
    tile = _input(batch=2, size=4, seed=2) * 0.3 + 1.0  # other statistics than the reference
    flat = reference.reshape(1, groups, -1)
    mean = flat.mean(-1).repeat_interleave(C // groups, dim=1)[..., None, None]
    std = (flat.var(-1, unbiased=False) + module.eps).sqrt().repeat_interleave(C // groups, dim=1)[..., None, None]
    with frozen_statistics(module, reference):
        frozen = module(tile)
        assert torch.allclose(module(reference), module.__class__.forward(module, reference), atol=1e-4)
    assert torch.allclose(frozen, (tile - mean) / std, atol=1e-4)
    # outside the context the module uses the tile's own statistics again
    assert not torch.allclose(module(tile), frozen, atol=1e-2)


@pytest.mark.parametrize("name", NORM_NAMES)
def test_frozen_statistics_leave_the_reference_output_unchanged(name, make_model):
    model = make_model(name, trained=True)
    x = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(x)
        with frozen_statistics(model, x):
            inside = model(x)
            batch = model(x.expand(3, -1, -1, -1))
        after = model(x)
    assert torch.allclose(inside, before, atol=1e-4)
    assert torch.allclose(batch, before.expand(3, -1, -1, -1), atol=1e-4)
    assert torch.equal(after, before)  # hooks removed
    assert all(not m._forward_hooks for m in model.modules())
