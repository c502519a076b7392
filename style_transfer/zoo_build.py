"""Building the shipped model zoo from a plan file (issue 6): train, export, gallery.

The plan (``weights/zoo.toml``) lists every shipped model with the settings it is trained with, so the
zoo can be rebuilt by anyone and every setting is written down next to the weights it made. Training a
zoo takes CPU-hours, so everything here is resumable and idempotent:

* :func:`train_zoo` trains the models in plan order; an interrupted run resumes from its last
  checkpoint (``train --resume``), a finished one is skipped. Kill it at any time and run it again.
* :func:`export_zoo` copies every *finished* run into the weights folder (fp16, PSNR-checked, listed
  in the manifest with its settings). Unfinished runs are never shipped.
* :func:`gallery` renders the README's pictures from the shipped weights.

Plan format (TOML; relative paths are relative to the plan file)::

    [defaults]                      # any model key; each model may override it
    content = ["photos/train", "photos/val"]
    steps = 3000
    [[models]]
    name = "starry-night"           # the served model name
    style = "styles/starry.jpg"
    style_weight = 2e-5             # any setting of a run spec, by its flat name (spec.py)
"""

from __future__ import annotations

import json
import logging
import statistics
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import file_sha256, read_model_info
from .rundir import RunDir
from .spec import REQUIRED, RunSpec, ab_group, settings
from .train import TrainOptions, train
from .zoo import is_valid_name, read_manifest

log = logging.getLogger(__name__)

# A plan entry's keys: the model's name and notes, and any setting of a run spec by its flat name.
_ENTRY_KEYS = {"name", "notes"} | {s.name for s in settings()}


class PlanError(ValueError):
    """The plan file is malformed; the message names the model and key."""


@dataclass(frozen=True)
class ZooModel:
    """One model of the plan: its served name and the spec of its training run.

    An entry that extends a model (``extend``, issue 17) not trained yet is *pending*: its spec needs the
    base's checkpoint (its network and styles), so it is built when first asked for, and until the base
    exists asking is a :class:`PlanError` that names it. So a plan can hold the extensions of a model it
    trains itself, or of one trained elsewhere later, and still load (``zoo status`` shows them waiting).
    """

    name: str
    resolved: RunSpec | None
    notes: str = ""
    pending: dict[str, Any] | None = field(default=None, repr=False)  # the entry's settings, when pending

    @property
    def spec(self) -> RunSpec:
        if self.resolved is not None:
            return self.resolved
        if "spec" not in self.__dict__:  # built once (frozen: stored beside the fields)
            base = Path(self.pending["extend"])
            if not base.is_file():
                raise PlanError(f"{self.name}: waits for the model it extends, {base}: train it first")
            try:
                self.__dict__["spec"] = RunSpec.from_flat(self.pending)
            except (TypeError, ValueError) as exc:
                raise PlanError(f"model {self.name!r}: {exc}") from exc
        return self.__dict__["spec"]

    @property
    def _unresolved(self) -> bool:
        """A pending extension whose base does not exist yet (its spec cannot be built)."""
        return self.pending is not None and not Path(self.pending["extend"]).is_file()

    @property
    def waits_for(self) -> Path | None:
        """The first checkpoint the entry needs that does not exist yet: the model a pending extension
        extends, or the one it starts from (``init``) or learns from (``teacher``), e.g. another entry of
        the plan not trained yet. None when it can train."""
        if self.pending is not None:
            return Path(self.pending["extend"]) if self._unresolved else None
        needed = [self.spec.init, *(self.spec.teacher or ())]
        return next((p for p in needed if p is not None and not p.is_file()), None)

    @property
    def style_files(self) -> tuple[Path, ...]:
        """The paintings this entry trains (an extension's new ones), pending or not."""
        return self.pending["style"] if self.pending is not None else self.spec.style

    @property
    def content_files(self) -> tuple[Path, ...]:
        """Its content folders (or photos), pending or not."""
        return self.pending["content"] if self.pending is not None else self.spec.content

    @property
    def steps(self) -> int:
        return self.pending["steps"] if self._unresolved else self.spec.steps

    @property
    def norm(self) -> str:
        # An extension's norm is its base's, which must be conditional (spec._extension checks it).
        return "conditional_instance" if self._unresolved else self.spec.network.norm

    def run(self, runs_dir: Path) -> RunDir:
        """The run's checkpoint and folder: ``<runs>/<name>.safetensors`` and ``<runs>/<name>.run/``."""
        return RunDir.of(runs_dir / f"{self.name}.safetensors")

    def checkpoint(self, runs_dir: Path) -> Path:
        return self.run(runs_dir).checkpoint

    def differences(self, training: dict[str, Any], style_sha256: str = "") -> list[str]:
        """The plan keys whose value differs from a run's recorded training settings (its checkpoint's
        ``training`` metadata, or a manifest entry's ``settings``); [] when the run is the plan's.

        Why: a plan edited after its run finished (e.g. clip_grad_norm added to the A/B set, issue 6)
        would otherwise count the old run as done and keep shipping it under the plan's settings. The
        step budget is left out on purpose (a larger one continues the run), and so are the resolved
        precision when the plan says 'auto' and the data folders (recorded only by their link name).
        """
        keys = self.spec.differences(training)
        # An extension's checkpoint records the hash of all its network's styles (the model's first).
        extends = self.spec.extend is not None
        if style_sha256 and self.spec.style_files_exist() and (not extends or self.spec.extend.is_file()) \
                and self.spec.checkpoint_style_sha256() != style_sha256:
            keys.append("style")
        return keys

    def stale(self, runs_dir: Path) -> list[str]:
        """:meth:`differences` of the run's last checkpoint ([] when there is none yet)."""
        info = self.run(runs_dir).info()
        return self.differences(info.training, info.style_sha256) if info else []


