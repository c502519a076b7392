"""Content images for training: recursive folder scan, unreadable files skipped, deterministic crops.

Determinism is what makes ``--resume`` exact: the order of images is a pure function of
(seed, epoch) and each crop a pure function of (seed, position in the stream), so a run resumed at
step k sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler

from .imageio import decode_image, find_images

log = logging.getLogger(__name__)


def link_folders(folders: Sequence[Path], dest: Path) -> Path:
    """One folder to train on: the only folder given, or ``dest`` holding a symlink to each of several.

    Symlinks rather than copies: the data may be large and read-only; ``find_images`` follows linked
    folders, and the numbered link names keep the image list (hence the data order) in the given
    folder order, the same for every run that links the same folders.
    """
    folders = [Path(f) for f in folders]
    if len(folders) == 1:
        return folders[0]
    dest.mkdir(parents=True, exist_ok=True)
    for i, folder in enumerate(folders):
        link = dest / f"{i:02d}-{folder.resolve().name}"
        target = folder.resolve()
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    return dest


def _readable(path: Path) -> bool:
    """Fully decode a (downscaled) version of the image: catches garbage and truncated files."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                img.draft("RGB", (64, 64))  # JPEG decodes at 1/8 scale: a fast but complete read
                img.load()
        return True
    except Exception:  # noqa: BLE001 -- PIL raises many types for bad files; all mean "skip it"
        return False


class ContentImages(Dataset):
    """Square random crops of ``size`` px from every readable image under ``root``.

    Items are requested as ``(index, crop_seed)`` pairs (see :class:`ResumableSampler`).
    Images are resized so the short side is ``size`` (plus a random up-scale of up to 1.25x for
    variety), then cropped at a position drawn from ``crop_seed``.
    """

    def __init__(self, root: Path | str, size: int = 256) -> None:
        self.size = size
        found = find_images(root)
        readable = [_readable(p) for p in found]
        self.paths = [p for p, ok in zip(found, readable) if ok]
        self.skipped = [p for p, ok in zip(found, readable) if not ok]
        for p in self.skipped:
            log.warning("skipping unreadable image: %s", p)
        if self.skipped:
            log.warning("skipped %d unreadable image(s) of %d in %s", len(self.skipped), len(found), root)
        if not self.paths:
            raise ValueError(f"no readable JPEG/PNG/WebP images under {root} ({len(found)} found, all unreadable)")

    def __len__(self) -> int:
        return len(self.paths)

    def crop(self, image: torch.Tensor, crop_seed: int) -> torch.Tensor:
        """(1, 3, H, W) -> (3, size, size), positions drawn from ``crop_seed``."""
        gen = torch.Generator().manual_seed(crop_seed)
        h, w = image.shape[-2:]
        scale = self.size / min(h, w) * (1.0 + 0.25 * torch.rand((), generator=gen).item())
        nh, nw = max(self.size, round(h * scale)), max(self.size, round(w * scale))
        image = F.interpolate(image, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top = int(torch.randint(0, nh - self.size + 1, (), generator=gen))
        left = int(torch.randint(0, nw - self.size + 1, (), generator=gen))
        return image[0, :, top : top + self.size, left : left + self.size].clamp(0, 1).contiguous()

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        index, crop_seed = item
        # A file that passed the scan can still fail (changed on disk): fall back to the next one.
        for attempt in range(len(self.paths)):
            path = self.paths[(index + attempt) % len(self.paths)]
            try:
                return self.crop(decode_image(path).rgb, crop_seed)
            except Exception as exc:  # noqa: BLE001
                log.warning("skipping unreadable image %s: %s", path, exc)
        raise RuntimeError("no content image could be read")


class ResumableSampler(DistributedSampler):
    """A DistributedSampler over an endless stream of epochs that can start at any global step.

    Position ``p`` of the stream is image ``perm(epoch)[p % n]`` with ``perm`` seeded by
    (seed, epoch), exactly like DistributedSampler(shuffle=True); the global batch of step ``s`` is
    positions ``[s*B*world, (s+1)*B*world)``, and rank ``r`` takes its ``r``-th contiguous slice.
    So 1 process x batch 4 and 2 processes x batch 2 see the same images at every step.
    """

    def __init__(self, dataset: ContentImages, batch_size: int, seed: int, start_step: int = 0,
                 num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size = batch_size
        self.start_step = start_step
        self._n = len(dataset)

    def _perm(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self._n, generator=gen).tolist()

    def __len__(self) -> int:  # endless; DataLoader only needs a length for progress estimates
        return 2**62

    def __iter__(self) -> Iterator[tuple[int, int]]:
        global_batch = self.batch_size * self.num_replicas
        step = self.start_step
        cached_epoch, perm = -1, []
        while True:
            base = step * global_batch + self.rank * self.batch_size
            for pos in range(base, base + self.batch_size):
                epoch = pos // self._n
                if epoch != cached_epoch:
                    cached_epoch, perm = epoch, self._perm(epoch)
                # crop seed: a pure function of (seed, stream position)
                yield perm[pos % self._n], (self.seed * 1_000_003 + pos) % (2**63)
            step += 1


def steps_per_epoch(num_images: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps for one pass over the images."""
    return math.ceil(num_images / (batch_size * world_size))
