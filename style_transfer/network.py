"""The feed-forward transformer network of Johnson et al. 2016, with a swappable norm layer.

Layout (Johnson et al. 2016, supplementary Table 1, with the changes noted inline)::

    9x9 conv w -> 3x3/2 conv 2w -> 3x3/2 conv 4w -> R residual blocks (4w)
    -> nearest x2 + 3x3 conv 2w -> nearest x2 + 3x3 conv w -> 9x9 conv 3
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .norms import DEFAULT_GROUPS, NORM_NAMES, NormLayer, get_norm_layer, is_channels_last


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


def pad2d(x: torch.Tensor, pad: int, mode: str) -> torch.Tensor:
    """Reflection (``mode="reflect"``) or replicate padding by ``pad`` on every side, keeping the
    input's memory layout.

    For a channels_last input, PyTorch's reflection pad took 5.8 ms on a (1, 32, 512, 512) bf16 tensor
    here, 12x a copy of it (issue 5 profile, the fast path at 512 px): so such inputs are padded by
    writing the interior once and then the few border rows and columns. Pure data movement: the same
    values as ``F.pad`` (tests compare them), with gradients. CPU only: on a GPU it would be 2 + 4 *
    pad kernel launches instead of one, unmeasured there (compiled graphs fuse either form).
    """
    if mode not in ("reflect", "replicate"):
        raise ValueError(f"pad2d: mode must be 'reflect' or 'replicate', got {mode!r}")
    b, c, h, w = x.shape
    reflect = mode == "reflect"
    if x.device.type != "cpu" or not is_channels_last(x) or pad == 0 or (reflect and pad >= min(h, w)):
        return F.pad(x, (pad, pad, pad, pad), mode=mode)  # also raises F.pad's errors
    out = torch.empty((b, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    out[:, :, pad : pad + h, pad : pad + w] = x
    for i in range(pad):  # columns from the input, then whole rows (corners included) from the output
        out[:, :, pad : pad + h, pad - 1 - i] = x[:, :, :, i + 1 if reflect else 0]
        out[:, :, pad : pad + h, pad + w + i] = x[:, :, :, w - 2 - i if reflect else w - 1]
    for i in range(pad):
        out[:, :, pad - 1 - i] = out[:, :, pad + 1 + i if reflect else pad]
        out[:, :, pad + h + i] = out[:, :, pad + h - 2 - i if reflect else pad + h - 1]
    return out


class ReflectionPad2d(nn.ReflectionPad2d):
    """``nn.ReflectionPad2d`` (same state, same output) that keeps channels_last inputs fast: see pad2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pad2d(x, self.padding[0], "reflect")  # built with one int: the same on every side


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


# The two rewrites below are exact (they change only floating-point rounding) and are what the
# network runs, in training and inference alike: together they took ~350 ms off a 2.7 s training
# step on the 2-core CPU (issue 5), and the weights keep the plain layers' shapes and names.


_PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))  # (row, column) offsets of the 4 pixels of a 2x2 block


