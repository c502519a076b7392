"""Adam's first-step shock to a trained network, with and without a learning-rate warm-up (issue 16).

A warm start (`train --init`) fine-tunes a trained network. Adam's first updates move every weight by about
the learning rate whatever its gradient, since its second-moment estimate is one step old. Where the loss
is already low (the flagship on its own painting; a multi-style network's first style, which starts as the
flagship) the gradient is mostly noise, and that step is pure damage. This fine-tunes the shipped
`starry-night` model on its own painting with the zoo's recipe (256 px crops of the bsds500 train photos,
batch 4, lr 2e-4), without a warm-up and with `--lr-warmup 100`, and prints the weighted style loss of
each step (of the batch, before that step's update).

    python benchmarks/warmup_shock.py            # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from style_transfer.rundir import RunDir  # noqa: E402
from style_transfer.spec import RunSpec  # noqa: E402
from style_transfer.train import TrainOptions, train  # noqa: E402
from style_transfer.zoo import BASE_LR, BASE_WARMUP  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--model", type=Path, default=ROOT / "weights" / "starry-night.safetensors")
    parser.add_argument("--style", type=Path, default=DATA / "styles" / "vangogh_starry_night_1889.jpg")
    parser.add_argument("--content", type=Path, default=DATA / "content" / "bsds500" / "train")
    args = parser.parse_args()
    spec = RunSpec.from_flat(dict(content=args.content, style=args.style, init=args.model, steps=args.steps,
                                  image_size=256, batch_size=4, lr=BASE_LR, style_size=512, seed=0))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, warmup in (("no warm-up", None), (f"--lr-warmup {BASE_WARMUP}", BASE_WARMUP)):
            run = RunDir.of(Path(tmp) / f"{warmup}.safetensors")
            result = train(spec.replace(lr_warmup=warmup), run,
                           TrainOptions(progress=False, checkpoint_every=10**6, sample_every=10**6))
            rows[label] = [e["style"] for e in result.history]
    print(f"{args.model.name} fine-tuned on {args.style.name} at lr {BASE_LR}: weighted style loss per step")
    print("| | " + " | ".join(str(s) for s in range(1, args.steps + 1)) + " |")
    print("|---" * (args.steps + 1) + "|")
    for label, values in rows.items():
        print(f"| {label} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
