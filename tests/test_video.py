"""`style-transfer stylize CLIP.mp4`: a video stylized frame by frame (style_transfer/video.py).

The clips are made here with PyAV: 96x64, a dozen frames of four coloured quadrants and a white corner
marker, so colour, orientation, timing and sound can each be checked on the output.
"""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest
import torch

from style_transfer.checkpoint import ModelInfo, save_model
from style_transfer.cli import main
from style_transfer.network import TransformerConfig, TransformerNet
from style_transfer.stylize import StylizeOptions, Stylizer
from style_transfer import video

av = pytest.importorskip("av", reason="the optional video support (PyAV) is not installed")

W, H, FRAMES, FPS = 96, 64, 12, 12
QUADRANTS = ((220, 40, 30), (30, 200, 60), (40, 60, 210), (200, 200, 40))
BT601, BT709, LIMITED, FULL = 5, 1, 1, 2


def picture(i: int = 0, h: int = H, w: int = W) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:h // 2, :w // 2], img[:h // 2, w // 2:], img[h // 2:, :w // 2], img[h // 2:, w // 2:] = QUADRANTS
    img[:12, :12] = 255  # top-left marker
    img[h // 2 - 4:h // 2 + 4, w // 2 - 4 + i:w // 2 + 4 + i] = 0  # a dot that moves: frames differ
    return img


def make_clip(path: Path, *, space: int | None = BT709, rotation: int | None = None, sound: str | None = "aac",
              frames: int = FRAMES, color_range: int = LIMITED, encoded_as: int | None = None,
              size: tuple[int, int] = (W, H), transfer: int | None = None) -> Path:
    """A clip of ``frames`` frames at FPS, tagged with ``space`` (None: untagged) and ``color_range``, with a
    ``sound`` track; its YUV made with the ``encoded_as`` matrix (default: its tag, else BT.601)."""
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=FPS)
        (v.width, v.height), v.pix_fmt = size, "yuv420p"
        v.options = {"crf": "8"}
        if space is not None:
            v.codec_context.colorspace = space
        v.codec_context.color_range = color_range
        if transfer is not None:
            v.codec_context.color_trc = transfer
        if rotation is not None:
            v.set_display_rotation(rotation)
        rate = 32000 if sound in ("ac3", "eac3") else 16000  # the lowest rate AC-3 has
        a = out.add_stream(sound, rate=rate) if sound else None
        if a is not None:
            a.layout = "mono"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(picture(i, size[1], size[0]), format="rgb24")
            frame = frame.reformat(format="yuv420p", dst_colorspace=encoded_as or space or BT601,
                                   dst_color_range=color_range)
            frame.pts = i
            out.mux(v.encode(frame))
        out.mux(v.encode(None))
        if a is not None:
            tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(rate * frames // FPS) / rate)
            fmt = a.codec_context.codec.audio_formats[0].name  # the encoder's own sample format
            values = (tone * 32000).astype(np.int16) if fmt.startswith("s16") else tone.astype(np.float32)
            samples = av.AudioFrame.from_ndarray(values[None], format=fmt, layout="mono")
            samples.sample_rate, samples.pts = rate, 0
            out.mux(a.encode(samples))
            out.mux(a.encode(None))
    return path


def read_clip(path: Path) -> dict:
    """Frames (RGB by the file's own tags), their times, the streams and the display rotation of a clip."""
    with av.open(str(path)) as clip:
        stream = clip.streams.video[0]
        frames, times, rotation = [], [], 0
        for frame in clip.decode(stream):
            space = int(frame.colorspace)
            frames.append(frame.to_ndarray(format="rgb24", src_colorspace=space if space not in (0, 2) else BT601))
            times.append(float(frame.pts * frame.time_base))
            rotation = frame.rotation
        ctx = stream.codec_context
        return {"frames": frames, "times": times, "rotation": rotation, "colorspace": int(ctx.colorspace),
                "video": ctx.name, "audio": [(s.codec_context.name, float(s.duration * s.time_base))
                                             for s in clip.streams.audio]}


def blocks(rgb: np.ndarray, n: int = 4) -> np.ndarray:
    h, w = rgb.shape[0] // n * n, rgb.shape[1] // n * n
    return rgb[:h, :w].reshape(h // n, n, w // n, n, 3).astype(float).mean(axis=(1, 3))


@pytest.fixture
def weights(tmp_path) -> Path:
    folder = tmp_path / "weights"
    torch.manual_seed(1)
    config = TransformerConfig(norm="instance", width=8, num_residual=1)
    save_model(folder / "tiny.safetensors", TransformerNet(config), ModelInfo(config, style_name="test-style"))
    return folder


def run(*args) -> int:
    return main([*map(str, args)])


@pytest.mark.parametrize("space, color_range", [(BT709, LIMITED), (BT601, LIMITED), (None, LIMITED), (BT709, FULL)],
                         ids=["bt709", "bt601", "untagged", "full-range"])
def test_a_clip_at_strength_0_comes_back_with_its_colours_timing_and_sound(weights, tmp_path, space, color_range):
    """Strength 0 passes the frames through: what comes back is the clip, so any error of the colour matrix
    or range on the way in or out shows (BT.601 read as BT.709 moves these colours by 10-40 levels, a full
    range read as limited by up to 20)."""
    src = make_clip(tmp_path / "clip.mp4", space=space, color_range=color_range)
    assert run("stylize", src, "--model", "tiny", "--weights", weights, "--strength", "0",
               "--out", tmp_path / "out") == 0
    got, want = read_clip(tmp_path / "out" / "clip_tiny.mp4"), read_clip(src)
    assert got["video"] == "h264" and got["colorspace"] == BT709
    assert len(got["frames"]) == FRAMES and got["times"] == pytest.approx(want["times"], abs=1e-3)
    for a, b in zip(got["frames"], want["frames"]):
        assert np.abs(a.astype(int) - b).mean() < 3
    assert [name for name, _ in got["audio"]] == ["aac"]  # copied as it is
    assert got["audio"][0][1] == pytest.approx(want["audio"][0][1], abs=0.05)


def test_an_untagged_hd_clip_is_read_as_bt709_as_players_do(weights, tmp_path):
    """Untagged video is BT.601 to FFmpeg's converter, BT.709 to players from 720 lines up (HD cameras
    encode it): read as players do, the colours they showed come back."""
    src = make_clip(tmp_path / "hd.mp4", space=None, encoded_as=BT709, size=(1280, 720), frames=2, sound=None)
    assert run("stylize", src, "--model", "tiny", "--weights", weights, "--strength", "0",
               "--out", tmp_path / "out.mp4") == 0
    frame = read_clip(tmp_path / "out.mp4")["frames"][0]
    assert np.abs(blocks(frame, 16) - blocks(picture(0, 720, 1280), 16)).mean() < 5  # read as BT.601: 9-10


def sdr_scene(h: int = H, w: int = W) -> np.ndarray:
    """Mid-tone gradients in colour (all under the HDR roll-off's knee), a reference-white patch top left
    and a grey patch top right."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([40 + 150 * x / w, 40 + 150 * y / h, np.full((h, w), 110.0)], -1)
    img[:16, :16], img[:16, -16:] = 255, 128
    return np.rint(img).astype(np.uint8)


def hdr_clip(path: Path, transfer: int, highlight_nits: float = 600.0, frames: int = 2) -> Path:
    """The clip an HDR camera would have recorded of sdr_scene() (its white at BT.2408's 203 nits, a
    highlight patch bottom left at ``highlight_nits``), coded as BT.2100 says, written independently of the
    code under test: BT.1886 light, BT.2087's BT.709-to-BT.2020 matrix, then PQ's inverse EOTF or HLG's
    inverse OOTF (1000-nit display) and OETF; 10-bit 4:4:4, BT.2020, limited range, lossless (FFV1)."""
    light = (sdr_scene() / 255.0) ** 2.4
    nits = 203.0 * light @ np.array([[0.6274, 0.3293, 0.0433], [0.0691, 0.9195, 0.0114],
                                     [0.0164, 0.0880, 0.8956]]).T
    nits[-16:, :16] = highlight_nits
    if transfer == 16:
        y = (nits / 10000) ** 0.1593017578125
        signal = ((0.8359375 + 18.8515625 * y) / (1 + 18.6875 * y)) ** 78.84375
    else:
        display_luma = nits @ np.array([0.2627, 0.6780, 0.0593])
        scene_luma = (display_luma / 1000) ** (1 / 1.2)
        scene = nits / (1000 * np.maximum(scene_luma, 1e-9) ** 0.2)[..., None]
        a, b, c = 0.17883277, 0.28466892, 0.55991073
        signal = np.where(scene <= 1 / 12, np.sqrt(3 * scene), a * np.log(np.maximum(12 * scene - b, 1e-9)) + c)
    with av.open(str(path), "w") as out:
        v = out.add_stream("ffv1", rate=FPS)
        (v.width, v.height), v.pix_fmt = (W, H), "yuv444p10le"
        ctx = v.codec_context
        ctx.colorspace, ctx.color_primaries, ctx.color_trc, ctx.color_range = 9, 9, transfer, LIMITED
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.rint(np.clip(signal, 0, 1) * 65535).astype(np.uint16),
                                               format="rgb48le")
            frame = frame.reformat(format="yuv444p10le", dst_colorspace=9, dst_color_range=LIMITED)
            frame.pts = i
            out.mux(v.encode(frame))
        out.mux(v.encode(None))
    return path


@pytest.mark.parametrize("transfer, name", [(16, "PQ (HDR10)"), (18, "HLG")])
def test_hdr_video_is_converted_to_the_sdr_picture_a_player_shows(weights, tmp_path, caplog, transfer, name):
    """A phone's HDR clip (an iPhone's HLG, an Android's HDR10) comes out as its SDR picture, not washed
    out: the mid-tones as the SDR scene has them, highlights above reference white rolled off, not cut."""
    caplog.set_level("INFO")
    src = hdr_clip(tmp_path / "hdr.mkv", transfer)
    with av.open(str(src)) as clip:
        read = video._rgb(next(clip.decode(video=0))).astype(float)
    want = sdr_scene().astype(float)
    mid = np.ones((H, W), bool)
    mid[:16, :16] = mid[:16, -16:] = mid[-16:, :16] = False
    assert np.abs(read - want)[mid].mean() < 1.5 and np.abs(read - want)[mid].max() <= 6
    assert np.abs(read[:16, -16:] - 128).max() <= 3  # grey stays grey
    white, highlight = read[:16, :16].mean(), read[-16:, :16].mean()
    assert 230 < white < highlight < 255  # 203 nits under the knee's roll-off; 600 nits brighter, not clipped
    # The whole command, through the encoder (strength 0: the frames as read): the SDR picture.
    assert run("stylize", src, "--model", "tiny", "--weights", weights, "--strength", "0",
               "--out", tmp_path / "out.mp4") == 0
    frame = read_clip(tmp_path / "out.mp4")["frames"][0]
    assert np.abs(blocks(frame, 8) - blocks(want, 8))[2:-2, 2:-2].mean() < 4
    assert caplog.text.count(f"is HDR video ({name})") == 1  # said once, not per frame
    sdr = make_clip(tmp_path / "sdr.mov", sound=None, frames=3)
    caplog.clear()
    assert run("stylize", sdr, "--model", "tiny", "--weights", weights, "--out", tmp_path / "out") == 0
    assert "HDR" not in caplog.text


def test_every_frame_is_painted_as_the_image_would_be(weights, tmp_path):
    src = make_clip(tmp_path / "clip.mp4", sound=None)
    assert run("stylize", src, "--model", "tiny", "--weights", weights, "--out", tmp_path / "out.mkv") == 0
    got = read_clip(tmp_path / "out.mkv")
    assert got["audio"] == []
    stylizer = Stylizer.from_checkpoint(weights / "tiny.safetensors", "cpu")
    for i, frame in enumerate(read_clip(src)["frames"]):
        image = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
        want = stylizer.stylize(image)[0].permute(1, 2, 0).mul(255).round().numpy()
        # An untrained network paints pixel-fine noise and colours at the gamut's edge, which 4:2:0 chroma and
        # x264 smooth and clip: compare 4x4 blocks (the strength-0 test above checks the colours closely).
        assert np.abs(blocks(got["frames"][i]) - blocks(want)).mean() < 5, i
        assert np.abs(blocks(got["frames"][i]) - blocks(frame)).mean() > 20  # and it is painted


def test_a_portrait_clip_stored_sideways_is_stylized_upright(weights, tmp_path):
    """A phone films portrait as landscape frames tagged "turn a quarter clockwise" (display rotation -90,
    FFmpeg's counterclockwise angle): the network must see the upright picture, and the output needs no tag."""
    src = make_clip(tmp_path / "portrait.mov", rotation=-90)
    assert read_clip(src)["rotation"] == -90
    assert run("stylize", src, "--model", "tiny", "--weights", weights, "--strength", "0",
               "--out", tmp_path / "out.mp4") == 0
    got = read_clip(tmp_path / "out.mp4")
    assert got["rotation"] == 0
    frame = got["frames"][0].astype(int)
    assert frame.shape == (W, H, 3)
    clockwise, counterclockwise = np.rot90(picture(0), -1), np.rot90(picture(0), 1)
    assert np.abs(blocks(frame) - blocks(clockwise)).mean() < 4  # the marker goes top right
    assert np.abs(blocks(frame) - blocks(counterclockwise)).mean() > 40
    assert frame[:8, -8:].min() > 200


# A camera's raw PCM, and a film's AC-3, which the MP4 muxer takes but Chrome and Firefox do not play.
@pytest.mark.parametrize("sound", ["pcm_s16le", "ac3"])
def test_sound_the_mp4_would_not_play_is_re_encoded_and_odd_sizes_are_evened(weights, tmp_path, sound):
    src = make_clip(tmp_path / "camera.mkv", sound=sound)
    with av.open(str(src)) as clip:
        assert clip.streams.audio[0].codec_context.name == sound
    assert run("stylize", src, "--model", "tiny", "--weights", weights, "--max-size", "45",
               "--out", tmp_path / "out") == 0
    got = read_clip(tmp_path / "out" / "camera_tiny.mp4")
    assert got["frames"][0].shape == (30, 44, 3)  # 96x64 bounded to 45 px is 45x30: 4:2:0 needs even sides
    assert [name for name, _ in got["audio"]] == ["aac"]
    assert got["audio"][0][1] == pytest.approx(FRAMES / FPS, abs=0.1)


def test_a_run_that_stops_leaves_no_file_under_the_output_name(weights, tmp_path, monkeypatch):
    src = make_clip(tmp_path / "clip.mp4")
    target = tmp_path / "out" / "clip_tiny.mp4"
    painted = []
    real = Stylizer.stylize_batch

    def crash_on_the_sixth(self, images, options):
        painted.append(1)
        if len(painted) == 6:
            raise KeyboardInterrupt
        return real(self, images, options)

    monkeypatch.setattr(Stylizer, "stylize_batch", crash_on_the_sixth)
    assert run("stylize", src, "--model", "tiny", "--weights", weights, "--out", tmp_path / "out") == 130
    assert not target.exists() and list(target.parent.iterdir()) == []  # no .part left either
    monkeypatch.setattr(Stylizer, "stylize_batch", real)
    assert run("stylize", src, "--model", "tiny", "--weights", weights, "--out", tmp_path / "out",
               "--skip-existing") == 0
    assert len(read_clip(target)["frames"]) == FRAMES


def test_a_folder_gives_its_images_and_a_damaged_video_does_not_stop_the_rest(weights, tmp_path, caplog):
    caplog.set_level("INFO")
    folder = tmp_path / "phone"
    folder.mkdir()
    make_clip(folder / "IMG_0002.mov")
    from PIL import Image
    Image.fromarray(picture()).save(folder / "IMG_0001.jpg")
    assert run("stylize", folder, "--model", "tiny", "--weights", weights, "--out", tmp_path / "out") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["IMG_0001_tiny.png"]
    assert "1 video file(s) under" in caplog.text and "name a video to stylize it" in caplog.text

    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    code = run("stylize", tmp_path / "broken.mp4", folder / "IMG_0002.mov", folder / "IMG_0001.jpg",
               "--model", "tiny", "--weights", weights, "--out", tmp_path / "out2")
    assert code == 1
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == ["IMG_0001_tiny.png", "IMG_0002_tiny.mp4"]
    assert "cannot stylize" in caplog.text and "broken.mp4" in caplog.text
    assert "1 of 3 file(s) could not be stylized" in caplog.text


def test_out_names_a_file_of_the_right_kind(weights, tmp_path, caplog):
    src = make_clip(tmp_path / "clip.mp4", sound=None)
    assert run("stylize", src, "--model", "tiny", "--weights", weights, "--out", tmp_path / "clip.png") == 2
    assert "a video is written as .mp4" in caplog.text
    assert run("stylize", src, "--model", "tiny", "--weights", weights, "--out", tmp_path / "clip.webm") == 2
    assert not (tmp_path / "clip.webm").exists()


def test_without_pyav_a_video_is_refused_with_how_to_add_it(weights, tmp_path, monkeypatch, caplog):
    src = make_clip(tmp_path / "clip.mp4", sound=None)
    real_import = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av" or name.startswith("av."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    loaded = []
    monkeypatch.setattr(Stylizer, "from_checkpoint", classmethod(lambda cls, *a, **k: loaded.append(1)))
    assert run("stylize", src, "--model", "tiny", "--weights", weights, "--out", tmp_path / "out") == 2
    assert "style-transfer[video]" in caplog.text and loaded == []
