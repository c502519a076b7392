"""JPEG decode and encode, Pillow against torchvision, side by side: what the server's codec choice rests on.

Decode is a JPEG file's bytes to the (1, 3, H, W) float tensor the network takes, on the device the network
runs on; encode is the network's output on that device to a JPEG file's bytes (quality 92, as the server
writes). Contenders, alternating round by round (benchmarks/common.py):

* ``pillow``: ``decode_image`` / ``encode_image``, and on a GPU the copy to or from the device as the server
  makes it (pinned memory, ``non_blocking``), waited for;
* ``torchvision``: ``decode_jpegs`` / ``encode_jpegs`` on the device (libjpeg-turbo on the CPU, nvJPEG on a
  GPU), waited for; on a GPU also ``torchvision x8``, eight files per call (a batch), per image.

It also checks that both give the same result: on the CPU the decoded tensors and the encoded bytes are
compared for equality; on a GPU the PSNR of nvJPEG's decode against Pillow's, and the file sizes.

    python benchmarks/bench_codecs.py --quick
    python benchmarks/bench_codecs.py --sizes 512,1024 --repeats 30
    python benchmarks/bench_codecs.py --device cuda --sizes 512,1024,2048 --repeats 50
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import alternate, machine, summary  # noqa: E402
from benchmarks.serving import photo_jpeg, sample_photo  # noqa: E402
from style_transfer.device import resolve_device  # noqa: E402
from style_transfer.imageio import LoadedImage, decode_image, decode_jpegs, encode_image, encode_jpegs  # noqa: E402
from style_transfer.metrics import psnr  # noqa: E402

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec; they are what is measured here.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")


def contenders(payload: bytes, device: torch.device) -> tuple[dict, dict]:
    """The decode and encode contenders for one file, each a no-argument callable that waits for its result."""
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    output = LoadedImage(decode_image(payload).rgb.to(device))

    def pillow_decode() -> torch.Tensor:
        rgb = decode_image(payload).rgb
        if cuda:
            rgb = rgb.pin_memory().to(device, non_blocking=True)
            sync()
        return rgb

    def torchvision_decode(n: int = 1) -> torch.Tensor:
        rgb = decode_jpegs([payload] * n, [1] * n, device)[0]
        sync()
        return rgb

    def pillow_encode() -> bytes:
        return encode_image(output.rgb.cpu(), "JPEG", quality=92)

    decode = {"pillow": pillow_decode, "torchvision": torchvision_decode}
    encode = {"pillow": pillow_encode, "torchvision": lambda: encode_jpegs([output], 92)[0]}
    if cuda:
        decode["torchvision x8"] = lambda: torchvision_decode(8)
        encode["torchvision x8"] = lambda: encode_jpegs([output] * 8, 92)[0]
    return decode, encode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512,1024", help="square JPEG sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="512 px, 5 repeats")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeats = "512", 5
    device = resolve_device(args.device)
    print(f"machine: {machine()}; device {device}; photo {sample_photo()[1]}; ms per image, median (min-max)")
    print("| size | file KiB | step | pillow | torchvision | torchvision x8 (per image) | same result |")
    print("|---|---|---|---|---|---|---|")
    for size in map(int, args.sizes.split(",")):
        payload = photo_jpeg(size)
        decode, encode = contenders(payload, device)
        ours = decode["torchvision"]()
        theirs = decode_image(payload).rgb
        if device.type == "cpu":
            same_decode = "identical" if torch.equal(ours, theirs) else "DIFFERENT"
            same_encode = "identical bytes" if encode["torchvision"]() == encode["pillow"]() else "DIFFERENT bytes"
        else:
            same_decode = f"PSNR {psnr(ours.cpu(), theirs):.1f} dB"
            same_encode = f"{len(encode['torchvision']()) / 1024:.0f} vs {len(encode['pillow']()) / 1024:.0f} KiB"
        for step, fns, same in (("decode", decode, same_decode), ("encode", encode, same_encode)):
            times = alternate(fns, args.repeats)
            cells = [summary(times[name]) for name in ("pillow", "torchvision")]
            batched = times.get("torchvision x8")
            cells.append(summary([t / 8 for t in batched]) if batched else "-")
            print(f"| {size} | {len(payload) / 1024:.0f} | {step} | {' | '.join(cells)} | {same} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
