"""Metrics and paired statistics against answers computed independently of the libraries behind them:
these pin how scikit-image's SSIM and scipy's tests are configured."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from style_transfer.metrics import (DARK_SPOT_CONTENT, DARK_SPOT_OUTPUT, PSNR_CAP, colour_distance, dark_spots,
                                    diff_stats, luminance, luminance_ssim, psnr, sign_test, ssim, wilcoxon_signed_rank)


def smooth_image(h: int = 48, w: int = 64, seed: int = 0) -> torch.Tensor:
    """A photo-like test image: smooth colour gradients plus texture, within [0.2, 0.8] (no clipping
    when shifted by up to 0.2)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.nn.functional.interpolate(torch.rand(1, 3, h // 4, w // 4, generator=gen), size=(h, w),
                                            mode="bilinear", align_corners=False)
    ramp = torch.linspace(0, 1, w).view(1, 1, 1, w).expand(1, 3, h, w)
    return 0.2 + 0.6 * (0.5 * noise + 0.5 * ramp)


# ----------------------------------------------------------------------------- SSIM


def test_ssim_known_answers():
    x = smooth_image()
    y = luminance(x)
    assert ssim(y, y).item() == pytest.approx(1.0, abs=1e-12)
    assert luminance_ssim(x, x).item() == pytest.approx(1.0, abs=1e-12)
    # Constant images a and b: only the luminance term is left, (2ab + C1) / (a² + b² + C1).
    a, b = torch.full((1, 1, 20, 20), 0.3), torch.full((1, 1, 20, 20), 0.6)
    c1 = (0.01 * 1.0) ** 2
    assert ssim(a, b).item() == pytest.approx((2 * 0.3 * 0.6 + c1) / (0.3**2 + 0.6**2 + c1), rel=1e-9)
    # Data range is fixed at 1.0: the score does not rescale with the images' own range.
    noisy = (y + 0.05 * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    worse = (y + 0.15 * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert 1.0 > ssim(noisy, y).item() > ssim(worse, y).item() > 0.0
    assert ssim(y, noisy).item() == pytest.approx(ssim(noisy, y).item(), abs=1e-12)  # symmetric
    # Luminance SSIM ignores a change of colour that keeps the luminance.
    shifted = x + torch.tensor([0.1, -0.1 * 0.299 / 0.587, 0.0]).view(1, 3, 1, 1)
    assert luminance_ssim(shifted, x).item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        ssim(y, y[..., :10])


def _wang_window_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float) -> float:
    """SSIM of one 11x11 window, straight from Wang et al. 2004 (eq. 13-15): Gaussian weights of sigma 1.5
    summing to 1, weighted means, weighted population (co)variances, C1 = (0.01 L)², C2 = (0.03 L)²."""
    t = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(t**2) / (2 * 1.5**2))
    w = torch.outer(g, g) / torch.outer(g, g).sum()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum()
    cxy = (w * (x - mx) * (y - my)).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return float((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))


def test_ssim_is_wang_et_al_over_the_windows_inside_the_image():
    """An 11x13 image holds three whole 11x11 windows: the score is their mean, and no window reaches
    past the border (no padding enters). Pins the Gaussian window, population covariances, K1, K2."""
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(11, 13, generator=gen, dtype=torch.float64)
    y = (0.6 * x + 0.3 * torch.rand(11, 13, generator=gen, dtype=torch.float64)).clamp(0, 1)
    expected = sum(_wang_window_ssim(x[:, j:j + 11], y[:, j:j + 11], 1.0) for j in range(3)) / 3
    assert ssim(x[None, None], y[None, None]).item() == pytest.approx(expected, rel=1e-12)
    # The data range enters only through C1 and C2: 8-bit values with L = 255 score the same.
    assert ssim(255 * x[None, None], 255 * y[None, None], data_range=255.0).item() == pytest.approx(expected, rel=1e-12)
    assert ssim(x[None, None], y[None, None], data_range=255.0).item() != pytest.approx(expected, rel=1e-3)


def test_ssim_per_image_of_a_batch_and_mean_over_channels():
    x = torch.cat([smooth_image(seed=s) for s in range(2)])
    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    scores = ssim(x, y)
    assert scores.shape == (2,) and scores.dtype == torch.float64
    for i in range(2):
        per_channel = [ssim(x[i:i + 1, c:c + 1], y[i:i + 1, c:c + 1]).item() for c in range(3)]
        assert scores[i].item() == pytest.approx(sum(per_channel) / 3, rel=1e-12)


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (5, 40), (10, 10)])
def test_ssim_of_images_smaller_than_the_window(size):
    """An upload smaller than the 11-px window still gets a score (the server reports one for any photo)."""
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(4))
    assert luminance_ssim(x, x).item() == pytest.approx(1.0, abs=1e-12)
    assert -1.0 <= luminance_ssim(x, 1 - x).item() < 1.0


