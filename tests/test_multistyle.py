"""Multi-style training (issue 17, part 1): one conditional instance norm network learns several
paintings, each in turn; its checkpoint names them in order, resumes bit-exactly, and stylizes each
style and mixes of them; the spec, the zoo plan, compare and ablate accept it."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from style_transfer.ablate import StudyError, StudySettings, run_study
from style_transfer.checkpoint import ModelInfo, file_sha256, load_model, read_model_info
from style_transfer import spec as spec_module
from style_transfer import train as train_module
from style_transfer.cli import _train_spec, build_parser, main
from style_transfer.evaluation import _style_for
from style_transfer.imageio import decode_image, load_rgb
from style_transfer.losses import LossConfig, PerceptualLoss
from style_transfer.network import TransformerConfig
from style_transfer.rundir import RunDir
from style_transfer.spec import RunSpec
from style_transfer.train import TrainingError, TrainOptions, train
from style_transfer.zoo import EXTEND_LR, EXTEND_STEPS
from style_transfer.zoo_build import load_plan

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
STYLES_DIR = SHARED / "styles"
pytestmark = pytest.mark.skipif(not STYLES_DIR.is_dir(), reason="../shared/data not available")

NET = TransformerConfig(norm="conditional_instance", width=8, num_residual=1)
LOSS = LossConfig(style_size=64)


@pytest.fixture(scope="module")
def styles(tmp_path_factory) -> tuple[Path, Path]:
    """Two paintings, downscaled (fast to decode): starry and wave."""
    folder = tmp_path_factory.mktemp("styles")
    out = []
    for src, name in [("vangogh_starry_night_1889.jpg", "starry.jpg"), ("hokusai_great_wave_c1831.jpg", "wave.jpg")]:
        with Image.open(STYLES_DIR / src) as img:
            img = img.convert("RGB")
            img.thumbnail((96, 96))
            img.save(folder / name, quality=95)
        out.append(folder / name)
    return tuple(out)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for src in sorted((SHARED / "content" / "bsds500" / "train").glob("*.jpg"))[:6]:
        with Image.open(src) as img:
            img.thumbnail((80, 80))
            img.save(folder / src.name, quality=95)
    return folder


def tiny(tmp: Path, photos: Path, styles, **changes) -> tuple[RunSpec, RunDir, TrainOptions]:
    spec = RunSpec(content=photos, style=styles, network=NET, loss=LOSS, steps=4, image_size=32, batch_size=2)
    options = TrainOptions(device="cpu", checkpoint_every=2, sample_every=2, progress=False)
    options_changes = {k: changes.pop(k) for k in list(changes) if k in TrainOptions.__dataclass_fields__}
    return (spec.replace(**changes), RunDir.of(tmp / "multi.safetensors"),
            TrainOptions(**{**options.__dict__, **options_changes}))


# ----------------------------------------------------------------------------- the spec


def test_the_spec_derives_the_style_count_and_refuses_what_cannot_work(tmp_path, styles):
    spec = RunSpec(content=tmp_path, style=styles, network=NET)
    assert spec.style == styles and spec.network.num_styles == 2 and spec.style_names == ["starry", "wave"]
    assert spec.fingerprint()["network"]["num_styles"] == 2
    # Recorded as a list (one style stays a string, as records from before multi-style hold it).
    record = spec.to_dict()
    assert record["style"] == [str(p) for p in styles] and RunSpec.from_dict(record) == spec
    assert RunSpec(content=tmp_path, style=styles[0]).to_dict()["style"] == str(styles[0])
    # Another set of styles re-derives the count; the order is part of what the network is.
    assert spec.replace(style=styles[:1]).network.num_styles == 1
    assert spec.replace(style=styles[::-1]).style_names == ["wave", "starry"]
    with pytest.raises(ValueError, match="conditional_instance"):
        RunSpec(content=tmp_path, style=styles)  # instance norm learns one style
    with pytest.raises(ValueError, match="given twice"):
        RunSpec(content=tmp_path, style=(styles[0], styles[0]), network=NET)
    other = tmp_path / "elsewhere" / "starry.jpg"
    with pytest.raises(ValueError, match="both named starry"):
        RunSpec(content=tmp_path, style=(styles[0], other), network=NET)
    with pytest.raises(ValueError, match="num_styles is 3"):
        RunSpec.from_flat({"content": tmp_path, "style": list(styles), "norm": "conditional_instance",
                           "num_styles": 3})


def test_the_loss_holds_one_gram_set_per_style_and_scores_against_the_one_asked(styles):
    images = [load_rgb(p, 64) for p in styles]
    both = PerceptualLoss(images, LOSS)
    photo = torch.rand(2, 3, 40, 48)
    for k, image in enumerate(images):
        alone = PerceptualLoss(image, LOSS)
        assert torch.allclose(both.style_distance(photo, k), alone.style_distance(photo), rtol=1e-5)
        assert torch.allclose(both(photo, photo, k)["style"], alone(photo, photo)["style"], rtol=1e-5)
    assert not torch.allclose(both.style_distance(photo, 0), both.style_distance(photo, 1))
    with pytest.raises(IndexError):
        both.style_grams(2)


# ----------------------------------------------------------------------------- training


def test_a_two_style_network_trains_each_style_in_turn_and_records_them(tmp_path, photos, styles):
    val = sorted((SHARED / "content" / "bsds500" / "test").glob("*.jpg"))[:1]
    result = train(*tiny(tmp_path, photos, styles, val_photos=tuple(val)))
    assert [e.get("style_index") for e in result.history] == [0, 1, 0, 1]
    model, info = load_model(tmp_path / "multi.safetensors")
    assert info.extra["styles"] == ["starry", "wave"]
    assert info.extra["style_sha256s"] == [file_sha256(p) for p in styles]
    assert info.style_name == "starry + wave" and info.config.num_styles == 2
    assert {"style/starry", "style/wave"} <= set(info.losses)
    # Each style's own loss is the mean of the steps that trained it.
    assert info.losses["style/wave"] == pytest.approx((result.history[1]["style"] + result.history[3]["style"]) / 2)
    # The sample shows the crop and its output in each style; validation measures each style.
    sample = decode_image(tmp_path / "multi.run" / "samples" / "step_000004.png").rgb
    assert sample.shape[-2:] == (32, 3 * 32)
    last = RunDir.of(tmp_path / "multi.safetensors").latest_validation()
    assert {"val_ssim", "val_style", "val_ssim/starry", "val_style/wave"} <= set(last)
    assert last["val_ssim"] == pytest.approx((last["val_ssim/starry"] + last["val_ssim/wave"]) / 2)
    # The two styles came apart: the network's outputs differ by style.
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        assert (model(x, torch.tensor([1.0, 0.0])) - model(x, torch.tensor([0.0, 1.0]))).abs().max() > 1e-4


def test_a_multi_style_network_starts_every_style_from_a_single_style_instance_model(tmp_path, photos, styles,
                                                                                      make_checkpoint):
    """--init from an instance-norm model of the same shape (what --init auto does with the flagship): the
    convolutions are shared, and each style's (gamma, beta) starts as the model's affine, so before training
    every style renders exactly what the single-style model does. Another norm or width is refused."""
    source = make_checkpoint("instance", width=8, num_residual=1, trained=True)
    assert NET.can_start_from(TransformerConfig(norm="instance", width=8, num_residual=1))
    assert not NET.can_start_from(TransformerConfig(norm="group", width=8, num_residual=1, groups=4))
    assert not NET.can_start_from(TransformerConfig(norm="instance", width=16, num_residual=1))
    assert not TransformerConfig(norm="instance", width=8, num_residual=1).can_start_from(NET)
    spec, run, options = tiny(tmp_path, photos, styles, init=source, steps=1, lr=1e-12)
    train(spec, run, options)
    single, _ = load_model(source)
    multi, info = load_model(run.checkpoint)
    assert info.training["init_sha256"] == file_sha256(source)
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        for style in (torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])):
            assert torch.allclose(multi(x, style), single(x), atol=1e-5)
    with pytest.raises(TrainingError, match="is not this run's"):
        train(*tiny(tmp_path / "w", photos, styles, init=source, width=16, steps=1))


def test_multi_style_resume_is_bit_exact_and_refuses_other_styles(tmp_path, photos, styles):
    straight = train(*tiny(tmp_path / "a", photos, styles, steps=6, checkpoint_every=3))
    train(*tiny(tmp_path / "b", photos, styles, steps=3, checkpoint_every=3))
    resumed = train(*tiny(tmp_path / "b", photos, styles, steps=6, checkpoint_every=3), resume=True)
    a, b = load_file(tmp_path / "a" / "multi.safetensors"), load_file(tmp_path / "b" / "multi.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [e["total"] for e in resumed.history] == [e["total"] for e in straight.history]
    assert [e["style_index"] for e in resumed.history] == [0, 1, 0, 1, 0, 1]
    # The same styles in another order would be another network: refused, not silently continued.
    with pytest.raises(TrainingError, match="style"):
        train(*tiny(tmp_path / "b", photos, styles[::-1], steps=8, checkpoint_every=3), resume=True)


def test_affine_lr_moves_the_per_style_pairs_at_their_own_rate_and_resumes_bit_exactly(tmp_path, photos, styles):
    """Adam's first step moves every weight with a gradient by about its lr: the step's painting's (gamma,
    beta) row by affine_lr, every convolution by lr, the other painting's row not at all."""
    from style_transfer.network import ConditionalInstanceNorm2d, TransformerNet

    train(*tiny(tmp_path / "one", photos, styles, steps=1, lr=1e-5, affine_lr=1e-2))
    trained, info = load_model(tmp_path / "one" / "multi.safetensors")
    assert info.training["affine_lr"] == 1e-2 and "affine_lr" not in tiny(tmp_path, photos, styles)[0].fingerprint()
    torch.manual_seed(0)  # the run's seed: its initial weights
    start = TransformerNet(trained.config).state_dict()
    for name, value in trained.state_dict().items():
        moved = (value - start[name]).abs()
        if isinstance(trained.get_submodule(name.rpartition(".")[0]), ConditionalInstanceNorm2d):
            assert moved[0].max() == pytest.approx(1e-2, rel=0.01) and moved[1].max() == 0, name
        elif value.dim() == 4:
            assert moved.max() == pytest.approx(1e-5, rel=0.01), name
    # Two groups, saved and restored with the resume state.
    straight = train(*tiny(tmp_path / "a", photos, styles, steps=4, affine_lr=1e-2, checkpoint_every=2))
    train(*tiny(tmp_path / "b", photos, styles, steps=2, affine_lr=1e-2, checkpoint_every=2))
    resumed = train(*tiny(tmp_path / "b", photos, styles, steps=4, affine_lr=1e-2, checkpoint_every=2), resume=True)
    assert [e["total"] for e in resumed.history] == [e["total"] for e in straight.history]
    with pytest.raises(ValueError, match="affine_lr"):
        tiny(tmp_path, photos, styles, affine_lr=0.0)


