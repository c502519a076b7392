"""Content images: folder scan, unreadable files skipped, deterministic crops, the resumable sampler."""

from __future__ import annotations

import itertools
import logging
import re
from pathlib import Path

import pytest
import torch

from style_transfer.data import ContentImages, ResumableSampler, steps_per_epoch
from style_transfer import imageio
from style_transfer.imageio import AVIF, find_images


def _take(sampler: ResumableSampler, n: int) -> list[tuple[int, int]]:
    return list(itertools.islice(iter(sampler), n))


class _FakeDataset:
    """Only the length matters to the sampler."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


# ----------------------------------------------------------------------------- find_images


def test_find_images_recurses_and_filters(tmp_path, make_image_file):
    expected = [
        make_image_file(tmp_path / "a.jpg", fmt="JPEG"),
        make_image_file(tmp_path / "B.JPEG", fmt="JPEG"),
        make_image_file(tmp_path / "sub" / "c.png"),
        make_image_file(tmp_path / "sub" / "deeper" / "d.webp"),
        make_image_file(tmp_path / "e.jpeg", fmt="JPEG"),
        make_image_file(tmp_path / "f.PNG", fmt="PNG"),
    ]
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub" / "data.csv").write_text("1,2")
    make_image_file(tmp_path / ".hidden.jpg", fmt="JPEG")
    make_image_file(tmp_path / "sub" / "._resource_fork.png", fmt="PNG")
    make_image_file(tmp_path / "picture.gif", fmt="GIF")
    avif = make_image_file(tmp_path / "g.avif", fmt="AVIF") if AVIF else None
    (tmp_path / "folder.jpg").mkdir()  # a folder named like an image is not an image
    found = find_images(tmp_path)
    assert found == sorted(expected + ([avif] if AVIF else []))
    assert all(isinstance(p, Path) for p in found)


@pytest.mark.parametrize("heic_support", [False, True])
def test_find_images_takes_heic_photos_or_warns_it_skips_them(tmp_path, make_image_file, caplog, monkeypatch,
                                                              heic_support):
    """With the optional HEIC support a phone's folder is read whole; without it, its HEIC photos are
    skipped with a warning saying how to read them."""
    monkeypatch.setattr(imageio, "HEIF", heic_support)
    base = tuple(s for s in imageio.IMAGE_SUFFIXES if s not in imageio.HEIF_SUFFIXES)
    monkeypatch.setattr(imageio, "IMAGE_SUFFIXES", base + (imageio.HEIF_SUFFIXES if heic_support else ()))
    keep = make_image_file(tmp_path / "a.jpg", fmt="JPEG")
    heic = [tmp_path / "IMG_0001.HEIC", tmp_path / "sub" / "IMG_0002.heic", tmp_path / "c.heif"]
    for path in heic:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"\x00\x00\x00\x18ftypheic")
    with caplog.at_level("WARNING", logger="style_transfer.imageio"):
        if heic_support:
            assert find_images(tmp_path) == sorted([keep, *heic]) and "HEIC" not in caplog.text
            return
        assert find_images(tmp_path) == [keep]
        assert "3 HEIC/HEIF file(s)" in caplog.text and "export them as JPEG" in caplog.text
        assert "style-transfer[heif]" in caplog.text
        caplog.clear()
        for path in heic:
            path.unlink()
        find_images(tmp_path)
    assert "HEIC" not in caplog.text


def test_find_images_skips_hidden_folders(tmp_path, make_image_file):
    keep = make_image_file(tmp_path / "visible" / "a.png")
    make_image_file(tmp_path / ".thumbnails" / "b.png")
    make_image_file(tmp_path / "visible" / ".ipynb_checkpoints" / "c.png")
    assert find_images(tmp_path) == [keep]


def test_find_images_follows_symlinked_folders_without_looping(tmp_path, make_image_file):
    real = make_image_file(tmp_path / "real" / "a.png")
    linked_root = tmp_path / "root"
    linked_root.mkdir()
    (linked_root / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    (linked_root / "loop").symlink_to(linked_root, target_is_directory=True)  # a cycle
    found = find_images(linked_root)
    assert found == [linked_root / "link" / "a.png"]
    assert real.is_file()


def test_find_images_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        find_images(tmp_path / "nope")


# ----------------------------------------------------------------------------- ContentImages


def test_content_images_reads_the_folder(content_dir):
    ds = ContentImages(content_dir, size=32)
    assert len(ds) == 6
    assert ds.skipped == []
    assert ds.paths == find_images(content_dir)


def test_unreadable_images_are_skipped_and_logged(content_dir, caplog):
    garbage = content_dir / "garbage.jpg"
    garbage.write_bytes(bytes(range(256)) * 8)
    empty = content_dir / "empty.png"
    empty.write_bytes(b"")
    real = sorted(content_dir.glob("*.jpg"))[0].read_bytes()
    truncated = content_dir / "sub" / "truncated.jpg"
    truncated.parent.mkdir()
    truncated.write_bytes(real[: len(real) // 2])
    with caplog.at_level(logging.WARNING, logger="style_transfer.data"):
        ds = ContentImages(content_dir, size=32)
    assert len(ds) == 6
    assert sorted(ds.skipped) == sorted([garbage, empty, truncated])
    assert not set(ds.skipped) & set(ds.paths)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = "\n".join(r.getMessage() for r in warnings)
    for path in (garbage, empty, truncated):
        assert str(path) in text
    # a summary line counts them
    summaries = [r.getMessage().replace(str(content_dir), "<root>") for r in warnings
                 if not any(str(p) in r.getMessage() for p in (garbage, empty, truncated))]
    assert any(re.search(r"\b3\b", m) for m in summaries), summaries
    # every item that is served comes from a readable file
    for i in range(len(ds)):
        assert ds[(i, i)].shape == (3, 32, 32)


def test_only_bad_images_raises(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no readable"):
        ContentImages(tmp_path, size=32)


def test_empty_folder_raises(tmp_path):
    with pytest.raises(ValueError):
        ContentImages(tmp_path, size=32)


def test_crop_shape_range_and_determinism(content_dir):
    ds = ContentImages(content_dir, size=32)
    a = ds[(0, 123)]
    assert a.shape == (3, 32, 32)
    assert a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert a.std() > 0.01  # a real photo crop, not a flat fill
    assert torch.equal(ds[(0, 123)], a)
    assert not torch.equal(ds[(0, 124)], a)
    assert not torch.equal(ds[(1, 123)], a)


def test_crop_of_small_and_odd_images(content_dir):
    ds = ContentImages(content_dir, size=48)
    for shape in [(1, 3, 20, 70), (1, 3, 48, 48), (1, 3, 7, 5)]:
        image = torch.rand(*shape)
        for seed in range(3):
            crop = ds.crop(image, seed)
            assert crop.shape == (3, 48, 48), shape
            assert crop.min() >= 0 and crop.max() <= 1


def test_crop_depends_only_on_seed_not_global_rng(content_dir):
    ds = ContentImages(content_dir, size=32)
    torch.manual_seed(1)
    a = ds[(2, 7)]
    torch.manual_seed(999)
    torch.rand(100)
    assert torch.equal(ds[(2, 7)], a)


# ----------------------------------------------------------------------------- ResumableSampler


@pytest.mark.parametrize("start_step", [1, 3, 7])
def test_resume_at_step_k_continues_the_same_stream(start_step):
    ds, batch = _FakeDataset(5), 3
    full = _take(ResumableSampler(ds, batch, seed=11), 40 * batch)
    resumed = _take(ResumableSampler(ds, batch, seed=11, start_step=start_step), 20 * batch)
    assert resumed == full[start_step * batch : start_step * batch + 20 * batch]


def test_two_replicas_of_batch_2_equal_one_process_of_batch_4():
    ds = _FakeDataset(7)
    single = _take(ResumableSampler(ds, 4, seed=3), 4 * 12)
    rank0 = _take(ResumableSampler(ds, 2, seed=3, num_replicas=2, rank=0), 2 * 12)
    rank1 = _take(ResumableSampler(ds, 2, seed=3, num_replicas=2, rank=1), 2 * 12)
    for step in range(12):
        together = rank0[2 * step : 2 * step + 2] + rank1[2 * step : 2 * step + 2]
        assert together == single[4 * step : 4 * step + 4], step


def test_two_replicas_resume_too():
    ds = _FakeDataset(7)
    single = _take(ResumableSampler(ds, 4, seed=3), 4 * 10)
    rank1 = _take(ResumableSampler(ds, 2, seed=3, start_step=5, num_replicas=2, rank=1), 2 * 5)
    for i, step in enumerate(range(5, 10)):
        assert rank1[2 * i : 2 * i + 2] == single[4 * step + 2 : 4 * step + 4]


def test_each_epoch_visits_every_image_once():
    n = 6
    stream = _take(ResumableSampler(_FakeDataset(n), 4, seed=0), 4 * n)  # 4 epochs
    epochs = [[idx for idx, _ in stream[e * n : (e + 1) * n]] for e in range(4)]
    for order in epochs:
        assert sorted(order) == list(range(n))
    assert len({tuple(order) for order in epochs}) > 1, "every epoch in the same order: no shuffling"


def test_crop_seeds_are_distinct_per_position_and_depend_on_seed():
    stream = _take(ResumableSampler(_FakeDataset(4), 2, seed=5), 40)
    seeds = [s for _, s in stream]
    assert len(set(seeds)) == len(seeds)
    other = _take(ResumableSampler(_FakeDataset(4), 2, seed=6), 40)
    assert [s for _, s in other] != seeds
    assert [i for i, _ in other] != [i for i, _ in stream]


def test_sampler_through_a_dataloader(content_dir):
    ds = ContentImages(content_dir, size=16)
    sampler = ResumableSampler(ds, 2, seed=0, start_step=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=sampler)
    it = iter(loader)
    first, second = next(it), next(it)
    assert first.shape == (2, 3, 16, 16)
    # the same batches as indexing the dataset with the sampler's stream directly
    items = _take(ResumableSampler(ds, 2, seed=0, start_step=1), 4)
    assert torch.equal(first, torch.stack([ds[item] for item in items[:2]]))
    assert torch.equal(second, torch.stack([ds[item] for item in items[2:]]))


@pytest.mark.parametrize("n, batch, world, expected", [(10, 4, 1, 3), (8, 4, 1, 2), (8, 2, 2, 2), (9, 2, 2, 3)])
def test_steps_per_epoch(n, batch, world, expected):
    assert steps_per_epoch(n, batch, world) == expected
