"""How closely a distilled multi-style network reproduces its teachers (issue 17; RunSpec.teacher).

For each photo and each of the network's styles: the teacher's output (the single-style model of that
painting the plan entry names) beside the network's, and the PSNR between them. One sheet per photo,
at the size given, so the two can be compared at full size by eye: a row per style, the teacher on the
left. Training logs the same PSNR on its validation photos (``val_psnr`` in log.jsonl); this runs it on
any photos, held-out ones included, on a finished or a running model's checkpoint.

    python benchmarks/teacher_match.py                  # the shipped four-styles, gallery photos
    python benchmarks/teacher_match.py --photos ../shared/data/content/urban100 --count 4 --size 768 \\
        --out runs/teacher-match --json runs/teacher-match.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from style_transfer.checkpoint import load_model  # noqa: E402
from style_transfer.evaluation import pick_images  # noqa: E402
from style_transfer.grid import image_grid  # noqa: E402
from style_transfer.imageio import load_rgb  # noqa: E402
from style_transfer.metrics import psnr  # noqa: E402
from style_transfer.zoo_build import gallery_photos, load_plan  # noqa: E402

PLAN = ROOT / "weights" / "zoo.toml"
MULTI = "four-styles"


def match(student: torch.nn.Module, teachers: list[torch.nn.Module], photos: list[Path], size: int
          ) -> list[dict]:
    """Per photo: its PSNR to each teacher (one per style, in the student's style order) and the images
    (teacher, student) per style, all (1, 3, H, W) in [0, 1] from the plain fp32 networks."""
    rows = []
    eye = torch.eye(len(teachers))
    with torch.no_grad():
        for path in photos:
            image = load_rgb(path, size)
            pairs = [(t(image).clamp(0, 1), student(image, eye[k]).clamp(0, 1)) for k, t in enumerate(teachers)]
            rows.append({"photo": path, "image": image, "pairs": pairs,
                         "psnr": [psnr(s, t) for t, s in pairs]})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", type=Path, default=PLAN)
    p.add_argument("--multi", default=MULTI, help="the plan entry of the distilled network (it names the teachers)")
    p.add_argument("--checkpoint", type=Path, help="its checkpoint (default: the shipped weights/<multi>.safetensors)")
    p.add_argument("--photos", type=Path, action="append",
                   help="photo files or folders (repeatable; default: the plan's gallery photos)")
    p.add_argument("--count", type=int, default=4, help="photos spread over each folder (default: %(default)s)")
    p.add_argument("--size", type=int, default=512, help="long side, px (default: %(default)s)")
    p.add_argument("--out", type=Path, help="folder for one sheet per photo (teacher | network, a row per style)")
    p.add_argument("--json", type=Path, help="write the PSNRs here")
    args = p.parse_args(argv)
    missing = [str(source) for source in args.photos or [] if not source.exists()]
    if missing:  # before the models load, and as a usage error rather than a traceback
        p.error(f"--photos: no such file or folder: {', '.join(missing)}")

    (entry,) = [m for m in load_plan(args.plan) if m.name == args.multi]
    if entry.spec.teacher is None:
        p.error(f"{args.multi} has no teachers: it is not distilled")
    checkpoint = args.checkpoint or ROOT / "weights" / f"{args.multi}.safetensors"
    student, info = load_model(checkpoint)
    if info.extra.get("styles") != entry.spec.style_names:
        p.error(f"{checkpoint} holds styles {info.extra.get('styles')}, {args.multi} has {entry.spec.style_names}")
    teachers = [load_model(t)[0].eval() for t in entry.spec.teacher]
    photos = []
    for source in args.photos or gallery_photos(args.plan):
        photos += pick_images(source, args.count) if source.is_dir() else [source]
    rows = match(student.eval(), teachers, photos, args.size)

    names = entry.spec.style_names
    means = [statistics.fmean(r["psnr"][k] for r in rows) for k in range(len(names))]
    print(f"{checkpoint.name} (step {info.steps}) to its teachers, PSNR dB at {args.size} px:")
    print("| photo | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for r in rows:
        print(f"| {r['photo'].name} | " + " | ".join(f"{v:.1f}" for v in r["psnr"]) + " |")
    print("| **mean** | " + " | ".join(f"**{v:.1f}**" for v in means) + " |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for r in rows:
            sheet = image_grid([[r["image"], t, s] for t, s in r["pairs"]],
                               ["photo", "teacher (single)", f"{args.multi} (rows: {', '.join(names)})"],
                               cell=args.size)
            sheet.save(args.out / f"{r['photo'].stem}.jpg", quality=92)
        print(f"sheets in {args.out}")
    if args.json:
        args.json.write_text(json.dumps({
            "checkpoint": str(checkpoint), "steps": info.steps, "size": args.size, "styles": names,
            "mean_psnr": dict(zip(names, means)),
            "photos": [{"photo": str(r["photo"]), "psnr": dict(zip(names, r["psnr"]))} for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