def test_cli_trains_with_style_repeated_and_stylizes_each_style_and_a_mix(tmp_path, photos, styles, make_image_file):
    model = tmp_path / "multi.safetensors"
    common = ["train", "--content", str(photos), "--style", str(styles[0]), "--style", str(styles[1]),
              "--norm", "conditional_instance", "--width", "8", "--residual-blocks", "1", "--style-size", "64",
              "--image-size", "32", "--batch-size", "2", "--out", str(model), "--device", "cpu"]
    # train's default for several paintings clips at 100 and trains the pairs at 10x; four tiny steps so
    # paint both styles black, so this model is trained practically unclipped at one rate, and a resume
    # keeps the clipping and rates it started with.
    assert main([*common, "--steps", "1", "--out", str(tmp_path / "default.safetensors")]) == 0
    assert read_model_info(tmp_path / "default.safetensors").training["clip_grad_norm"] == 100
    assert main([*common, "--steps", "3", "--clip-grad-norm", "1e9", "--affine-lr", "1e-3"]) == 0
    assert main([*common, "--steps", "4", "--resume"]) == 0
    info = read_model_info(model)
    assert info.extra["styles"] == ["starry", "wave"] and info.steps == 4
    assert info.training["clip_grad_norm"] == 1e9 and info.training["affine_lr"] == 1e-3
    photo = make_image_file(tmp_path / "p.png", size=(40, 32))
    outs = {}
    for name, args in {"starry": ["--style", "starry"], "wave": ["--style", "wave"],
                       "wave1": ["--mix", "starry=0,wave=1"], "half": ["--mix", "starry=0.5,wave=0.5"]}.items():
        out = tmp_path / f"{name}.png"
        assert main(["stylize", str(photo), "--model", str(model), "--out", str(out), "--no-fast", *args]) == 0
        outs[name] = decode_image(out).rgb
    assert torch.equal(outs["wave"], outs["wave1"])
    # The styles and the mix differ in the network's own output. Not in the 8-bit files: four steps of a
    # network this tiny may paint everything near black, and on an AVX2-only host both styles rounded to
    # the same file (their outputs differed by 3e-4 below zero).
    net, _ = load_model(model)
    image = load_rgb(photo)
    with torch.no_grad():
        raw = {k: net(image, torch.tensor(w)) for k, w in {"starry": [1.0, 0.0], "wave": [0.0, 1.0],
                                                           "half": [0.5, 0.5]}.items()}
    assert not torch.equal(raw["starry"], raw["wave"]) and not torch.equal(raw["half"], raw["wave"])
    # Two styles without the conditional norm: a clear error before any work.
    assert main(["train", "--content", str(photos), "--style", str(styles[0]), "--style", str(styles[1]),
                 "--steps", "1", "--out", str(tmp_path / "x.safetensors"), "--device", "cpu"]) == 2


