"""Shared fixtures for the test suite.

Everything here is small on purpose (tiny images, width-8 networks): the suite runs on 2 CPU cores.

Factory fixtures (call them inside a test):

* ``make_model(norm="instance", *, width=8, num_residual=1, seed=0, trained=False)`` -> TransformerNet (eval)
* ``make_checkpoint(norm="instance", *, path=None, trained=False, steps=..., style_name=..., losses=...,
  dtype=torch.float32, ...)`` -> Path of a served ``.safetensors`` checkpoint
* ``make_image_file(path, size=(w, h), color=..., fmt=None)`` -> Path of a small solid-colour image file
* ``random_image(h, w, batch=1, seed=0)`` -> (B, 3, H, W) float tensor in [0, 1]

Data fixtures:

* ``shared_data``: Path to the repository-external ``shared/data`` folder (tests skip if it is missing)
* ``style_path``: the Starry Night style image (full size)
* ``small_style_path``: the same style image downscaled to 64 px (a tmp copy; fast to decode)
* ``content_dir``: a fresh tmp folder with 6 small (64 px) JPEGs from BSDS500 val (mutable per test)
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import torch
from PIL import Image

from style_transfer.checkpoint import ModelInfo, save_model
from style_transfer.network import TransformerConfig, TransformerNet

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STYLE_NAME = "vangogh_starry_night_1889"
NUM_CONTENT_IMAGES = 6
CONTENT_LONG_SIDE = 64


# ----------------------------------------------------------------------------- shared data


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data relative to the repository root; the test is skipped if it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found: {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def held_out_photos(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """``held_out_photos(size)``: two bsds500 test photos (never in the training fixtures) with their long
    side at ``size`` px, for validation and the style balance; small to keep tests quick."""
    made: dict[int, tuple[Path, ...]] = {}

    def make(size: int) -> tuple[Path, ...]:
        if size not in made:
            folder = tmp_path_factory.mktemp(f"held_out_{size}")
            for name in ("69000.jpg", "108069.jpg"):
                with Image.open(shared_data / "content" / "bsds500" / "test" / name) as img:
                    img.thumbnail((size, size))
                    img.save(folder / name, quality=95)
            made[size] = (folder / "69000.jpg", folder / "108069.jpg")
        return made[size]

    return make


@pytest.fixture(scope="session")
def style_path(shared_data: Path) -> Path:
    path = shared_data / "styles" / f"{STYLE_NAME}.jpg"
    if not path.is_file():
        pytest.skip(f"style image not found: {path}")
    return path


@pytest.fixture(scope="session")
def small_style_path(style_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The style image, downscaled to a 64 px long side (same file stem as the original)."""
    out = tmp_path_factory.mktemp("style") / style_path.name
    with Image.open(style_path) as img:
        img = img.convert("RGB")
        img.thumbnail((CONTENT_LONG_SIDE, CONTENT_LONG_SIDE), Image.Resampling.LANCZOS)
        img.save(out, quality=95)
    return out