def load_plan(path: Path | str) -> list[ZooModel]:
    """The models of a plan file, in order, validated (unknown keys, bad names and norms are errors)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"{path}: not valid TOML: {exc}") from exc
    unknown_top = set(raw) - {"defaults", "models", "gallery"}
    if unknown_top:
        raise PlanError(f"{path}: unknown section(s) {sorted(unknown_top)}")
    defaults = raw.get("defaults", {})
    models: list[ZooModel] = []
    for i, given in enumerate(raw.get("models", [])):
        entry = {**defaults, **given}
        where = f"{path}: model {entry.get('name', i)!r}"
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise PlanError(f"{where}: unknown key(s) {sorted(unknown)}")
        for key in ("name", *REQUIRED, "steps"):
            if key not in entry:
                raise PlanError(f"{where}: '{key}' is required")
        if not is_valid_name(entry["name"]):
            raise PlanError(f"{where}: invalid name (use letters, digits, '-', '_' and '.')")
        content = entry["content"]
        resolve = lambda p: (path.parent / p).resolve()  # noqa: E731 - relative to the plan file
        values = {k: v for k, v in entry.items() if k not in ("name", "notes")}
        values["content"] = tuple(resolve(c) for c in ([content] if isinstance(content, str) else content))
        style = entry["style"]
        values["style"] = tuple(resolve(s) for s in ([style] if isinstance(style, str) else style))
        for key in ("init", "extend"):
            if key in entry:
                values[key] = resolve(entry[key])
        if "teacher" in entry:
            teacher = entry["teacher"]
            values["teacher"] = tuple(resolve(t) for t in ([teacher] if isinstance(teacher, str) else teacher))
        if "extend" in values and not values["extend"].is_file():
            # Checked now as far as it can be without the base: every key but those the base supplies.
            try:
                RunSpec.from_flat({k: v for k, v in values.items() if k != "extend"})
            except (TypeError, ValueError) as exc:
                raise PlanError(f"{where}: {exc}") from exc
            models.append(ZooModel(entry["name"], None, entry.get("notes", ""), pending=values))
            continue
        try:
            models.append(ZooModel(entry["name"], RunSpec.from_flat(values), entry.get("notes", "")))
        except (TypeError, ValueError) as exc:
            raise PlanError(f"{where}: {exc}") from exc
    names = [m.name for m in models]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise PlanError(f"{path}: duplicate model name(s) {duplicated}")
    if not models:
        raise PlanError(f"{path}: no [[models]]")
    return models


def gallery_photos(path: Path | str) -> list[Path]:
    """The photos named in the plan's ``[gallery]`` section (relative to the plan file); [] if none."""
    path = Path(path)
    section = tomllib.loads(path.read_text()).get("gallery", {})
    unknown = set(section) - {"photos"}
    if unknown:
        raise PlanError(f"{path}: [gallery]: unknown key(s) {sorted(unknown)}")
    photos = section.get("photos", [])
    if not isinstance(photos, list) or not all(isinstance(p, str) for p in photos):
        raise PlanError(f"{path}: [gallery]: photos must be a list of paths")
    resolved = [(path.parent / p).resolve() for p in photos]
    missing = [str(p) for p in resolved if not p.is_file()]
    if missing:
        raise PlanError(f"{path}: [gallery]: no such photo(s): {', '.join(missing)}")
    return resolved


