"""The command line: `style-transfer train | stylize | models | export | ablate | compare | zoo`.

The package's only argv parser (benchmarks/ scripts have their own). Training options are generated
from the run spec (spec.py), so `train` and `ablate` offer every setting a spec has.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from tqdm import tqdm

from . import __version__
from .checkpoint import CheckpointError
from .balance import AUTO, parse_weight
from .device import DEVICES, PRECISIONS, is_out_of_memory, keep_freed_memory
from .imageio import IMAGE_SUFFIXES, OUTPUT_FORMATS, collect_images, decode_image, save_image
from .norms import NORM_NAMES, STUDY_NORMS
from .spec import REQUIRED, RunSpec, settings
from .stylize import DEFAULT_PAINT_SIZE, check_paint_size
from .video import DEFAULT_VIDEO_SUFFIX, VIDEO_OUTPUTS, VIDEO_SUFFIXES, is_video, require_av, stylize_video


log = logging.getLogger("style_transfer")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _paint_size(text: str) -> int:
    """``--paint-size``: 0 (the image's size) or at least MIN_PAINT_SIZE px."""
    try:
        return check_paint_size(int(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _layers(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _default_text(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def _add_spec_options(p: argparse.ArgumentParser, skip: tuple[str, ...] = (), required: tuple[str, ...] = (),
                      defaults: dict[str, object] | None = None) -> None:
    """Every setting of a run spec as an option, generated from the spec (spec.settings()): its
    defaults and checks live there alone, so a setting added to the spec is an option of every command
    that trains. Options left out stay None and the spec's default applies."""
    parse = {"int": int, "float": float, "list": _layers, "path": Path, "paths": Path, "weight": parse_weight}
    for s in settings():
        if s.name in skip:
            continue
        default = (defaults or {}).get(s.name, s.default)  # a command's own default (set where it runs)
        text = s.help + (f" (default: {_default_text(default)})" if default is not None else "")
        kwargs: dict = {"dest": s.name, "default": None, "help": text}
        if s.kind in parse:
            kwargs["type"] = parse[s.kind]
        if s.kind == "paths":
            kwargs["action"] = "append"
        if s.name == "norm":
            kwargs["metavar"] = "{" + ",".join(NORM_NAMES) + "}"  # checked by the spec, in any case
        if s.name == "precision":
            kwargs["choices"] = PRECISIONS
        p.add_argument(*s.flags, required=s.name in required, **kwargs)


def _spec_from_args(args: argparse.Namespace, **fixed: object) -> RunSpec:
    """The RunSpec of a command's options (plus ``fixed`` settings); the one place the CLI builds one."""
    values = {s.name: getattr(args, s.name) for s in settings() if getattr(args, s.name, None) is not None}
    return RunSpec.from_flat({**values, **fixed})


def _add_run_options(p: argparse.ArgumentParser, checkpoint_every: int) -> None:
    """How a run executes (train.TrainOptions): nothing here changes the result."""
    p.add_argument("--device", help=f"one of {', '.join(DEVICES)} (default: auto)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=checkpoint_every, help="(default: %(default)s steps)")
    p.add_argument("--sample-every", type=_positive_int, default=500, help="(default: %(default)s steps)")
    p.add_argument("--val", type=Path, action="append", metavar="PATH",
                   help="validation photos (files or folders; repeatable), never trained on: at every sample step "
                        "they are stylized at 512 px and the log records how much of the photo and of the style "
                        "they keep, with a warning when the photo is being lost")


def _val_photos(args: argparse.Namespace) -> tuple[Path, ...]:
    from .validation import validation_photos

    return tuple(validation_photos(args.val or []))


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a network for one style (or several: conditional_instance)",
                       description="Train a feed-forward style network on folders of content photos.")
    p.add_argument("--out", required=True, type=Path, help="output checkpoint (.safetensors)")
    p.add_argument("--workdir", type=Path, help="resume state, log.jsonl and samples (default: <out>.run/)")
    _add_spec_options(p, required=REQUIRED, defaults={"style_weight": AUTO, "init": "auto", "lr": "1e-3; 2e-4 from "
                      "a checkpoint (--init), 5e-4 distilling (--teacher), 1e-2 extending (--extend)",
                      "steps": "1500 from a trained network (--init, auto for one painting; --teacher), 500 "
                      "extending (--extend), 40000 from scratch; resumed: the run's own budget"})
    _add_run_options(p, checkpoint_every=500)
    p.add_argument("--workers", type=int, default=0, help="data loading processes (default: %(default)s)")
    p.add_argument("--sync-bn", action="store_true", help="synchronize batch norm statistics across processes")
    p.add_argument("--save-dtype", choices=("fp32", "fp16"), default="fp32", help="dtype of the served checkpoint")
    p.add_argument("--perceptual-every", type=_positive_int, default=10, metavar="N",
                   help="with --teacher: log the perceptual terms (content, style, tv; not the objective of a "
                        "distilled run) in one round of the paintings out of N; measuring them costs over a "
                        "third of a step (default: %(default)s; 1: every step)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its workdir")
    p.add_argument("--weights", type=Path, help="weights folder for model names given to --init and --extend "
                                                "(default: $STYLE_TRANSFER_WEIGHTS or ./weights)")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from .rundir import RunDir
    from .train import TrainOptions, train
    from .zoo import NAME_RULE, is_valid_name

    run = RunDir.of(args.out, args.workdir)
    options = TrainOptions(device=args.device or "auto", checkpoint_every=args.checkpoint_every,
                           sample_every=args.sample_every, num_workers=args.workers, sync_bn=args.sync_bn,
                           save_dtype=args.save_dtype, val_photos=_val_photos(args),
                           perceptual_every=args.perceptual_every)
    result = train(_train_spec(args, run), run, options, resume=args.resume)
    if result.steps and os.environ.get("RANK", "0") == "0":
        log.info("wrote %s after %d steps; final losses: %s", result.checkpoint, result.steps,
                 ", ".join(f"{k}={v:.4g}" for k, v in result.losses.items()))
        log.info("try it: style-transfer stylize PHOTO --model %s; serve it: put it in the server's weights "
                 "folder (served by its file name, %s)", result.checkpoint, Path(result.checkpoint).stem)
        if not is_valid_name(Path(result.checkpoint).stem):
            log.warning("the server will not serve %s under this file name (a model name has %s): rename it",
                        result.checkpoint, NAME_RULE)
    return 0


def _train_spec(args: argparse.Namespace, run: "RunDir") -> RunSpec:
    """The train command's spec: its options, with the command's own defaults for a user's own painting
    (issue 16), which the run spec's defaults (shared by norm A/B sets: ablate, zoo plans) are not:

    * ``--style-weight auto``: the weight adapts to the painting (balance.py);
    * ``--init auto``: start from the weights folder's flagship when it has this network (zoo.base_model),
      at ``--lr`` 2e-4 with ``--lr-warmup`` 100 unless given (any --init: zoo.BASE_LR, zoo.BASE_WARMUP);
      ``--init none`` starts from scratch;
    * for several paintings: ``--clip-grad-norm`` 100 (zoo.MULTI_STYLE_CLIP), and ``--init auto`` starts
      from scratch with ``--affine-lr`` 10x ``--lr`` (zoo.MULTI_STYLE_AFFINE_FACTOR): from the flagship,
      its strokes show in every style.

    An extension keeps its model's network, weights and loss (spec._extension) but the style weight, which
    is on auto for the new painting unless given, and trains its new (gamma, beta) at ``--lr``
    zoo.EXTEND_LR (1e-2) for ``--steps`` zoo.EXTEND_STEPS (500) unless given. A run from a trained network
    (any ``--init``, auto included, and a distilled one) trains zoo.FINETUNE_STEPS (1500) unless given; from
    scratch, the spec's 40,000. A distilled run ships the average of its weights (``--ema-decay``
    zoo.DISTILL_EMA unless given; 0 turns the average off). A resumed run keeps the weight, learning rate,
    average and budget it was started with when they are not given again (its weights come from its
    state)."""
    from .checkpoint import load_train_state, read_model_info
    from .spec import _flat_fingerprint
    from .zoo import (BASE_LR, BASE_WARMUP, EXTEND_LR, EXTEND_STEPS, FINETUNE_STEPS, MULTI_STYLE_AFFINE_FACTOR,
                      MULTI_STYLE_CLIP, base_model, resolve_model)

    init = None if args.init is None else str(args.init)
    for name in ("init", "extend"):  # a checkpoint path, or a model name from the weights folder
        value = getattr(args, name)
        setattr(args, name, None if value is None or str(value) in ("auto", "none")
                else resolve_model(str(value), args.weights))
    if args.teacher:
        args.teacher = [resolve_model(str(t), args.weights) for t in args.teacher]
    kept: dict[str, object] = {}  # a resumed run's recorded settings, where not given again
    resuming = args.resume and run.state.is_file()
    no_budget = args.steps is None and args.epochs is None
    if resuming:
        state = load_train_state(run.state)
        recorded = _flat_fingerprint(state["settings"])
        kept = {k: recorded[k] for k in ("style_weight", "lr", "lr_warmup", "clip_grad_norm", "affine_lr", "ema_decay")
                if getattr(args, k) is None and k in recorded}
        if no_budget and "total_steps" in state:  # recorded since the defaults below depend on the run
            kept["steps"] = int(state["total_steps"])
    # --ema-decay 0: no average, where a default would keep one (a distilled run); the spec's "off" is None.
    # (Given, it was not taken from a resumed run's record above.)
    no_average = args.ema_decay == 0
    if no_average:
        args.ema_decay = None
    if args.extend is not None:
        # A new painting's weight on auto, as for `train --style` alone (issue 16): the extended model's own
        # weight was set for other paintings, and a distilled model's (the shipped four-styles') never
        # weighed anything. At its fixed 2e-5, Udnie extending four-styles kept 0.67 of the gallery photos
        # but reached only 0.36 of the style measure by step 250 (docs/multi-style.md, "--extend"). Only the
        # new (gamma, beta) train, at zoo.EXTEND_LR for zoo.EXTEND_STEPS unless given (or, resumed, recorded).
        defaults = {"style_weight": AUTO, "lr": EXTEND_LR, **({"steps": EXTEND_STEPS} if no_budget else {})}
        return _spec_from_args(args, **{**{k: v for k, v in defaults.items() if getattr(args, k) is None}, **kept})
    if resuming:
        return _spec_from_args(args, **kept)
    distilled = bool(args.teacher)
    # A distilled run's loss has no style weight (the log measures its style term at the base weight).
    fixed: dict[str, object] = {"style_weight": AUTO} if args.style_weight is None and not distilled else {}
    spec = _spec_from_args(args, **fixed)
    several = len(spec.style) > 1
    if several and args.clip_grad_norm is None:
        spec = spec.replace(clip_grad_norm=MULTI_STYLE_CLIP)
    if init in (None, "auto") and (distilled or not several):  # several start from scratch: see below
        base = base_model(spec.network, args.weights)
        if base is not None:
            log.info("starting from %s (--init auto: a trained network keeps photos from the first step; "
                     "--init none starts from scratch)", base)
            spec = spec.replace(init=base)
        elif init == "auto":
            log.info("--init auto: the weights folder has no flagship model with this network; starting from scratch")
    if spec.init is not None and no_budget:  # from a trained network: zoo.FINETUNE_STEPS, not a day's 40,000
        log.info("%d steps from a trained network (--steps or --epochs to change)", FINETUNE_STEPS)
        spec = spec.replace(steps=FINETUNE_STEPS)
    if distilled:
        return _distill_spec(args, spec, average=not no_average)
    if several and spec.init is None:
        if args.affine_lr is None:
            spec = spec.replace(affine_lr=MULTI_STYLE_AFFINE_FACTOR * spec.lr)
        log.info("several paintings from scratch (started from the flagship, its strokes would show in every "
                 "style: docs/multi-style.md), their (gamma, beta) at --affine-lr %g", spec.affine_lr)
    if several and spec.init is not None and read_model_info(spec.init).config.num_styles == 1:
        # docs/multi-style.md, "The lozenges": a single-style model's strokes stay in the shared convolutions.
        log.warning("several paintings started from %s: a multi-style network started from a single-style "
                    "model paints its strokes as small saturated lozenges in every style (docs/multi-style.md, "
                    "\"The lozenges\"); without --init it trains from scratch", spec.init.name)
    if spec.init is not None:  # fine-tuning: see zoo.BASE_LR and zoo.BASE_WARMUP
        spec = spec.replace(**({"lr": BASE_LR} if args.lr is None else {}),
                            **({"lr_warmup": BASE_WARMUP} if args.lr_warmup is None else {}))
    return spec


def _distill_spec(args: argparse.Namespace, spec: RunSpec, average: bool = True) -> RunSpec:
    """A distilled run's defaults (zoo.DISTILL_LR): from the flagship (--init auto) at --lr 5e-4 with a
    100-step warm-up, a multi-style network's (gamma, beta) at 10x --lr, the average of its weights shipped
    (zoo.DISTILL_EMA, unless ``average`` is False: --ema-decay 0). Unlike perceptual training, several
    paintings start from the flagship too: its lozenges are what the teachers, which have none, train away
    (docs/multi-style.md, "Distillation")."""
    from .zoo import BASE_WARMUP, DISTILL_EMA, DISTILL_LR, MULTI_STYLE_AFFINE_FACTOR

    lr = DISTILL_LR if args.lr is None else spec.lr
    return spec.replace(lr=lr, **({"lr_warmup": BASE_WARMUP} if args.lr_warmup is None else {}),
                        **({"ema_decay": DISTILL_EMA} if args.ema_decay is None and average else {}),
                        **({"affine_lr": MULTI_STYLE_AFFINE_FACTOR * lr} if args.affine_lr is None
                           and spec.network.norm == "conditional_instance" else {}))


def _add_stylize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stylize", help="stylize images (or videos) with a trained model",
                       description="Stylize one image, several, or folders of images; a video file named here is "
                                   "stylized frame by frame, its sound kept (the optional video support).")
    p.add_argument("inputs", nargs="+", type=Path,
                   help=f"image files and/or folders (their images), and video files ({', '.join(VIDEO_SUFFIXES)})")
    p.add_argument("--model", required=True, action="append",
                   help="checkpoint path, or a model name from the weights folder; repeat it, or give all (every "
                        "model of the weights folder), to stylize with several")
    p.add_argument("--weights", type=Path, help="weights folder for model names (default: $STYLE_TRANSFER_WEIGHTS or ./weights)")
    p.add_argument("--out", type=Path, default=Path("stylized"),
                   help="output folder, or a file name when there is one input (default: %(default)s); a video is "
                        f"written as {DEFAULT_VIDEO_SUFFIX} in a folder, or as --out's {', '.join(VIDEO_OUTPUTS)}")
    p.add_argument("--format", choices=("png", "jpeg"),
                   help="images' output format (default: from --out's suffix, else png)")
    p.add_argument("--quality", type=int, default=92, help="JPEG quality (default: %(default)s)")
    p.add_argument("--max-size", type=_positive_int, help="downscale so the long side is at most this many px")
    p.add_argument("--paint-size", type=_paint_size, metavar="PX",
                   help="paint at most this long side, then bring the painting back to the image's size with the "
                        "photo's fine detail: the strokes keep their size relative to the picture; smaller = larger "
                        f"strokes, 0 = paint at the image's size (default: {DEFAULT_PAINT_SIZE})")
    p.add_argument("--strength", type=float, default=1.0, help="0..1 blend with the content (default: %(default)s)")
    p.add_argument("--preserve-color", action="store_true", help="keep the content's colours (luminance-only transfer)")
    p.add_argument("--style", dest="style_name", metavar="NAME",
                   help="a multi-style (conditional_instance) model's style (default: its first)")
    p.add_argument("--mix", metavar="NAME=W,...", help="blend a multi-style model's styles, e.g. "
                   "starry=0.6,wave=0.4 (weights >= 0 that sum to 1)")
    p.add_argument("--tile", type=_positive_int, help="stylize in tiles of this many px (for very large images)")
    p.add_argument("--tile-overlap", type=int, help="overlap between tiles in px (default: min(128, tile/4))")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto = fp16 on a GPU, bf16 on a CPU that has it, else fp32 (default: %(default)s)")
    p.add_argument("--no-fast", dest="fast", action="store_false",
                   help="run the plain fp32 network instead of the fast path (rewritten, reduced precision)")
    p.add_argument("--compile", action="store_true", help="torch.compile the fast path (helps on GPUs)")
    p.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICES)} (default: %(default)s)")
    p.add_argument("--skip-existing", action="store_true",
                   help="leave an input whose output file exists alone: an interrupted run over a folder goes on "
                        "where it stopped")
    p.set_defaults(func=_cmd_stylize)


def _stylize_inputs(paths: list[Path], out: Path) -> list[tuple[Path, Path]]:
    """(file, its path under the folder named that holds it; a file named itself: its name) for every input
    image, each file once. The images a folder holds under ``out`` are not inputs: a run whose --out lies
    inside its input folder would otherwise stylize its own outputs the next time."""
    inputs, seen, outputs = [], set(), out.resolve()
    for path in paths:
        in_folder = path.is_dir()
        for f in collect_images([path]):
            real = f.resolve()
            if real in seen or (in_folder and real.is_relative_to(outputs)):
                continue
            seen.add(real)
            inputs.append((f, f.relative_to(path) if in_folder else Path(f.name)))
    if not inputs:
        where = f" outside {out}" if any(outputs.is_relative_to(p.resolve()) for p in paths) else ""
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, paths))}{where}")
    return inputs