# ----------------------------------------------------------------------------- the zoo, compare, ablate


def test_a_zoo_plan_entry_takes_a_list_of_styles(tmp_path, styles):
    for p in styles:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "photos").mkdir()
    plan = tmp_path / "zoo.toml"
    plan.write_text('[[models]]\nname = "two"\ncontent = "photos"\nstyle = ["starry.jpg", "wave.jpg"]\n'
                    'norm = "conditional_instance"\nsteps = 10\n')
    (model,) = load_plan(plan)
    assert model.spec.style_names == ["starry", "wave"] and model.spec.network.num_styles == 2
    # Its recorded sha is of both images in order: the run is stale if either changes.
    training = model.spec.fingerprint()
    assert model.differences(training, model.spec.checkpoint_style_sha256()) == []
    assert model.differences(training, model.spec.replace(style=(tmp_path / "wave.jpg", tmp_path / "starry.jpg"))
                             .checkpoint_style_sha256()) == ["style"]


def test_compare_runs_a_multi_style_network_in_the_compared_paintings_style(tmp_path, styles):
    shas = [file_sha256(p) for p in styles]
    multi = ModelInfo(TransformerConfig(norm="conditional_instance", num_styles=2),
                      extra={"styles": ["starry", "wave"], "style_sha256s": shas})
    assert _style_for(multi, styles[1], shas[1]) == (0.0, 1.0)
    renamed = tmp_path / "wave.jpg"  # same name, other bytes: found by name
    assert _style_for(multi, renamed, "0" * 64) == (0.0, 1.0)
    assert _style_for(multi, tmp_path / "udnie.jpg", "1" * 64) is None
    assert _style_for(ModelInfo(TransformerConfig()), styles[0], shas[0]) is None


