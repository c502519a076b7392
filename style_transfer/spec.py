"""The run spec: every setting that shapes a trained result, with its default, its check and its fingerprint.

One place for the training recipe (issue 15). Before it, the settings were written four times (train,
ablate, zoo plan, CLI), each copy with its own defaults and checks, and they drifted (`ablate` had no
``--clip-grad-norm``). Now:

* the CLI builds a :class:`RunSpec` from options generated from :func:`settings` (``cli.py``);
* a zoo plan entry is a name plus a spec, its keys the flat names below (``zoo_build.py``);
* a study is a base spec plus norms and seeds, each arm the base with ``norm`` and ``seed`` replaced
  (``ablate.py``);
* a resume, a plan check and a study check all compare specs with :meth:`RunSpec.differences`.

So a field added to :class:`RunSpec`, :class:`~style_transfer.network.TransformerConfig` or
:class:`~style_transfer.losses.LossConfig` reaches ``train``, ``ablate`` and ``zoo`` with no other edit.

Every setting has one *flat* name (``norm``, ``style_weight``, ``lr``, ...): the CLI option
(``--style-weight``), the zoo plan key and the key of :meth:`RunSpec.to_dict`. The network and loss
settings live in their own configs (the model and the loss are rebuilt from them), which the spec holds.

What is *not* here changes how a run executes but not its result: device, checkpoint and sample
intervals, data workers, progress (``train.TrainOptions``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import file_sha256, read_model_info
from .device import check_precision
from .losses import LossConfig
from .network import TransformerConfig

# The configs the spec holds, by the name of the field that holds them.
_NESTED: dict[str, type] = {"network": TransformerConfig, "loss": LossConfig}
# The training data and starting point: part of what a run is, not of its recipe (they are recorded
# by name or hash only: the folders of another machine are other paths). A spec needs the first two.
DATA = ("content", "style", "init", "extend", "teacher")
REQUIRED = ("content", "style")
# The budget: a larger one continues a finished run, so it is not part of the fingerprint.
BUDGET = ("steps", "epochs")

# One line of help per setting, shown by the CLI. A setting without one still works everywhere.
HELP = {
    "content": "folder of content images (recursive; JPEG/PNG/WebP); repeat it to train on several folders",
    "style": "the style image; repeat it to train one conditional_instance network on several paintings "
             "(one style per step in turn; the styles are named by their file names)",
    "init": "start from this checkpoint's weights (a path, or a model name from the weights folder; the same "
            "network settings) instead of a random init; train also takes auto (the flagship model when it has "
            "this network, for one painting; several start from scratch) and none (random)",
    "extend": "add the --style painting(s) to this trained conditional_instance model: only the new styles' "
              "(gamma, beta) are trained, every other weight is frozen, so its styles stay exactly as they were; "
              "the network and loss settings default to the model's (and in train, the style weight to auto, "
              "--lr to 1e-2 and --steps to 500)",
    "teacher": "distill: a trained single-style model per --style (same order; a path or a model name from the "
               "weights folder), and each step trains the network to reproduce the step's painting's teacher on "
               "the crop (L1) instead of the perceptual loss, which the log still records; how one network "
               "learns several paintings without the flagship's lozenges (docs/multi-style.md)",
    "steps": "total optimizer steps",
    "epochs": "passes over the content images, instead of --steps",
    "norm": "normalization layer",
    "width": "channels of the first layer",
    "num_residual": "residual blocks",
    "groups": "groups of the group norm",
    "content_layers": "comma-separated VGG19 layers",
    "style_layers": "comma-separated VGG19 layers",
    "content_weight": "weight of the content loss",
    "style_weight": "weight of the style loss, or auto: steered during training by how much of the photo the "
                    "model keeps (balance.py; the train command's default)",
    "tv_weight": "weight of the total variation loss",
    "style_size": "long side of the style image, px (sets the scale of the strokes)",
    "image_size": "training crop size",
    "batch_size": "images per step, per process",
    "lr": "Adam learning rate",
    "lr_warmup": "raise the learning rate linearly from lr/N to lr over the first N steps (default: none; "
                 "train's default with --init: 100, since Adam's first steps would move every weight by about "
                 "lr and undo what the network had learned)",
    "affine_lr": "Adam learning rate of a conditional_instance network's per-style (gamma, beta) (default: "
                 "--lr; train's default for several paintings from scratch: 10x --lr): they alone tell the "
                 "styles apart, and at --lr they hardly move (docs/multi-style.md)",
    "teacher_style_weight": "with --teacher: also match the Gram matrices of the teacher's output on the crop (its "
                            "texture), at this weight, beside the L1 (default: L1 alone, which renders the strokes "
                            "softer than the teachers: docs/multi-style.md)",
    "clip_grad_norm": "clip the gradient's global L2 norm to this (default: no clipping; the log records the "
                      "norm of every step either way)",
    "bn_frozen_steps": "train the last N steps with batch norm's running statistics frozen, so the network "
                       "adapts to the statistics inference uses; the optimizer's moments restart there and the "
                       "learning rate ramps up again over 50 steps (batch norm only; default: none)",
    "ema_decay": "keep an exponential moving average of the weights with this decay (about the last 1/(1-D) "
                 "steps, e.g. 0.995) and save it as the model: it steadies a run's last steps, where the weights "
                 "wander at a constant lr (default: none, the last step's weights; train --teacher: 0.995, "
                 "and 0 turns it off)",
    "stability_weight": "for video: also paint each crop as a camera moved 1-3 px sees it and add this weight times "
                        "the mean absolute difference to the crop's painting moved along, so strokes follow a "
                        "moving scene instead of being drawn anew in every frame (default: off)",
    "seed": "seed for init, data order and crops",
    "precision": "autocast precision; auto = bf16 where the hardware has it, else fp32; resolved once at the "
                 "start and recorded",
}
# Settings that act on one norm only: left out of other norms' fingerprints (they change nothing there),
# so a norm A/B set can share them without its other arms' recipes differing.
ONLY_FOR_NORM = {"bn_frozen_steps": "batch", "num_styles": "conditional_instance",
                 "base_styles": "conditional_instance", "affine_lr": "conditional_instance"}
# Settings a spec derives rather than reads (not options, not plan keys): a conditional instance
# network holds one style per style image given (multi-style training: issue 17).
# ``base_styles``: the styles an extended model already holds (``extend``), read from its checkpoint.
DERIVED = ("num_styles", "base_styles")
# CLI spellings kept from before the spec (the flag is otherwise --<name with dashes>).
FLAGS = {"num_residual": ("--residual-blocks",)}


@dataclass(frozen=True)
class RunSpec:
    """What a training run is: its data, its recipe and its budget. Validated at construction."""

    content: tuple[Path, ...]  # one or more folders of photos, used together
    # The painting, or several for a conditional instance norm network (issue 17): one (gamma, beta) per
    # painting, in this order, each named by its file name.
    style: tuple[Path, ...]
    init: Path | None = None  # a checkpoint to start from; its sha256 is recorded in the result
    # A trained multi-style checkpoint to add ``style`` to (issue 17, part 3): its convolutions and styles
    # are frozen and only the new (gamma, beta) pairs train. Its network, and its loss unless given, are
    # the run's (from_flat reads them from its metadata); ``base_styles`` holds its styles' names.
    extend: Path | None = None
    # Knowledge distillation (Hinton et al. 2015, applied to style networks): one trained single-style
    # model per painting of ``style``, in the same order. A step's loss is then the L1 distance between
    # the network's output and the teacher's on the crop, not the perceptual loss (whose terms are still
    # measured for the log). A four-style network trained from scratch with the perceptual loss paints
    # instance-norm droplets and, started from the flagship, its lozenges; trained to the four shipped
    # singles it lost both (docs/multi-style.md, "Distillation"). Recorded by hash, like ``init``.
    teacher: tuple[Path, ...] | None = None
    network: TransformerConfig = TransformerConfig()
    loss: LossConfig = LossConfig()
    steps: int | None = None  # total optimizer steps; DEFAULT_STEPS when neither steps nor epochs is given
    epochs: float | None = None
    image_size: int = 256  # random crops, as in Johnson et al. 2016
    batch_size: int = 4  # per process
    lr: float = 1e-3  # Adam, as in Johnson et al. 2016
    # Linear learning-rate warm-up over the first N steps (Goyal et al. 2017). Adam's first updates have
    # a magnitude of about lr for every weight, whatever its gradient (its second-moment estimate is one
    # step old), so from a trained network on a nearly converged loss one step at 2e-4 multiplies its
    # style loss ~100x (benchmarks/warmup_shock.py, docs/quality.md). None: no warm-up.
    lr_warmup: int | None = None
    # The per-style (gamma, beta) of a conditional instance network at their own rate (None: lr). From the
    # flagship's weights every painting's pair starts as the flagship's affine, and they are the only
    # per-style parameters; at lr 2e-4 a pair moves about lr per step it is trained (one step in N), so
    # after 1000 steps of four-styles the pairs' gammas differed by 2-3% while the shared convolutions had
    # moved 17% (docs/multi-style.md): the convolutions were doing the styles' work.
    affine_lr: float | None = None
    # None: no clipping, as in Johnson et al. The group-norm arm of the shipped Starry Night A/B set
    # diverged twice without it (weights/zoo.toml). Optional settings default to None ("off") and are
    # left out of the fingerprint while off, so runs from before the setting existed still resume.
    clip_grad_norm: float | None = None
    # With ``teacher``: the weight of a texture term beside the L1, the squared distance between the Gram
    # matrices (the perceptual loss's style layers) of the network's output and of the teacher's output on
    # the same crop. L1 alone regresses to the mean of what it cannot place exactly, so a distilled network
    # painted the teachers' strokes softer (docs/multi-style.md, "Distillation"); the Gram matrices do not
    # care where a stroke is, only that it is there. None: L1 alone.
    teacher_style_weight: float | None = None
    # Train the last N steps with batch norm's population statistics frozen (eval-mode normalization),
    # so the weights adapt to the statistics inference uses. In training mode each layer sees its own
    # batch's statistics; at inference the population's, and the gap compounds through the layers
    # (benchmarks/bn_holes.py: on a photo with a bright sky, 1.4x the running std after the first layer,
    # 31x before the last) into black holes (issue 16; the train/inference discrepancy of Ioffe 2017).
    # Acts on batch norm only, so norm A/B arms can share it.
    bn_frozen_steps: int | None = None
    # Keep an exponential moving average of the weights (Polyak & Juditsky 1992) and ship it: the
    # checkpoint, the samples and the validation hold the average, the resume state both. At a constant lr
    # the weights wander from checkpoint to checkpoint (four-styles' validation PSNR to its teachers moved
    # up to 2.8 dB between steps 1000 and 1250, and two hosts' runs differed by 2.7 dB at one step:
    # docs/multi-style.md); the average is where they wander around. The decay is warmed up as in
    # TensorFlow's ExponentialMovingAverage, min(decay, (1 + t) / (10 + t)) at update t, so the first
    # steps' weights (random, or the --init model's) do not linger in a short run. None: no average.
    ema_decay: float | None = None
    # For video (docs/quality.md, "Video"): a video is painted frame by frame, and after a camera
    # move of 1-2 px the network draws its strokes anew (the stride-2 convolutions tie them to a 4 px grid
    # of the frame), so a moving shot boils. With a weight, every step also paints the crops as a camera
    # moved 1-3 px sees them and adds this weight times the mean absolute difference to the crops'
    # painting moved along: a synthetic-motion version of the temporal terms of Ruder et al. 2016 and
    # Huang et al. 2017, which take the motion from optical flow between real frames. None: off.
    stability_weight: float | None = None
    seed: int = 0
    precision: str = "auto"  # autocast; auto = bf16 where the hardware has it (resolved at the start)
    base_styles: tuple[str, ...] | None = None  # derived from ``extend``: the styles it already holds

    # 40k steps of batch 4 is two epochs of COCO, Johnson et al.'s budget.
    DEFAULT_STEPS: typing.ClassVar[int] = 40_000

    def __post_init__(self) -> None:
        object.__setattr__(self, "content", _paths(self.content, "content folder"))
        self._set_styles()
        for name in ("init", "extend"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if self.teacher is not None:
            object.__setattr__(self, "teacher", _paths(self.teacher, "teacher model"))
            if len(self.teacher) != len(self.style):
                raise ValueError(f"{len(self.teacher)} teacher model(s) for {len(self.style)} style image(s): give "
                                 "one --teacher per --style, in the same order")
        if self.extend is not None and self.init is not None:
            raise ValueError("give --init or --extend, not both (an extended model starts from its own weights)")
        check_precision(self.precision)
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        for name in ("image_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.affine_lr is not None and not self.affine_lr > 0:
            raise ValueError(f"affine_lr must be > 0, got {self.affine_lr}")
        if self.teacher_style_weight is not None:
            if not self.teacher_style_weight > 0:
                raise ValueError(f"teacher_style_weight must be > 0, got {self.teacher_style_weight}")
            if self.teacher is None:
                raise ValueError("teacher_style_weight needs --teacher (it weighs the Gram distance to the teacher's output)")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be > 0, got {self.clip_grad_norm}")
        if self.lr_warmup is not None and (not isinstance(self.lr_warmup, int) or self.lr_warmup < 1):
            raise ValueError(f"lr_warmup must be a positive integer, got {self.lr_warmup!r}")
        if self.bn_frozen_steps is not None and (not isinstance(self.bn_frozen_steps, int) or self.bn_frozen_steps < 1):
            raise ValueError(f"bn_frozen_steps must be a positive integer, got {self.bn_frozen_steps!r}")
        if self.stability_weight is not None:
            if not self.stability_weight > 0:
                raise ValueError(f"stability_weight must be > 0, got {self.stability_weight}")
            if self.teacher is not None:
                raise ValueError("stability_weight trains with the perceptual loss; a distilled run (--teacher) "
                                 "learns its teachers' strokes, stable or not")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be between 0 and 1 (e.g. 0.995: about the last 200 steps), "
                             f"got {self.ema_decay}")

    def _set_styles(self) -> None:
        """The style images as a tuple; the network holds one style per image (``num_styles`` is derived
        from them, never given on its own)."""
        styles = _paths(self.style, "style image")
        names = [p.stem for p in styles]
        clashing = sorted({n for n in names if names.count(n) > 1})
        if clashing:
            # A multi-style model's styles are chosen by name (stylize --style NAME), so names must differ.
            raise ValueError(f"two style images are both named {', '.join(clashing)}: rename one (a style is "
                             "chosen by its file name)")
        base = tuple(self.base_styles or ())
        object.__setattr__(self, "base_styles", base or None)
        if (len(styles) > 1 or base) and self.network.norm != "conditional_instance":
            raise ValueError(f"{len(styles)} style images need --norm conditional_instance (one network, "
                             f"one (gamma, beta) per style); {self.network.norm} norm learns one style")
        if base and self.extend is None:
            raise ValueError("base_styles come from --extend's model only")
        taken = sorted(set(base) & set(names))
        if taken:
            raise ValueError(f"the extended model already has a style named {', '.join(taken)}")
        object.__setattr__(self, "style", styles)
        count = len(base) + len(styles)
        if self.network.num_styles != count:
            if self.network.num_styles != 1:  # given explicitly (a record): it must agree
                raise ValueError(f"num_styles is {self.network.num_styles} but {count} style(s) are given")
            object.__setattr__(self, "network", dataclasses.replace(self.network, num_styles=count))

    @property
    def style_names(self) -> list[str]:
        """The styles by name (their file names), in the order of the network's (gamma, beta) pairs: an
        extended model's own first, then the new ones."""
        return [*(self.base_styles or ()), *(p.stem for p in self.style)]

    def style_files_exist(self) -> bool:
        return all(p.is_file() for p in self.style)

    def style_sha256s(self) -> list[str]:
        """The hashes of every style image of the network, in the order of its styles: an extended model's
        own first (from its metadata; its file must exist), then this run's paintings."""
        base = extended_style_sha256s(read_model_info(self.extend)) if self.extend is not None else []
        return [*base, *(file_sha256(p) for p in self.style)]

    def checkpoint_style_sha256(self) -> str:
        """What this run's checkpoint records as its ``style_sha256``: one hash of all the network's style
        images in order (another painting, or another order, is another model; combined_sha256)."""
        return combined_sha256(self.style_sha256s())

    # ------------------------------------------------------------------ flat names

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name (the nested configs' fields spread out), in field order."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _NESTED:
                out.update(dataclasses.asdict(value))
            else:
                out[f.name] = value
        return out

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> "RunSpec":
        """Build from flat names (what the CLI, a zoo plan entry and a study record hold); defaults for
        the rest. An unknown name is an error that lists the known ones."""
        known = {s.name for s in settings()} | set(DERIVED)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; known: {', '.join(sorted(known))}")
        if values.get("extend") is not None:
            values = _extension(values)
        nested = {group: {f.name: values[f.name] for f in dataclasses.fields(config) if f.name in values}
                  for group, config in _NESTED.items()}
        own = {k: v for k, v in values.items() if k not in {f for n in nested.values() for f in n}}
        for group, config in _NESTED.items():
            own[group] = config(**nested[group])
        return cls(**own)

    def replace(self, **changes: Any) -> "RunSpec":
        """A copy with some settings changed, by flat name (``spec.replace(norm="batch", seed=1)``)."""
        values = {**self.flat(), **changes}
        if "style" in changes and "num_styles" not in changes:
            del values["num_styles"]  # derived from the styles again
        return RunSpec.from_flat(values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready flat record (absolute paths, lists for tuples); :meth:`from_dict` reads it back."""
        out = _jsonable(self.flat())
        out["content"] = [str(p.resolve()) for p in self.content]
        # One style: a string, as records from before multi-style training hold it.
        styles = [str(p.resolve()) for p in self.style]
        out["style"] = styles[0] if len(styles) == 1 else styles
        out["init"] = str(self.init.resolve()) if self.init else None
        out["extend"] = str(self.extend.resolve()) if self.extend else None
        out["teacher"] = [str(p.resolve()) for p in self.teacher] if self.teacher else None
        return out

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "RunSpec":
        return cls.from_flat(record)

    # ------------------------------------------------------------------ comparing runs

    def fingerprint(self) -> dict[str, Any]:
        """The recipe: everything that must not change across a resume. Stored in every checkpoint (its
        ``training`` metadata) and resume state, nested as {"network": ..., "loss": ..., "lr": ...}."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in DATA or f.name in BUDGET:
                continue
            value = getattr(self, f.name)
            if f.name in _NESTED:
                out[f.name] = {k: v for k, v in dataclasses.asdict(value).items()
                               if ONLY_FOR_NORM.get(k, self.network.norm) == self.network.norm}
            elif value is not None and ONLY_FOR_NORM.get(f.name, self.network.norm) == self.network.norm:
                out[f.name] = value
        return out

    def differences(self, recorded: Mapping[str, Any], ignore_auto_precision: bool = True) -> list[str]:
        """Flat names of the recipe settings whose value differs from a recorded fingerprint (a
        checkpoint's ``training`` metadata, a resume state's or a manifest entry's ``settings``); []
        when they match. Keys a record has beyond the fingerprint (e.g. ``num_images``) are ignored.

        With ``ignore_auto_precision``, a spec that says ``auto`` matches any recorded precision (the
        record holds the resolved one).
        """
        mine, theirs = _flat_fingerprint(self.fingerprint()), _flat_fingerprint(recorded)
        names = [s.name for s in settings() if s.name not in DATA and s.name not in BUDGET]
        if ignore_auto_precision and self.precision == "auto":
            names.remove("precision")
        return [n for n in names if mine.get(n) != theirs.get(n)]

    def diff(self, other: "RunSpec") -> list[str]:
        """Flat names of every setting (data and budget included) in which two specs differ."""
        a, b = self.to_dict(), other.to_dict()
        return [name for name in a if a[name] != b[name]]

    def total_steps(self, steps_per_epoch: Callable[[], int]) -> int:
        """The step budget: ``steps``, else ``epochs`` passes (``steps_per_epoch`` is only called then),
        else DEFAULT_STEPS."""
        if self.steps is not None:
            return self.steps
        if self.epochs is not None:
            return math.ceil(self.epochs * steps_per_epoch())
        return self.DEFAULT_STEPS


def _paths(value: Any, what: str) -> tuple[Path, ...]:
    """One path or several, as a tuple of paths: at least one, none twice."""
    paths = tuple(Path(p) for p in ((value,) if isinstance(value, (str, Path)) else value))
    if not paths:
        raise ValueError(f"give at least one {what}")
    repeated = sorted({str(p) for p in paths if paths.count(p) > 1})
    if repeated:
        raise ValueError(f"{what} given twice: {', '.join(repeated)}")
    return paths


def combined_sha256(shas: list[str]) -> str:
    """One hash for a list of style images' hashes, in order: the image's own for one."""
    return shas[0] if len(shas) == 1 else hashlib.sha256(",".join(shas).encode()).hexdigest()


def extended_style_sha256s(info: Any) -> list[str]:
    """The hashes of a multi-style model's style images in order, from its metadata (a ModelInfo)."""
    return list(info.extra.get("style_sha256s") or [info.style_sha256])


def _extension(values: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a run that extends a trained multi-style model (``extend``): its network (with room
    for the new styles), its styles as ``base_styles``, and its loss settings unless given, from its
    checkpoint's metadata. A network setting given otherwise than the model's is an error: the frozen
    convolutions are the model's."""
    path = Path(values["extend"])
    try:
        info = read_model_info(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"--extend: checkpoint not found: {path}") from None
    if info.config.norm != "conditional_instance":
        raise ValueError(f"--extend needs a conditional_instance model; {path.name} has {info.config.norm} norm")
    base = list(info.extra.get("styles") or [info.style_name])
    values = dict(values)
    given_base = values.get("base_styles")
    if given_base is not None and list(given_base) != base:
        raise ValueError(f"base_styles {list(given_base)} are not {path.name}'s styles {base}")
    values["base_styles"] = tuple(base)
    network = dataclasses.asdict(info.config)
    for name, value in network.items():
        if name == "num_styles":
            continue  # base + new, derived from the styles
        if name in values and _jsonable({"v": values[name]}) != _jsonable({"v": value}):
            raise ValueError(f"--extend: {name} is {value!r} in {path.name}; an extension keeps the model's "
                             f"network (got {values[name]!r})")
        values[name] = value
    for name, value in (info.training.get("loss") or {}).items():
        values.setdefault(name, value)
    return values


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    """Tuples as lists and paths as strings: the form JSON and TOML give back."""
    return json.loads(json.dumps(dict(values), default=str))


def _flat_fingerprint(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    flat = {k: v for k, v in fingerprint.items() if k not in _NESTED}
    for group in _NESTED:
        flat.update(fingerprint.get(group) or {})
    return _jsonable(flat)


# ----------------------------------------------------------------------------- the settings table


@dataclass(frozen=True)
class Setting:
    """One setting: its flat name, where it lives, its type, default and help."""

    name: str
    group: str | None  # "network" / "loss" for a nested config's field, else None
    type: Any  # the annotation, e.g. int, float | None, tuple[str, ...]
    default: Any
    help: str

    @property
    def flags(self) -> tuple[str, ...]:
        return FLAGS.get(self.name, ("--" + self.name.replace("_", "-"),))

    @property
    def kind(self) -> str:
        """How its text form is read: 'int', 'float', 'weight' (a number or auto), 'str', 'list' (comma-separated),
        'path', 'paths'."""
        base = self.type
        if typing.get_origin(base) in (typing.Union, types.UnionType):
            args = set(typing.get_args(base))
            if {float, str} <= args:
                return "weight"  # a number or a word (style_weight: auto)
            base = next(a for a in typing.get_args(base) if a is not type(None))  # X | None: read as X
        if typing.get_origin(base) is tuple:
            return "paths" if typing.get_args(base)[0] is Path else "list"
        return {int: "int", float: "float", Path: "path"}.get(base, "str")


def _fields(cls: type, group: str | None) -> list[Setting]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        out.append(Setting(f.name, group, hints[f.name], default, HELP.get(f.name, f.metadata.get("help", ""))))
    return out


def settings() -> list[Setting]:
    """Every setting of a run spec, in field order, the nested configs' fields in place of the config."""
    out: list[Setting] = []
    for s in _fields(RunSpec, None):
        out += _fields(_NESTED[s.name], s.name) if s.name in _NESTED else [s]
    return [s for s in out if s.name not in DERIVED]


# ----------------------------------------------------------------------------- norm A/B sets

# Recorded keys that do not make two runs' recipes different: the norm is what an A/B set varies, and
# the settings that act on one norm only (sync_bn is recorded for every arm, False for the others).
# content_dir is the name of the run's link folder, not of the data: runs from before the run folder
# (issue 15) recorded "data", later ones "content", for the same photos (num_images still tells data
# sets apart); the retrained batch arm of the shipped set is such a later run.
# style_weight_used is where --style-weight auto ended (balance.py), an outcome of the recipe, not part of it.
_NOT_RECIPE = ("sync_bn", "content_dir", "style_weight_used", *ONLY_FOR_NORM)


def ab_group(training: Mapping[str, Any], style_sha256: str) -> str:
    """The norm A/B set a trained model belongs to: equal for two checkpoints exactly when they were
    trained on the same style image with every recorded setting equal but the norm (recipe, seed,
    budget, data size, processes). A short hex id.

    The one definition of "same recipe, different norm" (issue 15): the zoo gallery, ``compare`` and
    the server's ``/v1/models`` (which the web page's A/B button reads) all group by it. A style may
    have models outside its set (the shipped flagship ``starry-night`` was trained without gradient
    clipping), so grouping by style alone would compare norms across recipes.
    """
    recipe = {k: v for k, v in training.items() if k not in _NOT_RECIPE}
    recipe["network"] = {k: v for k, v in (training.get("network") or {}).items()
                         if k != "norm" and k not in _NOT_RECIPE}
    key = json.dumps({"style_sha256": style_sha256, "training": recipe}, sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:12]