def select(models: Sequence[ZooModel], only: Sequence[str] | None) -> list[ZooModel]:
    """The models named in ``only`` (all when empty), in plan order; an unknown name is an error."""
    if not only:
        return list(models)
    missing = sorted(set(only) - {m.name for m in models})
    if missing:
        raise PlanError(f"not in the plan: {', '.join(missing)} (plan has {', '.join(m.name for m in models)})")
    return [m for m in models if m.name in only]


def status(models: Sequence[ZooModel], runs_dir: Path, weights_dir: Path) -> list[dict[str, Any]]:
    """Per model: steps trained, steps planned, what the weights folder ships, and the time left.

    ``stale`` / ``shipped_stale``: the plan keys the run / the shipped model differ in (see
    :meth:`ZooModel.differences`).

    ``precision``: what the run trained in (its checkpoint's record; "auto" resolves per host, so two
    arms of one plan may differ in it), None before its first checkpoint.

    ``seconds_per_step`` is the run's own recent median; ``remaining_s`` uses it, or for a run not yet
    started the median rate of the runs that have one (same machine), and is None with no rate at all.
    """
    shipped = {m["name"]: m for m in read_manifest(weights_dir)["models"]}
    rows = []
    for m in models:
        run = m.run(runs_dir)
        info = run.info()
        done = info.steps if info else 0
        waits = m.waits_for
        styles = [waits.stem, *(p.stem for p in m.style_files)] if m._unresolved else m.spec.style_names
        rows.append({"name": m.name, "norm": m.norm, "style": " + ".join(styles), "steps_done": done,
                     "waits_for": str(waits) if waits else None,
                     "steps": m.steps, "finished": done >= m.steps,
                     "precision": info.training.get("precision") if info else None,
                     "shipped_steps": shipped.get(m.name, {}).get("steps"),
                     # m.stale(runs_dir), from the metadata already read above rather than read again
                     "stale": m.differences(info.training, info.style_sha256) if info else [],
                     "shipped_stale": (m.differences(shipped[m.name].get("settings", {}),
                                                     shipped[m.name].get("style_sha256", ""))
                                       if m.name in shipped else []),
                     "seconds_per_step": run.seconds_per_step(), "validation": run.latest_validation(),
                     "style_weights": run.latest_style_weights()})
    known = [r["seconds_per_step"] for r in rows if r["seconds_per_step"]]
    typical = statistics.median(known) if known else None
    for r in rows:
        rate = r["seconds_per_step"] or typical
        left = max(0, r["steps"] - r["steps_done"])
        r["remaining_s"] = 0.0 if not left else (left * rate if rate else None)
    return rows


def precision_note(rows: Sequence[dict[str, Any]]) -> str | None:
    """A warning when the runs listed trained in different precisions, naming them by precision; None when
    they agree. ``precision = "auto"`` (every plan's default) is bf16 on a host with AVX512-BF16/AMX or a
    GPU and fp32 elsewhere, so arms trained on different machines differ in it unseen: on 2026-12-02 an
    A/B of the texture term had bf16 arms against an fp32 baseline, and only a rerun showed it did not
    matter (docs/multi-style.md, "Precision checked")."""
    by_precision: dict[str, list[str]] = {}
    for row in rows:
        if row.get("precision"):
            by_precision.setdefault(row["precision"], []).append(row["name"])
    if len(by_precision) < 2:
        return None
    listed = "; ".join(f"{p}: {', '.join(names)}" for p, names in sorted(by_precision.items()))
    return (f"these runs trained in different precisions ({listed}): a difference between them may be the "
            "precision's (precision = \"auto\" resolves per host); rerun the baseline where the others ran")