def output_stems(rels: list[Path]) -> list[str]:
    """The name each input's output goes under in one folder: its file's stem, unless inputs share it (a
    phone's IMG_0001 in two folders, photo.jpg beside photo.png). Those are named by their path under their
    folder (``100APPLE_IMG_0001``), else with their extension too (``photo_jpg``), whichever first tells
    them apart, and numbered as a last resort (``photo``, ``photo-2``: one name in two folders named on the
    command line): no output overwrites another. Names that differ only in case clash too: on macOS's and
    Windows' file systems IMG_0001 and img_0001 are one file."""
    namings = (lambda rel: "_".join(rel.with_suffix("").parts),
               lambda rel: "_".join(rel.with_suffix("").parts) + "_" + rel.suffix.lower().lstrip("."))
    stems = [rel.stem for rel in rels]
    groups = collections.defaultdict(list)
    for i, stem in enumerate(stems):
        groups[stem.casefold()].append(i)
    for group in (g for g in groups.values() if len(g) > 1):
        for naming in namings:
            names = [naming(rels[i]) for i in group]
            if len({name.casefold() for name in names}) == len(names):
                for i, name in zip(group, names):
                    stems[i] = name
                break
    taken: set[str] = set()
    for i, stem in enumerate(stems):
        n, unique = 1, stem
        while unique.casefold() in taken:
            n += 1
            unique = f"{stem}-{n}"
        taken.add(unique.casefold())
        stems[i] = unique
    return stems


