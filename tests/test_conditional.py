"""Conditional instance norm (Dumoulin et al. 2017; issue 17): one network, several styles, blended by
convex weights on their (gamma, beta) pairs; chosen by name or mixed in the library, the CLI and ONNX."""

from __future__ import annotations

import pytest
import torch

from style_transfer.checkpoint import ModelInfo, load_model, save_model
from style_transfer.cli import main
from style_transfer.imageio import decode_image
from style_transfer.metrics import psnr
from style_transfer.network import TransformerConfig, TransformerNet
from style_transfer.norms import ConditionalInstanceNorm2d
from style_transfer.stylize import StylizeOptions, Stylizer, parse_mix, style_mix

from .test_stylize import photo_like

STYLES = ["starry", "wave", "scream"]

pytestmark = pytest.mark.usefixtures("one_thread")


def three_style_model() -> TransformerNet:
    """A conditional network whose three styles have clearly different (gamma, beta) pairs."""
    torch.manual_seed(0)
    model = TransformerNet(TransformerConfig(norm="conditional_instance", width=8, num_residual=1, num_styles=3))
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, ConditionalInstanceNorm2d):
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "multi.safetensors"
    save_model(path, three_style_model(), ModelInfo(three_style_model().config, style_name=" + ".join(STYLES),
                                                    steps=5, extra={"styles": STYLES}))
    return path


def test_a_weight_of_one_is_exactly_that_style_and_mixes_blend_the_affine():
    model, x = three_style_model(), photo_like(40, 56)
    with torch.no_grad():
        pure = [model(x, torch.eye(3)[i]) for i in range(3)]
        assert torch.equal(model(x), pure[0])  # no style: the first
        assert all((pure[i] - pure[j]).abs().max() > 1e-2 for i in range(3) for j in range(i))
        # One layer: a mix's output is the normalized input times the mixed gamma plus the mixed beta.
        layer = next(m for m in model.modules() if isinstance(m, ConditionalInstanceNorm2d))
        feats = torch.randn(2, layer.weight.shape[1], 6, 7)
        mix = torch.tensor([[0.2, 0.5, 0.3], [0.0, 0.0, 1.0]])
        layer.style = mix
        got = layer(feats)
        layer.style = None
        normalized = torch.nn.functional.instance_norm(feats, eps=layer.norm.eps)
        expected = normalized * (mix @ layer.weight)[..., None, None] + (mix @ layer.bias)[..., None, None]
        assert torch.allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="conditional_instance"):
        TransformerNet(TransformerConfig(norm="instance", width=8, num_residual=1))(x, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="conditional_instance"):
        TransformerConfig(norm="instance", num_styles=2)


def test_style_names_and_mixes_become_weights_and_bad_mixes_are_refused(checkpoint):
    _, info = load_model(checkpoint)
    assert style_mix(info, "wave") == (0.0, 1.0, 0.0)
    assert style_mix(info, mix=parse_mix("starry=0.6, scream=0.4")) == (0.6, 0.0, 0.4)
    assert style_mix(info) is None
    for bad, message in [({"sea": 1.0}, "unknown style.*starry, wave, scream"), ({"starry": 1.5, "wave": -0.5}, ">= 0"),
                         ({"starry": 0.5, "wave": 0.4}, "sum to 1")]:
        with pytest.raises(ValueError, match=message):
            style_mix(info, mix=bad)
    with pytest.raises(ValueError, match="not both"):
        style_mix(info, "wave", {"wave": 1.0})
    with pytest.raises(ValueError, match="NAME=WEIGHT"):
        parse_mix("starry:0.5")
    with pytest.raises(ValueError, match="sum to 1"):
        StylizeOptions(style=(0.5, 0.6, 0.0))
    # A one-style model names its style, and a mix does not fit it.
    single = ModelInfo(TransformerConfig(), style_name="starry")
    assert style_mix(single, "starry") is None
    plain = Stylizer(TransformerNet(TransformerConfig(width=8, num_residual=1)), fast=False)
    with pytest.raises(ValueError, match="does not fit"):
        plain.stylize(photo_like(32, 32), StylizeOptions(style=(1.0, 0.0)))


@pytest.mark.parametrize("fast", [False, True])
def test_the_stylizer_runs_each_style_whole_tiled_and_batched(checkpoint, fast):
    stylizer = Stylizer(*load_model(checkpoint), fast=fast)
    image = photo_like()
    wave = StylizeOptions(style=(0.0, 1.0, 0.0))
    whole = stylizer.stylize(image, wave)
    assert psnr(whole, stylizer.stylize(image)) < 30  # another style than the default first one
    tiled = stylizer.stylize(image, StylizeOptions(style=wave.style, tile=100, tile_overlap=48))
    assert psnr(tiled, whole) > (45 if not fast else 35)  # the tiles are normalized with the whole image's style
    batch = torch.cat([image[..., :128, :128]] * 2)
    assert torch.allclose(stylizer.stylize_batch(batch, wave)[0], stylizer.stylize(batch[:1], wave)[0], atol=1e-5)


