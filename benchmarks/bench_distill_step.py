"""One distillation step (train --teacher; 256x256, batch 4, the shipped network's size), with and without
the perceptual terms that a distilled run measures only for its log (train.TrainOptions.perceptual_every).

Both alternate in one run. "measured" is the step as every step ran before perceptual_every (two VGG
forward passes more, without gradient); "lean" the step that skips them; "default" is what a run with
the default perceptual_every (one round of the paintings in N) spends per step on average.

    python benchmarks/bench_distill_step.py --quick
    python benchmarks/bench_distill_step.py --repeats 5 --styles 4
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import alternate, machine, summary, train_step_parser, train_step_setup  # noqa: E402
from style_transfer.losses import LossConfig, PerceptualLoss  # noqa: E402
from style_transfer.network import TransformerConfig, TransformerNet  # noqa: E402
from style_transfer.train import TrainOptions, distill_terms, optimizer_step  # noqa: E402


def main() -> int:
    parser = train_step_parser(__doc__)
    parser.add_argument("--styles", type=int, default=4, help="paintings of the student (default: %(default)s)")
    parser.add_argument("--texture", action="store_true", help="with the texture term (teacher_style_weight)")
    args = parser.parse_args()
    device, precision, sync = train_step_setup(args)
    gen = torch.Generator().manual_seed(0)
    paintings = [torch.rand(1, 3, 256, 256, generator=gen).to(device) for _ in range(args.styles)]
    batch = torch.rand(args.batch, 3, args.size, args.size, generator=gen).to(device)
    criterion = PerceptualLoss(paintings, LossConfig()).to(device)
    torch.manual_seed(0)
    student = TransformerNet(TransformerConfig(norm="conditional_instance", num_styles=args.styles)).train().to(device)
    teacher = TransformerNet(TransformerConfig(norm="instance")).eval().requires_grad_(False).to(device)
    optimizer = torch.optim.Adam(student.parameters(), 1e-4)
    style = (torch.eye(args.styles, device=device)[0], 0)
    texture = 1e-6 if args.texture else None

    def step(perceptual: bool):
        def run():
            terms = distill_terms(student, teacher, criterion, batch, device, precision, style, texture, perceptual)
            optimizer_step(optimizer, terms["total"])
            sync()
        return run

    times = alternate({"measured": step(True), "lean": step(False)}, args.repeats)
    every = TrainOptions.perceptual_every
    measured, lean = statistics.median(times["measured"]), statistics.median(times["lean"])
    default = (measured + (every - 1) * lean) / every
    print(f"machine: {machine()}; device {device}")
    print(f"| step | size | batch | styles | texture | measured ms | lean ms | default (1 in {every}) ms | "
          "speed-up of the default | precision |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| distill | {args.size} | {args.batch} | {args.styles} | {'yes' if texture else 'no'} | "
          f"{summary(times['measured'])} | {summary(times['lean'])} | {default * 1e3:.0f} | {measured / default:.2f}x | "
          f"{precision} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