def _stylize_models(names: list[str], weights: Path | None) -> list[Path]:
    """The checkpoints --model names, each once, in order; ``all``: every model of the weights folder."""
    from .zoo import default_weights_dir, list_models, resolve_model

    paths: list[Path] = []
    for name in names:
        if name == "all":
            found = list(list_models(weights or default_weights_dir()).values())
            if not found:
                raise FileNotFoundError(f"--model all: no models in {weights or default_weights_dir()}")
            paths += found
        else:
            paths.append(resolve_model(name, weights))
    return list(dict.fromkeys(paths))


def _cmd_stylize(args: argparse.Namespace) -> int:
    from .checkpoint import read_model_info
    from .stylize import StylizeOptions, Stylizer, paint_size_option, parse_mix, style_mixes

    inputs = _stylize_inputs(args.inputs, args.out)
    models = _stylize_models(args.model, args.weights)
    outputs = len(inputs) * len(models)
    videos = [path for path, _ in inputs if is_video(path)]
    if videos:
        require_av()  # before any model loads: without it, say how to add it
    out_suffix = args.out.suffix.lower()
    file_out = out_suffix in OUTPUT_FORMATS or out_suffix in VIDEO_SUFFIXES
    single_file_out = outputs == 1 and file_out
    if single_file_out and (out_suffix in VIDEO_OUTPUTS) != bool(videos):  # .webm and .avi are read only
        raise ValueError(f"--out {args.out}: " + (f"a video is written as {', '.join(VIDEO_OUTPUTS)}" if videos else
                                                  f"an image is written as {', '.join(OUTPUT_FORMATS)}"))
    if outputs > 1 and file_out and not args.out.is_dir():
        raise ValueError(f"--out {args.out} names one file, but there are {len(inputs)} input(s) and "
                         f"{len(models)} model(s): give a folder")
    named = collections.Counter(m.stem for m in models)
    if max(named.values()) > 1:  # their outputs would be named alike
        raise ValueError(f"two models named {named.most_common(1)[0][0]}: stylize with them in separate runs")
    # A style or mix applies to the multi-style models among several (as in the server's comparisons).
    styles = style_mixes({m.stem: read_model_info(m) for m in models}, args.style_name,
                         parse_mix(args.mix) if args.mix else None)
    suffix = "." + (args.format or (out_suffix.lstrip(".") if single_file_out and not videos else "png"))
    suffix = ".jpg" if suffix == ".jpeg" else suffix

    def suffix_of(path: Path) -> str:
        return DEFAULT_VIDEO_SUFFIX if is_video(path) else suffix

    stems = output_stems([rel for _, rel in inputs])
    model_label = models[0].stem if len(models) == 1 else "<model>"
    for (path, rel), stem in zip(inputs, stems):
        if stem != rel.stem:
            log.warning("%s shares its name with another input: written as %s_%s%s", path, stem, model_label,
                        suffix_of(path))
    failures = 0
    for model_path in models:
        if single_file_out:
            jobs = [(inputs[0][0], args.out if videos else args.out.with_suffix(suffix))]
        else:
            jobs = [(path, args.out / f"{stem}_{model_path.stem}{suffix_of(path)}")
                    for (path, _), stem in zip(inputs, stems)]
        if args.skip_existing:
            todo = [(path, target) for path, target in jobs if not target.exists()]
            if len(todo) < len(jobs):
                log.info("%s: skipping %d of %d image(s) whose output exists (--skip-existing)", model_path.stem,
                         len(jobs) - len(todo), len(jobs))
            jobs = todo
        if not jobs:
            continue
        stylizer = Stylizer.from_checkpoint(model_path, args.device, args.precision, args.fast, args.compile)
        if stylizer.device.type == "cpu":
            keep_freed_memory()  # 1.48x at 1024 px on 2 cores; a one-shot process gives its memory back on exit
        options = StylizeOptions(strength=args.strength, preserve_color=args.preserve_color, max_size=args.max_size,
                                 paint_size=paint_size_option(args.paint_size), tile=args.tile,
                                 tile_overlap=args.tile_overlap, style=styles[model_path.stem])
        desc = "stylize" if len(models) == 1 else f"stylize {model_path.stem}"
        for path, target in tqdm(jobs, desc=desc, unit="file", disable=len(jobs) < 2):
            stylize_file = _stylize_video if is_video(path) else _stylize_one
            failures += not stylize_file(stylizer, options, path, target, args.quality)
    if failures:
        log.error("%d of %d file(s) could not be stylized", failures, outputs)
    return 1 if failures else 0