# ----------------------------------------------------------------------------- other image metrics


def test_colour_distance_known_answers():
    x = smooth_image()
    assert colour_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    # A uniform shift c moves the Gaussian fit by exactly |c| (covariances unchanged).
    c = torch.tensor([0.1, -0.05, 0.2])
    assert colour_distance(x + c.view(1, 3, 1, 1), x) == pytest.approx(float(c.norm()), rel=1e-6)
    # A contrast change by k about the mean: W2 = |1 - k| * sqrt(trace of the covariance).
    mean = x.mean(dim=(2, 3), keepdim=True)
    k = 0.5
    flat = x.double().reshape(3, -1)
    trace = float(((flat - flat.mean(1, keepdim=True)) ** 2).mean(1).sum())
    assert colour_distance(mean + k * (x - mean), x) == pytest.approx(abs(1 - k) * math.sqrt(trace), rel=1e-6)
    # Independent of the image sizes and of pixel positions; symmetric.
    assert colour_distance(x.flip(-1), x) == pytest.approx(0.0, abs=1e-6)
    big = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    assert colour_distance(big, x) == pytest.approx(0.0, abs=1e-6)
    y = smooth_image(seed=3)
    assert colour_distance(x, y) == pytest.approx(colour_distance(y, x), rel=1e-6)


def test_dark_spots_counts_near_black_output_only_where_the_photo_is_lit():
    photo = torch.full((1, 3, 10, 20), 0.8)
    photo[..., :, 10:] = 0.1  # right half: a dark part of the photo
    out = torch.full_like(photo, 0.5)
    assert dark_spots(out, photo) == 0.0
    out[..., 2:4, 2:7] = 0.0  # a 2x5 hole where the photo is lit: 10 of 200 pixels
    out[..., 5:9, 12:18] = 0.0  # black where the photo is dark too: a style may darken shadows
    assert dark_spots(out, photo) == pytest.approx(5.0)
    # The thresholds are on luma, strictly: a dark blue (luma above the cut) is not a spot.
    out[..., 2:4, 2:7] = torch.tensor([0.0, 0.0, (DARK_SPOT_OUTPUT + 0.01) / 0.114]).view(1, 3, 1, 1)
    assert dark_spots(out, photo) == 0.0
    assert dark_spots(torch.zeros_like(photo), torch.full_like(photo, DARK_SPOT_CONTENT)) == 0.0
    with pytest.raises(ValueError, match="size"):
        dark_spots(out, photo[..., :5])


def test_diff_stats_and_psnr():
    x = smooth_image()
    assert diff_stats(x, x) == {"max_abs": 0.0, "mean_abs": 0.0, "psnr": PSNR_CAP}
    y = x + 0.1
    stats = diff_stats(y, x)
    assert stats["max_abs"] == pytest.approx(0.1, rel=1e-5) and stats["mean_abs"] == pytest.approx(0.1, rel=1e-5)
    assert psnr(y, x) == pytest.approx(20.0, abs=1e-4)  # 10 log10(1 / 0.01)


# ----------------------------------------------------------------------------- paired statistics


