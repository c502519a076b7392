"""Video jobs over HTTP (server/videos.py, server/routes/videos.py): POST a clip, poll it, fetch the MP4.

The clips are test_video's (96x64, a dozen frames, a tone); the models test_server's tiny ones. A "gate"
holds a job between frames where a test needs it running (to cancel it, to fill the queue, to serve an
image meanwhile).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

import server.videos as videos_module
from server.app import create_app
from server.settings import Settings
from server.videos import VideoProbe, VideoSupportMissing, output_name
from style_transfer import video

from .test_server import make_client, png_bytes, wait_ready, weights  # noqa: F401 -- fixtures
from .test_video import FRAMES, H, W, make_clip, read_clip

av = pytest.importorskip("av", reason="the optional video support (PyAV) is not installed")

MODEL = "tiny-instance"


@pytest.fixture
def clip(tmp_path) -> Path:
    return make_clip(tmp_path / "clip.mp4")


def post(client, path: Path, model: str = MODEL, **fields):
    with path.open("rb") as f:
        return client.post("/v1/videos", files={"file": (path.name, f, "video/mp4")},
                           data={"model": model, **{k: str(v) for k, v in fields.items()}})


def wait_for(client, job_id: str, states=("done", "failed", "cancelled"), timeout: float = 60) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        status = client.get(f"/v1/videos/{job_id}").json()
        if status["status"] in states:
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {states}: {status}")


@pytest.fixture
def gate(monkeypatch):
    """Holds every job before each batch of frames until ``gate.set()``; ``gate.entered`` is set when a job
    reached it. A cancelled job is let through (its next frame check stops it)."""
    opened, entered = threading.Event(), threading.Event()
    original = videos_module._ThroughWorker.stylize

    def held(self, batch, options):
        entered.set()
        while not opened.wait(0.05) and not self.cancel.is_set():
            pass
        return original(self, batch, options)

    monkeypatch.setattr(videos_module._ThroughWorker, "stylize", held)
    opened.entered = entered
    yield opened
    opened.set()


def job_folders(client) -> list[Path]:
    return list(client.app.state.videos._folder.iterdir())


def test_a_clip_is_painted_as_a_job_as_the_cli_paints_it(make_client, clip, tmp_path):
    client = make_client()
    created = post(client, clip)
    assert created.status_code == 202, created.text
    job = created.json()
    assert created.headers["Location"] == f"/v1/videos/{job['id']}"
    assert job["status"] in ("queued", "running") and job["filename"] == f"clip_{MODEL}.mp4"
    done = wait_for(client, job["id"])
    assert done["status"] == "done", done
    assert (done["frames_done"], done["frames_total"], done["progress"]) == (FRAMES, FRAMES, 1.0)
    assert (done["width"], done["height"], done["audio"]) == (W, H, "copied")
    assert done["result"] == f"/v1/videos/{job['id']}/result" and done["error"] is None
    assert 0 < done["expires_in_s"] <= 3600

    got = client.get(done["result"])
    assert got.status_code == 200 and got.headers["content-type"] == "video/mp4"
    assert f'filename="clip_{MODEL}.mp4"' in got.headers["content-disposition"]
    served = tmp_path / "served.mp4"
    served.write_bytes(got.content)
    part = client.get(done["result"], headers={"Range": "bytes=0-99"})  # a <video> element seeks so
    assert part.status_code == 206 and part.content == got.content[:100]

    # The CLI's code with the server's own model and options writes the same frames at the same times.
    worker = client.app.state.worker
    expected = tmp_path / "cli.mp4"
    video.stylize_video(worker.stylizers[MODEL], worker.options(), clip, expected, progress=False)
    ours, theirs, source = read_clip(served), read_clip(expected), read_clip(clip)
    assert len(ours["frames"]) == FRAMES and ours["times"] == source["times"] == theirs["times"]
    diff = max(np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(ours["frames"], theirs["frames"]))
    assert diff <= 2
    assert np.abs(ours["frames"][0].astype(int) - source["frames"][0].astype(int)).mean() > 10  # painted
    assert [codec for codec, _ in ours["audio"]] == ["aac"]

    # Every frame went through the inference worker, as an image request does.
    metrics = client.get("/metrics").text
    assert f'style_transfer_inference_seconds_count{{model="{MODEL}"}} {float(FRAMES)}' in metrics
    assert 'style_transfer_video_jobs_total{status="done"} 1.0' in metrics
    assert f"style_transfer_video_frames_total {float(FRAMES)}" in metrics


def test_the_options_of_an_image_apply_to_every_frame(make_client, clip, tmp_path):
    client = make_client()
    job = post(client, clip, strength=0, max_size=48).json()
    done = wait_for(client, job["id"])
    assert (done["width"], done["height"]) == (48, 32)
    served = tmp_path / "served.mp4"
    served.write_bytes(client.get(done["result"]).content)
    ours, source = read_clip(served), read_clip(clip)
    small = source["frames"][0].reshape(32, 2, 48, 2, 3).mean(axis=(1, 3))  # strength 0: the photo, halved
    assert np.abs(ours["frames"][0].astype(float) - small).mean() < 4


def test_an_image_request_is_served_while_a_clip_is_painted(make_client, clip, gate):
    client = make_client()
    job = post(client, clip).json()
    assert gate.entered.wait(30)
    assert client.get(f"/v1/videos/{job['id']}").json()["status"] == "running"
    image = client.post("/v1/stylize", files={"file": ("a.png", png_bytes(), "image/png")}, data={"model": MODEL})
    assert image.status_code == 200
    assert client.get(f"/v1/videos/{job['id']}").json()["status"] == "running"
    gate.set()
    assert wait_for(client, job["id"])["status"] == "done"


def test_a_job_is_cancelled_and_its_files_removed(make_client, clip, gate):
    client = make_client()
    job = post(client, clip).json()
    assert gate.entered.wait(30)
    assert len(job_folders(client)) == 1
    early = client.get(f"/v1/videos/{job['id']}/result")
    assert early.status_code == 409 and early.json()["error"]["code"] == "not_finished"
    assert client.delete(f"/v1/videos/{job['id']}").status_code == 204
    gone = client.get(f"/v1/videos/{job['id']}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_video"
    end = time.monotonic() + 30
    while job_folders(client) and time.monotonic() < end:
        time.sleep(0.05)
    assert job_folders(client) == []  # the upload and the half-written video
    assert 'style_transfer_video_jobs_total{status="cancelled"} 1.0' in client.get("/metrics").text


def test_a_queued_job_is_cancelled_before_it_runs(make_client, clip, gate):
    client = make_client(max_video_jobs=2)
    first, second = post(client, clip).json(), post(client, clip).json()
    assert gate.entered.wait(30)
    assert client.get(f"/v1/videos/{second['id']}").json()["queue_position"] == 0
    assert client.delete(f"/v1/videos/{second['id']}").status_code == 204
    assert len(job_folders(client)) == 1
    gate.set()
    assert wait_for(client, first["id"])["status"] == "done"


def test_more_jobs_than_the_server_takes_are_refused_with_retry_after(make_client, clip, gate):
    client = make_client(max_video_jobs=1)
    first = post(client, clip)
    assert first.status_code == 202
    refused = post(client, clip)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "busy"
    assert refused.headers["Retry-After"] == "30"
    gate.set()
    wait_for(client, first.json()["id"])
    assert post(client, clip).status_code == 202  # the finished job no longer counts


def test_uploads_that_are_no_clip_or_too_long_are_refused(make_client, clip, tmp_path):
    client = make_client(max_video_frames=FRAMES - 1)
    refusals = {
        "png": post_bytes(client, png_bytes(), "still.mp4"),
        "text": post_bytes(client, b"not a video at all", "notes.mp4"),
        "cut": post_bytes(client, clip.read_bytes()[: clip.stat().st_size // 2], "cut.mp4"),
        "empty": post_bytes(client, b"", "empty.mp4"),
        "long": post(client, clip),
        "model": post(client, clip, model="no-such-model"),
        "style": post(client, clip, style="not-its-style"),
    }
    codes = {name: (r.status_code, r.json()["error"]["code"]) for name, r in refusals.items()}
    assert codes == {"png": (415, "unsupported_media_type"), "text": (415, "unsupported_media_type"),
                     "cut": (415, "unsupported_media_type"), "empty": (400, "empty_file"),
                     "long": (413, "video_too_long"), "model": (404, "unknown_model"),
                     "style": (422, "invalid_style")}
    assert f"{FRAMES} frames" in refusals["long"].json()["error"]["message"]
    assert job_folders(client) == []  # nothing of a refused upload is kept


def post_bytes(client, data: bytes, name: str):
    return client.post("/v1/videos", files={"file": (name, data, "video/mp4")}, data={"model": MODEL})


def test_a_clip_longer_than_its_header_says_stops_at_the_limit(make_client, clip, monkeypatch):
    monkeypatch.setattr(videos_module, "probe_video", lambda path: VideoProbe(W, H, None, None, True))
    client = make_client(max_video_frames=5)
    job = post(client, clip).json()
    assert job["frames_total"] is None and job["progress"] is None
    failed = wait_for(client, job["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "video_too_long"
    assert failed["frames_done"] == 5 and failed["result"] is None
    assert [p.name for p in job_folders(client)[0].iterdir()] == []  # no partial video, no upload


def test_the_video_upload_limit_is_its_own(make_client, clip):
    size = clip.stat().st_size
    client = make_client(max_video_bytes=size - 1, max_upload_bytes=size * 4)
    refused = post(client, clip)
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "payload_too_large"
    photo = png_bytes(w=80, h=80)
    assert size < len(photo) < size * 4  # over the video limit, under the image one
    image = client.post("/v1/stylize", files={"file": ("a.png", photo, "image/png")}, data={"model": MODEL})
    assert image.status_code == 200  # the image route keeps the image limit


def test_a_result_expires(make_client, clip):
    client = make_client(video_ttl_s=0)
    job = post(client, clip).json()
    end = time.monotonic() + 60
    while (r := client.get(f"/v1/videos/{job['id']}")).status_code == 200 and time.monotonic() < end:
        time.sleep(0.05)
    assert r.json()["error"]["code"] == "unknown_video"
    assert job_folders(client) == []
    for bad in ("0" * 31, "Z" * 32, "a" * 33, "..."):
        assert client.get(f"/v1/videos/{bad}").json()["error"]["code"] == "unknown_video"


def test_models_say_which_suit_video_and_whether_videos_are_taken(make_checkpoint, weights, make_client):
    make_checkpoint("instance", path=weights / "for-video.safetensors",
                    training={"batch_size": 2, "lr": 2e-4, "stability_weight": 10.0})
    listing = make_client().get("/v1/models").json()
    assert {m["name"]: m["for_video"] for m in listing["models"]} == {
        "for-video": True, "tiny-instance": False, "tiny-batch": False}
    assert listing["video"]["enabled"] and listing["video"]["reason"] is None
    assert ".mp4" in listing["video"]["suffixes"] and "video/mp4" in listing["video"]["media_types"]
    assert listing["video"]["max_frames"] == 1800


def test_without_pyav_or_switched_off_videos_are_refused_with_why(make_client, clip, monkeypatch):
    off = make_client(video=False)
    refused = post(off, clip)
    assert refused.status_code == 501 and refused.json()["error"]["code"] == "video_unsupported"
    assert "STYLE_TRANSFER_VIDEO" in refused.json()["error"]["message"]

    def missing():
        raise VideoSupportMissing(video.VIDEO_HINT)

    monkeypatch.setattr(videos_module, "require_av", missing)
    client = make_client()
    listing = client.get("/v1/models").json()["video"]
    assert not listing["enabled"] and "style-transfer[video]" in listing["reason"]
    assert post(client, clip).json()["error"]["code"] == "video_unsupported"
    assert client.post("/v1/stylize", files={"file": ("a.png", png_bytes(), "image/png")},
                       data={"model": MODEL}).status_code == 200  # images are served as ever


def test_an_app_built_without_video_says_why(weights, clip):
    from fastapi.testclient import TestClient

    app = create_app(Settings(weights=weights, device="cpu", warmup_size=16), video_unavailable="not on this engine")
    with TestClient(app) as client:
        wait_ready(client)
        refused = post(client, clip)
        assert refused.status_code == 501 and refused.json()["error"]["message"] == "not on this engine"


def test_jobs_stop_with_the_server_and_a_temporary_folder_goes(weights, clip, gate):
    from fastapi.testclient import TestClient

    with TestClient(create_app(Settings(weights=weights, device="cpu", warmup_size=16))) as client:
        wait_ready(client)
        post(client, clip)
        assert gate.entered.wait(30)
        folder = client.app.state.videos._folder
        assert folder.is_dir()
    assert not folder.exists()  # the running job was cancelled and the folder removed at shutdown


def test_a_video_dir_of_the_operators_keeps_results_and_loses_only_stale_folders(make_client, clip, tmp_path):
    import os

    folder = tmp_path / "videos"
    stale, recent, other = folder / ("a" * 32), folder / ("b" * 32), folder / "notes"
    for path in (stale, recent, other):
        path.mkdir(parents=True)
        (path / "x").write_bytes(b"x")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    client = make_client(video_dir=folder, video_ttl_s=3600)
    assert not stale.exists() and recent.is_dir() and other.is_dir()  # only an old job folder goes
    job = wait_for(client, post(client, clip).json()["id"])
    assert (folder / job["id"] / job["filename"]).is_file()
    client.__exit__(None, None, None)
    assert folder.is_dir()  # the operator's folder is not removed at shutdown


def test_output_names_are_the_uploads_and_safe():
    assert output_name("holiday.MOV", "starry-night") == "holiday_starry-night.mp4"
    assert output_name("../../a b?.mp4", "m") == "a-b_m.mp4"
    assert output_name(None, "m") == output_name("", "m") == "video_m.mp4"
