"""Perceptual losses (Johnson et al. 2016): content (feature MSE), style (Gram MSE), total variation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .balance import BASE_WEIGHT, check_weight, is_auto
from .vgg import VGG19Features


def _as_rows(features: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(B, C, H, W) -> a free view (B, C, H*W), or (B, H*W, C) for channels_last (then True)."""
    b, c, h, w = features.shape
    if c > 1 and features.is_contiguous(memory_format=torch.channels_last) and not features.is_contiguous():
        return features.permute(0, 2, 3, 1).reshape(b, h * w, c), True
    return features.reshape(b, c, h * w), False


class _Gram(torch.autograd.Function):
    """Unnormalized batched Gram matrix (B, C, C) of (B, C, H, W) features, fp32 (or fp64) out.

    Autograd's own backward of ``bmm(F, F^T)`` with an fp32 upcast costs two transposed bmms plus
    casts, which showed in the bf16 training step's profile on the 4 style layers (docs/benchmarks.md,
    "One training step"; issue 5). The gradient of a Gram is one product, dF = (dG + dG^T) F; it is
    run in the features' own dtype (bf16 under autocast, accumulating in fp32), which is the precision
    dF gets cast to anyway.
    The forward stays fp32 (sums over H*W need it; products of bf16 values are exact in fp32).
    Channels-last features (the loss network runs channels_last) are used in place, without a copy.
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(features)
        rows, last = _as_rows(features)
        with torch.autocast(device_type=features.device.type, enabled=False):
            rows = rows.to(torch.promote_types(features.dtype, torch.float32))  # fp64 stays fp64
            return torch.bmm(rows.transpose(1, 2), rows) if last else torch.bmm(rows, rows.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (features,) = ctx.saved_tensors
        rows, last = _as_rows(features)
        with torch.autocast(device_type=features.device.type, enabled=False):
            sym = (grad + grad.transpose(1, 2)).to(features.dtype)
            if not last:
                return torch.bmm(sym, rows).view_as(features)
            b, c, h, w = features.shape
            # (B, H*W, C) rows times the symmetric dG: back to (B, C, H, W) with channels_last strides.
            return torch.bmm(rows, sym).view(b, h, w, c).permute(0, 3, 1, 2)


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C) Gram matrix normalized by C*H*W, always computed in fp32.

    fp32 because the sums over H*W overflow/lose precision in half precision; the C*H*W
    normalization makes the loss independent of image size (Johnson et al. 2016, eq. 3).
    """
    b, c, h, w = features.shape
    return _Gram.apply(features) / (c * h * w)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels (anisotropic TV), per batch."""
    dh = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    dw = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    return dh + dw


@dataclass(frozen=True)
class LossConfig:
    """Which VGG19 layers and how much each term weighs; stored in every checkpoint."""

    # relu2_2 for content keeps structure while letting textures change (Johnson et al. 2016).
    content_layers: tuple[str, ...] = ("relu2_2",)
    # Low to high layers capture style at several scales (Gatys et al. 2016; Johnson et al. 2016).
    style_layers: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
    # The features are raw Caffe activations (0..255 input), so feature MSEs are ~1e5-1e6; the 1e-5
    # scale brings the logged terms near 1. Style at 2x content: measured on Starry Night (see
    # weights/zoo.toml), 20x made feed-forward training trade the whole photo for texture, while
    # per-image optimization at 1-2x was already fully stylized with the subject kept. Johnson et al.
    # used 5x on the same Caffe-scale features for 40k steps. Tune per style by looking at the outputs,
    # or let ``auto`` (balance.py, the train command's default) steer it by the photo kept.
    content_weight: float = 1e-5
    style_weight: float | str = BASE_WEIGHT
    # TV is a mean absolute pixel difference in [0, 1] (~0.05 for a photo): a light smoothness prior.
    tv_weight: float = 1.0
    style_size: int = 512  # long side of the style image; sets the scale of the strokes

    def __post_init__(self) -> None:
        object.__setattr__(self, "content_layers", tuple(self.content_layers))
        object.__setattr__(self, "style_layers", tuple(self.style_layers))
        if not self.content_layers or not self.style_layers:
            raise ValueError("the loss needs at least one content layer and one style layer")
        check_weight(self.style_weight)
        for name in ("content_weight", "tv_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.style_size < 1:
            raise ValueError(f"style_size must be >= 1, got {self.style_size}")


class PerceptualLoss(nn.Module):
    """Loss of a batch of outputs against their content images and one style image.

    The style Grams are computed once at construction; content targets are computed without
    gradient. Returns a dict of weighted terms plus ``total``.
    """

    def __init__(self, style_image: torch.Tensor | Sequence[torch.Tensor], config: LossConfig = LossConfig()) -> None:
        """``style_image``: one (1, 3, H, W) painting, or several (a multi-style network's, in the order
        of its styles; sizes may differ)."""
        super().__init__()
        self.config = config
        styles = [style_image] if isinstance(style_image, torch.Tensor) else list(style_image)
        if not styles:
            raise ValueError("the loss needs at least one style image")
        self.num_styles = len(styles)
        # Per painting: the style weight, or under ``auto`` where its controller has it (balance.py; the
        # trainer moves it, a compared model's checkpoint records where it ended).
        self.style_weights = [BASE_WEIGHT if is_auto(config.style_weight) else float(config.style_weight)] \
            * self.num_styles
        self.vgg = VGG19Features(list(dict.fromkeys(config.content_layers + config.style_layers)))
        self.vgg.to(styles[0].device)
        with torch.no_grad():
            feats = [self.vgg(s, config.style_layers) for s in styles]
        for i, name in enumerate(config.style_layers):
            # (N, C, C): one Gram per style.
            self.register_buffer(f"style_gram_{i}", torch.cat([gram_matrix(f[name]) for f in feats]))

    def style_grams(self, style: int = 0) -> list[torch.Tensor]:
        """One style's Gram matrices, (1, C, C) per style layer."""
        if not 0 <= style < self.num_styles:
            raise IndexError(f"style {style} of {self.num_styles}")
        return [getattr(self, f"style_gram_{i}")[style : style + 1] for i in range(len(self.config.style_layers))]

    def style_distance(self, images: torch.Tensor, style: int = 0) -> torch.Tensor:
        """Per image, the unweighted style term: the sum over style layers of the mean squared difference
        between its Gram matrices and the style image's (``style``: which one); (B,). What training's
        style term averages."""
        feats = self.vgg(images, self.config.style_layers)
        return sum((gram_matrix(feats[n]) - g).pow(2).mean((1, 2))
                   for n, g in zip(self.config.style_layers, self.style_grams(style)))

    def texture_distance(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The unweighted Gram distance of ``output`` to ``target`` (another image batch, e.g. a teacher's
        output on the same crops: its gradient flows to ``output`` only), summed over the style layers as
        the style term is; and ``output``'s VGG features, for :meth:`forward` to reuse."""
        cfg = self.config
        with torch.no_grad():
            theirs = self.vgg(target, cfg.style_layers)
        feats = self.vgg(output)
        distance = sum(F.mse_loss(gram_matrix(feats[n]), gram_matrix(theirs[n])) for n in cfg.style_layers)
        return distance, feats

    def forward(self, output: torch.Tensor, content: torch.Tensor, style: int = 0,
                feats: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The terms of ``output`` against its ``content`` images and style number ``style``. ``feats``:
        ``output``'s VGG features when already computed (texture_distance)."""
        cfg = self.config
        with torch.no_grad():
            # Only up to the content layers: for relu2_2 most of the VGG work on the targets is
            # skipped (docs/benchmarks.md, "One training step").
            target = self.vgg(content, cfg.content_layers)
        if feats is None:
            feats = self.vgg(output)
        content_loss = sum(F.mse_loss(feats[n].float(), target[n].float()) for n in cfg.content_layers)
        style_loss = sum(
            F.mse_loss(gram_matrix(feats[n]), g.expand(output.shape[0], -1, -1))
            for n, g in zip(cfg.style_layers, self.style_grams(style))
        )
        tv = total_variation(output.float())
        terms = {
            "content": cfg.content_weight * content_loss,
            "style": self.style_weights[style] * style_loss,
            "tv": cfg.tv_weight * tv,
        }
        terms["total"] = terms["content"] + terms["style"] + terms["tv"]
        return terms