def _stylize_video(stylizer: "Stylizer", options: "StylizeOptions", path: Path, target: Path, quality: int) -> bool:
    """One video to one video file; False (logged) when it cannot be read or runs out of memory. ``quality``
    is the images' JPEG quality: a video is encoded at video.CRF."""
    import av

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        result = stylize_video(stylizer, options, path, target)
    except (av.error.FFmpegError, ValueError) as exc:
        log.error("cannot stylize %s: %s", path, exc)
        return False
    except Exception as exc:  # noqa: BLE001 -- only running out of memory is this video's own failure
        if not is_out_of_memory(exc):
            raise
        log.error("out of memory stylizing %s: give a smaller --paint-size or --max-size", path)
        return False
    log.info("wrote %s (%d frames, %dx%d, sound %s)", target, result.frames, result.width, result.height,
             result.audio)
    return True


def _stylize_one(stylizer: "Stylizer", options: "StylizeOptions", path: Path, target: Path, quality: int) -> bool:
    """One input to one output file; False (logged) when it cannot be read or runs out of memory."""
    try:
        image = decode_image(path)
    except Exception as exc:  # noqa: BLE001 -- PIL raises many types for unreadable files
        log.error("cannot read %s: %s", path, exc)
        return False
    image_size = image.rgb.shape[-2:]
    try:
        styled = stylizer.stylize_image(image, options)
    except Exception as exc:  # noqa: BLE001 -- only running out of memory is this image's own failure
        if not is_out_of_memory(exc):
            raise
        h, w = options.painted_size(*image_size)
        log.error("out of memory stylizing %s (painted at %dx%d): give a smaller --paint-size or --max-size, "
                  "or --tile", path, w, h)
        return False
    save_image(styled.rgb, target, styled.alpha, quality)
    log.info("wrote %s", target)
    return True


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the models in the weights folder")
    p.add_argument("--weights", type=Path, help="weights folder (default: $STYLE_TRANSFER_WEIGHTS or ./weights)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_models)


def _cmd_models(args: argparse.Namespace) -> int:
    from .zoo import default_weights_dir, describe_models

    folder = args.weights or default_weights_dir()
    rows = describe_models(folder)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no models in {folder}")
        return 0
    header = f"{'name':<28} {'style':<32} {'norm':<20} {'steps':>7} {'MB':>6}"
    print(header)
    print("-" * len(header))
    for row in rows:
        if "error" in row:
            print(f"{row['name']:<28} not usable: {row['error']}")
        else:
            print(f"{row['name']:<28} {row['style'][:32]:<32} {row['norm']:<20} {row['steps']:>7} "
                  f"{row['bytes'] / 1e6:>6.1f}")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to ONNX (checked by ONNX Runtime)",
                       description="Write a model as an ONNX file with dynamic batch, height and width and the "
                                   "checkpoint's metadata, after checking ONNX Runtime's output against PyTorch's.")
    p.add_argument("model", help="checkpoint path, or a model name from the weights folder")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="(default: %(default)s)")
    p.add_argument("--out", type=Path, help="output file (default: <model name>.onnx here)")
    p.add_argument("--weights", type=Path, help="weights folder for model names (default: $STYLE_TRANSFER_WEIGHTS or ./weights)")
    p.add_argument("--style", dest="style_name", metavar="NAME", help="a multi-style model: export this style")
    p.add_argument("--mix", metavar="NAME=W,...", help="a multi-style model: export this blend of its styles")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from .checkpoint import read_model_info
    from .export import export_onnx
    from .stylize import parse_mix, style_mix
    from .zoo import resolve_model

    path = resolve_model(args.model, args.weights)
    style = style_mix(read_model_info(path), args.style_name, parse_mix(args.mix) if args.mix else None)
    out = args.out or Path(path.name.removesuffix(".safetensors") + ".onnx")
    result = export_onnx(path, out, style)
    print(f"wrote {result['path']} ({result['bytes'] / 1e6:.1f} MB); ONNX Runtime vs PyTorch: "
          + ", ".join(f"{size} {db} dB" for size, db in result["psnr_db"].items()))
    return 0


