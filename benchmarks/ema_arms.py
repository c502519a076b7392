"""The trained weights of a run that ships the weights' moving average (train --ema-decay), as a checkpoint.

A run with ``ema_decay`` ships the average in its checkpoint, and its resume state keeps the trained
weights beside the average. The average never feeds back into training (train.py, ``_Trainer.shipped``),
so one run holds both arms of an A/B of the average: this writes the second one as a served checkpoint,
for ``benchmarks/quality.py --against`` or ``style-transfer compare`` to pair with the first.

    python benchmarks/ema_arms.py runs/quality/warm-auto-the-scream-ema.safetensors /tmp/trained.safetensors

The copy keeps the checkpoint's metadata (steps, training settings, losses), with ``ema_decay`` dropped from
its training settings, since those weights are not an average.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from style_transfer.checkpoint import CheckpointError, load_train_state, read_model_info, save_model  # noqa: E402
from style_transfer.network import TransformerNet  # noqa: E402
from style_transfer.rundir import RunDir  # noqa: E402


def write_trained_weights(checkpoint: Path, out: Path, run_root: Path | None = None) -> int:
    """Write the trained weights of ``checkpoint``'s run to ``out``; return their step."""
    info = read_model_info(checkpoint)  # the metadata alone: the average's tensors are not the ones written
    run = RunDir.of(checkpoint, run_root)
    state = load_train_state(run.state)
    if "ema" not in state:
        raise CheckpointError(f"{run.state}: the run keeps no average (no ema_decay): its checkpoint "
                              "already holds the trained weights")
    if state["step"] != info.steps:  # both are written together; a mismatch is another run's state
        raise CheckpointError(f"{run.state}: step {state['step']}, but {checkpoint} is of step {info.steps}")
    model = TransformerNet(info.config)
    model.load_state_dict(state["model"])  # strict: a state of another network is refused
    training = {k: v for k, v in info.training.items() if k != "ema_decay"}
    save_model(out, model, dataclasses.replace(info, training=training))
    return info.steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a run's checkpoint (its average)")
    parser.add_argument("out", type=Path, help="where to write its trained weights")
    parser.add_argument("--run-dir", type=Path, help="the run's folder (default: <checkpoint stem>.run)")
    args = parser.parse_args(argv)
    try:
        step = write_trained_weights(args.checkpoint, args.out, args.run_dir)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: the trained weights of step {step}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