@pytest.fixture(scope="session")
def _small_content_images(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Built once per session: the first few BSDS500 val images, downscaled."""
    src = shared_data / "content" / "bsds500" / "val"
    sources = sorted(src.glob("*.jpg"))[:NUM_CONTENT_IMAGES]
    if len(sources) < NUM_CONTENT_IMAGES:
        pytest.skip(f"need {NUM_CONTENT_IMAGES} content images in {src}, found {len(sources)}")
    cache = tmp_path_factory.mktemp("content_cache")
    out = []
    for path in sources:
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((CONTENT_LONG_SIDE, CONTENT_LONG_SIDE), Image.Resampling.LANCZOS)
            dest = cache / path.name
            img.save(dest, quality=90)
        out.append(dest)
    return out


@pytest.fixture
def content_dir(_small_content_images: list[Path], tmp_path: Path) -> Path:
    """A fresh folder of 6 small JPEGs per test (tests may add bad files to it)."""
    folder = tmp_path / "content"
    folder.mkdir()
    for path in _small_content_images:
        shutil.copy2(path, folder / path.name)
    return folder


# ----------------------------------------------------------------------------- factories


@pytest.fixture
def random_image():
    """``random_image(h, w, batch=1, seed=0)`` -> a smooth-ish random (B, 3, H, W) image in [0, 1]."""

    def make(h: int, w: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(batch, 3, h, w, generator=gen)

    return make


def _perturb(model: TransformerNet, seed: int) -> None:
    """Stand-in for training (fast: no optimizer): move every float parameter and buffer off its initial
    value, deterministically. Norm affines stop being 1/0 and batch-norm running statistics stop being 0/1,
    so a save/load round trip really has to carry them; the output stays finite and image-like."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() == 1 and name.endswith("weight"):  # norm scale: keep it positive, around 1
                p.copy_(1.0 + 0.2 * noise.clamp(-2, 2))
            else:
                p.add_(0.1 * noise * (p.std() if p.numel() > 1 else 1.0))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
            elif name.endswith("num_batches_tracked"):
                b.fill_(3)


@pytest.fixture
def make_model():
    """``make_model(norm="instance", *, width=8, num_residual=1, seed=0, trained=False)`` -> model in eval mode.

    ``trained=True`` moves every parameter/buffer off its initial value (see ``_perturb``; no optimizer
    is run, to stay fast), so norm affines and batch-norm running statistics are no longer 1/0 and 0/1.
    """

    def make(norm: str = "instance", *, width: int = 8, num_residual: int = 1, seed: int = 0,
             trained: bool = False, groups: int | None = None) -> TransformerNet:
        kwargs = {} if groups is None else {"groups": groups}
        config = TransformerConfig(norm=norm, width=width, num_residual=num_residual, **kwargs)
        torch.manual_seed(seed)
        model = TransformerNet(config)
        if trained:
            _perturb(model, seed)
        return model.eval()

    return make


@pytest.fixture
def make_checkpoint(make_model, tmp_path: Path):
    """``make_checkpoint(norm="instance", *, path=None, ...)`` -> Path of a saved tiny served model.

    Keyword arguments: ``trained`` (see make_model), ``width``, ``num_residual``, ``seed``, ``steps``,
    ``style_name``, ``style_sha256``, ``losses``, ``training``, ``extra``, ``dtype`` (save dtype),
    ``model`` (save this model instead of building one). The default path is
    ``tmp_path/models/<style_name>_<norm>.safetensors``.
    """

    def make(norm: str = "instance", *, path: Path | str | None = None, trained: bool = False,
             width: int = 8, num_residual: int = 1, seed: int = 0, steps: int = 7,
             style_name: str = "test_style", style_sha256: str = "0" * 64,
             losses: dict[str, float] | None = None, training: dict | None = None,
             extra: dict | None = None, dtype: torch.dtype = torch.float32,
             model: TransformerNet | None = None) -> Path:
        if model is None:
            model = make_model(norm, width=width, num_residual=num_residual, seed=seed, trained=trained)
        if path is None:
            path = tmp_path / "models" / f"{style_name}_{model.config.norm}.safetensors"
        path = Path(path)
        info = ModelInfo(
            config=model.config,
            style_name=style_name,
            style_sha256=style_sha256,
            steps=steps,
            training={"batch_size": 2, "lr": 1e-3} if training is None else training,
            losses={"content": 1.5, "style": 2.25, "tv": 0.125, "total": 3.875} if losses is None else losses,
            extra={} if extra is None else extra,
        )
        save_model(path, model, info, dtype=dtype)
        return path

    return make


@pytest.fixture
def make_image_file():
    """``make_image_file(path, size=(w, h), color=(r, g, b), mode="RGB", fmt=None, **save_kwargs)`` -> Path."""

    def make(path: Path | str, size: tuple[int, int] = (16, 16), color=(200, 30, 60), mode: str = "RGB",
             fmt: str | None = None, **save_kwargs) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new(mode, size, color).save(path, format=fmt, **save_kwargs)
        return path

    return make


# ----------------------------------------------------------------------------- norm studies (ablate / compare)


@pytest.fixture(scope="session")
def tiny_study(_small_content_images: list[Path], small_style_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """A finished tiny norm study, built once per session (do not modify it; copy it first):
    instance and batch norm x seeds 0 and 1, 3 steps each, width 8, 32 px crops, on the 6 small val photos.
    Returns the ``ablate.Study``."""
    from style_transfer.ablate import StudySettings, load_study, run_study
    from style_transfer.spec import RunSpec
    from style_transfer.train import TrainOptions

    root = tmp_path_factory.mktemp("tiny_study")
    content = root / "photos"
    content.mkdir()
    for path in _small_content_images:
        shutil.copy2(path, content / path.name)
    base = RunSpec(content=content, style=small_style_path, steps=3, image_size=32, batch_size=2, precision="fp32")
    settings = StudySettings(out=root / "study", base=base.replace(width=8, num_residual=1, style_size=64),
                             norms=("instance", "batch"), seeds=(0, 1),
                             options=TrainOptions(device="cpu", checkpoint_every=2, sample_every=3))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is fastest, and robust to a busy machine
    try:
        outcomes = run_study(settings, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert [o.status for o in outcomes] == ["trained"] * 4
    return load_study(root / "study")


@pytest.fixture(scope="session")
def heldout_dir(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 small (48 px) BSDS500 *test* photos: images no tiny study was trained on."""
    sources = sorted((shared_data / "content" / "bsds500" / "test").glob("*.jpg"))[:4]
    if len(sources) < 4:
        pytest.skip("need 4 BSDS500 test images")
    folder = tmp_path_factory.mktemp("heldout")
    for path in sources:
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((48, 48), Image.Resampling.LANCZOS)
            img.save(folder / path.name, quality=90)
    return folder


@pytest.fixture
def one_thread():
    """Tiny networks run fastest on one thread, and a busy machine makes several threads much slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def free_port():
    """``free_port()`` -> a TCP port on 127.0.0.1 that nothing listens on right now."""

    def pick() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    return pick
