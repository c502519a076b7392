"""Applying a trained network to images: resize, blend, colour preservation and seamless tiling."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import ModelInfo, load_model
from .device import autocast, check_precision, resolve_device
from .imageio import LoadedImage, resize_max
from .network import TransformerNet
from .norms import frozen_statistics

log = logging.getLogger(__name__)

# Statistics for tiled stylization are taken from the whole image downscaled to this long side
# (or the image itself when smaller): large enough that the statistics match the full-size ones closely.
TILE_REFERENCE_SIZE = 1024


@dataclass(frozen=True)
class StylizeOptions:
    """How to stylize one image."""

    strength: float = 1.0  # 0 = the content unchanged, 1 = fully stylized
    preserve_color: bool = False  # keep the content's colours (luminance-only transfer)
    max_size: int | None = None  # downscale so the long side is at most this (None: keep the size)
    tile: int | None = None  # stylize in tiles of this many px (None: the whole image at once)
    tile_overlap: int = 64  # px shared by neighbouring tiles, cross-faded

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 1.0 or math.isnan(self.strength):
            raise ValueError(f"strength must be between 0 and 1, got {self.strength}")
        if self.max_size is not None and self.max_size < 8:
            raise ValueError(f"max_size must be at least 8 px, got {self.max_size}")
        if self.tile is not None:
            if self.tile < 32:
                raise ValueError(f"tile must be at least 32 px, got {self.tile}")
            if not 0 <= self.tile_overlap < self.tile // 2:
                raise ValueError(f"tile_overlap must be in [0, tile/2), got {self.tile_overlap} for tile {self.tile}")


# ITU-R BT.601 (JPEG) RGB <-> YCbCr, for luminance-only transfer.
_RGB_TO_YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> YCbCr with Cb/Cr centred on 0."""
    return torch.einsum("ij,bjhw->bihw", _RGB_TO_YCC.to(rgb), rgb)


def ycbcr_to_rgb(ycc: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_ycbcr`."""
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_RGB_TO_YCC).to(ycc), ycc)


def preserve_color(stylized: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The stylized luminance with the content's chrominance (Gatys et al. 2017, "Preserving color")."""
    styled, original = rgb_to_ycbcr(stylized), rgb_to_ycbcr(content)
    return ycbcr_to_rgb(torch.cat([styled[:, :1], original[:, 1:]], dim=1)).clamp(0, 1)


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def _ramp(length: int, overlap: int, device: torch.device) -> torch.Tensor:
    # Linear cross-fade over the overlap at each end; never zero, so a pixel covered by one tile
    # keeps its value after normalization.
    i = torch.arange(length, device=device, dtype=torch.float32)
    if overlap == 0:
        return torch.ones(length, device=device)
    rise = ((i + 0.5) / overlap).clamp(max=1.0)
    return torch.minimum(rise, rise.flip(0)).clamp(min=1e-3)


class Stylizer:
    """A loaded network on a device, ready to stylize (1, 3, H, W) images in [0, 1]."""

    def __init__(self, model: TransformerNet, info: ModelInfo | None = None,
                 device: torch.device | str = "cpu", precision: str = "fp32") -> None:
        self.device = torch.device(device)
        self.precision = check_precision(precision)
        self.model = model.eval().to(self.device).requires_grad_(False)
        self.info = info

    @classmethod
    def from_checkpoint(cls, path: Path | str, device: str = "auto", precision: str = "fp32") -> "Stylizer":
        dev = resolve_device(device)
        model, info = load_model(path, dev)
        return cls(model, info, dev, precision)

    @torch.no_grad()
    def run(self, images: torch.Tensor) -> torch.Tensor:
        """The raw network on a batch: (B, 3, H, W) -> (B, 3, H, W) in [0, 1], on the input's device."""
        with autocast(self.device, self.precision):
            out = self.model(images.to(self.device))
        return out.float().clamp(0, 1).to(images.device)

    @torch.no_grad()
    def run_tiled(self, image: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
        """Stylize one image tile by tile, with shared norm statistics and cross-faded overlaps.

        Per-image norms (instance/group/layer) would normalize each tile with its own statistics and
        show seams; :func:`norms.frozen_statistics` gives every tile the statistics of the whole image
        (downscaled to TILE_REFERENCE_SIZE). Memory stays bounded by the tile size: only the output
        and a weight map are full-size.
        """
        _, _, h, w = image.shape
        reference = resize_max(image, TILE_REFERENCE_SIZE).to(self.device)
        out = torch.zeros(1, 3, h, w)
        weight = torch.zeros(1, 1, h, w)
        with autocast(self.device, self.precision), frozen_statistics(self.model, reference):
            for top in _tile_starts(h, tile, overlap):
                for left in _tile_starts(w, tile, overlap):
                    patch = image[..., top : top + tile, left : left + tile]
                    styled = self.model(patch.to(self.device)).float().clamp(0, 1).cpu()
                    ph, pw = styled.shape[-2:]
                    wmap = _ramp(ph, overlap, torch.device("cpu"))[:, None] * _ramp(pw, overlap, torch.device("cpu"))[None, :]
                    out[..., top : top + ph, left : left + pw] += styled * wmap
                    weight[..., top : top + ph, left : left + pw] += wmap
        return (out / weight).to(image.dtype)

    def stylize(self, image: torch.Tensor, options: StylizeOptions = StylizeOptions()) -> torch.Tensor:
        """One image (1, 3, H, W) in [0, 1] -> stylized (1, 3, H', W'), H', W' bounded by max_size."""
        if image.dim() != 4 or image.shape[:2] != (1, 3):
            raise ValueError(f"expected one RGB image of shape (1, 3, H, W), got {tuple(image.shape)}")
        content = resize_max(image, options.max_size) if options.max_size else image
        if options.strength == 0.0:
            return content.clone()
        if options.tile and max(content.shape[-2:]) > options.tile:
            styled = self.run_tiled(content, options.tile, options.tile_overlap)
        else:
            styled = self.run(content)
        if options.preserve_color:
            styled = preserve_color(styled, content)
        if options.strength < 1.0:
            styled = options.strength * styled + (1.0 - options.strength) * content
        return styled.clamp(0, 1)

    def stylize_image(self, image: LoadedImage, options: StylizeOptions = StylizeOptions()) -> LoadedImage:
        """Stylize a decoded file, carrying its alpha channel over (resized with the image)."""
        styled = self.stylize(image.rgb, options)
        alpha = image.alpha
        if alpha is not None and alpha.shape[-2:] != styled.shape[-2:]:
            alpha = torch.nn.functional.interpolate(alpha, size=styled.shape[-2:], mode="bilinear",
                                                    antialias=True, align_corners=False).clamp(0, 1)
        return LoadedImage(styled, alpha)
