"""Training: a real short run on ../shared/data, resume equivalence, divergence, bad data, torchrun/gloo."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from style_transfer.checkpoint import file_sha256, load_model, load_train_state
from style_transfer.grid import progress_sheet
from style_transfer.imageio import load_rgb, save_image
from style_transfer.losses import LossConfig, PerceptualLoss
from style_transfer.network import TransformerConfig
from style_transfer.rundir import RunDir
from style_transfer.spec import RunSpec
from style_transfer.train import TrainingError, TrainOptions, train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
STYLE = SHARED / "styles" / "vangogh_starry_night_1889.jpg"
pytestmark = pytest.mark.skipif(not STYLE.exists(), reason="../shared/data not available")

TINY_NET = TransformerConfig(norm="instance", width=8, num_residual=1)
TINY_LOSS = LossConfig(style_size=64)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Eight real photos from bsds500/train."""
    folder = tmp_path_factory.mktemp("photos")
    for src in sorted((SHARED / "content" / "bsds500" / "train").glob("*.jpg"))[:8]:
        shutil.copy(src, folder / src.name)
    return folder


_OPTIONS = {f for f in TrainOptions.__dataclass_fields__}


def settings(tmp: Path, content: Path, **overrides) -> tuple[RunSpec, RunDir, TrainOptions]:
    """A tiny run in ``tmp``: its spec, run folder and options, for ``train(*settings(...))``."""
    spec = dict(content=content, style=STYLE, network=TINY_NET, loss=TINY_LOSS, steps=4, image_size=32, batch_size=2)
    options = dict(device="cpu", checkpoint_every=2, sample_every=2, progress=False)
    for key, value in overrides.items():
        (options if key in _OPTIONS else spec)[key] = value
    return RunSpec(**spec), RunDir.of(tmp / "model.safetensors"), TrainOptions(**options)


