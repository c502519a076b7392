"""Exact, faster computations of the network's layers: how they run, not what they are.

network.py holds the architecture and chooses these kernels; everything here is exact in real
arithmetic (the same values as the plain layers up to floating-point rounding; pure data movement is
bit-identical), differentiable, and works on the layers' own weights, so checkpoints never see it.

* :func:`pad2d` -- reflection/replicate padding that keeps a channels_last input channels_last, and
  :class:`ReflectionPad2d`, the ``nn.ReflectionPad2d`` that uses it;
* :func:`upsample2x_conv3x3` -- nearest x2 upsampling + reflection pad 1 + 3x3 conv, computed as one
  2x2 conv on the small image (sub-pixel form), with :func:`subpixel_weight` and :func:`interleave`;
* :func:`space_to_depth_conv` -- a KxK conv to a few channels run on 2x2 blocks folded into channels,
  with :func:`space_to_depth_index`.

Why each exists, with the measurements behind it: docs/benchmarks.md ("Stylize one image" and
"One training step"; issue 5 profiles).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from .norms import is_channels_last

# (row, column) offsets of the 4 pixels of a 2x2 block: the order of phases everywhere in this module.
PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


def pad2d(x: torch.Tensor, pad: int, mode: str) -> torch.Tensor:
    """Reflection (``mode="reflect"``) or replicate padding by ``pad`` on every side, keeping the
    input's memory layout.

    PyTorch's reflection pad of a channels_last input is many times slower than a copy of it on the
    CPU (docs/benchmarks.md, "Stylize one image": Padding), so such inputs are padded by writing the
    interior once and then the few border rows and columns. Pure data movement: the same values as
    ``F.pad`` (tests compare them), with gradients. CPU only: on a GPU it would be 2 + 4 * pad kernel
    launches instead of one, unmeasured there (compiled graphs fuse either form).
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


def interleave(phases: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Four (B, C, H, W) phase images, in ``PHASES`` order -> the (B, C, 2H, 2W) image they tile,
    laid out in memory like ``like`` (the layer's input).

    What pixel_shuffle does, but pixel_shuffle returns NCHW, and in the channels_last fast path that
    cost a copy there, one in the next norm and one in the next conv (issue 5 profile). Pure data
    movement, so bit-identical, with gradients.
    """
    b, c, h, w = phases[0].shape
    layout = torch.channels_last if is_channels_last(like) else torch.contiguous_format
    out = torch.empty((b, c, 2 * h, 2 * w), dtype=phases[0].dtype, device=phases[0].device, memory_format=layout)
    for (a, col), phase in zip(PHASES, phases, strict=True):
        out[:, :, a::2, col::2] = phase
    return out


def subpixel_weight(k: torch.Tensor) -> torch.Tensor:
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


def upsample2x_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Nearest x2 upsampling, reflection pad 1 and a 3x3 conv, computed on the small image.

    (B, C, H, W) -> (B, out, 2H, 2W), laid out like ``x``. Each of the 4 output phases of a nearest x2
    followed by a 3x3 conv sees only a 2x2 neighbourhood of the input, so the pair is one 2x2 conv with
    4x the output channels: 16 instead of 36 multiply-adds per output, and no full-size upsampled
    copy. Reflection padding by 1 of the upsampled image equals replicate padding by 1 of the small one.
    """
    h, w = x.shape[-2:]
    c = weight.shape[0]
    bias = None if bias is None else bias.repeat(4)
    y = F.conv2d(pad2d(x, 1, "replicate"), subpixel_weight(weight), bias)
    return interleave([y[:, p * c : (p + 1) * c, a : a + h, b : b + w] for p, (a, b) in enumerate(PHASES)], x)


def space_to_depth_index(k: int) -> torch.Tensor:
    """For a KxK kernel: index into its K*K taps (K*K = a zero) of the 2x2-phase kernel, shape
    (a, b, p, q, di, dj): output phase (a, b), input phase (p, q), tap (di, dj) at half resolution."""
    kk = (k + 2) // 2
    index = torch.full((2, 2, 2, 2, kk, kk), k * k, dtype=torch.long)
    for a, b, p, q, di, dj in itertools.product(range(2), range(2), range(2), range(2), range(kk), range(kk)):
        u, v = 2 * di + p - a, 2 * dj + q - b
        if 0 <= u < k and 0 <= v < k:
            index[a, b, p, q, di, dj] = u * k + v
    return index


def space_to_depth_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        tap_index: torch.Tensor) -> torch.Tensor:
    """``F.conv2d(x, weight, bias)`` (stride 1, no padding) of an input with even H and W, computed
    on 2x2 blocks folded into channels; ``tap_index`` is ``space_to_depth_index(K)`` on x's device.

    A conv with 3 outputs wastes most of a matrix unit's width. Folding each 2x2 block of pixels into
    channels (pixel unshuffle) makes it a ceil((K+1)/2)-sized conv with 4x the input and output
    channels at half resolution, and an interleave puts the 4 phases back: the same result, faster
    forward and backward (docs/benchmarks.md, "One training step").
    """
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        raise ValueError(f"space_to_depth_conv needs an even height and width, got {h}x{w}")
    out_c, in_c, k, _ = weight.shape
    kk = (k + 2) // 2
    taps = torch.cat([weight.reshape(out_c, in_c, k * k), weight.new_zeros(out_c, in_c, 1)], 2)
    big = taps[:, :, tap_index]  # (o, c, a, b, p, q, di, dj)
    # Input channels are ordered (p, q, c) and outputs (a, b, o): phase-major, so that splitting
    # into and assembling from phases moves whole channel vectors in either memory layout.
    big = big.permute(2, 3, 0, 4, 5, 1, 6, 7).reshape(out_c * 4, in_c * 4, kk, kk)
    bias = None if bias is None else bias.repeat(4)
    y = F.conv2d(torch.cat([x[:, :, p::2, q::2] for p, q in PHASES], 1), big, bias)
    y = interleave(list(y.split(out_c, 1)), x)
    return y[..., : h - k + 1, : w - k + 1]