def _add_ablate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="train one arm per norm (and seed) for an A/B study",
                       description="Train one network per norm and seed, identical in everything else "
                                   "(init, data order, loss, steps), into one study folder. Running it again "
                                   "continues the study: finished arms are skipped, interrupted ones resumed.")
    p.add_argument("--out", required=True, type=Path, help="the study folder")
    p.add_argument("--resume", action="store_true",
                   help="continue the study in --out with its recorded settings (no other option needed)")
    p.add_argument("--norms", default=",".join(STUDY_NORMS),
                   help="comma-separated norms, one arm each (default: %(default)s)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, one arm per norm each (default: %(default)s)")
    # Every other setting of a run spec; a new study needs --content, --style and --steps.
    from .ablate import ARM_KEYS  # what a study varies: --norms and --seeds instead of --norm and --seed

    _add_spec_options(p, skip=ARM_KEYS)
    _add_run_options(p, checkpoint_every=100)
    p.add_argument("--jobs", type=_positive_int, default=1,
                   help="arms trained at once, in separate processes sharing the CPU threads (default: %(default)s)")
    p.add_argument("--status", action="store_true", help="only print the state of every arm of the study in --out")
    p.set_defaults(func=_cmd_ablate)


def _cmd_ablate(args: argparse.Namespace) -> int:
    from .ablate import StudySettings, describe, load_study, parse_norms, parse_seeds, run_study
    from .train import TrainOptions

    if args.status:
        rows = describe(load_study(args.out))
        print(f"{'arm':<16} {'status':<8} {'steps':>13}")
        for row in rows:
            print(f"{row['name']:<16} {row['status']:<8} {row['steps']:>6}/{row['target']:<6}")
        return 0
    if args.resume:
        settings = load_study(args.out).settings()
        if args.device:
            settings.options = dataclasses.replace(settings.options, device=args.device)
    else:
        missing = [flag for flag, value in (("--content", args.content), ("--style", args.style),
                                            ("--steps", args.steps)) if not value]
        if missing:
            raise ValueError(f"a new study needs {', '.join(missing)} (or --resume to continue the one in {args.out})")
        settings = StudySettings(
            out=args.out, base=_spec_from_args(args), norms=parse_norms(args.norms), seeds=parse_seeds(args.seeds),
            options=TrainOptions(device=args.device or "auto", checkpoint_every=args.checkpoint_every,
                                 sample_every=args.sample_every, val_photos=_val_photos(args)),
        )
    outcomes = run_study(settings, jobs=args.jobs)
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        log.error("arm %s failed: %s", o.name, o.error)
    log.info("study %s: %d arm(s) finished, %d failed", args.out, len(outcomes) - len(failed), len(failed))
    return 1 if failed else 0


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="compare the arms of a study (or checkpoints) on held-out photos",
                       description="Run a study's arms (or any checkpoints) on photos they were not trained on and "
                                   "write a report: grid, training curves, metrics (losses, SSIM, colour distance, "
                                   "time, batch behaviour) with paired tests, as HTML, Markdown, JSON and CSV.")
    p.add_argument("models", nargs="+", type=Path,
                   help="a study folder (from `ablate`), or checkpoint files / folders of checkpoints / model "
                        "names of the weights folder")
    p.add_argument("--weights", type=Path,
                   help="weights folder for model names (default: $STYLE_TRANSFER_WEIGHTS or ./weights)")
    p.add_argument("--content", required=True, type=Path, help="folder of held-out photos (recursive)")
    p.add_argument("--out", required=True, type=Path, help="report folder")
    p.add_argument("--style", type=Path, help="the style image (default: the study's)")
    p.add_argument("--max-images", type=_positive_int, default=12,
                   help="photos used, spread evenly over the folder (default: %(default)s)")
    p.add_argument("--size", type=_positive_int, default=256, help="long side of the photos, px (default: %(default)s)")
    p.add_argument("--grid-rows", type=_positive_int, default=4, help="photos shown in the grid (default: %(default)s)")
    p.add_argument("--cell", type=_positive_int, default=256, help="grid cell size, px (default: %(default)s)")
    p.add_argument("--batch-images", type=int, default=8,
                   help="photos in the batch-dependence test, as square centre crops (default: %(default)s)")
    p.add_argument("--no-fast-timing", dest="time_fast", action="store_false",
                   help="do not time the default fast inference path (only the plain fp32 network)")
    p.add_argument("--timing-repeats", type=_positive_int, default=3,
                   help="each time is the fastest of this many runs (default: %(default)s)")
    p.add_argument("--title", help="report title")
    p.add_argument("--device", default="cpu", help=f"one of {', '.join(DEVICES)} (default: %(default)s)")
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args: argparse.Namespace) -> int:
    from .ablate import STUDY_FILE, content_images_of, load_study
    from .evaluation import EvalSettings, arms_from_checkpoints, arms_from_study, evaluate, pick_images
    from .report import require_plotting, write_report
    from .zoo import default_weights_dir, list_models, resolve_model

    require_plotting()

    study = None
    if len(args.models) == 1 and (args.models[0] / STUDY_FILE).is_file():
        study = load_study(args.models[0])
        arms = arms_from_study(study)
    else:
        paths: list[Path] = []
        for path in args.models:
            if path.is_dir():
                paths += list(list_models(path).values())
                continue
            try:  # a checkpoint file, or a model name of the weights folder
                paths.append(resolve_model(str(path), args.weights))
            except FileNotFoundError:
                raise FileNotFoundError(f"not a checkpoint, a folder of checkpoints, a study or a model name of "
                                        f"{args.weights or default_weights_dir()}: {path}") from None
        if not paths:
            raise FileNotFoundError(f"no checkpoints (*.safetensors) in {', '.join(map(str, args.models))}")
        arms = arms_from_checkpoints(paths)
    style = args.style or (study.style_image if study else None)
    if style is None:
        raise ValueError("--style is needed to compare checkpoints outside a study")
    if not style.is_file():
        raise FileNotFoundError(f"style image not found: {style}")
    settings = EvalSettings(size=args.size, grid_rows=args.grid_rows, cell=args.cell, device=args.device,
                            time_fast=args.time_fast, batch_images=max(1, args.batch_images),
                            timing_repeats=args.timing_repeats)
    images = pick_images(args.content, args.max_images)
    evaluation = evaluate(arms, images, style, settings, training_images=content_images_of(study) if study else None,
                          study=study.record["settings"] if study else None)
    files = write_report(evaluation, args.out, args.title)
    log.info("wrote %s (and %d more files in %s)", files["html"], len(files) - 1, args.out)
    return 0


