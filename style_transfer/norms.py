"""The one normalization factory: every norm layer in the project is built here, by name.

Every factory takes the channel count first, so the network never needs to know which norm it holds
(the torchvision ``norm_layer`` / timm ``get_norm_layer`` convention).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

NormLayer = Callable[[int], nn.Module]

# 8 groups divides 16/32/64/128 (the half- and full-width Johnson network), so every layer has
# 2-16 channels per group: genuinely between instance norm (1 channel per group) and layer norm
# (all channels in one group). Wu & He 2018 (Table 3) found GN robust across group sizes with
# >= 4 channels per group; their default of 32 groups would make our first layer plain instance norm.
DEFAULT_GROUPS = 8


class NoNorm(nn.Identity):
    """Identity that accepts (and ignores) a channel count, so ``none`` is interchangeable."""

    def __init__(self, channels: int) -> None:
        super().__init__()


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a 4-d tensor laid out channels_last (NHWC) and not also plain contiguous."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class InstanceNorm2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` that keeps a channels_last input channels_last.

    PyTorch's instance norm views its input as (1, B*C, H, W), which for a channels_last tensor means
    a copy to NCHW, and the next (channels_last) conv then copies it back: in the bf16 fast path these
    copies were most of the time the network's instance norms took (docs/benchmarks.md, "Stylize one
    image": Layout; issue 5 profile). For one image, instance norm *is* batch norm with batch statistics
    (the same per-channel mean and variance over H, W) -- the very kernel PyTorch's instance norm ends
    in -- and that kernel reads channels_last natively, so such inputs go through it image by image: the
    same statistics and formula, so the same numbers up to rounding (the tests hold forward and backward
    to 1e-10 in float64), and no layout change. Group norm with one channel per group was faster still,
    but its channels_last kernel accumulates the variance in single precision and drifted from instance
    norm in fp32 (same section). NCHW inputs (training) take PyTorch's own path unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.track_running_stats and is_channels_last(x):
            images = [F.batch_norm(image, None, None, self.weight, self.bias, True, 0.0, self.eps)
                      for image in x.split(1)]
            return images[0] if len(images) == 1 else torch.cat(images)
        return super().forward(x)


class ConditionalInstanceNorm2d(nn.Module):
    """Conditional instance normalization (Dumoulin, Shlens & Kudlur 2017, "A Learned Representation for
    Artistic Style"): instance norm whose affine (gamma, beta) is one of ``num_styles`` learned pairs, so
    one network holds several styles and shares every convolution.

    Which style: ``self.style``, (B, N) or (1, N) convex weights that the network sets for each call
    (TransformerNet.forward); a mix of pairs blends the styles continuously, weight 1 on one style is
    exactly that style. None means the first style. The statistics are the inner instance norm's, so
    tiling (frozen_statistics) treats it like instance norm.
    """

    def __init__(self, channels: int, num_styles: int = 1) -> None:
        super().__init__()
        if num_styles < 1:
            raise ValueError(f"conditional instance norm needs at least one style, got {num_styles}")
        self.norm = InstanceNorm2d(channels, affine=False)
        self.weight = nn.Parameter(torch.ones(num_styles, channels))
        self.bias = nn.Parameter(torch.zeros(num_styles, channels))
        self.style: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        if self.style is None:
            gamma, beta = self.weight[:1], self.bias[:1]  # (1, C)
        else:
            mix = self.style.to(self.weight.dtype)
            gamma, beta = mix @ self.weight, mix @ self.bias  # (B or 1, C)
        return y * gamma[:, :, None, None].to(y.dtype) + beta[:, :, None, None].to(y.dtype)


def _instance(channels: int) -> nn.Module:
    # Ulyanov et al. 2016: per-image, per-channel statistics, also at test time; affine as in
    # their improved texture networks.
    return InstanceNorm2d(channels, affine=True)


def _batch(channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels)


def _group(channels: int, groups: int = DEFAULT_GROUPS) -> nn.Module:
    if groups < 1 or channels % groups:
        raise ValueError(
            f"group norm needs the channel count ({channels}) to be divisible by the number of groups "
            f"({groups}); choose a group count that divides every layer width"
        )
    return nn.GroupNorm(groups, channels)


def _layer(channels: int) -> nn.Module:
    # "Layer norm" on a conv feature map means: statistics over (C, H, W) of each image, with a
    # per-channel affine -- i.e. GroupNorm with one group (Wu & He 2018, Fig. 2; Ba et al. 2016).
    # nn.LayerNorm would instead need a fixed (C, H, W) shape and a per-pixel affine, which breaks
    # the "any input size" contract.
    return nn.GroupNorm(1, channels)


_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "instance": _instance,
    "batch": _batch,
    "group": _group,
    "layer": _layer,
    "none": NoNorm,
    "conditional_instance": ConditionalInstanceNorm2d,
}

NORM_NAMES: tuple[str, ...] = tuple(_FACTORIES)
# A norm study's arms by default: one network per norm, one style each. A one-style conditional
# instance norm network trains exactly like instance norm (its only (gamma, beta) pair is instance
# norm's affine), so it is left out unless asked for; its own study is N styles in one network.
STUDY_NORMS: tuple[str, ...] = tuple(n for n in NORM_NAMES if n != "conditional_instance")


def norm_name(text: str) -> str:
    """A user's spelling of a norm -> its canonical name in NORM_NAMES (spaces stripped, any case).

    The one check of norm names (TransformerConfig and get_norm_layer use it; so should any other code
    that reads one from a person), so every entry point accepts the same spellings and refuses the
    rest with the same list of valid names.
    """
    key = text.strip().lower() if isinstance(text, str) else None
    if key not in _FACTORIES:
        raise ValueError(f"unknown norm {text!r}; valid names are: {', '.join(NORM_NAMES)}")
    return key


def get_norm_layer(name: str, *, groups: int = DEFAULT_GROUPS, num_styles: int = 1) -> NormLayer:
    """Return a ``channels -> nn.Module`` factory for the norm called ``name`` (see norm_name)."""
    key = norm_name(name)
    if key == "group":
        if groups < 1:
            raise ValueError(f"group norm needs at least one group, got {groups}")
        return functools.partial(_group, groups=groups)
    if key == "conditional_instance":
        return functools.partial(ConditionalInstanceNorm2d, num_styles=num_styles)
    return _FACTORIES[key]


def has_batch_statistics(module: nn.Module) -> bool:
    """True when ``module`` normalizes with statistics shared across the batch (batch norm)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def _per_image_groups(module: nn.Module) -> int | None:
    """Number of statistic groups for per-image norms (instance/group/layer); None for the others."""
    if isinstance(module, nn.InstanceNorm2d):
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_groups
    return None


def _group_stats(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    # x: (B, C, H, W) -> mean, var: (B, groups), computed in fp32 for stability under bf16.
    flat = x.float().reshape(x.shape[0], groups, -1)
    return flat.mean(-1), flat.var(-1, unbiased=False)


@contextlib.contextmanager
def frozen_statistics(model: nn.Module, reference: torch.Tensor, **forward: object) -> Iterator[None]:
    """Run ``model`` once on ``reference`` and normalize every later call with those statistics.

    Per-image norms (instance, group, layer) compute their mean/variance from whatever they see, so
    stylizing an image tile by tile would give every tile different statistics and visible seams.
    Inside this context, each such layer uses the statistics it saw on ``reference`` (the whole image,
    downscaled) instead, so all tiles are normalized alike. Batch norm (eval) and ``none`` need nothing.
    ``reference`` must have batch size 1.
    """
    stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
    layers = [(m, g) for m in model.modules() if (g := _per_image_groups(m)) is not None]

    def record(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        stats[module] = _group_stats(args[0], _per_image_groups(module))

    def apply(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        b, c = x.shape[:2]
        mean, var = stats[module]
        groups = mean.shape[1]
        eps = module.eps
        scale = torch.rsqrt(var + eps)  # (1, G)
        # expand (1, G) -> (B, C, 1, 1): every channel takes its group's statistics
        mean = mean.repeat_interleave(c // groups, dim=1).expand(b, c)[..., None, None]
        scale = scale.repeat_interleave(c // groups, dim=1).expand(b, c)[..., None, None]
        y = (x.float() - mean) * scale
        if module.weight is not None:
            y = y * module.weight.float()[None, :, None, None] + module.bias.float()[None, :, None, None]
        return y.to(x.dtype)

    handles = [m.register_forward_hook(record) for m, _ in layers]
    try:
        with torch.no_grad():
            model(reference, **forward)  # e.g. the style of a conditional network, as the tiles will have
    finally:
        for h in handles:
            h.remove()
    handles = [m.register_forward_hook(apply) for m, _ in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()



@torch.no_grad()
def fold_batch_norm(block: nn.Sequential) -> None:
    """In a ``[pad,] conv, norm, ...`` block, fold an eval-mode batch norm into the conv (exact).

    y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta is itself a conv with rescaled weights and
    a shifted bias; the norm is replaced by an identity. Other norms are left alone.
    """
    layers = list(block)
    for i in range(1, len(layers)):
        norm, conv = layers[i], layers[i - 1]
        if has_batch_statistics(norm) and isinstance(conv, nn.Conv2d) and norm.track_running_stats:
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            conv.weight.mul_(scale[:, None, None, None])
            bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
            conv.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias, requires_grad=False)
            block[i] = nn.Identity()
