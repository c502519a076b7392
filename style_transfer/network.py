"""The feed-forward transformer network of Johnson et al. 2016, with a swappable norm layer.

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

from .norms import DEFAULT_GROUPS, NORM_NAMES, NormLayer, get_norm_layer


@dataclass(frozen=True)
class TransformerConfig:
    """Everything needed to rebuild a network; stored in every checkpoint."""

    norm: str = "instance"  # one of norms.NORM_NAMES
    width: int = 32  # channels after the first conv (Johnson et al.); 16 gives the half-width variant
    num_residual: int = 5  # residual blocks at 1/4 resolution (Johnson et al. use 5)
    groups: int = DEFAULT_GROUPS  # only used by the group norm; see norms.DEFAULT_GROUPS

    def __post_init__(self) -> None:
        if isinstance(self.norm, str):
            object.__setattr__(self, "norm", self.norm.strip().lower())
        if self.norm not in NORM_NAMES:
            raise ValueError(f"unknown norm {self.norm!r}; valid names are: {', '.join(NORM_NAMES)}")
        if self.width < 1 or self.num_residual < 0:
            raise ValueError(f"width must be >= 1 and num_residual >= 0, got {self.width}, {self.num_residual}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

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
        layers: list[nn.Module] = [nn.ReflectionPad2d(kernel // 2), nn.Conv2d(cin, cout, kernel, stride)]
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


class UpsampleConv(nn.Module):
    """Nearest-neighbour upsampling to an exact size, then conv.

    Upsample + conv instead of a transposed conv: no checkerboard artifacts (Odena et al. 2016).
    The exact target size (rather than a fixed x2) lets odd input sizes come back at their own size.
    """

    def __init__(self, cin: int, cout: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv = ConvNormAct(cin, cout, 3, norm_layer=norm_layer)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class TransformerNet(nn.Module):
    """Image -> stylized image. Input and output are (B, 3, H, W) in [0, 1] (output unclamped)."""

    # The 9x9 reflection pad needs at least 5 pixels; smaller inputs are padded up, then cropped.
    MIN_SIZE = 8
    # Total downsampling factor (two stride-2 convs): tiles must start on multiples of it.
    STRIDE = 4

    def __init__(self, config: TransformerConfig = TransformerConfig()) -> None:
        super().__init__()
        self.config = config
        norm = get_norm_layer(config.norm, groups=config.groups)
        w = config.width
        self.head = ConvNormAct(3, w, 9, norm_layer=norm)
        self.down1 = ConvNormAct(w, 2 * w, 3, stride=2, norm_layer=norm)
        self.down2 = ConvNormAct(2 * w, 4 * w, 3, stride=2, norm_layer=norm)
        self.residuals = nn.Sequential(*(ResidualBlock(4 * w, norm) for _ in range(config.num_residual)))
        self.up1 = UpsampleConv(4 * w, 2 * w, norm)
        self.up2 = UpsampleConv(2 * w, w, norm)
        # No norm and no activation on the last layer: the output is an image, not a feature map.
        self.tail = ConvNormAct(w, 3, 9, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters())
