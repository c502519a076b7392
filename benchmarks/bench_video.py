"""Stylizing a video (style_transfer/video.py): frames per second, and how much of it is the codec.

For each frame height, a 16:9 clip panning across a photo is written (H.264, CRF 16, no sound), then
stylized by ``video.stylize_video`` as `style-transfer stylize CLIP.mp4 --model MODEL` does (the CLI's
defaults: paint size 1024, the fast path), side by side with the same call at strength 0, which decodes,
converts and encodes every frame without the network: what the video path adds to the network's time.
The two alternate round by round (benchmarks/common.py).

    python benchmarks/bench_video.py --heights 360,720,1080 --frames 24 --repeats 3

On a GPU (``--device cuda``) the network takes milliseconds, so the codec share says whether decode and
encode (x264 on the CPU) bound the frame rate there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import alternate, frame_rate, machine  # noqa: E402
from benchmarks.serving import sample_photo  # noqa: E402
from style_transfer.stylize import StylizeOptions, Stylizer  # noqa: E402
from style_transfer.video import require_av, stylize_video  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def panning_clip(path: Path, photo: Image.Image, height: int, frames: int, fps: int = 30) -> Path:
    """A 16:9 clip of ``frames`` frames moving across ``photo`` (enlarged to cover it), tagged BT.709."""
    av = require_av()
    width = height * 16 // 9
    scale = max(height / (photo.height * 0.8), 1.3 * width / photo.width)
    big = np.asarray(photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.LANCZOS))
    top = (big.shape[0] - height) // 2
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "16"}
        stream.codec_context.colorspace, stream.codec_context.color_range = 1, 1
        for i in range(frames):
            left = (big.shape[1] - width) * i // max(1, frames - 1)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(big[top:top + height, left:left + width]),
                                               format="rgb24")
            frame = frame.reformat(format="yuv420p", dst_colorspace=1, dst_color_range=1)
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heights", default="360,720,1080", help="frame heights, comma-separated (16:9 frames)")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", type=Path, default=ROOT / "weights" / "starry-night.safetensors")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    photo, source = sample_photo()
    stylizer = Stylizer.from_checkpoint(args.model, args.device)
    print(f"# {machine()}; model {args.model.name} on {stylizer.device} ({stylizer.precision}); "
          f"{args.frames} frames of a pan across {source}; median (min-max) of {args.repeats} rounds")
    print("| frames | stylized: frames/s | codec only (strength 0): frames/s | codec share of the stylized time |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for height in map(int, args.heights.split(",")):
            clip = panning_clip(Path(tmp) / f"clip{height}.mp4", photo, height, args.frames)
            out = Path(tmp) / "out.mp4"
            times = alternate({
                "stylized": lambda: stylize_video(stylizer, StylizeOptions(paint_size=1024), clip, out, progress=False),
                "codec": lambda: stylize_video(stylizer, StylizeOptions(strength=0.0), clip, out, progress=False),
            }, args.repeats)

            share = statistics.median(times["codec"]) / statistics.median(times["stylized"])
            rates = " | ".join(frame_rate(times[name], args.frames) for name in ("stylized", "codec"))
            print(f"| {height * 16 // 9}x{height} | {rates} | {share:.0%} |", flush=True)


if __name__ == "__main__":
    main()
