"""The feed-forward transformer network of Johnson et al. 2016, with a swappable norm layer.

This module holds the architecture: ``TransformerConfig`` (what a checkpoint stores to rebuild it),
the layers ``ConvNormAct``, ``ResidualBlock``, ``UpsampleConv`` and ``OutputConv``, and
``TransformerNet``. How the upsampling convs and the output conv are computed (exact, faster
formulations, and the channels_last padding) lives in kernels.py; the layers choose between those
kernels and the plain PyTorch layers at construction (``TransformerNet(config, rewrites=...)``), and
the weights are the plain layers' either way. The norms come from norms.py.

Layout (Johnson et al. 2016, supplementary Table 1, with the changes noted inline)::

    9x9 conv w -> 3x3/2 conv 2w -> 3x3/2 conv 4w -> R residual blocks (4w)
    -> nearest x2 + 3x3 conv 2w -> nearest x2 + 3x3 conv w -> 9x9 conv 3
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import ReflectionPad2d, space_to_depth_conv, space_to_depth_index, upsample2x_conv3x3
from .norms import DEFAULT_GROUPS, ConditionalInstanceNorm2d, NormLayer, get_norm_layer, norm_name


@dataclass(frozen=True)
class TransformerConfig:
    """Everything needed to rebuild a network; stored in every checkpoint."""

    norm: str = "instance"  # one of norms.NORM_NAMES
    width: int = 32  # channels after the first conv (Johnson et al.); 16 gives the half-width variant
    num_residual: int = 5  # residual blocks at 1/4 resolution (Johnson et al. use 5)
    groups: int = DEFAULT_GROUPS  # only used by the group norm; see norms.DEFAULT_GROUPS
    # Only used by the conditional instance norm: the styles the network holds, one (gamma, beta) each.
    num_styles: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", norm_name(self.norm))
        if self.width < 1 or self.num_residual < 0:
            raise ValueError(f"width must be >= 1 and num_residual >= 0, got {self.width}, {self.num_residual}")
        if self.num_styles < 1:
            raise ValueError(f"num_styles must be >= 1, got {self.num_styles}")
        if self.num_styles > 1 and self.norm != "conditional_instance":
            raise ValueError(f"several styles in one network need the conditional_instance norm, not {self.norm}")
        # Refused here rather than when the network is built, which a training run reaches only after
        # scanning the data and loading VGG. Every layer has width, 2*width or 4*width channels, so
        # norms.get_norm_layer's rule (groups >= 1 dividing the channel count) holds for all of them
        # exactly when it holds for width.
        if self.norm == "group":
            if self.groups < 1:
                raise ValueError(f"group norm needs at least one group, got groups={self.groups}")
            if self.width % self.groups:
                raise ValueError(
                    f"group norm: groups={self.groups} does not divide width={self.width} (every layer has "
                    f"width, 2*width or 4*width channels); choose a width that is a multiple of {self.groups} "
                    f"or a group count that divides {self.width}"
                )

    def can_start_from(self, trained: "TransformerConfig") -> bool:
        """Whether a network of this config can start from a trained one's weights (``--init``): the same
        network, or this one's conditional instance norm (any number of styles) from a single-style
        instance-norm network of the same shape, each style's (gamma, beta) starting as its affine."""
        if trained == self:
            return True
        return (self.norm == "conditional_instance" and trained.norm == "instance"
                and dataclasses.replace(trained, norm=self.norm, num_styles=self.num_styles) == self)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        if self.norm != "conditional_instance":
            del data["num_styles"]  # meaningless there; and configs read as they did before it existed
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "TransformerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown network config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


