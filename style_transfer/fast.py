"""The fast inference path: exact graph rewrites, then bf16/fp16, channels_last and torch.compile.

Every rewrite here is exact in real arithmetic (the outputs differ from the plain network only by
floating-point rounding); the precision change is what costs accuracy, and tests bound it with a PSNR
check against the fp32 network for every norm.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .network import ConvNormAct, TransformerNet
from .norms import fold_batch_norm


def _rewrite(model: TransformerNet) -> TransformerNet:
    """A copy with batch norm folded into the convs. (The sub-pixel upsampling convs and the
    space-to-depth output conv are part of the network itself: see network.py and kernels.py.)"""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, ConvNormAct):
            fold_batch_norm(module)
    return model


class FastModel(nn.Module):
    """The rewritten network in reduced precision and channels_last; takes and returns fp32 NCHW."""

    def __init__(self, model: TransformerNet, dtype: torch.dtype, channels_last: bool) -> None:
        super().__init__()
        self.dtype, self.channels_last = dtype, channels_last
        net = _rewrite(model).to(dtype)
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x, style).float()


def optimize(model: TransformerNet, device: torch.device, dtype: torch.dtype,
             channels_last: bool = True) -> FastModel:
    """The fast version of ``model`` on ``device``: exact rewrites, ``dtype``, channels_last."""
    return FastModel(model, dtype, channels_last).to(device)


def compiled(fast: nn.Module, device: torch.device) -> nn.Module:
    """``torch.compile`` of a fast model.

    On a GPU, static shapes: specialized kernels fuse the padding, norms and activations that dominate
    the eager time there (the convolutions are a small part of it), and on an H200 the compiled
    network with static shapes was several times faster than with ``dynamic=True``, which was no
    faster than eager (docs/benchmarks.md, "GPU": "Compiled"). Each new input shape compiles once
    (seconds; same section), and recompiles are bounded by dynamo's recompile limit (8 graphs for all
    models together, since models of one norm share a graph); shapes past it run the eager fast path.
    So a server that compiles should see few image sizes (e.g. clients that send one size).

    On the CPU compile measured slower than eager (docs/benchmarks.md, "Stylize one image"), so nothing
    turns it on there by default; if asked for, it is dynamic=True, one graph for every size.
    """
    return torch.compile(fast, dynamic=device.type != "cuda")
