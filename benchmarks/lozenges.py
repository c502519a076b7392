"""Do a multi-style network's lozenges live in its convolutions or in its (gamma, beta)? (issue 17)

A multi-style network started from the Starry Night flagship paints small saturated lozenges in every
style, at the same places in each (docs/multi-style.md, "The lozenges"). This swaps the two halves of
the network with the flagship's and draws, on one photo, a row per network and a column per style:

1. the network itself;
2. its convolutions with the flagship's (gamma, beta) in every style;
3. the flagship's convolutions with its (gamma, beta).

Lozenges that follow the convolutions are in rows 1 and 2 and not in row 3. No number measures the
lozenges themselves: the measures tried (fine-detail correlation with the flagship's output, colours off
the painting's palette, activation peaks) did not tell a network with lozenges from the single-style
models without them, so the pictures are the evidence.

With ``--peaks`` it prints each norm layer's highest activation peak on the photo (in standard
deviations), for the flagship and for each style: the measure quoted in docs/multi-style.md.

It also prints how far apart the styles' (gamma, beta) are in each conditional norm layer (RMS over
channels): gamma's distance from 1 (its initial value), the spread of the styles' gammas and betas
around their mean, and the mean beta's size. Styles that differ mainly in beta differ mainly in the
offsets of the features, which shows as a tint of one shared picture.

    python benchmarks/lozenges.py runs/zoo/four-styles.safetensors --grid /tmp/lozenges.jpg
    python benchmarks/lozenges.py runs/multistyle/four-styles-scratch.safetensors   # the table alone
    python benchmarks/lozenges.py runs/zoo/four-styles.safetensors --peaks   # and the activation peaks
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from style_transfer.checkpoint import load_model  # noqa: E402
from style_transfer.imageio import load_rgb, save_image  # noqa: E402
from style_transfer.network import TransformerNet  # noqa: E402
from style_transfer.norms import ConditionalInstanceNorm2d  # noqa: E402
from style_transfer.zoo_build import gallery_photos  # noqa: E402


def _rms(t: torch.Tensor) -> float:
    return float(t.pow(2).mean().sqrt())


def swapped(multi: TransformerNet, flagship: TransformerNet, norms_from_flagship: bool) -> TransformerNet:
    """A copy of ``multi`` with the flagship's (gamma, beta) in every style, or with the flagship's
    convolutions (and its own (gamma, beta))."""
    out = TransformerNet(multi.config)
    flag = flagship.state_dict()
    state = {}
    for name, value in multi.state_dict().items():
        is_norm = isinstance(multi.get_submodule(name.rpartition(".")[0]), ConditionalInstanceNorm2d)
        if is_norm == norms_from_flagship:
            value = flag[name].expand_as(value) if is_norm else flag[name]
        state[name] = value.clone()
    out.load_state_dict(state)
    return out.eval()


def pair_spread(multi: TransformerNet) -> list[tuple[str, float, float, float, float]]:
    """Per conditional norm layer: (name, RMS of mean gamma - 1, RMS of gamma_k - mean gamma, RMS of
    beta_k - mean beta, RMS of mean beta), over styles and channels."""
    rows = []
    for name, module in multi.named_modules():
        if isinstance(module, ConditionalInstanceNorm2d):
            gamma, beta = module.weight.detach(), module.bias.detach()
            rows.append((name, _rms(gamma.mean(0) - 1), _rms(gamma - gamma.mean(0)), _rms(beta - beta.mean(0)),
                         _rms(beta.mean(0))))
    return rows


def peaks(net: TransformerNet, photo: torch.Tensor, style: torch.Tensor | None = None) -> list[tuple[str, float, tuple[int, int]]]:
    """Per instance-norm layer (conditional or not), in network order: (name, the largest |normalized
    feature| over channels and pixels, its (row, column) in the photo's pixels). The normalized features
    have unit variance per channel, so this is the highest peak in standard deviations: a localized
    spike that dominates a channel's statistics (instance norm's "droplets", Karras et al. 2020)."""
    found: dict[str, tuple[float, tuple[int, int]]] = {}

    def record(name: str):
        def hook(module: torch.nn.InstanceNorm2d, inputs, output: torch.Tensor) -> None:
            z = output.detach().float()[0]
            if module.affine:  # a single-style network's own (gamma, beta): undone, to compare like with like
                z = (z - module.bias[:, None, None]) / module.weight[:, None, None]
            z = z.abs().amax(0)  # (H, W): the largest over channels
            row, col = divmod(int(z.argmax()), z.shape[-1])
            scale = photo.shape[-1] / z.shape[-1]
            found[name] = (float(z.max()), (round(row * scale), round(col * scale)))
        return hook

    hooks = [module.register_forward_hook(record(name.removesuffix(".norm")))
             for name, module in net.named_modules() if isinstance(module, torch.nn.InstanceNorm2d)]
    try:
        with torch.no_grad():
            net(photo) if style is None else net(photo, style)
    finally:
        for h in hooks:
            h.remove()
    return [(name, *found[name]) for name in found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a multi-style (conditional_instance) checkpoint")
    parser.add_argument("--flagship", type=Path, default=ROOT / "weights" / "starry-night.safetensors")
    parser.add_argument("--photo", type=Path, help="default: the first gallery photo of weights/zoo.toml "
                        "(a held-out bsds500 test photo)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--grid", type=Path, help="also draw the swap grid here (JPEG or PNG)")
    parser.add_argument("--peaks", action="store_true", help="also print each norm layer's highest activation "
                        "peak on the photo, in standard deviations, for the flagship and each style")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    photo = load_rgb(args.photo or gallery_photos(ROOT / "weights" / "zoo.toml")[0], args.size)
    flagship = load_model(args.flagship)[0].eval()
    multi, info = load_model(args.checkpoint)
    multi.eval()
    if multi.config.norm != "conditional_instance":
        raise SystemExit(f"{args.checkpoint}: not a multi-style network ({multi.config.norm} norm)")
    names = info.extra.get("styles") or [f"style {k}" for k in range(multi.config.num_styles)]
    print(f"{args.checkpoint.name} ({info.steps} steps, {len(names)} styles): the styles' (gamma, beta) per layer, "
          "RMS over channels")
    print(f"{'layer':24s} {'|mean gamma - 1|':>16s} {'gamma spread':>13s} {'beta spread':>12s} {'|mean beta|':>12s}")
    for row in pair_spread(multi):
        print(f"{row[0]:24s} {row[1]:16.3f} {row[2]:13.3f} {row[3]:12.3f} {row[4]:12.3f}")
    onehot = torch.eye(multi.config.num_styles)
    if args.peaks:
        columns = [peaks(flagship, photo)] + [peaks(multi, photo, onehot[k]) for k in range(len(names))]
        print(f"\nthe highest |normalized feature| per layer on {args.photo.name if args.photo else 'the photo'} "
              "(standard deviations; its place, row/column in pixels)")
        print(f"{'layer':24s}" + "".join(f" {n[:18]:>22s}" for n in ["flagship", *names]))
        for i, (layer, *_) in enumerate(columns[0]):
            print(f"{layer:24s}" + "".join(f" {c[i][1]:8.1f} @{c[i][2][0]:4d},{c[i][2][1]:4d}  " for c in columns))
    if args.grid is None:
        return
    rows = [torch.cat([net(photo, onehot[k]) for k in range(len(names))], dim=-1)
            for net in (multi, swapped(multi, flagship, True), swapped(multi, flagship, False))]
    save_image(torch.cat(rows, dim=-2).clamp(0, 1), args.grid)
    print(f"wrote {args.grid}: rows = the network; its convolutions with the flagship's (gamma, beta); "
          f"the flagship's convolutions with its (gamma, beta); columns = {', '.join(names)}")


if __name__ == "__main__":
    main()