def test_cli_stylize_with_a_style_or_a_mix(checkpoint, tmp_path, make_image_file):
    photo = make_image_file(tmp_path / "p.png", size=(48, 40))
    outs = {}
    for name, args in {"wave": ["--style", "wave"], "mixed": ["--mix", "starry=0,wave=1"],
                       "starry": ["--style", "starry"], "blend": ["--mix", "starry=0.5,wave=0.5"]}.items():
        out = tmp_path / f"{name}.png"
        assert main(["stylize", str(photo), "--model", str(checkpoint), "--out", str(out), "--no-fast", *args]) == 0
        outs[name] = decode_image(out).rgb
    assert torch.equal(outs["wave"], outs["mixed"])  # weight 1 is the pure style, through the whole CLI
    assert not torch.equal(outs["wave"], outs["starry"]) and not torch.equal(outs["blend"], outs["wave"])
    for bad in (["--style", "sea"], ["--mix", "starry=0.7,wave=0.7"], ["--mix", "starry=-1,wave=2"]):
        assert main(["stylize", str(photo), "--model", str(checkpoint), "--out", str(tmp_path / "x.png"), *bad]) == 2


def test_onnx_export_of_one_style_and_of_a_mix(checkpoint, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model, _ = load_model(checkpoint)
    model.eval()
    image = photo_like(45, 61)
    for name, args, weights in [("wave", ["--style", "wave"], [0.0, 1.0, 0.0]),
                                ("blend", ["--mix", "starry=0.25,scream=0.75"], [0.25, 0.0, 0.75])]:
        out = tmp_path / f"{name}.onnx"
        assert main(["export", str(checkpoint), "--out", str(out), *args]) == 0
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"image": image.numpy()})[0])
        with torch.no_grad():
            expected = model(image, torch.tensor(weights))
        assert psnr(got.clamp(0, 1), expected.clamp(0, 1)) > 40
        assert session.get_modelmeta().custom_metadata_map["style_mix"] == str(weights)


def test_the_lozenges_benchmark_swaps_the_halves_and_measures_how_far_apart_the_pairs_are():
    """benchmarks/lozenges.py: its convolutions with the flagship's (gamma, beta) in every style, or the
    flagship's convolutions with its pairs; the pairs' spread is zero for identical styles."""
    from benchmarks.lozenges import pair_spread, swapped

    multi = three_style_model()
    torch.manual_seed(1)
    flagship = TransformerNet(TransformerConfig(width=8, num_residual=1))
    with torch.no_grad():
        for layer in flagship.modules():
            if isinstance(layer, torch.nn.InstanceNorm2d) and layer.affine:
                layer.weight.uniform_(0.5, 1.5)
    norms = {name for name, module in multi.named_modules() if isinstance(module, ConditionalInstanceNorm2d)}
    flag, own = flagship.state_dict(), multi.state_dict()
    with_flag_pairs = swapped(multi, flagship, True).state_dict()
    with_flag_convs = swapped(multi, flagship, False).state_dict()
    for name, value in own.items():
        if name.rpartition(".")[0] in norms:
            assert all(torch.equal(row, flag[name]) for row in with_flag_pairs[name])
            assert torch.equal(with_flag_convs[name], value)
        else:
            assert torch.equal(with_flag_pairs[name], value) and torch.equal(with_flag_convs[name], flag[name])
    spread = pair_spread(multi)
    assert [row[0] for row in spread] == sorted(norms, key=list(dict(multi.named_modules())).index)
    assert all(row[2] > 0.05 and row[3] > 0.05 for row in spread)  # three_style_model's pairs differ
    same = swapped(multi, flagship, True)
    assert all(row[2] < 1e-6 and row[3] < 1e-6 for row in pair_spread(same))  # all styles: the flagship's pair


def test_the_lozenges_benchmark_finds_a_planted_spike_in_standard_deviations_whatever_the_affine():
    """lozenges.peaks: one row per norm layer in network order, the highest |normalized feature| (at least
    1: unit variance), placed where a one-pixel spike on a flat photo is; a single network's own gamma is
    undone, so scaling it leaves the measure alone."""
    from benchmarks.lozenges import peaks

    photo = torch.full((1, 3, 32, 48), 0.5)
    photo[..., 20, 9] = 1.0
    multi = three_style_model()
    rows = peaks(multi, photo, torch.tensor([0.0, 1.0, 0.0]))
    norms = [n.removesuffix(".norm") for n, m in multi.named_modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert [r[0] for r in rows] == norms and all(r[1] >= 1.0 for r in rows)
    head = rows[0]
    assert abs(head[2][0] - 20) <= 4 and abs(head[2][1] - 9) <= 4  # the 9x9 head sees the spike around it
    assert head[1] > 5  # one pixel in 1536 stands far out of its channel's statistics
    torch.manual_seed(0)
    single = TransformerNet(TransformerConfig(width=8, num_residual=1)).eval()
    before = peaks(single, photo)
    with torch.no_grad():
        single.head[2].weight.mul_(3.0)
        single.head[2].bias.add_(2.0)
    after = peaks(single, photo)
    assert after[0][1] == pytest.approx(before[0][1], rel=1e-4) and after[0][2] == before[0][2]