class ConvNormAct(nn.Sequential):
    """Reflection pad + conv (+ norm) (+ ReLU).

    Reflection padding instead of zero padding avoids dark borders (as in pytorch/examples and
    Ulyanov et al.'s texture networks).
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1,
                 norm_layer: NormLayer | None = None, act: bool = True) -> None:
        layers: list[nn.Module] = [ReflectionPad2d(kernel // 2), nn.Conv2d(cin, cout, kernel, stride)]
        if norm_layer is not None:
            layers.append(norm_layer(cout))
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """Two 3x3 conv layers with an identity skip (He et al. 2016, as used by Johnson et al.)."""

    def __init__(self, channels: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvNormAct(channels, channels, 3, norm_layer=norm_layer),
            ConvNormAct(channels, channels, 3, norm_layer=norm_layer, act=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


# UpsampleConv and OutputConv run exact rewrites (kernels.py) by default, in training and inference
# alike: they change only floating-point rounding, speed up the training step as well as inference on
# the CPU (docs/benchmarks.md, "One training step"), and keep the plain layers' weight shapes and names.


class UpsampleConv(nn.Module):
    """Nearest-neighbour upsampling to an exact size, then conv.

    Upsample + conv instead of a transposed conv: no checkerboard artifacts (Odena et al. 2016).
    The exact target size (rather than a fixed x2) lets odd input sizes come back at their own size.

    With ``subpixel=True`` (the default) an exact x2 is computed on the small image, as one 2x2 conv
    with 4x the output channels (kernels.upsample2x_conv3x3); other sizes, and ``subpixel=False``,
    run the plain formulation (tests compare the two).
    """

    def __init__(self, cin: int, cout: int, norm_layer: NormLayer, *, subpixel: bool = True) -> None:
        super().__init__()
        self.conv = ConvNormAct(cin, cout, 3, norm_layer=norm_layer)
        self.subpixel = subpixel

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = x.shape[-2:]
        if not self.subpixel or tuple(size) != (2 * h, 2 * w):
            return self.conv(F.interpolate(x, size=size, mode="nearest"))
        conv: nn.Conv2d = self.conv[1]
        out = upsample2x_conv3x3(x, conv.weight, conv.bias)
        for layer in list(self.conv)[2:]:  # norm and activation
            out = layer(out)
        return out


class OutputConv(ConvNormAct):
    """The last layer: reflection pad + KxK conv to a few channels (RGB), no norm, no activation.

    A conv with 3 outputs wastes most of a matrix unit's width, so with ``space_to_depth=True`` (the
    default) an even-sized padded input runs as a conv on 2x2 blocks folded into channels
    (kernels.space_to_depth_conv); odd sizes, and ``space_to_depth=False``, run the plain conv.
    """

    def __init__(self, cin: int, cout: int, kernel: int, *, space_to_depth: bool = True) -> None:
        super().__init__(cin, cout, kernel, act=False)
        self.space_to_depth = space_to_depth
        # A buffer, so it follows the module to its device (no per-call host-to-device copy, which
        # CUDA graphs would not allow); not persistent, so checkpoints hold only the plain weights.
        self.register_buffer("tap_index", space_to_depth_index(kernel), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad, conv = self[0], self[1]
        x = pad(x)
        h, w = x.shape[-2:]
        if not self.space_to_depth or h % 2 or w % 2:
            return conv(x)
        return space_to_depth_conv(x, conv.weight, conv.bias, self.tap_index)


class TransformerNet(nn.Module):
    """Image -> stylized image. Input and output are (B, 3, H, W) in [0, 1] (output unclamped).

    ``rewrites=True`` (the default, what training, inference and checkpoints use) runs the upsampling
    convs and the output conv through kernels.py's exact rewrites; ``rewrites=False`` runs the plain
    layers, for comparison. The choice is not part of the config: it changes no weight and only the
    rounding of the output.
    """

    # The 9x9 reflection pad needs at least 5 pixels; smaller inputs are padded up, then cropped.
    MIN_SIZE = 8
    # Total downsampling factor (two stride-2 convs): tiles must start on multiples of it.
    STRIDE = 4

    def __init__(self, config: TransformerConfig = TransformerConfig(), *, rewrites: bool = True) -> None:
        super().__init__()
        self.config = config
        norm = get_norm_layer(config.norm, groups=config.groups, num_styles=config.num_styles)
        w = config.width
        self.head = ConvNormAct(3, w, 9, norm_layer=norm)
        self.down1 = ConvNormAct(w, 2 * w, 3, stride=2, norm_layer=norm)
        self.down2 = ConvNormAct(2 * w, 4 * w, 3, stride=2, norm_layer=norm)
        self.residuals = nn.Sequential(*(ResidualBlock(4 * w, norm) for _ in range(config.num_residual)))
        self.up1 = UpsampleConv(4 * w, 2 * w, norm, subpixel=rewrites)
        self.up2 = UpsampleConv(2 * w, w, norm, subpixel=rewrites)
        # No norm and no activation on the last layer: the output is an image, not a feature map.
        self.tail = OutputConv(w, 3, 9, space_to_depth=rewrites)

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """``style``: for a conditional instance norm network, (N,), (1, N) or (B, N) convex weights over
        its N styles (None: the first style); other networks take None only."""
        if style is not None:
            return self._conditioned(x, style)
        h, w = x.shape[-2:]
        if h < self.MIN_SIZE or w < self.MIN_SIZE:
            pad_h, pad_w = max(0, self.MIN_SIZE - h), max(0, self.MIN_SIZE - w)
            return self.forward(F.pad(x, (0, pad_w, 0, pad_h), mode="replicate"))[..., :h, :w]
        y0 = self.head(x)  # (B, w, H, W)
        y1 = self.down1(y0)  # (B, 2w, ceil(H/2), ceil(W/2))
        y = self.residuals(self.down2(y1))  # (B, 4w, ceil(H/4), ceil(W/4))
        y = self.up1(y, y1.shape[-2:])
        y = self.up2(y, y0.shape[-2:])
        return self.tail(y)


    def _conditioned(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        layers = [m for m in self.modules() if isinstance(m, ConditionalInstanceNorm2d)]
        if not layers:
            raise ValueError(f"a style mix needs a conditional_instance network; this one is {self.config.norm}")
        style = style.reshape(-1, self.config.num_styles).to(x.device)
        for layer in layers:
            layer.style = style
        try:
            return self.forward(x)
        finally:
            for layer in layers:
                layer.style = None


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters())
