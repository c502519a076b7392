"""What reading an HDR video frame costs against an SDR one, and against painting it.

One 1080p frame of each kind, decoded once: SDR (8-bit 4:2:0, BT.709), HDR10 (PQ) and HLG (10-bit 4:2:0,
BT.2020). Timed side by side, alternating (common.alternate): ``video._rgb`` on each (an HDR frame is
converted to SDR there, ``video.hdr_to_sdr``), and the shipped starry-night network painting the frame as
``style-transfer stylize`` does a clip's frames (its defaults: the fast path, painted at
``DEFAULT_PAINT_SIZE``). Prints ms per frame, median (min-max), and each
read's share of the painting's time.

    python benchmarks/hdr_frames.py --repeats 10
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import alternate, machine, summary  # noqa: E402
from style_transfer import video  # noqa: E402
from style_transfer.stylize import DEFAULT_PAINT_SIZE, Stylizer, StylizeOptions  # noqa: E402

W, H = 1920, 1080


def one_frame(path: Path, pix_fmt: str, space: int, transfer: int):
    """A decoded frame of a one-frame clip of a smooth colour scene, tagged with ``space`` and ``transfer``."""
    av = video.require_av()
    y, x = np.mgrid[0:H, 0:W]
    scene = np.stack([x / W, y / H, np.full((H, W), 0.4)], -1)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=1)
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        ctx = stream.codec_context
        ctx.colorspace, ctx.color_primaries, ctx.color_trc, ctx.color_range = space, space, transfer, 1
        frame = av.VideoFrame.from_ndarray(np.rint(scene * 65535).astype(np.uint16), format="rgb48le")
        frame = frame.reformat(format=pix_fmt, dst_colorspace=space, dst_color_range=1)
        frame.pts = 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with av.open(str(path)) as clip:
        return next(clip.decode(video=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        frames = {"SDR (BT.709)": one_frame(Path(tmp) / "sdr.mkv", "yuv420p", 1, 1),
                  "HDR10 (PQ)": one_frame(Path(tmp) / "pq.mkv", "yuv420p10le", 9, 16),
                  "HLG": one_frame(Path(tmp) / "hlg.mkv", "yuv420p10le", 9, 18)}
    stylizer = Stylizer.from_checkpoint(ROOT / "weights" / "starry-night.safetensors")
    picture = torch.from_numpy(video._rgb(frames["SDR (BT.709)"])).permute(2, 0, 1)[None].float() / 255
    contenders = {f"read {name}": (lambda f=f: video._rgb(f)) for name, f in frames.items()}
    options = StylizeOptions(paint_size=DEFAULT_PAINT_SIZE)  # the CLI's defaults for a clip's frames
    contenders["paint (starry-night, CLI defaults)"] = lambda: stylizer.stylize_batch(picture, options)
    times = alternate(contenders, args.repeats)
    paint = float(np.median(times["paint (starry-night, CLI defaults)"]))
    print(f"# {machine()}; one {W}x{H} frame; ms, median (min-max) of {args.repeats}")
    print("| step | ms | of the painting's time |")
    print("|---|---|---|")
    for name, samples in times.items():
        print(f"| {name} | {summary(samples)} | {np.median(samples) / paint:.2f} |")


if __name__ == "__main__":
    main()