def test_a_norm_study_takes_one_style(tmp_path, photos, styles):
    base = RunSpec(content=photos, style=styles, network=NET, steps=1)
    with pytest.raises(StudyError, match="one style"):
        run_study(StudySettings(out=tmp_path / "study", base=base, norms=["conditional_instance"], seeds=[0]))
    assert not (tmp_path / "study" / "study.json").exists()


# ----------------------------------------------------------------------------- extending a model


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, photos, styles) -> Path:
    """A tiny trained 2-style model (starry, wave)."""
    tmp = tmp_path_factory.mktemp("base")
    train(*tiny(tmp, photos, styles))
    return tmp / "multi.safetensors"


@pytest.fixture(scope="module")
def udnie(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("new") / "udnie.jpg"
    with Image.open(STYLES_DIR / "picabia_udnie_1913.jpg") as img:
        img = img.convert("RGB")
        img.thumbnail((96, 96))
        img.save(out, quality=95)
    return out


@pytest.mark.parametrize("ema_decay", [None, 0.5])  # the weights' average keeps the frozen ones exact too
def test_extend_trains_only_the_new_styles_affine_and_keeps_the_old_styles_exactly(tmp_path, photos, base_model, udnie,
                                                                                    monkeypatch, ema_decay):
    spec = RunSpec.from_flat({"content": photos, "style": udnie, "extend": base_model, "steps": 4,
                              "image_size": 32, "batch_size": 2, "ema_decay": ema_decay})
    # The network and loss are the model's; the new style comes after its own.
    base, base_info = load_model(base_model)
    assert spec.network == TransformerConfig(**{**base_info.config.__dict__, "num_styles": 3})
    assert spec.loss == LOSS and spec.style_names == ["starry", "wave", "udnie"]
    hashed = []
    for module in (spec_module, train_module):
        monkeypatch.setattr(module, "file_sha256", lambda p: hashed.append(Path(p)) or file_sha256(p))
    result = train(spec, RunDir.of(tmp_path / "ext.safetensors"),
                   TrainOptions(device="cpu", checkpoint_every=2, sample_every=2, progress=False))
    # The painting is hashed once for the run, not again at each of its three checkpoints.
    assert hashed.count(udnie) == 1
    assert [e["style_index"] for e in result.history] == [2, 2, 2, 2]
    extended, info = load_model(tmp_path / "ext.safetensors")
    assert info.extra["styles"] == ["starry", "wave", "udnie"]
    assert info.extra["style_sha256s"] == [*base_info.extra["style_sha256s"], file_sha256(udnie)]
    assert info.training["extend_sha256"] == file_sha256(base_model)
    old, new = base.state_dict(), extended.state_dict()
    for name, value in new.items():
        if name.endswith((".weight", ".bias")) and value.shape[0] == 3 and value.dim() == 2:  # a norm's pairs
            assert torch.equal(value[:2], old[name]), name  # the model's own styles: untouched
            assert not torch.equal(value[2], old[name].mean(0)), name  # the new one: trained from the mean
        else:
            assert torch.equal(value, old[name]), name  # every convolution: frozen
    # So the old styles render exactly as before, through the whole stylize path.
    x = torch.rand(1, 3, 36, 44)
    with torch.no_grad():
        for k in range(2):
            assert torch.equal(extended(x, torch.eye(3)[k]), base(x, torch.eye(2)[k]))
    # benchmarks/quality.py measures an extension in the style it trained (the network's last), by its name.
    from benchmarks.quality import measure_fast, measure_model

    pictures = sorted(photos.glob("*.jpg"))[:2]
    measured = measure_model(extended, SimpleNamespace(spec=spec), pictures, 40)
    kept = [r["kept"] for r in measured["udnie"]]
    assert list(measured) == ["udnie"] and kept == pytest.approx([r["kept"] for r in measure_fast(extended, pictures, 40, 2)])
    assert kept != pytest.approx([r["kept"] for r in measure_fast(extended, pictures, 40, 0)])


def test_a_zoo_plan_extension_matches_its_own_checkpoint_so_it_resumes(tmp_path, photos, base_model, udnie):
    plan = tmp_path / "plan.toml"
    plan.write_text(f'[[models]]\nname = "ext"\ncontent = "{photos}"\nstyle = "{udnie}"\nextend = "{base_model}"\n'
                    'steps = 2\nimage_size = 32\nbatch_size = 2\n')
    (m,) = load_plan(plan)
    train(m.spec, m.run(tmp_path / "runs"), TrainOptions(device="cpu", progress=False))
    # Its checkpoint records the hash of all three styles; the plan's entry is still that run.
    assert read_model_info(m.run(tmp_path / "runs").checkpoint).style_sha256 == m.spec.checkpoint_style_sha256()
    assert m.stale(tmp_path / "runs") == []
    # benchmarks/extension_strip.py draws it: the painting on top, each photo beside its output in the new style.
    from benchmarks.extension_strip import strip_rows
    from style_transfer.stylize import StylizeOptions, Stylizer

    pictures = sorted(photos.glob("*.jpg"))[:2]
    rows, labels = strip_rows([m], tmp_path / "runs", pictures, cell=24)
    assert labels == ["photo", "udnie (+2 steps)"] and len(rows) == 3
    assert torch.equal(rows[0][1], load_rgb(udnie, max_size=24))
    stylizer = Stylizer.from_checkpoint(m.run(tmp_path / "runs").checkpoint, device="cpu")
    photo = load_rgb(pictures[1], max_size=48)
    assert torch.equal(rows[2][0], photo)
    assert torch.equal(rows[2][1], stylizer.stylize(photo, StylizeOptions(style=(0.0, 0.0, 1.0))))
    assert not torch.equal(rows[2][1], stylizer.stylize(photo, StylizeOptions(style=(1.0, 0.0, 0.0))))
    other = tmp_path / "other.jpg"
    shutil.copy(udnie, other)
    with open(other, "ab") as f:
        f.write(b"\0")  # another file: another painting as far as the hash goes
    (moved,) = load_plan(plan.write_text(plan.read_text().replace(str(udnie), str(other))) and plan)
    assert moved.stale(tmp_path / "runs") == ["style"]


def test_extend_resumes_bit_exactly(tmp_path, photos, base_model, udnie):
    def run(tmp: Path, steps: int, resume: bool = False):
        spec = RunSpec.from_flat({"content": photos, "style": udnie, "extend": base_model, "steps": steps,
                                  "image_size": 32, "batch_size": 2})
        return train(spec, RunDir.of(tmp / "ext.safetensors"),
                     TrainOptions(device="cpu", checkpoint_every=2, sample_every=10, progress=False), resume=resume)

    straight = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 4, resume=True)
    assert [e["total"] for e in resumed.history] == [e["total"] for e in straight.history]
    a, b = load_file(tmp_path / "a" / "ext.safetensors"), load_file(tmp_path / "b" / "ext.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_extend_and_what_it_refuses(tmp_path, photos, base_model, udnie, styles):
    out = tmp_path / "ext.safetensors"
    common = ["--content", str(photos), "--steps", "1", "--image-size", "32", "--batch-size", "2", "--device", "cpu"]
    assert main(["train", "--extend", str(base_model), "--style", str(udnie), "--out", str(out), *common]) == 0
    info = read_model_info(out)
    assert info.extra["styles"] == ["starry", "wave", "udnie"]
    # The new painting's style weight is on auto (as `train --style` alone), not the model's fixed number;
    # a given weight is kept.
    assert read_model_info(base_model).training["loss"]["style_weight"] != "auto"
    assert info.training["loss"]["style_weight"] == "auto" and "style_weight_used" in info.training
    # Only the new pair trains, at zoo.EXTEND_LR, not the model's rate; a given weight and rate are kept.
    assert read_model_info(base_model).training["lr"] != EXTEND_LR and info.training["lr"] == EXTEND_LR
    assert main(["train", "--extend", str(base_model), "--style", str(udnie), "--style-weight", "3e-5",
                 "--lr", "2e-3", "--out", str(tmp_path / "fixed.safetensors"), *common]) == 0
    fixed = read_model_info(tmp_path / "fixed.safetensors").training
    assert fixed["loss"]["style_weight"] == 3e-5 and fixed["lr"] == 2e-3
    # Resumed without them, it keeps the weight and rate it was started with, not the extension's defaults.
    longer = [*common[:2], "--steps", "2", *common[4:]]
    assert main(["train", "--extend", str(base_model), "--style", str(udnie), "--resume",
                 "--out", str(tmp_path / "fixed.safetensors"), *longer]) == 0
    resumed = read_model_info(tmp_path / "fixed.safetensors")
    assert resumed.steps == 2 and resumed.training["lr"] == 2e-3 and resumed.training["loss"]["style_weight"] == 3e-5
    # Without --steps an extension trains zoo.EXTEND_STEPS, not a whole network's 40,000; --epochs is kept.
    def spec_of(*extra: str) -> RunSpec:
        args = build_parser().parse_args(["train", "--extend", str(base_model), "--style", str(udnie), "--content",
                                          str(photos), "--out", str(out), *extra])
        return _train_spec(args, RunDir.of(out))

    assert spec_of().steps == EXTEND_STEPS < RunSpec.DEFAULT_STEPS and spec_of().lr == EXTEND_LR
    assert spec_of("--epochs", "2").steps is None and spec_of("--epochs", "2").epochs == 2
    assert spec_of("--steps", "7").steps == 7
    # Resumed without them, it finishes its own budget, not a new extension's.
    fixed_out = tmp_path / "fixed.safetensors"
    resumed_args = build_parser().parse_args(["train", "--extend", str(base_model), "--style", str(udnie), "--resume",
                                              "--content", str(photos), "--out", str(fixed_out)])
    assert _train_spec(resumed_args, RunDir.of(fixed_out)).steps == 2
    refused = {
        "a style it has": ["--extend", str(base_model), "--style", str(styles[0])],
        "another network": ["--extend", str(base_model), "--style", str(udnie), "--width", "16"],
        "with --init": ["--extend", str(base_model), "--init", str(base_model), "--style", str(udnie)],
        "a missing model": ["--extend", str(tmp_path / "none.safetensors"), "--style", str(udnie)],
    }
    for why, args in refused.items():
        assert main(["train", *args, "--out", str(tmp_path / "x.safetensors"), *common]) == 2, why
    assert not (tmp_path / "x.safetensors").exists()
    with pytest.raises(ValueError, match="conditional_instance model"):
        single = tmp_path / "single.safetensors"
        train(*tiny(tmp_path / "s", photos, styles[:1], norm="instance", steps=1))
        shutil.copy(tmp_path / "s" / "multi.safetensors", single)
        RunSpec.from_flat({"content": photos, "style": udnie, "extend": single})


# ----------------------------------------------------------------------------- the study


def test_the_study_runs_the_multi_style_network_in_each_paintings_style(tmp_path, photos, styles, base_model):
    """Each single-style model here is the multi-style network's own style cut out of it (its (gamma,
    beta) row as an instance norm's affine), so a study that runs the right style finds no difference."""
    from benchmarks.multistyle_study import singles_for, study, table
    from style_transfer.checkpoint import save_model
    from style_transfer.network import TransformerNet

    multi, info = load_model(base_model)
    names = ["starry", "wave"]
    plan = tmp_path / "zoo.toml"
    body = [f'[defaults]\ncontent = "{photos}"\nsteps = 4\nwidth = 8\nnum_residual = 1\nstyle_size = 64\n']
    for name, path in zip(names, styles):
        body.append(f'[[models]]\nname = "single-{name}"\nstyle = "{path}"\n')
    body.append(f'[[models]]\nname = "multi"\nnorm = "conditional_instance"\nstyle = ["{styles[0]}", "{styles[1]}"]\n')
    plan.write_text("\n".join(body))
    models = {m.name: m for m in load_plan(plan)}
    assert {n: m.name for n, m in singles_for(models["multi"], list(models.values())).items()} == \
        {"starry": "single-starry", "wave": "single-wave"}
    singles = {}
    for k, name in enumerate(names):
        single = TransformerNet(TransformerConfig(norm="instance", width=8, num_residual=1))
        state = {key: value[k] if value.dim() == 2 and single.state_dict()[key].dim() == 1 else value
                 for key, value in multi.state_dict().items() if key in single.state_dict()}
        single.load_state_dict(state)
        path = tmp_path / f"single-{name}.safetensors"
        save_model(path, single, ModelInfo(single.config, style_name=name))
        singles[name] = (models[f"single-{name}"], path)
    val = sorted((SHARED / "content" / "bsds500" / "test").glob("*.jpg"))[:2]
    rows = study(models["multi"], base_model, singles, val, size=96)
    assert [r["painting"] for r in rows] == names
    for r in rows:
        assert abs(r["kept"]["diff"]) < 1e-4 and abs(r["style"]["diff"]) < 1e-3 * r["style"]["single"], r
    assert rows[0]["style"]["single"] != rows[1]["style"]["single"]  # each measured against its painting
    assert "| starry | single-starry |" in table(rows)
