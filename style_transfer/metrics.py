"""Image metrics and paired statistics for comparing models. Pure functions on (B, 3, H, W) in [0, 1].

* :func:`ssim` -- structural similarity (Wang et al. 2004) with their constants: Gaussian window 11,
  sigma 1.5, K1 = 0.01, K2 = 0.03, and a *fixed* data range of 1.0 (not estimated from the images, which
  would make scores of different outputs incomparable). Computed on luminance only (BT.601 Y): the
  question is whether the output keeps the photo's structure, and a style is allowed to change colours.
* :func:`colour_distance` -- how far the output's colours are from the style image's: the 2-Wasserstein
  distance between Gaussians fitted to the two RGB pixel distributions (the Fréchet distance of FID, on
  pixels instead of network features). It is in RGB units: shifting every pixel by ``c`` moves it by
  exactly ``|c|``, and a contrast change shows up through the covariances. A Gaussian fit ignores
  multi-modal palettes, but it is exact, cheap, deterministic, and compares whole distributions (not
  pixel by pixel), so outputs of any size compare to a style image of any size.
* :func:`dark_spots` -- the share of the image the model paints near-black where the photo is bright:
  the dark "droplets" of per-image normalization (Karras et al. 2020, StyleGAN2 §2) and the black holes
  of a batch-norm model, which whole-image losses and SSIM average away.
* :func:`diff_stats` -- max / mean absolute difference and PSNR of two outputs of the same input.
* :func:`sign_test`, :func:`wilcoxon_signed_rank` -- exact two-sided p-values for paired differences
  (e.g. per image, arm A minus arm B), without scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights (as in JPEG and stylize.rgb_to_ycbcr).
_LUMA = (0.299, 0.587, 0.114)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
# PSNR of identical images is infinite; report this cap instead (JSON has no infinity).
PSNR_CAP = 100.0


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) BT.601 luma Y."""
    w = torch.tensor(_LUMA, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb * w).sum(1, keepdim=True)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g).to(dtype=dtype, device=device)[None, None]


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = SSIM_WINDOW,
         sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Mean SSIM per image of (B, C, H, W) images, per channel then averaged; returns (B,).

    The local statistics use a 'valid' Gaussian filter (no padding), as Wang et al.'s reference code
    does, so border pixels do not enter through made-up padding. Images smaller than the window use a
    window as large as the image. Computed in float64.
    """
    if x.shape != y.shape:
        raise ValueError(f"ssim needs images of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.double(), y.double()
    b, c, h, w = x.shape
    size = min(window, h, w)
    kernel = _gaussian_window(size, sigma, x.dtype, x.device).expand(c, 1, size, size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3))


def luminance_ssim(output: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """SSIM of the output's luminance to the content's (data range 1.0); returns (B,)."""
    return ssim(luminance(output.clamp(0, 1)), luminance(content.clamp(0, 1)), data_range=1.0)


def _pixel_moments(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (3,) and covariance (3, 3) of the RGB pixels of a (1, 3, H, W) image, in float64."""
    pixels = image.detach().double().reshape(image.shape[-3], -1)  # (3, N)
    mean = pixels.mean(1)
    centred = pixels - mean[:, None]
    return mean, centred @ centred.T / pixels.shape[1]


def _psd_sqrt(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def colour_distance(image: torch.Tensor, reference: torch.Tensor) -> float:
    """2-Wasserstein distance between Gaussian fits of two images' RGB pixel distributions (RGB units).

    W2² = |μ1 − μ2|² + tr(Σ1 + Σ2 − 2 (Σ2^½ Σ1 Σ2^½)^½)  (Dowson & Landau 1982). Images: (1, 3, H, W).
    """
    m1, s1 = _pixel_moments(image)
    m2, s2 = _pixel_moments(reference)
    root2 = _psd_sqrt(s2)
    cross = _psd_sqrt(root2 @ s1 @ root2)
    d2 = (m1 - m2).pow(2).sum() + torch.trace(s1 + s2 - 2 * cross)
    return float(d2.clamp(min=0).sqrt())


# Thresholds of dark_spots, on BT.601 luma in [0, 1]. Chosen on the shipped Starry Night models, 12
# held-out BSDS500 test photos at 256 px: the clipped GPU instance arm whose droplets are visible
# scored 0.08-0.45% on every photo (mean 0.25%), the flagship and the group/layer arms, with none
# visible, 0.00-0.06% on most photos; the batch arm 0.00-0.01% except two photos with a black hole
# (6.2%, 3.7%). Near-black is darker than any of the paintings' dark blues; a photo pixel at 0.25 is
# lit, not shadow, so a style that darkens shadows is not counted.
DARK_SPOT_OUTPUT = 0.05
DARK_SPOT_CONTENT = 0.25


def dark_spots(output: torch.Tensor, content: torch.Tensor) -> float:
    """Percent of pixels with output luma < DARK_SPOT_OUTPUT where the content's luma > DARK_SPOT_CONTENT.

    Lower is better; both images (1, 3, H, W) in [0, 1] and the same size.
    """
    if output.shape[-2:] != content.shape[-2:]:
        raise ValueError(f"dark_spots: output {tuple(output.shape)} and content {tuple(content.shape)} differ in size")
    spots = (luminance(output) < DARK_SPOT_OUTPUT) & (luminance(content) > DARK_SPOT_CONTENT)
    return 100.0 * float(spots.float().mean())


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, capped at PSNR_CAP (identical images)."""
    mse = float((a.double() - b.double()).pow(2).mean())
    if mse <= 0:
        return PSNR_CAP
    return min(PSNR_CAP, 10 * math.log10(data_range**2 / mse))


def diff_stats(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """How different two outputs of the same input are: max and mean absolute difference, PSNR."""
    d = (a.double() - b.double()).abs()
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "psnr": psnr(a, b)}


# ----------------------------------------------------------------------------- paired statistics


def sign_test(differences: Sequence[float]) -> float:
    """Exact two-sided sign test p-value: are positive and negative differences equally likely?

    Zero differences carry no sign and are dropped (the usual convention). No data gives p = 1.
    """
    nonzero = [d for d in differences if d != 0]
    n = len(nonzero)
    if n == 0:
        return 1.0
    k = min(sum(d > 0 for d in nonzero), sum(d < 0 for d in nonzero))
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def _average_ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1  # ties share the average of their ranks
        i = j + 1
    return ranks


def wilcoxon_signed_rank(differences: Sequence[float]) -> float:
    """Exact two-sided Wilcoxon signed-rank p-value for paired differences (H0: symmetric about 0).

    Zero differences are dropped (Wilcoxon's method); tied magnitudes get average ranks, and the exact
    null distribution of the positive rank sum is built for those ranks (doubled to integers), so the
    p-value is exact for any n, ties included. No data gives p = 1.
    """
    nonzero = [d for d in differences if d != 0]
    n = len(nonzero)
    if n == 0:
        return 1.0
    ranks2 = [round(2 * r) for r in _average_ranks([abs(d) for d in nonzero])]  # integers
    observed = sum(r for r, d in zip(ranks2, nonzero) if d > 0)
    total = sum(ranks2)
    # dist[s] = P(sum of doubled ranks with a + sign == s) when every sign is a fair coin.
    dist = [0.0] * (total + 1)
    dist[0] = 1.0
    for r in ranks2:
        new = [0.5 * p for p in dist]
        for s in range(total - r + 1):
            new[s + r] += 0.5 * dist[s]
        dist = new
    lower = sum(dist[: observed + 1])
    upper = sum(dist[observed:])
    return min(1.0, 2 * min(lower, upper))


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for fewer than two values)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