def train_zoo(models: Sequence[ZooModel], runs_dir: Path, options: TrainOptions | None = None,
              export_to: Path | None = None) -> list[str]:
    """Train every unfinished model in order, resuming interrupted runs; returns the names trained.

    With ``export_to``, each model is exported there as soon as its run finishes, so a long zoo build
    ships its first models hours before its last.
    """
    # A zoo run checkpoints often (a CPU run takes hours) and samples every 250 steps to be watched.
    options = options or TrainOptions(checkpoint_every=100, sample_every=250)
    stale = {m.name: m.stale(runs_dir) for m in models}
    if any(stale.values()):
        # Refused before anything trains: resuming would fail on the changed settings, and a finished
        # run would be skipped as done. Moving it is the user's call (nothing is deleted here).
        raise PlanError("; ".join(
            f"{name}: the run in {runs_dir} was trained with other settings than the plan's ({', '.join(keys)}); "
            f"move {name}.safetensors and {name}.run/ out of {runs_dir} to retrain it"
            for name, keys in stale.items() if keys))
    trained = []
    for m in models:
        if m.waits_for is not None:  # neither in the plan before it nor trained elsewhere yet
            log.warning("%s: waits for %s (the model it %s); skipped", m.name, m.waits_for,
                        "extends" if m.pending is not None else "starts from or learns from")
            continue
        run = m.run(runs_dir)
        done = run.steps_done()
        if done >= m.steps:
            log.info("%s: finished (%d steps); skipped", m.name, done)
        else:
            resume = run.can_resume()
            log.info("%s: %s at step %d of %d", m.name, "resuming" if resume else "starting", done, m.steps)
            train(m.spec, run, options, resume=resume)
            trained.append(m.name)
        # Also ships a run that finished earlier without being exported (e.g. stopped during its
        # export); export_zoo skips what is already shipped at its step count.
        if export_to is not None:
            export_zoo([m], runs_dir, export_to)
    return trained


def export_zoo(models: Sequence[ZooModel], runs_dir: Path, weights_dir: Path) -> list[dict[str, Any]]:
    """Export every finished run not yet shipped at its step count; returns the new manifest entries."""
    from .zoo import export_model

    shipped = {m["name"]: m for m in read_manifest(weights_dir)["models"]}
    exported = []
    for m in models:
        info = m.run(runs_dir).info()  # read once: steps, plan check and shipped check all come from it
        done = info.steps if info else 0
        if done < m.steps:
            log.info("%s: not finished (%d of %d steps); not exported", m.name, done, m.steps)
            continue
        stale = m.differences(info.training, info.style_sha256)
        if stale:
            log.warning("%s: the run differs from the plan in %s; not exported (retrain it)", m.name, ", ".join(stale))
            continue
        entry = shipped.get(m.name, {})
        # The same run: its checkpoint's hash when the entry records it; for entries exported before
        # that was recorded, the final losses, which a retrained run does not reproduce. (Hashed only
        # when steps and settings already match.)
        if (entry.get("steps") == done and entry.get("settings") == info.training
                and (entry["source_sha256"] == file_sha256(m.checkpoint(runs_dir)) if "source_sha256" in entry
                     else entry.get("losses") == info.losses)):
            log.info("%s: already shipped at %d steps", m.name, done)
            continue
        entry = export_model(m.checkpoint(runs_dir), weights_dir, m.name)
        exported.append(entry)
        log.info("%s: exported (%d bytes, %.1f dB vs fp32)", m.name, entry["bytes"], entry["export_psnr_db"])
    return exported


