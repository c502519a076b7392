"""A video job through the server (POST /v1/videos, poll, GET the result) against the same clip stylized
directly, with the server's own model and options: what the job path costs over the CLI's.

The server runs in-process (the FastAPI app under Starlette's TestClient, with a weights folder holding only
the model), so both arms use one Stylizer and one set of options (the server's: paint size 1024, outputs
bounded to its max_size); the job arm adds the upload, a queue round trip per frame through the inference
worker, and the download (the job's end is watched in-process, not polled over HTTP). The arms alternate
round by round (benchmarks/common.py).

    python benchmarks/bench_video_server.py --heights 360,720 --frames 24 --repeats 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_video import panning_clip  # noqa: E402
from benchmarks.common import alternate, frame_rate, machine  # noqa: E402
from benchmarks.serving import sample_photo  # noqa: E402
from style_transfer.video import stylize_video  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def through_server(client, clip: Path, model: str) -> bytes:
    with clip.open("rb") as f:
        job = client.post("/v1/videos", files={"file": (clip.name, f, "video/mp4")}, data={"model": model})
    job.raise_for_status()
    location = job.headers["Location"]
    # Waited for in-process rather than by polling GET: a poll every few ms would take the interpreter from
    # the job it measures (a client polls about once a second, the web page so).
    jobs = client.app.state.videos
    while jobs.get(job.json()["id"]).status in ("queued", "running"):
        time.sleep(0.005)
    status = client.get(location).json()
    if status["status"] != "done":
        raise RuntimeError(f"the job ended {status['status']}: {status['error']}")
    result = client.get(status["result"]).content
    client.delete(location)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heights", default="360,720", help="frame heights, comma-separated (16:9 frames)")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", type=Path, default=ROOT / "weights" / "starry-night-video.safetensors")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings

    photo, source = sample_photo()
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights"
        weights.mkdir()
        shutil.copy(args.model, weights / args.model.name)
        model = args.model.stem
        with TestClient(create_app(Settings(weights=weights, device=args.device, warmup_size=64))) as client:
            while client.get("/readyz").status_code != 200:
                time.sleep(0.1)
            worker = client.app.state.worker
            stylizer, options = worker.stylizers[model], worker.options()
            print(f"# {machine()}; model {model} on {stylizer.device} ({stylizer.precision}), the server's options "
                  f"(max size {options.max_size}, paint size {options.paint_size}); {args.frames} frames of a pan "
                  f"across {source}; median (min-max) of {args.repeats} rounds")
            print("| frames | direct (stylize_video): frames/s | job through the server: frames/s | job / direct time |")
            print("|---|---|---|---|")
            for height in map(int, args.heights.split(",")):
                clip = panning_clip(Path(tmp) / f"clip{height}.mp4", photo, height, args.frames)
                out = Path(tmp) / "out.mp4"
                times = alternate({
                    "direct": lambda: stylize_video(stylizer, options, clip, out, progress=False),
                    "job": lambda: through_server(client, clip, model),
                }, args.repeats)

                ratio = statistics.median(times["job"]) / statistics.median(times["direct"])
                rates = " | ".join(frame_rate(times[name], args.frames) for name in ("direct", "job"))
                print(f"| {height * 16 // 9}x{height} | {rates} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
