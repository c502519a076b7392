"""The norm study (`style-transfer ablate`): arms differ only in the norm; the study resumes; bad changes refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from style_transfer import train as train_module
from style_transfer.ablate import StudyError, StudySettings, arm_job, describe, load_study, prepare_study, run_study
from style_transfer.cli import main
from style_transfer.data import ContentImages
from style_transfer.network import TransformerNet
from style_transfer.norms import NORM_NAMES
from style_transfer.spec import ONLY_FOR_NORM, RunSpec
from style_transfer.train import TrainOptions


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(out: Path, content: Path | tuple, style: Path, norms=("instance", "batch"), seeds=(0,),
         **overrides) -> StudySettings:
    """A study of tiny arms; ``overrides`` are run spec settings by their flat names."""
    base = dict(content=content, style=style, steps=2, image_size=32, batch_size=2, width=8, num_residual=1,
                style_size=64, precision="fp32")
    base.update(overrides)
    return StudySettings(out=out, base=RunSpec.from_flat(base), norms=norms, seeds=seeds,
                         options=TrainOptions(device="cpu", checkpoint_every=2, sample_every=2))


def test_arms_differ_only_in_the_norm(tmp_path, content_dir, small_style_path, monkeypatch):
    """Every norm, one seed: same initial conv weights, same batches in the same order, same settings."""
    initial: dict[str, dict[str, torch.Tensor]] = {}
    batches: dict[str, list[tuple[int, int]]] = {}
    current: list[str] = []

    class RecordingNet(TransformerNet):
        def __init__(self, config):
            super().__init__(config)
            current[:] = [config.norm]
            initial[config.norm] = {k: v.clone() for k, v in self.state_dict().items()}

    real_getitem = ContentImages.__getitem__

    def recording_getitem(self, item):
        batches.setdefault(current[0], []).append(tuple(item))
        return real_getitem(self, item)

    monkeypatch.setattr(train_module, "TransformerNet", RecordingNet)
    monkeypatch.setattr(ContentImages, "__getitem__", recording_getitem)
    settings = tiny(tmp_path / "study", content_dir, small_style_path, norms=NORM_NAMES, steps=2)
    outcomes = run_study(settings, progress=False)
    assert [o.status for o in outcomes] == ["trained"] * len(NORM_NAMES)

    # Same weights wherever a parameter exists in both arms with the same shape: every conv (the norm
    # layers' own affine parameters and statistics are the only differences, and they draw no random numbers).
    reference = initial["instance"]
    conv_keys = [k for k, v in reference.items() if v.dim() == 4]
    assert len(conv_keys) == 8  # head, down1, down2, the 2 convs of the one residual block, up1, up2, tail
    for norm, state in initial.items():
        shared = [k for k in state if k in reference and state[k].shape == reference[k].shape]
        assert set(conv_keys) <= set(shared), norm
        for key in shared:
            if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
                assert torch.equal(state[key], reference[key]), (norm, key)
    # Same images, same crops, same order.
    assert len(batches["instance"]) == 2 * 2
    assert all(batches[norm] == batches["instance"] for norm in NORM_NAMES)
    # Same settings but the norm.
    study = load_study(tmp_path / "study")
    prints = {a.norm: arm_job(study, a)[0].fingerprint() for a in study.arms}
    for norm, fp in prints.items():
        # (num_styles is in the conditional network's recipe only: it means nothing to the others)
        network = {k: v for k, v in fp["network"].items() if k not in ONLY_FOR_NORM}
        assert {**fp, "network": {**network, "norm": "instance"}} == prints["instance"], norm
    # ...and the trained checkpoints say so too.
    for arm in study.arms:
        meta = json.loads(load_file_metadata(arm.checkpoint)["training"])
        assert meta["seed"] == 0 and meta["lr"] == 1e-3 and meta["network"]["norm"] == arm.norm


def load_file_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        return fh.metadata()


def test_seeds_change_init_and_data(tmp_path, content_dir, small_style_path, monkeypatch):
    initial = []

    class RecordingNet(TransformerNet):
        def __init__(self, config):
            super().__init__(config)
            initial.append(self.head[1].weight.detach().clone())

    monkeypatch.setattr(train_module, "TransformerNet", RecordingNet)
    run_study(tiny(tmp_path / "s", content_dir, small_style_path, norms=("instance",), seeds=(0, 1), steps=1),
              progress=False)
    assert len(initial) == 2 and not torch.equal(initial[0], initial[1])


def test_layout_resume_and_extension(tmp_path, content_dir, small_style_path):
    from style_transfer.train import train

    settings = tiny(tmp_path / "study", content_dir, small_style_path, steps=4)
    study = prepare_study(settings)
    assert (tmp_path / "study" / "study.json").is_file()
    assert [a.name for a in study.arms] == ["instance-s0", "batch-s0"]
    # Interrupt the batch arm at step 2 (its train state is kept), leave the instance arm untouched.
    batch_arm = study.arms[1]
    spec, run, options = arm_job(study, batch_arm, progress=False)
    train(spec.replace(steps=2), run, options)
    assert [r["status"] for r in describe(study)] == ["new", "partial"]

    outcomes = run_study(settings, progress=False)
    assert [(o.name, o.status, o.steps) for o in outcomes] == [("instance-s0", "trained", 4), ("batch-s0", "resumed", 4)]
    entries = [json.loads(line) for line in batch_arm.log_path.read_text().splitlines()]
    assert [e["step"] for e in entries] == [1, 2, 3, 4]
    for arm in study.arms:
        assert arm.checkpoint == tmp_path / "study" / arm.name / "model.safetensors"
        assert arm.run.state.is_file() and arm.log_path.is_file()
    weights = {a.name: load_file(a.checkpoint) for a in study.arms}

    # Again: nothing to do, nothing rewritten.
    again = run_study(settings, progress=False)
    assert [o.status for o in again] == ["done", "done"]
    for arm in study.arms:
        assert all(torch.equal(v, load_file(arm.checkpoint)[k]) for k, v in weights[arm.name].items())

    # New seeds (and norms) extend the study; a changed shared setting is refused, naming it.
    extended = run_study(tiny(tmp_path / "study", content_dir, small_style_path, steps=4,
                              norms=("instance", "batch", "none"), seeds=(0, 1)), progress=False)
    assert [(o.name, o.status) for o in extended] == [
        ("instance-s0", "done"), ("batch-s0", "done"), ("none-s0", "trained"), ("instance-s1", "trained"),
        ("batch-s1", "trained"), ("none-s1", "trained")]
    with pytest.raises(StudyError, match=r"lr.*steps|steps.*lr"):
        prepare_study(tiny(tmp_path / "study", content_dir, small_style_path, steps=5, lr=1e-2))
    with pytest.raises(StudyError, match="style_weight"):
        prepare_study(tiny(tmp_path / "study", content_dir, small_style_path, steps=4, style_weight=1.0))
    # auto would steer each arm's weight by its own output: arms would differ in more than the norm.
    with pytest.raises(StudyError, match="share one fixed style weight"):
        tiny(tmp_path / "auto", content_dir, small_style_path, style_weight="auto")


def test_several_content_folders_are_linked_not_copied(tmp_path, content_dir, small_style_path):
    second = tmp_path / "more"
    second.mkdir()
    for p in sorted(content_dir.iterdir())[:2]:
        shutil.copy2(p, second / ("b_" + p.name))
    settings = tiny(tmp_path / "study", (content_dir, second), small_style_path, norms=("layer",), steps=1)
    outcomes = run_study(settings, progress=False)
    assert outcomes[0].status == "trained"
    links = sorted((tmp_path / "study" / "layer-s0" / "model.run" / "content").iterdir())
    assert [p.is_symlink() for p in links] == [True, True]
    assert [p.resolve() for p in links] == [content_dir.resolve(), second.resolve()]
    meta = json.loads(load_file_metadata(tmp_path / "study" / "layer-s0" / "model.safetensors")["training"])
    assert meta["num_images"] == 6 + 2


def test_invalid_studies_are_refused(tmp_path, content_dir, small_style_path):
    with pytest.raises(StudyError, match="unknown norm"):
        tiny(tmp_path / "s", content_dir, small_style_path, norms=("instance", "weight"))
    with pytest.raises(StudyError, match="groups"):
        tiny(tmp_path / "s", content_dir, small_style_path, norms=("group",), width=12, groups=8)
    with pytest.raises(StudyError, match="not a study"):
        load_study(tmp_path)
    (tmp_path / "study.json").write_text('{"format": "something-else"}')
    with pytest.raises(StudyError, match="not a style-transfer-study"):
        load_study(tmp_path)


def test_cli_ablate_status_and_resume(tmp_path, content_dir, small_style_path, capsys):
    study = tmp_path / "study"
    args = ["ablate", "--out", str(study), "--content", str(content_dir), "--style", str(small_style_path),
            "--norms", "instance,group", "--seeds", "3", "--steps", "2", "--image-size", "32", "--batch-size", "2",
            "--width", "8", "--residual-blocks", "1", "--style-size", "64", "--precision", "fp32",
            "--device", "cpu", "--checkpoint-every", "1"]
    assert main(args) == 0
    record = json.loads((study / "study.json").read_text())
    assert [a["name"] for a in record["arms"]] == ["instance-s3", "group-s3"]
    assert record["settings"]["precision"] == "fp32" and record["settings"]["width"] == 8
    # --resume needs nothing but the folder; a finished study has nothing to do.
    assert main(["ablate", "--out", str(study), "--resume"]) == 0
    capsys.readouterr()
    assert main(["ablate", "--out", str(study), "--status"]) == 0
    out = capsys.readouterr().out
    assert "instance-s3" in out and "done" in out and "2/2" in out
    # A new study without its essentials, or a bad norm list, is a clear error (exit code 2).
    assert main(["ablate", "--out", str(tmp_path / "other")]) == 2
    assert main(args[:-2] + ["--norms", "instance,nope"]) == 2


@pytest.mark.slow
def test_parallel_jobs_give_the_same_arms(tmp_path, content_dir, small_style_path):
    """--jobs trains arms in separate processes; the results do not depend on it (same thread count: 1)."""
    sequential = run_study(tiny(tmp_path / "a", content_dir, small_style_path), progress=False)
    parallel = run_study(tiny(tmp_path / "b", content_dir, small_style_path), jobs=2, progress=False)
    assert [o.status for o in sequential] == [o.status for o in parallel] == ["trained", "trained"]
    for name in ("instance-s0", "batch-s0"):
        a = load_file(tmp_path / "a" / name / "model.safetensors")
        b = load_file(tmp_path / "b" / name / "model.safetensors")
        assert all(torch.equal(a[key], b[key]) for key in a), name


def test_one_process_per_study(tmp_path, content_dir, small_style_path):
    import fcntl

    (tmp_path / "study").mkdir()
    with open(tmp_path / "study" / ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # as a running `ablate` holds it
        with pytest.raises(StudyError, match="another process"):
            run_study(tiny(tmp_path / "study", content_dir, small_style_path), progress=False)
