"""Do a multi-style network's lozenges live in its convolutions or in its (gamma, beta)? (issue 17)

A multi-style network started from the Starry Night flagship paints small saturated lozenges in every
style, at the same places in each (docs/multi-style.md, "The lozenges"). This swaps the two halves of
the network with the flagship's and draws, on one photo, a row per network and a column per style:

1. the network itself;
2. its convolutions with the flagship's (gamma, beta) in every style;
3. the flagship's convolutions with its (gamma, beta).

Lozenges that follow the convolutions are in rows 1 and 2 and not in row 3. No number is printed: the
measures tried (fine-detail correlation with the flagship's output, colours off the painting's palette)
did not tell a network with lozenges from the single-style models without them, so the pictures are
the evidence.

    python benchmarks/lozenges.py runs/zoo/four-styles.safetensors --grid /tmp/lozenges.jpg
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a multi-style (conditional_instance) checkpoint")
    parser.add_argument("--flagship", type=Path, default=ROOT / "weights" / "starry-night.safetensors")
    parser.add_argument("--photo", type=Path, help="default: the first gallery photo of weights/zoo.toml "
                        "(a held-out bsds500 test photo)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--grid", type=Path, required=True, help="where to write the grid (JPEG or PNG)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    photo = load_rgb(args.photo or gallery_photos(ROOT / "weights" / "zoo.toml")[0], args.size)
    flagship = load_model(args.flagship)[0].eval()
    multi, info = load_model(args.checkpoint)
    multi.eval()
    if multi.config.norm != "conditional_instance":
        raise SystemExit(f"{args.checkpoint}: not a multi-style network ({multi.config.norm} norm)")
    names = info.extra.get("styles") or [f"style {k}" for k in range(multi.config.num_styles)]
    onehot = torch.eye(multi.config.num_styles)
    rows = [torch.cat([net(photo, onehot[k]) for k in range(len(names))], dim=-1)
            for net in (multi, swapped(multi, flagship, True), swapped(multi, flagship, False))]
    save_image(torch.cat(rows, dim=-2).clamp(0, 1), args.grid)
    print(f"wrote {args.grid}: rows = the network; its convolutions with the flagship's (gamma, beta); "
          f"the flagship's convolutions with its (gamma, beta); columns = {', '.join(names)}")


if __name__ == "__main__":
    main()
