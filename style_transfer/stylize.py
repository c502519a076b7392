"""Applying a trained network to images: resize, blend, colour preservation and seamless tiling.

The inference rules live here, so the CLI, the server and library callers follow the same ones (issue 15):

* size: an image is downscaled so its long side is at most ``StylizeOptions.max_size`` (:func:`fit_image`,
  alpha resized with it); a service lowers that to its own cap with :meth:`StylizeOptions.capped`, by
  default :func:`default_max_size` of its device;
* stroke size: the network paints the image downscaled so its long side is at most
  ``StylizeOptions.paint_size``, and :func:`upscale_painting` brings the painting back to the image's size
  with the photo's fine detail (None: paints at the image's size);
* tiling: an image whose long side (after resizing) exceeds ``StylizeOptions.tile`` is stylized in
  seamless tiles (:meth:`StylizeOptions.tiles`, :meth:`Stylizer.run_tiled`), anything smaller in one pass.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import ModelInfo, load_model
from .device import autocast, conv_autotune, dtype_of, resolve_device, resolve_precision
from .fast import compiled, optimize
from .imageio import LoadedImage, fitted_size, resize_max
from .network import TransformerNet
from .norms import frozen_statistics

log = logging.getLogger(__name__)

# Statistics for tiled stylization are taken from the whole image downscaled to this long side
# (or the image itself when smaller): large enough that the statistics match the full-size ones closely.
TILE_REFERENCE_SIZE = 1024
# Width of the cross-fade at each tile cut, in px.
TILE_FADE = 16
# Twice the receptive radius of the default network (~54 px): tiles this far apart agree exactly.
MAX_DEFAULT_OVERLAP = 128
# Long side a service bounds images to when its operator sets no cap, by device type: 1024 px keeps a
# request on a CPU around a second or two; 2048 px on a GPU.
DEFAULT_MAX_SIZE = {"cpu": 1024, "cuda": 2048}
# Long side the CLI and the server paint at unless told otherwise (0 = the image's size). The strokes of a
# network trained on 256 px crops have a fixed size in pixels: painted at full size, a 2048 px photo seen
# whole (fitted to a screen) shows them as a fine texture on a tinted photo. Painted at 1024 px and brought
# back to 2048, it is 27-63% closer to the painting seen at 1024 (the four shipped styles) and 20-25x faster
# on a CPU; painting smaller than the picture is seen at moves away from the painting again
# (benchmarks/paint_size.py; docs/quality.md, "Stroke size").
DEFAULT_PAINT_SIZE = 1024
# Smallest paint_size: after the network's two stride-2 convs a 64 px image is a 16 px grid of strokes;
# below that the photo's subjects are gone from the painting (its detail alone would carry them).
MIN_PAINT_SIZE = 64


def default_max_size(device: torch.device | str) -> int:
    """The size cap for a device when none is configured (see DEFAULT_MAX_SIZE; other devices: the CPU's)."""
    return DEFAULT_MAX_SIZE.get(torch.device(device).type, DEFAULT_MAX_SIZE["cpu"])


def default_overlap(tile: int) -> int:
    """Tile overlap used when none is given: 128 px, or a quarter of small tiles (multiple of 4)."""
    return min(MAX_DEFAULT_OVERLAP, tile // 4 // 4 * 4)


@dataclass(frozen=True)
class StylizeOptions:
    """How to stylize one image."""

    strength: float = 1.0  # 0 = the content unchanged, 1 = fully stylized
    preserve_color: bool = False  # keep the content's colours (luminance-only transfer)
    max_size: int | None = None  # downscale so the long side is at most this (None: keep the size)
    # The network paints the image downscaled to this long side, then the painting is brought back to the
    # image's size with the photo's fine detail (upscale_painting): the strokes keep the size they have at
    # paint_size, so a large photo looks painted instead of finely textured. None: paint at full size.
    paint_size: int | None = None
    tile: int | None = None  # stylize in tiles of this many px (None: the whole image at once)
    tile_overlap: int | None = None  # px shared by neighbouring tiles (None: default_overlap(tile))
    # A conditional instance norm network's style: convex weights over its styles, in the order of its
    # metadata (style_mix builds them from names); None: its first style, or the only one.
    style: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 1.0 or math.isnan(self.strength):
            raise ValueError(f"strength must be between 0 and 1, got {self.strength}")
        if self.max_size is not None and self.max_size < 8:
            raise ValueError(f"max_size must be at least 8 px, got {self.max_size}")
        if self.paint_size is not None and self.paint_size < MIN_PAINT_SIZE:
            raise ValueError(f"paint_size must be at least {MIN_PAINT_SIZE} px (None: the image's size), "
                             f"got {self.paint_size}")
        if self.tile is not None:
            if self.tile < 32:
                raise ValueError(f"tile must be at least 32 px, got {self.tile}")
            if self.tile_overlap is not None and not 0 <= self.tile_overlap < self.tile // 2:
                raise ValueError(f"tile_overlap must be in [0, tile/2), got {self.tile_overlap} for tile {self.tile}")
        if self.style is not None:
            object.__setattr__(self, "style", tuple(float(w) for w in self.style))
            _check_mix(dict(enumerate(self.style)))

    def capped(self, cap: int | None) -> "StylizeOptions":
        """These options with ``max_size`` at most ``cap`` (a service's limit: a caller can only ask for less)."""
        if cap is None or (self.max_size is not None and self.max_size <= cap):
            return self
        return dataclasses.replace(self, max_size=cap)

    def painted_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) the network paints an image of this size at: bounded to ``max_size``, then to
        ``paint_size`` (what a server warms up for the photos it expects)."""
        return fitted_size(*fitted_size(height, width, self.max_size), self.paint_size)

    def tiles(self, height: int, width: int) -> bool:
        """Whether an image of this size (after ``max_size`` and ``paint_size``) is stylized in tiles: only
        past the tile size."""
        h, w = fitted_size(height, width, self.paint_size)
        return self.tile is not None and max(h, w) > self.tile


def check_paint_size(value: int) -> int:
    """A paint size as the CLI and the API take it: 0 (the image's size) or at least MIN_PAINT_SIZE px."""
    if value != 0 and value < MIN_PAINT_SIZE:
        raise ValueError(f"give 0 (the image's size) or at least {MIN_PAINT_SIZE} px, got {value}")
    return value


def paint_size_option(value: int | None) -> int | None:
    """A paint size as the CLI and the API take it (0: paint at the image's size; None: DEFAULT_PAINT_SIZE)
    as :class:`StylizeOptions` takes it (None: the image's size)."""
    if value is None:
        return DEFAULT_PAINT_SIZE
    return None if check_paint_size(value) == 0 else value


def style_names(info: ModelInfo) -> list[str]:
    """The styles a model holds, in the order of its (gamma, beta) pairs: several for a conditional
    instance norm network (its metadata's ``styles``), else its one style."""
    return list(info.extra.get("styles") or [info.style_name])


def _check_mix(mix: dict) -> None:
    if not mix:
        raise ValueError("a style mix needs at least one style")
    negative = sorted(str(k) for k, w in mix.items() if not w >= 0)
    if negative:
        raise ValueError(f"style mix weights must be >= 0 ({', '.join(negative)} are not)")
    total = sum(mix.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"style mix weights must sum to 1 (convex, as in Dumoulin et al. 2017), got {total:g}")


def parse_mix(text: str, source: str = "--mix") -> dict[str, float]:
    """``"starry=0.6,wave=0.4"`` -> {"starry": 0.6, "wave": 0.4}; malformed text is an error that says how
    (naming ``source``, where the text came from: the CLI's option, the server's form field)."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = part.rpartition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            mix[name.strip()] = float(weight)
        except ValueError:
            raise ValueError(f"{source}: expected NAME=WEIGHT[,NAME=WEIGHT...], got {part!r}") from None
    return mix


def style_mix(info: ModelInfo, style: str | None = None, mix: dict[str, float] | None = None
              ) -> tuple[float, ...] | None:
    """The ``StylizeOptions.style`` weights for a style name or a mix of names; None for a model's only
    style. Unknown names, negative weights and weights that do not sum to 1 are errors."""
    if style is not None and mix:
        raise ValueError("give a style or a mix, not both")
    if style is None and not mix:
        return None
    mix = {style: 1.0} if style is not None else dict(mix or {})
    names = style_names(info)
    unknown = sorted(set(mix) - set(names))
    if unknown:
        raise ValueError(f"unknown style(s) {', '.join(unknown)}; this model has: {', '.join(names)}")
    _check_mix(mix)
    if len(names) == 1:
        return None
    return tuple(float(mix.get(name, 0.0)) for name in names)


def style_mixes(infos: dict[str, ModelInfo], style: str | None = None, mix: dict[str, float] | None = None
                ) -> dict[str, tuple[float, ...] | None]:
    """Each model's ``StylizeOptions.style`` for one style name or mix given to several models at once (a
    comparison, or the CLI's several ``--model``): it applies to the multi-style models among them, each of
    which must have every named style, and the single-style models beside them run their one style (their
    style names are the style images', ``vangogh_starry_night_1889``, not the multi-style model's,
    ``starry``, and a comparison puts a blend next to ordinary models). When none is multi-style, each is
    checked as :func:`style_mix` checks one model, so a style or mix is never silently dropped. A
    ValueError names the model when there are several."""
    weights: dict[str, tuple[float, ...] | None] = {name: None for name in infos}
    if style is None and not mix:
        return weights
    targets = [name for name, info in infos.items() if len(style_names(info)) > 1] or list(infos)
    for name in targets:
        try:
            weights[name] = style_mix(infos[name], style, mix)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}" if len(infos) > 1 else str(exc)) from None
    return weights


def fit_image(image: LoadedImage, max_size: int | None) -> LoadedImage:
    """``image`` downscaled so its long side is at most ``max_size``, its alpha with it; itself when it fits."""
    if max_size is None or max(image.rgb.shape[-2:]) <= max_size:
        return image
    rgb = resize_max(image.rgb, max_size)
    return LoadedImage(rgb, None if image.alpha is None else _resize_alpha(image.alpha, rgb.shape[-2:]))


def _resize_alpha(alpha: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return torch.nn.functional.interpolate(alpha, size=size, mode="bilinear", antialias=True,
                                           align_corners=False).clamp(0, 1)


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


def _tile_spans(length: int, tile: int, overlap: int, align: int) -> list[tuple[int, int]]:
    """(start, end) of tiles covering ``length``; starts are multiples of ``align``.

    Aligned starts keep every tile on the same stride-2 sampling grid as the whole image, so a tile's
    interior equals the whole-image output exactly (unaligned tiles shift the grid and change it).
    """
    if length <= tile:
        return [(0, length)]
    stride = max(align, (tile - overlap) // align * align)
    last = (length - tile) // align * align
    starts = list(range(0, last, stride)) + [last]
    return [(a, a + tile) if a != last else (a, length) for a in starts]


def _axis_weights(spans: list[tuple[int, int]], fade: int) -> list[torch.Tensor]:
    """Per-tile blend weights along one axis; they sum to 1 at every position.

    Each shared edge is cut in the middle of the overlap, with a short linear cross-fade of ``fade``
    px: pixels near a tile's inner edge (where its padding differs from the whole image) get no weight.
    """
    weights = []
    for k, (a, b) in enumerate(spans):
        pos = torch.arange(a, b, dtype=torch.float32) + 0.5
        w = torch.ones(b - a)
        if k > 0:
            cut = (a + spans[k - 1][1]) / 2  # middle of the overlap with the previous tile
            w = torch.minimum(w, ((pos - cut) / fade + 0.5).clamp(0, 1))
        if k < len(spans) - 1:
            cut = (spans[k + 1][0] + b) / 2
            w = torch.minimum(w, ((cut - pos) / fade + 0.5).clamp(0, 1))
        weights.append(w)
    return weights


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) BT.601 luma, the Y of :func:`rgb_to_ycbcr`."""
    return torch.einsum("j,bjhw->bhw", _RGB_TO_YCC[0].to(rgb), rgb).unsqueeze(1)


def upscale_painting(styled: torch.Tensor, small: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The network's painting ``styled`` of ``small`` (``content`` downscaled) brought to ``content``'s size.

    Upsampled alone (bicubic) the painting is blurred: edges and lettering of the photo go soft. So the
    photo's luminance detail that the downscale removed (its luma minus the upsampled luma of ``small``)
    is added back, equally to R, G and B: the strokes keep the size they were painted at, the photo's
    edges are as sharp as at full size. This is the detail layer of the guided upsampling family
    (Kopf et al. 2007, He et al. 2013) with a gain of 1: the guided filter's fitted gain follows the
    strokes, which do not correlate with the photo, and drops the detail (docs/quality.md, "Stroke size").
    Where ``small`` is ``content`` the detail is zero and the result is ``styled`` itself. Not clamped:
    :func:`finish` does.
    """
    size = content.shape[-2:]
    if styled.shape[-2:] == size:
        return styled
    up = dict(size=size, mode="bicubic", align_corners=False)
    detail = luma(content) - torch.nn.functional.interpolate(luma(small), **up)
    return torch.nn.functional.interpolate(styled, **up).add_(detail)


def finish(styled: torch.Tensor, content: torch.Tensor, options: StylizeOptions) -> torch.Tensor:
    """Colour preservation and strength blending, applied after the network."""
    if options.preserve_color:
        styled = preserve_color(styled, content)
    if options.strength < 1.0:
        styled = options.strength * styled + (1.0 - options.strength) * content
    return styled.clamp(0, 1)


class Stylizer:
    """A loaded network on a device, ready to stylize (1, 3, H, W) images in [0, 1].

    ``fast=True`` (the default) runs an exactly rewritten copy of the network in reduced precision and
    channels_last (see fast.py); ``fast=False`` runs the plain network (in fp32 unless ``precision``
    asks for autocast). ``compile`` adds torch.compile on top of the fast path.
    """

    def __init__(self, model: TransformerNet, info: ModelInfo | None = None, device: torch.device | str = "cpu",
                 precision: str = "auto", fast: bool = True, compile: bool = False) -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device).requires_grad_(False)
        self.info = info
        self.fast = fast
        if fast:
            self.precision = resolve_precision(precision, self.device)
            self.net = optimize(self.model, self.device, dtype_of(self.precision, self.device))
            self.runner = compiled(self.net, self.device) if compile else self.net
        else:
            self.precision = "fp32" if precision == "auto" else resolve_precision(precision, self.device)
            self.net = self.model
            self.runner = self.model

    @classmethod
    def from_checkpoint(cls, path: Path | str, device: str = "auto", precision: str = "auto",
                        fast: bool = True, compile: bool = False) -> "Stylizer":
        dev = resolve_device(device)
        model, info = load_model(path, dev)
        return cls(model, info, dev, precision, fast, compile)

    def _kernels(self):
        # The fast path casts its own weights and autotunes its convs on CUDA; only the plain network
        # uses autocast, and it keeps cuDNN's default algorithm choice.
        return conv_autotune(self.device) if self.fast else autocast(self.device, self.precision)

    def _style(self, style: tuple[float, ...] | None) -> torch.Tensor | None:
        if style is None:
            return None
        styles = self.model.config.num_styles
        if self.model.config.norm != "conditional_instance" or len(style) != styles:
            raise ValueError(f"a mix of {len(style)} style(s) does not fit this model "
                             f"({self.model.config.norm} norm, {styles} style(s))")
        return torch.tensor(style, device=self.device)

    @torch.no_grad()
    def run(self, images: torch.Tensor, style: tuple[float, ...] | None = None) -> torch.Tensor:
        """The network on a batch: (B, 3, H, W) -> (B, 3, H, W) in [0, 1], on the input's device."""
        x = images.to(self.device)
        mix = self._style(style)
        with self._kernels():
            out = self.runner(x) if mix is None else self.runner(x, mix)
        if self._overflowed(out):
            out = self.model(x.float(), mix)
        return out.float().clamp(0, 1).to(images.device)

    def _overflowed(self, out: torch.Tensor) -> bool:
        """fp16 (the GPU default) tops out at 65504; a network whose activations go past it gives inf/NaN,
        i.e. a black or blank image. The callers then recompute the image in fp32."""
        if self.precision != "fp16" or torch.isfinite(out).all():
            return False
        log.warning("fp16 overflowed in %s; this image is recomputed in fp32 (use --precision bf16 or fp32 "
                    "for this model to skip the retry)", self.info.style_name if self.info else "the model")
        return True

    @torch.no_grad()
    def run_tiled(self, image: torch.Tensor, tile: int, overlap: int | None = None,
                  style: tuple[float, ...] | None = None) -> torch.Tensor:
        """Stylize one image tile by tile, with shared norm statistics and aligned, overlapping tiles.

        Per-image norms (instance/group/layer) would normalize each tile with its own statistics and
        show seams; :func:`norms.frozen_statistics` gives every tile the statistics of the whole image
        (downscaled to TILE_REFERENCE_SIZE when larger). With those statistics and an overlap of at
        least twice the network's receptive radius (~54 px for the default network), the result equals
        the whole-image result; smaller overlaps are hidden by the cross-fade. Memory is bounded by the
        tile size: only the input, the output and the weights are full-size. The output is assembled on the
        CPU and returned on the input's device, as :meth:`run` returns it.
        """
        _, _, h, w = image.shape
        if overlap is None:
            overlap = default_overlap(tile)
        align = TransformerNet.STRIDE
        rows, cols = _tile_spans(h, tile, overlap, align), _tile_spans(w, tile, overlap, align)
        row_w, col_w = _axis_weights(rows, TILE_FADE), _axis_weights(cols, TILE_FADE)
        reference = resize_max(image, TILE_REFERENCE_SIZE).to(self.device)
        out = torch.zeros(1, 3, h, w)
        # Hooks go on the uncompiled network (compiled graphs would not see them).
        mix = self._style(style)
        with self._kernels(), frozen_statistics(self.net, reference, style=mix):
            for (top, bottom), wr in zip(rows, row_w):
                for (left, right), wc in zip(cols, col_w):
                    patch = image[..., top:bottom, left:right].to(self.device)
                    styled = self.net(patch, mix)
                    if self._overflowed(styled):
                        plain = Stylizer(self.model, self.info, self.device, precision="fp32", fast=False)
                        return plain.run_tiled(image, tile, overlap, style)
                    styled = styled.float().clamp(0, 1).cpu()
                    out[..., top:bottom, left:right] += styled * (wr[:, None] * wc[None, :])
        return out.to(device=image.device, dtype=image.dtype)

    def stylize(self, image: torch.Tensor, options: StylizeOptions = StylizeOptions()) -> torch.Tensor:
        """One image (1, 3, H, W) in [0, 1], or same-size ones (B, 3, H, W) such as a video's frames, ->
        stylized (B, 3, H', W'), H', W' bounded by max_size (tiled only when there is one image)."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"expected RGB images of shape (B, 3, H, W), got {tuple(image.shape)}")
        content = resize_max(image, options.max_size) if options.max_size else image
        if options.strength == 0.0:
            return content.clone()
        return self.stylize_batch(content, options)

    def stylize_batch(self, images: torch.Tensor, options: StylizeOptions = StylizeOptions()) -> torch.Tensor:
        """Same-size images (B, 3, H, W) in one pass, painted at ``options.paint_size``; not resized to
        ``max_size`` (the caller bounded them), and tiled only when there is one image.

        The network is in eval mode, so every norm (batch norm included, with its running statistics)
        treats each image on its own: an output does not depend on the rest of the batch.
        """
        h, w = images.shape[-2:]
        small = resize_max(images, options.paint_size) if options.paint_size else images  # itself when it fits
        if options.tiles(h, w):
            if images.shape[0] != 1:
                raise ValueError(f"a batch of {images.shape[0]} images cannot be tiled; stylize them one by one")
            styled = self.run_tiled(small, options.tile, options.tile_overlap, options.style)
        else:
            styled = self.run(small, options.style)
        return finish(upscale_painting(styled, small, images), images, options)

    def stylize_image(self, image: LoadedImage, options: StylizeOptions = StylizeOptions()) -> LoadedImage:
        """Stylize a decoded file, carrying its alpha channel over (resized with the image)."""
        image = fit_image(image, options.max_size)
        return LoadedImage(self.stylize(image.rgb, options), image.alpha)
