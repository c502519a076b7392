"""One training step (256x256, batch 4, VGG19 perceptual loss): the project's step vs the reference's.

Reference: pytorch/examples style — fp32, eager, contiguous; the loss network computes every loss layer
for both the output and the content batch (content targets at full depth), style Grams precomputed.
Ours: style_transfer.train's own step functions (autocast at the resolved precision — bf16 where the
hardware has it — Grams in fp32, content targets only up to the content layer, without gradient).
Both alternate in one run; the ratio is of median step times.

    python benchmarks/bench_train_step.py --quick
    python benchmarks/bench_train_step.py --repeats 5 --norm instance
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import alternate, machine, summary, train_step_parser, train_step_setup  # noqa: E402
from benchmarks.reference import ReferenceNet, bench_model, load_project_weights  # noqa: E402
from style_transfer.losses import LossConfig, PerceptualLoss, total_variation  # noqa: E402
from style_transfer.train import loss_terms, optimizer_step  # noqa: E402


def reference_gram(features: torch.Tensor) -> torch.Tensor:
    """The example's Gram: a plain fp32 bmm, autograd's own backward."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    return flat.bmm(flat.transpose(1, 2)) / (c * h * w)


def reference_step(net, vgg, style_grams, cfg: LossConfig, opt, batch):
    out = net(batch)
    fy, fx = vgg(out), vgg(batch)  # content features at full depth, as the example does
    content = sum(F.mse_loss(fy[n], fx[n]) for n in cfg.content_layers)
    style = sum(F.mse_loss(reference_gram(fy[n]), g.expand(batch.shape[0], -1, -1))
                for n, g in zip(cfg.style_layers, style_grams))
    total = cfg.content_weight * content + cfg.style_weight * style + cfg.tv_weight * total_variation(out)
    opt.zero_grad()
    total.backward()
    opt.step()


def main() -> int:
    parser = train_step_parser(__doc__)
    parser.add_argument("--norm", default="instance")
    args = parser.parse_args()
    device, precision, sync = train_step_setup(args)
    gen = torch.Generator().manual_seed(0)
    style = torch.rand(1, 3, 256, 256, generator=gen).to(device)
    batch = torch.rand(args.batch, 3, args.size, args.size, generator=gen).to(device)
    cfg = LossConfig()
    criterion = PerceptualLoss(style, cfg).to(device)

    model = bench_model(args.norm).train().to(device)
    reference = load_project_weights(ReferenceNet(args.norm), bench_model(args.norm)).train().to(device)
    opt_ours = torch.optim.Adam(model.parameters(), 1e-3)
    opt_ref = torch.optim.Adam(reference.parameters(), 1e-3)

    def ours():
        terms = loss_terms(model, criterion, batch, device, precision)
        optimizer_step(opt_ours, terms["total"])
        sync()

    def ref():
        reference_step(reference, criterion.vgg, criterion.style_grams(), cfg, opt_ref, batch)
        sync()

    times = alternate({"ref": ref, "ours": ours}, args.repeats)
    ratio = statistics.median(times["ref"]) / statistics.median(times["ours"])
    print(f"machine: {machine()}; device {device}")
    print("| step | size | batch | norm | reference fp32 ms | ours ms | speed-up | our precision |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| train | {args.size} | {args.batch} | {args.norm} | {summary(times['ref'])} | {summary(times['ours'])} | "
          f"{ratio:.2f}x | {precision} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
