"""What weight puts the texture term of distillation level with its L1 (RunSpec.teacher_style_weight).

On a distilled network's checkpoint, for a few training crops per painting: the gradient norm (over the
network's parameters) of the L1 to the teacher's output and of the Gram distance to it, and their ratio:
the weight at which the texture term pulls as hard as the L1. A starting point for the weight, measured
rather than guessed; what it does to the pictures is for the validation images to show.

    python benchmarks/distill_balance.py runs/zoo/four-styles.safetensors       # four-styles of weights/zoo.toml
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from style_transfer.checkpoint import load_model  # noqa: E402
from style_transfer.data import ContentImages  # noqa: E402
from style_transfer.imageio import load_rgb  # noqa: E402
from style_transfer.losses import PerceptualLoss  # noqa: E402
from style_transfer.train import distill_terms  # noqa: E402
from style_transfer.zoo_build import load_plan  # noqa: E402


def gradient_norms(net: torch.nn.Module, teacher: torch.nn.Module, criterion: PerceptualLoss, batch: torch.Tensor,
                   style: tuple[torch.Tensor, int]) -> tuple[float, float]:
    """The L1's and the (unweighted) texture term's gradient norms over ``net``'s parameters."""
    terms = distill_terms(net, teacher, criterion, batch, torch.device("cpu"), "fp32", style, texture_weight=1.0,
                         perceptual=False)
    texture = terms["total"] - terms["distill"]  # the weight is 1: the texture term with its gradient
    params = [p for p in net.parameters() if p.requires_grad]
    norms = []
    for term in (terms["distill"], texture):
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        norms.append(float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))))
    return norms[0], norms[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--plan", type=Path, default=ROOT / "weights" / "zoo.toml")
    p.add_argument("--multi", default="four-styles", help="the plan entry (it names the paintings and teachers)")
    p.add_argument("--batches", type=int, default=3, help="crops per painting (batch 2 each; default: %(default)s)")
    args = p.parse_args(argv)

    (entry,) = [m for m in load_plan(args.plan) if m.name == args.multi]
    spec = entry.spec
    if spec.teacher is None:
        p.error(f"{args.multi} has no teachers")
    torch.manual_seed(0)
    net, _ = load_model(args.checkpoint)
    net.train()
    teachers = [load_model(t)[0].eval().requires_grad_(False) for t in spec.teacher]
    criterion = PerceptualLoss([load_rgb(s, spec.loss.style_size) for s in spec.style], spec.loss)
    data = ContentImages(spec.content[0], spec.image_size)
    eye = torch.eye(len(teachers))
    print(f"{args.checkpoint.name}: gradient norms at {spec.image_size} px crops")
    print("| painting | L1 | texture (weight 1) | weight for equal pull |\n|---|---:|---:|---:|")
    ratios = []
    for k, name in enumerate(spec.style_names):
        l1, tex = [], []
        for b in range(args.batches):
            batch = torch.stack([data[(2 * b + i + 7 * k, 1000 * k + b)] for i in range(2)])
            a, t = gradient_norms(net, teachers[k], criterion, batch, (eye[k], k))
            l1.append(a)
            tex.append(t)
        ratio = statistics.median(l1) / statistics.median(tex)
        ratios.append(ratio)
        print(f"| {name} | {statistics.median(l1):.3g} | {statistics.median(tex):.3g} | {ratio:.2g} |")
    print(f"median weight for equal pull: {statistics.median(ratios):.2g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