def ab_sets(shipped: dict[str, Path]) -> list[list[str]]:
    """The norm A/B sets among shipped models (name -> checkpoint): groups of models with one
    :func:`~style_transfer.spec.ab_group` (the same recipe but the norm) and at least two norms, in
    the given order."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for name, path in shipped.items():
        info = read_model_info(path)
        groups.setdefault(ab_group(info.training, info.style_sha256), []).append((name, info.norm))
    return [[name for name, _ in arms] for arms in groups.values() if len({norm for _, norm in arms}) >= 2]


def gallery(models: Sequence[ZooModel], weights_dir: Path, photos: Sequence[Path], out_dir: Path,
            cell: int = 256) -> list[Path]:
    """The README pictures, from the *shipped* weights (what users get, fast path included).

    ``styles.jpg``: one row per photo, one column per style (its first instance-norm model), the style
    images on top.
    ``ab-<lead>.jpg``: for every shipped norm A/B set (:func:`ab_sets`), its arms side by side, named
    after its instance arm.
    ``blend-<name>.jpg``: for every shipped multi-style model, its styles in plan order with the 50:50
    mix of each neighbouring pair between them (the blend of Dumoulin et al. 2017), the style images on top.
    """
    import torch

    from .grid import image_grid
    from .imageio import load_rgb
    from .stylize import StylizeOptions, Stylizer
    from .zoo import list_models

    if not photos:
        raise ValueError("the gallery needs at least one photo")
    shipped = list_models(weights_dir)
    present = [m for m in models if m.name in shipped]
    if not present:
        raise FileNotFoundError(f"none of the plan's models is in {weights_dir}; run `style-transfer zoo export`")
    images = [load_rgb(p, max_size=cell * 2) for p in photos]
    stylizers = {m.name: Stylizer.from_checkpoint(shipped[m.name], device="cpu") for m in present}
    # A multi-style model is drawn in its blend strip only, in each of its mixes (below).
    outputs = {m.name: [stylizers[m.name].stylize(img) for img in images] for m in present if len(m.spec.style) == 1}
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(grid_rows: list[list[torch.Tensor]], labels: list[str], name: str) -> None:
        path = out_dir / name
        # JPEG keeps the repository lean; quality 88 shows no visible blocking at this cell size.
        image_grid(grid_rows, labels, cell=cell).save(path, quality=88, optimize=True)
        written.append(path)

    instance: list[ZooModel] = []  # one column per style: its first instance-norm model in plan order
    for m in present:
        if m.norm == "instance" and all(m.spec.style != other.spec.style for other in instance):
            instance.append(m)
    blank = torch.ones(1, 3, 8, 8)
    if instance:
        header = [blank] + [load_rgb(m.spec.style[0], max_size=cell) for m in instance]
        rows = [header] + [[img] + [outputs[m.name][i] for m in instance] for i, img in enumerate(images)]
        save(rows, ["photo"] + [m.name for m in instance], "styles.jpg")
    by_name = {m.name: m for m in present}
    for names in ab_sets({m.name: shipped[m.name] for m in present if m.name in outputs}):
        arms = [by_name[n] for n in names]
        rows = [[img] + [outputs[m.name][i] for m in arms] for i, img in enumerate(images)]
        lead = next((m.name for m in arms if m.norm == "instance"), arms[0].name)
        save(rows, ["photo"] + [f"{m.norm} norm" for m in arms], f"ab-{lead}.jpg")
    for m in present:
        if len(m.spec.style) >= 2:
            mixes, labels = blend_chain(m.spec.style_names)
            header = [blank] + [load_rgb(m.spec.style[mix.index(1.0)], max_size=cell) if 1.0 in mix else blank
                                for mix in mixes]
            rows = [header] + [[img] + [stylizers[m.name].stylize(img, StylizeOptions(style=mix)) for mix in mixes]
                               for img in images]
            save(rows, ["photo"] + labels, f"blend-{m.name}.jpg")
    return written


def blend_chain(names: Sequence[str]) -> tuple[list[tuple[float, ...]], list[str]]:
    """A multi-style model's gallery columns: each style alone (weight 1: exactly that style), and between
    neighbours their 50:50 mix. Returns the style weights per column and the column labels."""
    mixes: list[tuple[float, ...]] = []
    labels: list[str] = []
    for i, name in enumerate(names):
        if i:
            mixes.append(tuple(0.5 if j in (i - 1, i) else 0.0 for j in range(len(names))))
            labels.append("<- 50:50 ->")
        mixes.append(tuple(1.0 if j == i else 0.0 for j in range(len(names))))
        labels.append(name)
    return mixes, labels
