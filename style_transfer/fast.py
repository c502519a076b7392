"""The fast inference path: exact graph rewrites, then bf16/fp16, channels_last and torch.compile.

Every rewrite here is exact in real arithmetic (the outputs differ from the plain network only by
floating-point rounding); the precision change is what costs accuracy, and tests bound it with a PSNR
check against the fp32 network for every norm.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .network import ConvNormAct, TransformerNet, UpsampleConv
from .norms import fold_batch_norm

class SubPixelUpsampleConv(nn.Module):
    """``conv3x3(reflect_pad1(nearest_up2(x)))`` computed on the low-resolution input.

    Each of the 4 output phases of a nearest x2 upsampling followed by a 3x3 conv sees only a 2x2
    neighbourhood of the input, so the layer is one 2x2 conv with 4x the output channels on the
    (replicate-padded) small image: 16 instead of 36 multiply-adds per output pixel and channel, and no
    full-size upsampled or padded copy. Reflection padding by 1 of the upsampled image equals
    replicate padding by 1 of the small one, so the result is the same. Falls back to the plain layer
    when the target is not exactly twice the input (odd sizes).
    """

    def __init__(self, layer: UpsampleConv) -> None:
        super().__init__()
        self.plain = layer
        conv: nn.Conv2d = layer.conv[1]
        self.post = nn.Sequential(*list(layer.conv)[2:])  # norm and activation after the conv
        k = conv.weight.detach()  # (out, in, 3, 3)
        # Phase a=0 sees input rows (i-1, i) with kernel rows (k0, k1+k2); a=1 sees (i, i+1) with (k0+k1, k2).
        rows = [torch.stack([k[:, :, 0], k[:, :, 1] + k[:, :, 2]], 2),
                torch.stack([k[:, :, 0] + k[:, :, 1], k[:, :, 2]], 2)]  # each (out, in, 2, 3)
        phases = []
        for a in (0, 1):
            r = rows[a]
            cols = [torch.stack([r[..., 0], r[..., 1] + r[..., 2]], 3),
                    torch.stack([r[..., 0] + r[..., 1], r[..., 2]], 3)]
            phases += [cols[0], cols[1]]  # order: (a, b) = (0,0), (0,1), (1,0), (1,1)
        self.out_channels = k.shape[0]
        self.weight = nn.Parameter(torch.cat(phases, 0), requires_grad=False)  # (4*out, in, 2, 2)
        self.bias = nn.Parameter(conv.bias.detach().repeat(4), requires_grad=False)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = x.shape[-2:]
        if tuple(size) != (2 * h, 2 * w):
            return self.plain(x, size)
        c = self.out_channels
        y = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.weight, self.bias)  # (B, 4c, h+1, w+1)
        out = y.new_empty(x.shape[0], c, 2 * h, 2 * w)
        for p, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            out[:, :, a::2, b::2] = y[:, p * c : (p + 1) * c, a : a + h, b : b + w]
        return self.post(out)


class SpaceToDepthConv(nn.Module):
    """A stride-1 KxK conv with few output channels, computed on a 2x pixel-unshuffled input.

    The last layer (9x9, 32 -> 3 channels) wastes most of a matrix unit's width on 3 outputs. Folding
    each 2x2 block of pixels into channels turns it into a ceil((K+1)/2)-sized conv with 4x the input
    and output channels (128 -> 12) at half resolution; a pixel shuffle puts the 4 phases back. The
    same multiply-adds per useful output, laid out so the hardware is used ~4x better.
    Expects the input already padded by K//2 (the layer's reflection pad stays in front of it).
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.plain = conv
        w = conv.weight.detach()  # (out, in, K, K)
        out_c, in_c, k, _ = w.shape
        kk = (k + 2) // 2  # taps at half resolution covering offsets a+u in 0..K (a in {0,1})
        big = w.new_zeros(out_c, 2, 2, in_c, 2, 2, kk, kk)  # (o, a, b, c, p, q, di, dj)
        for a in (0, 1):
            for b in (0, 1):
                for p in (0, 1):
                    for q in (0, 1):
                        for di in range(kk):
                            u = 2 * di + p - a
                            if not 0 <= u < k:
                                continue
                            for dj in range(kk):
                                v = 2 * dj + q - b
                                if 0 <= v < k:
                                    big[:, a, b, :, p, q, di, dj] = w[:, :, u, v]
        # pixel_unshuffle orders channels as (c, p, q); pixel_shuffle expects outputs as (o, a, b).
        self.weight = nn.Parameter(big.reshape(out_c * 4, in_c * 4, kk, kk), requires_grad=False)
        self.bias = nn.Parameter(conv.bias.detach().repeat_interleave(4), requires_grad=False)
        self.k, self.kk = k, kk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % 2 or w % 2:
            return self.plain(x)
        y = F.conv2d(F.pixel_unshuffle(x, 2), self.weight, self.bias)  # (B, 4*out, (h-k+1)/2 .., ..)
        y = F.pixel_shuffle(y, 2)
        return y[..., : h - self.k + 1, : w - self.k + 1]


def _rewrite(model: TransformerNet) -> TransformerNet:
    """A copy with exact rewrites: batch norm folded into convs, sub-pixel upsampling convs."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, ConvNormAct):
            fold_batch_norm(module)
    model.up1 = SubPixelUpsampleConv(model.up1)
    model.up2 = SubPixelUpsampleConv(model.up2)
    model.tail[1] = SpaceToDepthConv(model.tail[1])
    return model


class FastModel(nn.Module):
    """The rewritten network in reduced precision and channels_last; takes and returns fp32 NCHW."""

    def __init__(self, model: TransformerNet, dtype: torch.dtype, channels_last: bool) -> None:
        super().__init__()
        self.dtype, self.channels_last = dtype, channels_last
        net = _rewrite(model).to(dtype)
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x).float()


def optimize(model: TransformerNet, device: torch.device, dtype: torch.dtype,
             channels_last: bool = True) -> FastModel:
    """The fast version of ``model`` on ``device``: exact rewrites, ``dtype``, channels_last."""
    return FastModel(model, dtype, channels_last).to(device)


def compiled(fast: nn.Module) -> nn.Module:
    """``torch.compile`` of a fast model, for GPUs (on the CPU it measured slower than eager: see
    docs/benchmarks.md). dynamic=True: one graph for every image size instead of a recompile per size."""
    return torch.compile(fast, dynamic=True)