def _interleave(phases: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Four (B, C, H, W) phase images, in ``_PHASES`` order -> the (B, C, 2H, 2W) image they tile,
    laid out in memory like ``like`` (the layer's input).

    What pixel_shuffle does, but pixel_shuffle returns NCHW, and in the channels_last fast path that
    cost a copy there, one in the next norm and one in the next conv (issue 5 profile). Pure data
    movement, so bit-identical, with gradients.
    """
    b, c, h, w = phases[0].shape
    layout = torch.channels_last if is_channels_last(like) else torch.contiguous_format
    out = torch.empty((b, c, 2 * h, 2 * w), dtype=phases[0].dtype, device=phases[0].device, memory_format=layout)
    for (a, col), phase in zip(_PHASES, phases, strict=True):
        out[:, :, a::2, col::2] = phase
    return out


def _subpixel_weight(k: torch.Tensor) -> torch.Tensor:
    """(out, in, 3, 3) kernel of conv3x3-after-nearest-x2 -> (4*out, in, 2, 2), one block per phase.

    Output phase a=0 of a row pair sees input rows (i-1, i) with kernel rows (k0, k1+k2); a=1 sees
    (i, i+1) with (k0+k1, k2); the same holds for columns. Built from the live kernel, so it is
    differentiable and training updates the plain 3x3 weights.
    """
    rows = [torch.stack([k[:, :, 0], k[:, :, 1] + k[:, :, 2]], 2),
            torch.stack([k[:, :, 0] + k[:, :, 1], k[:, :, 2]], 2)]  # each (out, in, 2, 3)
    phases = []
    for r in rows:
        phases += [torch.stack([r[..., 0], r[..., 1] + r[..., 2]], 3),
                   torch.stack([r[..., 0] + r[..., 1], r[..., 2]], 3)]
    return torch.cat(phases, 0)  # phases in order (a, b) = (0,0), (0,1), (1,0), (1,1)


class UpsampleConv(nn.Module):
    """Nearest-neighbour upsampling to an exact size, then conv.

    Upsample + conv instead of a transposed conv: no checkerboard artifacts (Odena et al. 2016).
    The exact target size (rather than a fixed x2) lets odd input sizes come back at their own size.

    For an exact x2 it is computed on the small image: each of the 4 output phases of a nearest x2
    followed by a 3x3 conv sees only a 2x2 neighbourhood of the input, so the pair is one 2x2 conv
    with 4x the output channels: 16 instead of 36 multiply-adds per output, and no full-size
    upsampled copy. Reflection padding by 1 of the upsampled image equals replicate padding by 1 of
    the small one. ``subpixel = False`` runs the plain formulation (tests compare the two).
    """

    subpixel = True

    def __init__(self, cin: int, cout: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv = ConvNormAct(cin, cout, 3, norm_layer=norm_layer)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = x.shape[-2:]
        if not self.subpixel or tuple(size) != (2 * h, 2 * w):
            return self.conv(F.interpolate(x, size=size, mode="nearest"))
        conv: nn.Conv2d = self.conv[1]
        bias = None if conv.bias is None else conv.bias.repeat(4)
        y = F.conv2d(pad2d(x, 1, "replicate"), _subpixel_weight(conv.weight), bias)
        c = conv.out_channels
        out = _interleave([y[:, p * c : (p + 1) * c, a : a + h, b : b + w] for p, (a, b) in enumerate(_PHASES)], x)
        for layer in list(self.conv)[2:]:  # norm and activation
            out = layer(out)
        return out


def _space_to_depth_index(k: int) -> torch.Tensor:
    """For a KxK kernel: index into its K*K taps (K*K = a zero) of the 2x2-phase kernel, shape
    (a, b, p, q, di, dj): output phase (a, b), input phase (p, q), tap (di, dj) at half resolution."""
    kk = (k + 2) // 2
    index = torch.full((2, 2, 2, 2, kk, kk), k * k, dtype=torch.long)
    for a, b, p, q, di, dj in itertools.product(range(2), range(2), range(2), range(2), range(kk), range(kk)):
        u, v = 2 * di + p - a, 2 * dj + q - b
        if 0 <= u < k and 0 <= v < k:
            index[a, b, p, q, di, dj] = u * k + v
    return index


class OutputConv(ConvNormAct):
    """The last layer: reflection pad + KxK conv to a few channels (RGB), no norm, no activation.

    A conv with 3 outputs wastes most of a matrix unit's width. Folding each 2x2 block of pixels into
    channels (pixel unshuffle) makes it a ceil((K+1)/2)-sized conv with 4x the input and output
    channels at half resolution, and a pixel shuffle puts the 4 phases back: the same result, run
    ~2x faster forward and backward here. ``space_to_depth = False`` runs the plain conv.
    """

    space_to_depth = True

    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__(cin, cout, kernel, act=False)
        # A buffer, so it follows the module to its device (no per-call host-to-device copy, which
        # CUDA graphs would not allow); not persistent, so checkpoints hold only the plain weights.
        self.register_buffer("tap_index", _space_to_depth_index(kernel), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad, conv = self[0], self[1]
        x = pad(x)
        h, w = x.shape[-2:]
        if not self.space_to_depth or h % 2 or w % 2:
            return conv(x)
        out_c, in_c, k, _ = conv.weight.shape
        kk = (k + 2) // 2
        taps = torch.cat([conv.weight.reshape(out_c, in_c, k * k), conv.weight.new_zeros(out_c, in_c, 1)], 2)
        big = taps[:, :, self.tap_index]  # (o, c, a, b, p, q, di, dj)
        # Input channels are ordered (p, q, c) and outputs (a, b, o): phase-major, so that splitting
        # into and assembling from phases moves whole channel vectors in either memory layout.
        big = big.permute(2, 3, 0, 4, 5, 1, 6, 7).reshape(out_c * 4, in_c * 4, kk, kk)
        bias = None if conv.bias is None else conv.bias.repeat(4)
        y = F.conv2d(torch.cat([x[:, :, p::2, q::2] for p, q in _PHASES], 1), big, bias)
        y = _interleave(list(y.split(out_c, 1)), x)
        return y[..., : h - k + 1, : w - k + 1]


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
        self.tail = OutputConv(w, 3, 9)

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