def test_short_real_training_lowers_the_loss(tmp_path, photos):
    result = train(*settings(tmp_path, photos, steps=30, image_size=48, checkpoint_every=10, sample_every=15))
    totals = [e["total"] for e in result.history]
    assert len(totals) == 30
    assert sum(totals[-5:]) / 5 < 0.5 * sum(totals[:5]) / 5
    model, info = load_model(tmp_path / "model.safetensors")
    assert info.steps == 30 and info.norm == "instance" and info.style_name == STYLE.stem
    assert set(info.losses) == {"content", "style", "tv", "total"}
    # every step logged with every term; samples written at the sample interval
    entries = [json.loads(l) for l in (tmp_path / "model.run" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in entries] == list(range(1, 31))
    assert all({"content", "style", "tv", "total"} <= set(e) for e in entries)
    samples = tmp_path / "model.run" / "samples"
    assert sorted(p.name for p in samples.iterdir()) == ["progress.jpg", "step_000015.png", "step_000030.png"]
    # progress.jpg: the 48 px crop, then its stylization at each of the 2 sample steps, under labels.
    with Image.open(samples / "progress.jpg") as sheet:
        assert sheet.size == (4 + 3 * (48 + 4), 22 + 4 + 48 + 4)


def test_the_progress_sheet_spreads_the_steps_and_keeps_the_latest(tmp_path):
    run = RunDir.of(tmp_path / "m.safetensors")
    run.samples.mkdir(parents=True)
    for step in range(50, 1050, 50):  # 20 sample steps, each a crop beside two styles' outputs
        panels = [torch.full((1, 3, 8, 8), v) for v in (0.1, step / 2000, 1 - step / 2000)]
        save_image(torch.cat(panels, dim=-1), run.sample_path(step))
    (run.samples / "step_000050_val.jpg").write_bytes(b"not a crop sample")
    chosen = run.sample_steps(upto=900, most=10)
    assert [s for s, _ in chosen][0] == 50 and [s for s, _ in chosen][-1] == 900 and len(chosen) == 10
    assert [s for s, _ in run.sample_steps(upto=120)] == [50, 100]  # a resumed run's later samples are not its own
    sheet = progress_sheet([(s, load_rgb(p)) for s, p in chosen], cell=8)
    assert sheet.height == 22 + 4 + 2 * (8 + 4)  # two rows: one per style
    assert sheet.width == 4 + 11 * (8 + 4)  # the photo, then 10 steps


# A training step's shape in small: a 33.5 MB activation (above glibc's largest mmap threshold, 32 MiB, as a
# 256 px batch of 4 at width 32 is), its backward, all freed; prints the minor page faults of steps 3-6.
_FAULTS = """
import resource, sys, torch
from style_transfer.device import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()
torch.set_num_threads(1)
x, w = torch.rand(4, 32, 256, 256), torch.rand(32, 32, 3, 3, requires_grad=True)
def step():
    y = torch.nn.functional.conv2d(x, w, padding=1).relu()
    (y * y).mean().backward()
step(); step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="keep_freed_memory tunes glibc's malloc")
def test_cpu_training_keeps_freed_memory_instead_of_faulting_it_in_every_step(tmp_path, photos, monkeypatch):
    faults = {mode: int(subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True,
                                       check=True, cwd=Path(__file__).parents[1]).stdout)
              for mode in ("glibc", "kept")}
    block = 4 * 32 * 256 * 256 * 4 // 4096  # pages of one activation
    # glibc maps every large block afresh each step and faults its pages in (~11 blocks a step here);
    # kept, the steps after the first reuse the heap's pages.
    assert faults["glibc"] > 4 * block and faults["kept"] < faults["glibc"] / 4, faults
    calls = []
    monkeypatch.setattr("style_transfer.train.keep_freed_memory", lambda: calls.append(1) or True)
    train(*settings(tmp_path, photos, steps=1))
    assert calls == [1]


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_resume_gives_identical_weights(tmp_path, photos, norm):
    net = TransformerConfig(norm=norm, width=8, num_residual=1)
    straight = train(*settings(tmp_path / "a", photos, network=net, steps=6, checkpoint_every=3))
    # Interrupted after 3 steps (the checkpoint at step 3), then resumed to 6.
    train(*settings(tmp_path / "b", photos, network=net, steps=3, checkpoint_every=3))
    resumed = train(*settings(tmp_path / "b", photos, network=net, steps=6, checkpoint_every=3), resume=True)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [e["total"] for e in resumed.history] == [e["total"] for e in straight.history]
    log = (tmp_path / "b" / "model.run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in log] == list(range(1, 7))


def test_resume_refuses_changed_settings(tmp_path, photos):
    train(*settings(tmp_path, photos, steps=2))
    with pytest.raises(TrainingError, match="lr"):
        train(*settings(tmp_path, photos, steps=4, lr=5e-3), resume=True)


def test_non_finite_loss_stops_and_keeps_the_good_checkpoint(tmp_path, photos, monkeypatch):
    real_forward = PerceptualLoss.forward
    calls = {"n": 0}

    def poisoned(self, output, content):
        calls["n"] += 1
        terms = real_forward(self, output, content)
        if calls["n"] == 4:  # the 4th step diverges, after the checkpoint of step 2
            terms = {k: v * float("nan") for k, v in terms.items()}
        return terms

    monkeypatch.setattr(PerceptualLoss, "forward", poisoned)
    out = tmp_path / "model.safetensors"
    with pytest.raises(TrainingError, match="non-finite at step 4"):
        train(*settings(tmp_path, photos, steps=6, checkpoint_every=2))
    # step 3's checkpoint is not due (every 2), so the last good checkpoint is step 2's, untouched
    assert load_train_state(tmp_path / "model.run" / "train_state.pt")["step"] == 2
    model, info = load_model(out)
    assert info.steps == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_finishes_the_step_checkpoints_it_and_resume_matches(tmp_path, photos, monkeypatch, signum):
    straight = train(*settings(tmp_path / "a", photos, steps=6, checkpoint_every=100))
    real_forward = PerceptualLoss.forward
    calls = {"n": 0}

    def signalled(self, output, content):
        calls["n"] += 1
        if calls["n"] == 3:  # arrives in the middle of step 3, long before any periodic checkpoint
            os.kill(os.getpid(), signum)
        return real_forward(self, output, content)

    monkeypatch.setattr(PerceptualLoss, "forward", signalled)
    before = signal.getsignal(signum)
    with pytest.raises(KeyboardInterrupt):
        train(*settings(tmp_path / "b", photos, steps=6, checkpoint_every=100))
    assert signal.getsignal(signum) is before  # handlers restored
    assert load_train_state(tmp_path / "b" / "model.run" / "train_state.pt")["step"] == 3
    assert load_model(tmp_path / "b" / "model.safetensors")[1].steps == 3
    monkeypatch.setattr(PerceptualLoss, "forward", real_forward)
    resumed = train(*settings(tmp_path / "b", photos, steps=6, checkpoint_every=100), resume=True)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [e["total"] for e in resumed.history] == [e["total"] for e in straight.history]


def test_unreadable_content_images_are_skipped_and_counted(tmp_path, photos, caplog):
    content = tmp_path / "content"
    shutil.copytree(photos, content)
    (content / "garbage.jpg").write_bytes(b"not an image at all")
    real = next(photos.glob("*.jpg")).read_bytes()
    (content / "nested").mkdir()
    (content / "nested" / "truncated.jpg").write_bytes(real[: len(real) // 3])
    with caplog.at_level("WARNING"):
        result = train(*settings(tmp_path, content, steps=2))
    assert result.skipped_images == 2
    assert "garbage.jpg" in caplog.text and "truncated.jpg" in caplog.text


def test_bf16_autocast_trains(tmp_path, photos):
    result = train(*settings(tmp_path, photos, steps=2, precision="bf16"))
    assert all(torch.isfinite(torch.tensor(e["total"])) for e in result.history)


def test_epochs_set_the_step_count(tmp_path, photos):
    # 8 images, batch 2 -> 4 steps per epoch
    result = train(*settings(tmp_path, photos, steps=None, epochs=0.5))
    assert result.steps == 2


def _cli_train(args: list[str], out: Path, photos: Path, launcher: list[str]) -> None:
    cmd = launcher + ["-m", "style_transfer", "train", "--content", str(photos), "--style", str(STYLE),
                      "--out", str(out), "--steps", "3", "--image-size", "32", "--width", "8",
                      "--residual-blocks", "1", "--style-size", "64", "--device", "cpu", "--precision", "fp32", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
# The two-style arm sets --affine-lr to --lr (still its own param group, as train's 10x default makes it):
# the weight tolerance below is about ten steps of one rate.
@pytest.mark.parametrize("network", [[], ["--norm", "conditional_instance", "--affine-lr", "1e-3", "--style",
                                          str(SHARED / "styles" / "hokusai_great_wave_c1831.jpg")],
                                     ["--teacher", "TEACHER"]],
                         ids=["instance", "two-style conditional", "distilled"])
def test_torchrun_two_processes_gloo_matches_one_process(tmp_path, photos, free_port, network, make_checkpoint):
    """2 processes x batch 2 (DDP, gloo) see the same images as 1 process x batch 4 and learn the same;
    a multi-style network too (every process trains the same style at each step), and one distilled from
    a teacher (every process runs it on its own half of the batch)."""
    if "TEACHER" in network:
        teacher = make_checkpoint("instance", trained=True, style_sha256=file_sha256(STYLE))
        network = [str(teacher) if a == "TEACHER" else a for a in network]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    _cli_train(["--batch-size", "2", *network], tmp_path / "ddp.safetensors", photos, torchrun)
    _cli_train(["--batch-size", "4", *network], tmp_path / "one.safetensors", photos, [sys.executable])
    ddp_log = [json.loads(l) for l in (tmp_path / "ddp.run" / "log.jsonl").read_text().splitlines()]
    one_log = [json.loads(l) for l in (tmp_path / "one.run" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in ddp_log] == [1, 2, 3]  # rank 0 alone writes the log
    for d, o in zip(ddp_log, one_log):
        assert d["total"] == pytest.approx(o["total"], rel=1e-4)
    a, b = load_file(tmp_path / "ddp.safetensors"), load_file(tmp_path / "one.safetensors")
    # Adam's first steps move each weight by ~lr; float reduction order may flip a near-zero gradient.
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-2


def test_sync_bn_on_cpu_is_refused_clearly(tmp_path, photos, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    net = TransformerConfig(norm="batch", width=8, num_residual=1)
    with pytest.raises(ValueError, match="SyncBatchNorm"):
        train(*settings(tmp_path, photos, network=net, sync_bn=True))


@pytest.mark.parametrize("local_rank", ["0", "1"])
def test_a_bare_cuda_device_is_given_this_process_gpu_index(monkeypatch, local_rank):
    # CI has no GPU, so the CUDA calls are stood in for; torch's own index check (which rejected a
    # bare "cuda" on the first real GPU run) is kept.
    import style_transfer.train as train_module
    from torch.cuda._utils import _get_device_index

    chosen = []
    monkeypatch.setattr(train_module, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(_get_device_index(d)))
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    env = train_module._Distributed("auto")
    assert env.device == torch.device("cuda", int(local_rank))
    assert chosen == [int(local_rank)]


def test_gradient_clipping_bounds_every_update_and_the_log_records_the_norm(tmp_path, photos):
    from style_transfer.train import optimizer_step

    # The helper: returns the norm before clipping, and leaves the gradient clipped to the bound.
    weight = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    norm = optimizer_step(optimizer, (weight * torch.tensor([3.0, 4.0, 0.0])).sum(), clip=1.0)
    assert norm == pytest.approx(5.0)
    assert torch.allclose(weight.detach(), -torch.tensor([0.6, 0.8, 0.0]))  # one SGD step on the clipped gradient

    # In a run: every step logs its gradient norm; the bound is part of the settings a resume must match.
    result = train(*settings(tmp_path, photos, steps=2, clip_grad_norm=1e-3))
    assert all(e["grad_norm"] > 1e-3 for e in result.history)  # the bound is tight enough to act
    assert settings(tmp_path, photos)[0].fingerprint().keys() < result_fingerprint(tmp_path).keys()
    with pytest.raises(TrainingError, match="clip_grad_norm"):
        train(*settings(tmp_path, photos, steps=4, clip_grad_norm=2e-3), resume=True)
    with pytest.raises(ValueError, match="clip_grad_norm"):
        settings(tmp_path, photos, clip_grad_norm=0)


def result_fingerprint(tmp: Path) -> dict:
    return load_train_state(tmp / "model.run" / "train_state.pt")["settings"]


def test_bn_frozen_steps_keep_the_statistics_and_train_the_weights(tmp_path, photos):
    """The last N steps normalize with the running statistics and leave them as they were, while the
    weights go on learning (issue 16: the batch-norm arm's train/inference gap)."""
    net = TransformerConfig(norm="batch", width=8, num_residual=1)
    train(*settings(tmp_path / "a", photos, network=net, steps=2))
    frozen = train(*settings(tmp_path / "b", photos, network=net, steps=4, bn_frozen_steps=2))
    free = train(*settings(tmp_path / "c", photos, network=net, steps=4))
    at_2, after_frozen = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    after_free = load_file(tmp_path / "c" / "model.safetensors")
    stats = [k for k in at_2 if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in at_2 if k.endswith("weight") and at_2[k].dim() == 4]
    assert stats and weights
    assert all(torch.equal(at_2[k], after_frozen[k]) for k in stats)  # steps 3-4 left them alone
    assert not all(torch.equal(at_2[k], after_free[k]) for k in stats)  # as they would have moved
    assert not any(torch.equal(at_2[k], after_frozen[k]) for k in weights)  # while the weights learned
    assert [e["total"] for e in frozen.history[:2]] == [e["total"] for e in free.history[:2]]
    # The optimizer's moments start over at the freeze (Adam's step counts: 2 of the 4 steps), and only then.
    counts = {float(v["step"]) for v in load_train_state(tmp_path / "b" / "model.run" / "train_state.pt")
              ["optimizer"]["state"].values()}
    assert counts == {2.0}
    assert {float(v["step"]) for v in load_train_state(tmp_path / "c" / "model.run" / "train_state.pt")
            ["optimizer"]["state"].values()} == {4.0}
    # Only batch norm has statistics to freeze: an instance-norm run is unchanged by the setting.
    a = train(*settings(tmp_path / "d", photos, steps=3, bn_frozen_steps=2))
    b = train(*settings(tmp_path / "e", photos, steps=3))
    assert [e["total"] for e in a.history] == [e["total"] for e in b.history]


def test_the_frozen_steps_ramp_the_learning_rate_up_again(tmp_path, photos, monkeypatch):
    """Restarted moments make a first step lr-sized on every weight: the frozen steps' rate ramps from
    1/W over their first W steps (W = 50, or half the frozen steps), for batch norm only."""
    seen = []
    step = torch.optim.Adam.step

    def recording(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    net = TransformerConfig(norm="batch", width=8, num_residual=1)
    train(*settings(tmp_path / "a", photos, network=net, steps=6, bn_frozen_steps=4, lr=1e-3))
    assert seen == pytest.approx([1e-3, 1e-3, 5e-4, 1e-3, 1e-3, 1e-3])
    seen.clear()
    train(*settings(tmp_path / "b", photos, steps=6, bn_frozen_steps=4, lr=1e-3))  # instance norm: no ramp
    assert seen == pytest.approx([1e-3] * 6)


@pytest.mark.slow
def test_two_nodes_with_c10d_rendezvous_match_one_process_and_resume_on_one(tmp_path, photos, free_port):
    """2 "nodes" x 1 process (torchrun, c10d rendezvous on loopback, gloo) x batch 2 train like 1 process
    x batch 4, and their resume state continues on one process with the same global batch."""
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
            "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}", "--rdzv_id", "two-nodes"]
    out = tmp_path / "nodes.safetensors"
    args = ["-m", "style_transfer", "train", "--content", str(photos), "--style", str(STYLE), "--out", str(out),
            "--steps", "2", "--batch-size", "2", "--image-size", "32", "--width", "8", "--residual-blocks", "1",
            "--style-size", "64", "--device", "cpu", "--precision", "fp32", "--checkpoint-every", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(node + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for _ in range(2)]
    for proc in nodes:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output[-3000:]
    assert load_train_state(tmp_path / "nodes.run" / "train_state.pt")["world_size"] == 2
    # Resumed on one process with the global batch (4); a resume that changes the global batch is refused.
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run([sys.executable] + args[:-2] + ["--steps", "4", "--batch-size", "2", "--resume"],
                       capture_output=True, check=True, timeout=300, env=env)
    _cli_train(["--batch-size", "4", "--steps", "4", "--resume"], out, photos, [sys.executable])
    _cli_train(["--batch-size", "4", "--steps", "4"], tmp_path / "one.safetensors", photos, [sys.executable])
    nodes_log = [json.loads(l) for l in (tmp_path / "nodes.run" / "log.jsonl").read_text().splitlines()]
    one_log = [json.loads(l) for l in (tmp_path / "one.run" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in nodes_log] == [1, 2, 3, 4]
    for a, b in zip(nodes_log, one_log):
        assert a["total"] == pytest.approx(b["total"], rel=1e-4)
    a, b = load_file(out), load_file(tmp_path / "one.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-2


def test_spike_watch_flags_a_step_far_above_the_recent_median_once_per_window():
    from style_transfer.train import SpikeWatch

    watch = SpikeWatch(window=10, factor=20)
    assert [watch.check(s, 50.0) for s in range(10)] == [None] * 10  # filling the window: nothing to compare
    assert watch.check(10, 900.0) is None  # 18x: the spread of a healthy run
    assert watch.check(11, 5000.0) == pytest.approx(100.0)
    assert watch.check(12, 9000.0) is None  # the same divergence: warned once per window
    assert [watch.check(s, 50.0) for s in range(13, 21)] == [None] * 8
    assert watch.check(21, 1e9) is not None  # a window later, a new warning


def test_training_warns_when_the_gradient_norm_spikes(tmp_path, content_dir, small_style_path, monkeypatch, caplog):
    """The trainer feeds every step's gradient norm to the watch and says what to do, by clipping."""
    import style_transfer.train as train_module

    real = train_module.optimizer_step
    steps = iter(range(1, 100))

    def spiking(optimizer, total, clip=None):
        norm = real(optimizer, total, clip)
        return norm * 1000 if next(steps) == 8 else norm

    monkeypatch.setattr(train_module, "optimizer_step", spiking)
    monkeypatch.setattr(train_module, "SPIKE_WINDOW", 5)
    spec = RunSpec(content=content_dir, style=small_style_path, steps=9, image_size=32, batch_size=2,
                   network=TransformerConfig(width=8, num_residual=1), loss=LossConfig(style_size=64))
    options = TrainOptions(device="cpu", checkpoint_every=100, sample_every=100, progress=False)
    with caplog.at_level("WARNING"):
        result = train(spec, RunDir.of(tmp_path / "a.safetensors"), options)
    (warning,) = [r.getMessage() for r in caplog.records if "gradient norm" in r.getMessage()]
    assert warning.startswith("step 8:") and "--clip-grad-norm" in warning
    assert result.history[7]["grad_norm"] > 100 * result.history[6]["grad_norm"]


def test_ema_checkpoint_holds_the_warmed_up_average_of_the_trained_weights(tmp_path, photos):
    """With ema_decay the checkpoint (what ships) is the moving average of the weights after every step, at
    the decay min(D, (1 + t) / (10 + t)); the training itself, and so the resume state's weights, are the
    run's without it."""
    from style_transfer.network import TransformerNet

    decay = 0.2  # the warm-up's 2/11 at the first update, then capped at D: both branches run
    raw = []
    for steps in (1, 2, 3):  # the trained weights after each step (the same run, deterministic)
        train(*settings(tmp_path / f"raw{steps}", photos, steps=steps))
        raw.append(load_file(tmp_path / f"raw{steps}" / "model.safetensors"))
    averaged = train(*settings(tmp_path / "ema", photos, steps=3, ema_decay=decay))
    torch.manual_seed(0)  # the run's seed: its initial weights
    expected = {k: v.clone() for k, v in TransformerNet(TINY_NET).state_dict().items()}
    for t, weights in enumerate(raw, start=1):
        d = min(decay, (1 + t) / (10 + t))
        expected = {k: (v.lerp(weights[k], 1 - d) if v.is_floating_point() else weights[k]) for k, v in expected.items()}
    shipped = load_file(tmp_path / "ema" / "model.safetensors")
    state = load_train_state(tmp_path / "ema" / "model.run" / "train_state.pt")
    assert shipped.keys() == expected.keys()
    for key, value in shipped.items():
        assert torch.allclose(value, expected[key], rtol=0, atol=1e-6), key
        assert torch.equal(state["ema"][key], value), key  # the resume state keeps the same average
        assert torch.equal(state["model"][key], raw[-1][key]), key  # and the trained weights, unchanged
    moved = [k for k in shipped if shipped[k].is_floating_point() and not torch.equal(shipped[k], raw[-1][k])]
    assert moved  # the average is not the last step's weights
    assert [e["total"] for e in averaged.history] == \
        [e["total"] for e in train(*settings(tmp_path / "again", photos, steps=3)).history]


def test_ema_arms_writes_the_trained_weights_of_an_averaged_run(tmp_path, photos, capsys):
    """benchmarks/ema_arms.py: the second arm of an A/B of the average is the run without it, bit for bit."""
    from benchmarks import ema_arms

    train(*settings(tmp_path / "raw", photos, steps=3))
    train(*settings(tmp_path / "ema", photos, steps=3, ema_decay=0.5))
    out = tmp_path / "trained.safetensors"
    assert ema_arms.main([str(tmp_path / "ema" / "model.safetensors"), str(out)]) == 0
    raw, trained = load_file(tmp_path / "raw" / "model.safetensors"), load_file(out)
    assert raw.keys() == trained.keys() and all(torch.equal(raw[k], trained[k]) for k in raw)
    _, info = load_model(out)
    _, averaged = load_model(tmp_path / "ema" / "model.safetensors")
    assert averaged.training["ema_decay"] == 0.5 and "ema_decay" not in info.training
    assert info.steps == 3 and {**info.training, "ema_decay": 0.5} == averaged.training
    # A run without an average has no second arm: its checkpoint is already the trained weights.
    assert ema_arms.main([str(tmp_path / "raw" / "model.safetensors"), str(tmp_path / "x.safetensors")]) == 2
    assert "keeps no average" in capsys.readouterr().err and not (tmp_path / "x.safetensors").exists()


def test_ema_resumes_bit_exactly_and_a_changed_decay_is_refused(tmp_path, photos):
    train(*settings(tmp_path / "a", photos, steps=4, checkpoint_every=2, ema_decay=0.5))
    train(*settings(tmp_path / "b", photos, steps=2, checkpoint_every=2, ema_decay=0.5))
    train(*settings(tmp_path / "b", photos, steps=4, checkpoint_every=2, ema_decay=0.5), resume=True)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(TrainingError, match="ema_decay"):
        train(*settings(tmp_path / "b", photos, steps=6, ema_decay=0.9), resume=True)
    with pytest.raises(TrainingError, match="ema_decay"):  # nor resumed without the average it kept
        train(*settings(tmp_path / "b", photos, steps=6), resume=True)


@pytest.mark.parametrize("decay", [0, 1, -0.5, 1.5])
def test_ema_decay_outside_0_1_is_refused(tmp_path, photos, decay):
    with pytest.raises(ValueError, match="ema_decay must be between 0 and 1"):
        settings(tmp_path, photos, ema_decay=decay)


def test_ema_validation_measures_the_average_and_the_style_controller_the_trained_weights(
        tmp_path, photos, monkeypatch):
    """The logged validation is of what ships (the average); --style-weight auto steers the weights it
    trains, so it measures those, even at a step where the validation has just measured the average."""
    from style_transfer.validation import Validator

    seen = {"measure": [], "kept": []}
    for name in seen:
        original = getattr(Validator, name)

        def spy(self, model, *args, _original=original, _name=name, **kwargs):
            seen[_name].append((model, {k: v.clone() for k, v in model.state_dict().items()}))
            return _original(self, model, *args, **kwargs)

        monkeypatch.setattr(Validator, name, spy)
    monkeypatch.setattr("style_transfer.balance.EVERY", 2)  # the controller's first update at step 2, not 50
    val = (sorted((SHARED / "content" / "bsds500" / "test").glob("*.jpg"))[0],)  # not a training photo
    result = train(*settings(tmp_path, photos, steps=3, ema_decay=0.5, loss=LossConfig(style_size=64, style_weight="auto"),
                             val_photos=val, sample_every=2, checkpoint_every=3))
    assert "auto_kept" in result.history[1] and "val_ssim" in result.history[1]  # both measured at step 2
    shipped = load_file(tmp_path / "model.safetensors")
    (controlled, _), = seen["kept"]
    assert len(seen["measure"]) == 2 and all(model is not controlled for model, _ in seen["measure"])
    assert all(torch.equal(seen["measure"][-1][1][k], shipped[k]) for k in shipped)
    trained = load_train_state(tmp_path / "model.run" / "train_state.pt")["model"]
    assert all(torch.equal(controlled.state_dict()[k], trained[k]) for k in trained)


class _FrameTied(torch.nn.Module):
    """A "network" that paints a pattern tied to the frame's pixel grid over its input (as the stride-2
    convolutions tie a real one's strokes to a 4 px grid), scaled by ``amount``."""

    def __init__(self, amount: float) -> None:
        super().__init__()
        self.amount = torch.nn.Parameter(torch.tensor(amount))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        grid = (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2
        return x + self.amount * grid


def test_the_stability_term_is_zero_when_the_painting_follows_the_scene_and_weighs_in_the_objective():
    from style_transfer.train import loss_terms, moved_crops, stability_distance

    batch = torch.rand(2, 3, 48, 40)
    torch.manual_seed(3)
    moved, dy, dx = moved_crops(batch)
    assert moved.shape == batch.shape and 1 <= dy <= 3 and 1 <= dx <= 3
    assert torch.equal(moved[..., :48 - dy, :40 - dx], batch[..., dy:, dx:])  # the scene went up and left
    # A painting that follows the scene (here: the photo itself) scores 0, a frame-tied pattern its size.
    assert float(stability_distance(batch, moved, dy, dx)) == 0.0
    tied = _FrameTied(0.25)
    with torch.no_grad():
        score = float(stability_distance(tied(batch), tied(moved), dy, dx))
    assert score == pytest.approx(0.25 if (dy + dx) % 2 else 0.0)

    # In a step: the same terms as without it, plus the weighted distance; the gradient reaches the network.
    criterion = PerceptualLoss(torch.rand(1, 3, 32, 32), LossConfig(style_size=32))
    batch = torch.rand(2, 3, 40, 40)
    torch.manual_seed(0)
    plain = loss_terms(tied, criterion, batch, torch.device("cpu"), "fp32")
    for seed in range(8):  # a move with dy + dx odd, where the pattern does not follow the scene
        torch.manual_seed(seed)
        dy, dx = (int(v) for v in torch.randint(1, 4, (2,)))
        if (dy + dx) % 2:
            break
    torch.manual_seed(seed)
    terms = loss_terms(tied, criterion, batch, torch.device("cpu"), "fp32", stability_weight=10.0)
    assert float(terms["stability"]) == pytest.approx(0.25, rel=1e-5)
    assert torch.allclose(terms["content"], plain["content"]) and torch.allclose(terms["style"], plain["style"])
    assert float(terms["total"].detach()) == pytest.approx(float(plain["total"].detach()) + 10 * 0.25, rel=1e-5)
    # The gradient: the term's, d(10 * |amount|)/d(amount) = 10, on top of the perceptual terms'.
    (with_term,) = torch.autograd.grad(terms["total"], tied.amount)
    (without,) = torch.autograd.grad(plain["total"], tied.amount)
    assert float(with_term - without) == pytest.approx(10.0, rel=1e-4)


def test_stability_weight_trains_logs_and_must_match_on_resume(tmp_path, photos):
    result = train(*settings(tmp_path, photos, steps=2, stability_weight=5.0))
    assert all(e["stability"] > 0 for e in result.history)
    assert "stability_weight" in result_fingerprint(tmp_path)
    assert "stability_weight" not in settings(tmp_path, photos)[0].fingerprint()  # off: runs from before resume
    with pytest.raises(TrainingError, match="stability_weight"):
        train(*settings(tmp_path, photos, steps=4), resume=True)
    with pytest.raises(ValueError, match="stability_weight"):
        settings(tmp_path, photos, stability_weight=0)