def brute_force_p(differences, statistic):
    """Two-sided p by enumerating every sign assignment (the definition of both exact tests)."""
    nonzero = [d for d in differences if d != 0]
    observed = statistic(nonzero)
    values = [statistic([s * abs(d) for s, d in zip(signs, nonzero)])
              for signs in itertools.product((1, -1), repeat=len(nonzero))]
    lower = sum(v <= observed + 1e-9 for v in values) / len(values)
    upper = sum(v >= observed - 1e-9 for v in values) / len(values)
    return min(1.0, 2 * min(lower, upper))


def test_paired_tests_are_exact():
    assert sign_test([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)
    assert wilcoxon_signed_rank([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)
    assert sign_test([]) == wilcoxon_signed_rank([0, 0]) == 1.0
    assert wilcoxon_signed_rank([1, -1]) == 1.0

    def positive_rank_sum(ds):
        mags = sorted(abs(d) for d in ds)
        rank = {m: (2 * mags.index(m) + mags.count(m) + 1) / 2 for m in mags}  # average ranks
        return sum(rank[abs(d)] for d in ds if d > 0)

    gen = torch.Generator().manual_seed(0)
    for trial in range(6):
        n = 5 + trial
        ds = [round(float(v), 1) for v in torch.randn(n, generator=gen) + 0.4]  # rounding makes ties
        ds[0] = 0.0 if trial % 2 else ds[0]  # zeros are dropped
        assert wilcoxon_signed_rank(ds) == pytest.approx(brute_force_p(ds, positive_rank_sum), abs=1e-12)
        assert sign_test(ds) == pytest.approx(brute_force_p(ds, lambda v: sum(d > 0 for d in v)), abs=1e-12)


def test_paired_tests_stay_exact_for_a_study_of_up_to_50_photos():
    """All differences positive: only one of the 2^n sign assignments is as extreme on each side, so the
    exact two-sided p is 2 / 2^n; a normal approximation is orders of magnitude off there."""
    distinct = [float(i) for i in range(1, 51)]
    assert wilcoxon_signed_rank(distinct) == pytest.approx(2 / 2**50, rel=1e-9)
    assert sign_test(distinct) == pytest.approx(2 / 2**50, rel=1e-9)
    # 13 non-zero differences with a tie, plus zeros that carry no sign: still every assignment counted.
    tied = [1.0, 1.0] + [float(i) for i in range(2, 13)] + [0.0] * 5
    assert wilcoxon_signed_rank(tied) == pytest.approx(2 / 2**13, rel=1e-9)
    assert sign_test(tied) == pytest.approx(2 / 2**13, rel=1e-9)


def test_paired_comparison_counts_the_better_photos_by_each_measures_direction():
    """benchmarks/quality.py's paired(): kept is better higher, style and dark spots lower."""
    from benchmarks.quality import compare_line, paired

    a = [{"kept": 0.6, "style": 0.1, "dark": 0.0}, {"kept": 0.5, "style": 0.3, "dark": 0.2},
         {"kept": 0.7, "style": 0.2, "dark": 0.1}]
    b = [{"kept": 0.5, "style": 0.2, "dark": 0.0}, {"kept": 0.4, "style": 0.2, "dark": 0.1},
         {"kept": 0.7, "style": 0.4, "dark": 0.3}]
    kept, style, dark = (paired(a, b, key) for key in ("kept", "style", "dark"))
    assert (kept["a_better"], style["a_better"], dark["a_better"]) == (2, 2, 1)  # ties count for neither
    assert kept["diff"] == pytest.approx(0.2 / 3) and style["a"] == pytest.approx(0.2) and kept["photos"] == 3
    assert kept["wilcoxon_p"] == wilcoxon_signed_rank([x["kept"] - y["kept"] for x, y in zip(a, b)])
    assert compare_line(a, b).startswith("kept 0.600 vs 0.533, better on 2/3")
    with pytest.raises(ValueError, match="length"):
        paired(a, b[:2], "kept")