def _add_zoo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zoo", help="train, export and show the shipped models of a plan (weights/zoo.toml)",
                       description="Build a model zoo from a plan file: every step resumes or skips finished work.")
    p.add_argument("action", choices=("status", "train", "export", "gallery"),
                   help="status: steps per run; train: train unfinished runs in plan order (resuming); "
                        "export: ship finished runs into the weights folder; gallery: the README pictures")
    p.add_argument("--plan", type=Path, default=Path("weights/zoo.toml"), help="(default: %(default)s)")
    p.add_argument("--runs", type=Path, default=Path("runs/zoo"), help="training runs (default: %(default)s)")
    p.add_argument("--weights", type=Path, help="weights folder (default: the plan's folder)")
    p.add_argument("--only", action="append", metavar="NAME", help="just this model (repeatable)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=100, help="(default: %(default)s steps)")
    p.add_argument("--export", action="store_true", help="train: export each model as soon as it finishes")
    p.add_argument("--workers", type=int, default=0,
                   help="train: data loading processes; a GPU needs a few (default: %(default)s)")
    p.add_argument("--photos", type=Path, nargs="+", help="gallery: photo files or one folder "
                   "(default: the plan's [gallery] photos, else 3 of the test split next to its content folders)")
    p.add_argument("--gallery-out", type=Path, default=Path("docs/gallery"), help="(default: %(default)s)")
    p.set_defaults(func=_cmd_zoo)


def _cmd_zoo(args: argparse.Namespace) -> int:
    from .evaluation import pick_images
    from .validation import paintings_measured
    from .zoo_build import export_zoo, gallery, gallery_photos, load_plan, precision_note, select, status, train_zoo

    models = select(load_plan(args.plan), args.only)
    weights = args.weights or args.plan.parent
    if args.action == "status":
        rows = status(models, args.runs, weights)
        hours = lambda s: "?" if s is None else f"{s / 3600:.1f} h"  # noqa: E731
        norm_width = max([9, *(len(row["norm"]) for row in rows)])
        print(f"{'name':<24} {'norm':<{norm_width}} {'steps':>13} {'shipped':>8} {'s/step':>7} {'left':>7} {'kept':>5} "
              f"{'style':>5} {'style_w':>15}")
        for row in rows:
            shipped = row["shipped_steps"] if row["shipped_steps"] is not None else "-"
            rate = f"{row['seconds_per_step']:.2f}" if row["seconds_per_step"] else "-"
            val = row["validation"]
            kept, style = (f"{val['val_ssim']:.2f}", f"{val['val_style']:.2f}") if val else ("-", "-")
            weights = row["style_weights"]
            auto = "-" if not weights else f"{weights[0]:.2g}" if len(weights) == 1 else \
                f"{min(weights):.2g}-{max(weights):.2g}"
            print(f"{row['name']:<24} {row['norm']:<{norm_width}} {row['steps_done']:>6}/{row['steps']:<6} {shipped:>8} "
                  f"{rate:>7} {hours(row['remaining_s']):>7} {kept:>5} {style:>5} {auto:>15}")
            paintings = paintings_measured(val or {})
            for k, painting in enumerate(paintings):  # a multi-style run: each painting's own
                weight = f", style_w {weights[k]:.2g}" if weights and len(weights) == len(paintings) else ""
                teacher = f", {val['val_psnr/' + painting]:.1f} dB to its teacher" \
                    if f"val_psnr/{painting}" in val else ""  # a distilled run (--teacher)
                print(f"  {painting}: kept {val['val_ssim/' + painting]:.2f}, style {val['val_style/' + painting]:.2f}"
                      f"{weight}{teacher}")
            if row["waits_for"]:
                print(f"  waits for {row['waits_for']} (not trained yet)")
            if row["stale"]:
                print(f"  run differs from the plan in: {', '.join(row['stale'])} (move it away to retrain)")
            if row["shipped_stale"]:
                print(f"  shipped model differs from the plan in: {', '.join(row['shipped_stale'])}")
        note = precision_note(rows)
        if note:
            print(note)
        left = [r["remaining_s"] for r in rows]
        print(f"training left: {hours(None if None in left else sum(left))} "
              "(at each run's recent rate; runs not started yet at the median rate)")
        print("kept: luminance SSIM of the validation photos to their outputs at the last sample step (the "
              "photo is lost below 0.4); style: their style distance relative to the photos' own (lower = more style); "
              "style_w: where --style-weight auto has the weight (the range over a multi-style run's paintings)")
    elif args.action == "train":
        from .train import TrainOptions

        # The plan's gallery photos are held out of every model's training: they validate each run.
        options = TrainOptions(checkpoint_every=args.checkpoint_every, sample_every=250, num_workers=args.workers,
                               val_photos=tuple(gallery_photos(args.plan)))
        train_zoo(models, args.runs, options, export_to=weights if args.export else None)
    elif args.action == "export":
        for entry in export_zoo(models, args.runs, weights):
            print(f"exported {entry['name']}: {entry['bytes'] / 1e6:.1f} MB, {entry['export_psnr_db']} dB vs fp32")
    else:
        if args.photos and len(args.photos) == 1 and args.photos[0].is_dir():
            photos = pick_images(args.photos[0], 3)
        elif args.photos:
            photos = args.photos
        elif gallery_photos(args.plan):
            photos = gallery_photos(args.plan)
        else:
            test = models[0].spec.content[0].parent / "test"
            if not test.is_dir():
                raise FileNotFoundError(f"no test folder at {test}; pass --photos")
            photos = pick_images(test, 3)
        for path in gallery(models, weights, photos, args.gallery_out):
            print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for all subcommands."""
    parser = argparse.ArgumentParser(prog="style-transfer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_stylize(sub)
    _add_models(sub)
    _add_export(sub)
    _add_ablate(sub)
    _add_compare(sub)
    _add_zoo(sub)
    return parser


# What to change when a command runs out of memory (the run's resume state, if any, is where it was).
OUT_OF_MEMORY_HINTS = {
    "train": "give a smaller --batch-size or --image-size (continue the run with --resume)",
    "ablate": "give a smaller --batch-size or --image-size (the arms continue where they stopped)",
    "zoo": "give the plan's models a smaller batch_size or image_size (the runs continue where they stopped)",
    "compare": "give a smaller --size or --batch-images",
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `style-transfer` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, so that a closed pipe surfaces below rather than at interpreter exit
        return code
    except (ValueError, FileNotFoundError, CheckpointError, RuntimeError) as exc:
        # A user's mistake (or a diverged run): one clear line; the traceback only with --verbose.
        log.error("%s", exc, exc_info=args.verbose)
        if is_out_of_memory(exc):
            log.error("out of memory: %s", OUT_OF_MEMORY_HINTS.get(args.command, "use smaller images"))
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (`style-transfer models | head`): not an error. Point stdout at devnull so
        # the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
