"""Image metrics and paired statistics for comparing models. Pure functions on (B, 3, H, W) in [0, 1].

* :func:`ssim` -- structural similarity (Wang et al. 2004) with their settings: Gaussian window 11,
  sigma 1.5, K1 = 0.01, K2 = 0.03, population (not sample) covariances, and a *fixed* data range of 1.0
  (not estimated from the images, which would make scores of different outputs incomparable), computed
  by scikit-image. :func:`luminance_ssim` uses luminance only (BT.601 Y): the question is whether the
  output keeps the photo's structure, and a style is allowed to change colours.
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
* :func:`sign_test`, :func:`wilcoxon_signed_rank` -- two-sided p-values for paired differences (e.g. per
  image, arm A minus arm B), by scipy.stats; exact for the sample sizes of a study.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
# SSIM from scikit-image rather than torchmetrics: it needs only scipy, a dependency already (the paired
# tests), where torchmetrics also brings lightning-utilities; its docs spell out Wang et al.'s settings.
# It imports in ~0.2 s (scipy.ndimage), cheap enough for the server, which loads this module.
from skimage.metrics import structural_similarity

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


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = SSIM_WINDOW,
         sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Mean SSIM per image of (B, C, H, W) images, per channel then averaged; returns (B,) float64.

    scikit-image computes it (``gaussian_weights``, ``use_sample_covariance=False``: Wang et al.'s
    settings, as its docs prescribe) and averages the SSIM map without a border of half a window, so the
    mean covers exactly the pixels whose window lies inside the image -- the 'valid' filter of Wang et
    al.'s reference code. Images smaller than the window use the largest odd window that fits (the
    score of such a thumbnail is rough, but the server must still answer for one).
    """
    if x.shape != y.shape:
        raise ValueError(f"ssim needs images of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() != 4:
        raise ValueError(f"ssim needs (B, C, H, W) images, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    size = min(window, h, w)
    size -= 1 - size % 2  # scikit-image's window is odd (a centre pixel)
    a = x.detach().to("cpu", torch.float64).numpy()
    b = y.detach().to("cpu", torch.float64).numpy()
    # With gaussian_weights, scikit-image sizes the filter from sigma (3.5 sigma each side: 11 taps at
    # 1.5, Wang et al.'s window); win_size only sets the border that the mean leaves out.
    scores = [structural_similarity(a[i], b[i], data_range=data_range, channel_axis=0, gaussian_weights=True,
                                    sigma=sigma, use_sample_covariance=False, K1=SSIM_K1, K2=SSIM_K2,
                                    win_size=size)
              for i in range(x.shape[0])]
    return torch.tensor(scores, dtype=torch.float64, device=x.device)


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
    from scipy.stats import binomtest  # scipy.stats takes ~0.7 s to import; the server never needs it

    nonzero = [d for d in differences if d != 0]
    if not nonzero:
        return 1.0
    return float(binomtest(sum(d > 0 for d in nonzero), len(nonzero), 0.5).pvalue)


def wilcoxon_signed_rank(differences: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value for paired differences (H0: symmetric about 0).

    Zero differences are dropped (Wilcoxon's method), tied magnitudes get average ranks. The p-value is
    exact for up to 50 non-zero differences without ties and up to 13 with ties (scipy's ``method="auto"``:
    the exact null distribution, or every sign assignment); above that it is the normal approximation with
    tie and continuity corrections. No data gives p = 1.
    """
    from scipy.stats import wilcoxon  # ~0.7 s to import, see sign_test

    # Zeros are dropped here, not only by zero_method="wilcox": scipy's "auto" counts them when it picks
    # exact or approximate (13 tied differences plus 5 zeros gave 0.0015, not the exact 2/2**13).
    # "auto" needs scipy >= 1.15 (scipy#21567), which enumerates every sign assignment for small samples
    # with ties or zeros (~2 s at 13 on a 2-core CPU) instead of approximating. Dark spots tie (pixel
    # counts); beyond 13 the normal approximation was within 0.02 of the exact p-value (mean 0.0016) on
    # dark-spot-like samples of 14-80, with the continuity correction, which halved that error.
    nonzero = [d for d in differences if d != 0]
    if not nonzero:
        return 1.0
    return float(wilcoxon(nonzero, zero_method="wilcox", correction=True, method="auto").pvalue)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for fewer than two values)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
