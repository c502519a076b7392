"""Distillation (RunSpec.teacher; issue 17): a network trained to reproduce trained single-style models,
one per painting, instead of training on the perceptual loss. What must hold: each step learns from its
own painting's teacher, the log keeps the perceptual terms beside the objective, a resume is bit-exact
and refuses other teachers, a teacher of another painting is refused, and the CLI and the zoo plan take it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from style_transfer.checkpoint import file_sha256, load_model, load_train_state, read_model_info
from style_transfer.cli import main
from style_transfer.losses import LossConfig, PerceptualLoss, gram_matrix
from style_transfer.imageio import load_rgb
from style_transfer.network import TransformerConfig, TransformerNet
from style_transfer.rundir import TERMS, RunDir
from style_transfer.spec import RunSpec
from style_transfer.train import TrainingError, TrainOptions, distill_terms, train
from style_transfer.zoo_build import load_plan
from tests.test_multistyle import photos, styles  # noqa: F401 - shared fixtures (two small paintings, six photos)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = [pytest.mark.skipif(not (SHARED / "styles").is_dir(), reason="../shared/data not available"),
              pytest.mark.usefixtures("one_thread")]

NET = TransformerConfig(norm="conditional_instance", width=8, num_residual=1)


@pytest.fixture
def teachers(styles, make_model, make_checkpoint, tmp_path) -> tuple[Path, Path]:
    """Two single-style instance-norm models of the paintings (recorded by their images' hashes) that paint
    opposite tints (the output layer's bias), so which teacher a style learned from shows in its colour."""
    out = []
    for bias, painting in zip(((0.8, 0.5, 0.2), (0.2, 0.5, 0.8)), styles):
        model = make_model("instance")
        with torch.no_grad():
            model.tail[1].bias.copy_(torch.tensor(bias))
        out.append(make_checkpoint(model=model, path=tmp_path / "teachers" / f"{painting.stem}.safetensors",
                                   style_name=painting.stem, style_sha256=file_sha256(painting)))
    return tuple(out)


def red_minus_blue(image: torch.Tensor) -> float:
    return float(image[:, 0].mean() - image[:, 2].mean())


def tiny(tmp: Path, photos: Path, styles, teachers, **changes) -> tuple[RunSpec, RunDir, TrainOptions]:
    spec = RunSpec(content=photos, style=styles, teacher=teachers, network=NET, loss=LossConfig(style_size=64),
                   steps=4, image_size=32, batch_size=2, lr=1e-2)
    option_names = set(TrainOptions.__dataclass_fields__)
    options = TrainOptions(**{"device": "cpu", "checkpoint_every": 2, "sample_every": 2, "progress": False,
                              **{k: changes.pop(k) for k in list(changes) if k in option_names}})
    return spec.replace(**changes), RunDir.of(tmp / "student.safetensors"), options


def test_the_objective_is_the_l1_to_the_teacher_and_the_perceptual_terms_are_only_measured(make_model, styles):
    student, other = make_model("instance", trained=True, seed=1), make_model("instance", trained=True, seed=2)
    criterion = PerceptualLoss(torch.rand(1, 3, 32, 32), LossConfig(style_size=32))
    batch = torch.rand(2, 3, 32, 32)
    same = distill_terms(student, student, criterion, batch, torch.device("cpu"), "fp32")
    assert float(same["distill"].detach()) == 0.0 and same["total"] is same["distill"]
    terms = distill_terms(student.train(), other, criterion, batch, torch.device("cpu"), "fp32")
    with torch.no_grad():
        expected = (student(batch) - other(batch)).abs().mean()
    assert float(terms["distill"].detach()) == pytest.approx(float(expected), rel=1e-5)
    assert set(TERMS) <= set(terms) and all(torch.isfinite(terms[t]) for t in TERMS)
    terms["total"].backward()
    assert all(p.grad is not None for p in student.parameters())
    assert not any(t.requires_grad for name, t in terms.items() if name not in ("distill", "total"))
    # Unmeasured (TrainOptions.perceptual_every), a step has the objective alone, the same number.
    lean = distill_terms(student, other, criterion, batch, torch.device("cpu"), "fp32", perceptual=False)
    assert set(lean) == {"distill", "total"} and torch.equal(lean["total"].detach(), terms["total"].detach())
    lean = distill_terms(student, other, criterion, batch, torch.device("cpu"), "fp32", texture_weight=1e-3,
                         perceptual=False)
    assert set(lean) == {"distill", "texture", "total"}


def test_the_texture_term_adds_the_gram_distance_to_the_teachers_output(make_model, styles, tmp_path):
    student, other = make_model("instance", trained=True, seed=1), make_model("instance", trained=True, seed=2)
    criterion = PerceptualLoss(torch.rand(1, 3, 32, 32), LossConfig(style_size=32))
    batch = torch.rand(2, 3, 32, 32)
    same = distill_terms(student, student, criterion, batch, torch.device("cpu"), "fp32", texture_weight=1e-3)
    assert float(same["texture"]) == 0.0 and float(same["total"].detach()) == 0.0
    plain = distill_terms(student, other, criterion, batch, torch.device("cpu"), "fp32")
    terms = distill_terms(student, other, criterion, batch, torch.device("cpu"), "fp32", texture_weight=1e-3)
    with torch.no_grad():
        mine, theirs = criterion.vgg(student(batch)), criterion.vgg(other(batch))
    expected = sum(((gram_matrix(mine[n]) - gram_matrix(theirs[n])) ** 2).mean() for n in criterion.config.style_layers)
    assert float(terms["texture"]) == pytest.approx(float(expected), rel=1e-4) and float(terms["texture"]) > 0
    assert float(terms["total"].detach()) == pytest.approx(float(terms["distill"].detach()) + 1e-3 * float(expected),
                                                           rel=1e-4)
    # The perceptual terms it logs are the same as without it (the features are reused, not changed).
    for t in ("content", "style", "tv"):
        assert float(terms[t]) == pytest.approx(float(plain[t]), rel=1e-5)
    with pytest.raises(ValueError, match="needs --teacher"):
        RunSpec(content=tmp_path, style=styles[:1], teacher_style_weight=1.0)


def test_each_style_learns_from_its_own_paintings_teacher(tmp_path, photos, styles, teachers):
    val = sorted((SHARED / "content" / "bsds500" / "test").glob("*.jpg"))[:1]
    result = train(*tiny(tmp_path, photos, styles, teachers, steps=60, sample_every=30, val_photos=tuple(val)))
    assert [e["style_index"] for e in result.history[:4]] == [0, 1, 0, 1]
    assert all(e["distill"] == e["total"] for e in result.history)
    # Measured for the curves in one round of the two paintings out of ten (the default perceptual_every).
    assert [e["step"] for e in result.history if "content" in e] == [1, 2, 21, 22, 41, 42]
    assert all(e["content"] > 0 and e["style"] > 0 for e in result.history if "content" in e)
    first, last = result.history[:10], result.history[-10:]
    assert sum(e["distill"] for e in last) < 0.7 * sum(e["distill"] for e in first)
    student, info = load_model(tmp_path / "student.safetensors")
    assert info.training["teacher_sha256s"] == [file_sha256(t) for t in teachers]
    assert "style_weight_used" not in info.training  # no --style-weight auto controller: no style weight in the loss
    photo = load_rgb(sorted(photos.glob("*.jpg"))[0])
    with torch.no_grad():
        tints = [red_minus_blue(student(photo, torch.eye(2)[k]).clamp(0, 1)) for k in (0, 1)]
    assert tints[0] > 0.2 and tints[1] < -0.2  # the teachers' are +-0.6
    # The validation photos are measured against the teachers, per style.
    last_val = RunDir.of(tmp_path / "student.safetensors").latest_validation()
    assert {"val_psnr", "val_psnr/starry", "val_psnr/wave"} <= set(last_val)
    assert last_val["val_psnr"] == pytest.approx((last_val["val_psnr/starry"] + last_val["val_psnr/wave"]) / 2)


def test_measuring_the_perceptual_terms_now_and_then_changes_the_log_alone(tmp_path, photos, styles, teachers):
    every = train(*tiny(tmp_path / "a", photos, styles, teachers, steps=6, perceptual_every=1))
    sparse = train(*tiny(tmp_path / "b", photos, styles, teachers, steps=6, perceptual_every=2))
    a, b = load_file(tmp_path / "a" / "student.safetensors"), load_file(tmp_path / "b" / "student.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [e["total"] for e in sparse.history] == [e["total"] for e in every.history]
    assert all(set(TERMS) <= set(e) for e in every.history)
    # Whole rounds of the two paintings: each is measured as often.
    assert [e["step"] for e in sparse.history if "content" in e] == [1, 2, 5, 6]
    for t in TERMS:
        assert sparse.losses[t] == pytest.approx(
            sum(e[t] for e in every.history if t == "total" or e["step"] in (1, 2, 5, 6))
            / (6 if t == "total" else 4))
    assert {"style/starry", "style/wave"} <= set(read_model_info(tmp_path / "b" / "student.safetensors").losses)


def test_distilled_resume_is_bit_exact_and_refuses_other_teachers(tmp_path, photos, styles, teachers,
                                                                   make_checkpoint):
    straight = train(*tiny(tmp_path / "a", photos, styles, teachers, steps=6, checkpoint_every=3))
    train(*tiny(tmp_path / "b", photos, styles, teachers, steps=3, checkpoint_every=3))
    resumed = train(*tiny(tmp_path / "b", photos, styles, teachers, steps=6, checkpoint_every=3), resume=True)
    a, b = load_file(tmp_path / "a" / "student.safetensors"), load_file(tmp_path / "b" / "student.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [e["total"] for e in resumed.history] == [e["total"] for e in straight.history]
    # With the texture term: logged beside the L1, and part of the recipe a resume must match.
    textured = train(*tiny(tmp_path / "c", photos, styles, teachers, steps=2, teacher_style_weight=1e-3))
    assert all(e["total"] == pytest.approx(e["distill"] + 1e-3 * e["texture"], rel=1e-4) for e in textured.history)
    with pytest.raises(TrainingError, match="teacher_style_weight"):
        train(*tiny(tmp_path / "c", photos, styles, teachers, steps=4), resume=True)
    other = make_checkpoint("instance", path=tmp_path / "other" / "starry.safetensors", trained=True, seed=5,
                            style_name="starry", style_sha256=file_sha256(styles[0]))
    with pytest.raises(TrainingError, match="teacher"):
        train(*tiny(tmp_path / "b", photos, styles, (other, teachers[1]), steps=8), resume=True)


def test_a_teacher_must_be_a_single_style_model_of_its_own_painting(tmp_path, photos, styles, teachers,
                                                                    make_checkpoint):
    with pytest.raises(ValueError, match="one --teacher per --style"):
        tiny(tmp_path, photos, styles, teachers[:1])
    with pytest.raises(TrainingError, match="another painting"):
        train(*tiny(tmp_path, photos, styles, teachers[::-1], steps=1))
    multi = make_checkpoint(model=TransformerNet(dataclasses.replace(NET, num_styles=2)),
                            path=tmp_path / "multi.safetensors", style_sha256=file_sha256(styles[0]))
    with pytest.raises(TrainingError, match="single-style"):
        train(*tiny(tmp_path, photos, styles, (multi, teachers[1]), steps=1))
    with pytest.raises(FileNotFoundError, match="--teacher"):
        train(*tiny(tmp_path, photos, styles, (tmp_path / "missing.safetensors", teachers[1]), steps=1))


def test_cli_distills_from_teachers_named_in_the_weights_folder_with_the_distillation_defaults(
        tmp_path, photos, styles, teachers, make_checkpoint):
    weights = teachers[0].parent
    flagship = make_checkpoint("instance", path=weights / "starry-night.safetensors", trained=True, seed=3)
    out = tmp_path / "student.safetensors"
    args = ["train", "--content", str(photos), "--style", str(styles[0]), "--style", str(styles[1]),
            "--teacher", "starry", "--teacher", "wave", "--weights", str(weights), "--norm", "conditional_instance",
            "--width", "8", "--residual-blocks", "1", "--style-size", "64", "--image-size", "32",
            "--batch-size", "2", "--steps", "2", "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    training = read_model_info(out).training
    # From the flagship (--init auto) at zoo.DISTILL_LR, warmed up, the pairs at 10x; a fixed style weight.
    assert training["init_sha256"] == file_sha256(flagship)
    assert training["lr"] == 5e-4 and training["lr_warmup"] == 100 and training["affine_lr"] == 5e-3
    assert training["loss"]["style_weight"] != "auto"
    assert training["teacher_sha256s"] == [file_sha256(t) for t in teachers]
    # It ships the average of its weights (zoo.DISTILL_EMA): the resumes below keep it without the flag.
    from style_transfer.zoo import DISTILL_EMA

    assert training["ema_decay"] == DISTILL_EMA
    state = load_train_state(RunDir.of(out).state)
    assert "ema" in state and not all(torch.equal(state["ema"][k], state["model"][k]) for k in state["model"])
    # --ema-decay 0 turns it off; a number replaces it; without --teacher there is none.
    from style_transfer.cli import _train_spec, build_parser

    def decay(*extra: str, teach: bool = True) -> float | None:
        flags = args[:-4] if teach else [a for a in args[:-4] if a not in ("--teacher", "starry", "wave")]
        return _train_spec(build_parser().parse_args([*flags, "--out", str(tmp_path / "x.safetensors"), *extra]),
                           RunDir.of(tmp_path / "x.safetensors")).ema_decay

    assert decay("--ema-decay", "0") is None and decay("--ema-decay", "0.9") == 0.9
    assert decay(teach=False) is None
    # Its log holds the perceptual terms of the first round of paintings only (the default, 1 in 10), unless
    # asked for them every step (step 3 is in the second round).
    assert main([*args[:-4], "--steps", "3", "--out", str(out), "--resume", "--device", "cpu",
                 "--perceptual-every", "1"]) == 0
    assert read_model_info(out).steps == 3
    assert ["content" in e for e in RunDir.of(out).read_log()] == [True, True, True]
    assert main([*args[:-4], "--steps", "5", "--out", str(out), "--resume", "--device", "cpu"]) == 0
    assert ["content" in e for e in RunDir.of(out).read_log()] == [True, True, True, False, False]


def test_a_zoo_plan_entry_names_its_teachers_relative_to_the_plan(tmp_path, styles, teachers):
    (tmp_path / "photos").mkdir()
    plan = tmp_path / "plan.toml"
    plan.write_text(f'[[models]]\nname = "d"\ncontent = "photos"\nstyle = ["{styles[0]}", "{styles[1]}"]\n'
                    f'teacher = ["teachers/starry.safetensors", "teachers/wave.safetensors"]\n'
                    'norm = "conditional_instance"\nsteps = 10\n')
    (model,) = load_plan(plan)
    assert model.spec.teacher == tuple(t.resolve() for t in teachers)


def test_teacher_match_benchmark_measures_each_style_against_its_own_teacher(tmp_path, styles, make_model,
                                                                            make_checkpoint, capsys):
    """A network whose style k is exactly teacher k (shared convolutions, each teacher's norm affine as
    that style's (gamma, beta)) matches both; the same network with its styles' teachers swapped does not."""
    from benchmarks import teacher_match

    first = make_model("instance", trained=True, seed=1)
    second = make_model("instance", trained=True, seed=1)
    with torch.no_grad():
        for module in second.modules():
            if type(module).__name__.endswith("Norm2d"):
                module.weight.mul_(1.5)
    teachers = [make_checkpoint(model=m, path=tmp_path / f"{p.stem}.safetensors", style_name=p.stem,
                                style_sha256=file_sha256(p)) for m, p in zip((first, second), styles)]
    student = TransformerNet(dataclasses.replace(NET, num_styles=2))
    own = student.state_dict()
    a, b = first.state_dict(), second.state_dict()
    student.load_state_dict({k: torch.stack([a[k], b[k]]) if own[k].dim() == 2 and a[k].dim() == 1 else a[k]
                             for k in own})
    checkpoint = make_checkpoint(model=student, path=tmp_path / "student.safetensors",
                                 extra={"styles": [p.stem for p in styles]})
    photo = sorted((SHARED / "content" / "bsds500" / "test").glob("*.jpg"))[0]
    plan = tmp_path / "plan.toml"
    for order, name in (((0, 1), "right"), ((1, 0), "swapped")):
        plan.write_text(f'[[models]]\nname = "{name}"\ncontent = "."\nstyle = ["{styles[0]}", "{styles[1]}"]\n'
                        f'teacher = ["{teachers[order[0]]}", "{teachers[order[1]]}"]\n'
                        'norm = "conditional_instance"\nsteps = 1\n')
        out = tmp_path / name
        assert teacher_match.main(["--plan", str(plan), "--multi", name, "--checkpoint", str(checkpoint),
                                   "--photos", str(photo), "--size", "48", "--out", str(out),
                                   "--json", str(out / "m.json")]) == 0
        result = json.loads((out / "m.json").read_text())
        values = list(result["mean_psnr"].values())
        assert all(v > 60 for v in values) if name == "right" else all(v < 40 for v in values)
        assert (out / f"{photo.stem}.jpg").is_file()
    # A photo path that does not exist is a usage error (exit 2) naming it, not a traceback.
    with pytest.raises(SystemExit) as stopped:
        teacher_match.main(["--plan", str(plan), "--multi", name, "--checkpoint", str(checkpoint),
                            "--photos", str(tmp_path / "nope.jpg")])
    assert stopped.value.code == 2 and "nope.jpg" in capsys.readouterr().err


def test_distill_balance_benchmark_prints_the_weight_that_levels_the_two_pulls(tmp_path, photos, styles, teachers,
                                                                               capsys):
    from benchmarks import distill_balance

    train(*tiny(tmp_path, photos, styles, teachers, steps=2))
    plan = tmp_path / "plan.toml"
    plan.write_text(f'[[models]]\nname = "d"\ncontent = "{photos}"\nstyle = ["{styles[0]}", "{styles[1]}"]\n'
                    f'teacher = ["{teachers[0]}", "{teachers[1]}"]\nnorm = "conditional_instance"\nwidth = 8\n'
                    'num_residual = 1\nimage_size = 32\nstyle_size = 64\nsteps = 2\n')
    assert distill_balance.main([str(tmp_path / "student.safetensors"), "--plan", str(plan), "--multi", "d",
                                 "--batches", "1"]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| starry")
            or line.startswith("| wave")]
    assert len(rows) == 2
    for row in rows:
        l1, texture, weight = (float(v) for v in row[2:5])
        assert l1 > 0 and texture > 0 and weight == pytest.approx(l1 / texture, rel=0.05)
