"""Stylizing a video file: every frame through the network, the sound kept, written as H.264.

A feed-forward network paints a frame in one pass (Johnson et al. 2016 built it for this), so a clip is its
frames stylized one after another under the image rules of stylize.py (max_size, paint_size, strength,
preserve_color, style mixes). The frames are decoded and encoded with PyAV (FFmpeg), the optional ``video``
extra: its wheels bundle FFmpeg with the x264 encoder (GPL), so like HEIC support it is not installed by
default, and a video named without it is refused with how to add it.

What a user would otherwise meet, and the choice made:

* colours: frames are converted to RGB by the matrix and range the file is tagged with; untagged ones as
  players do (BT.709 from 720 lines up, BT.601 below). The output is tagged BT.709, limited range, so any
  player shows the colours the network painted.
* a phone's portrait clip is stored sideways with a rotation tag: the frames are turned upright before the
  network sees them (as EXIF orientation is for photos), and the output needs no tag.
* sound: copied as it is when the output container takes its codec, else re-encoded to AAC. Subtitles,
  chapters and metadata (a phone's location among them) are not copied: outputs carry no metadata, like
  images.
* timing: every frame keeps its timestamp, so variable frame rate clips stay in sync with their sound.
* a run that stops (an error, Ctrl-C) leaves no half-written file under the output's name: the video is
  written beside it as ``NAME.part.mp4`` and renamed when complete.

Each frame is painted on its own, so textures can shimmer from frame to frame, and a moving camera makes a
network draw its strokes anew in every frame (its stride-2 convolutions tie them to a 4 px grid of the
frame). A model trained with ``train --stability-weight`` (the shipped ``starry-night-video``) re-draws
them far less: docs/quality.md, "Video".
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from .imageio import VIDEO_SUFFIXES, fitted_size

log = logging.getLogger(__name__)

# Containers an output can be written in (the file's suffix chooses), all taking H.264 video and AAC sound.
VIDEO_OUTPUTS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
DEFAULT_VIDEO_SUFFIX = ".mp4"
VIDEO_HINT = ("videos are read and written only with the optional video support (pip install 'style-transfer[video]': "
              "PyAV, with FFmpeg)")
# x264's constant rate factor: 18 is about visually lossless, so the painting's strokes survive the encode
# (its default, 23, smears fine brush texture); "medium" is x264's default trade of speed for size. On a
# CPU the network takes ~100x longer per frame than the encoder, on a GPU the encoder is what bounds.
CRF = 18
PRESET = "medium"
# FFmpeg's AVColorSpace, AVColorRange, AVColorPrimaries and AVColorTransferCharacteristic codes.
_BT709, _BT601, _UNSPECIFIED = 1, 5, 2
_MPEG_RANGE = 1
_PQ, _HLG, _BT2020 = 16, 18, 9
_HDR_TRANSFERS = {_PQ: "PQ (HDR10)", _HLG: "HLG"}
# Frames per pass through the network: a GPU gains from a batch, a CPU does not (and holds less memory).
BATCH = {"cuda": 4, "cpu": 1}


# Sound codecs an MP4 is played back with in browsers (Chrome, Firefox, Safari): the muxer takes more --
# PCM, and AC-3, E-AC-3 and ALAC, which Chrome and Firefox do not play, so the server's result and the
# web page's player would be silent -- and those are re-encoded to AAC. A .mov or .mkv takes whatever its
# muxer does.
_MP4_SOUND = {"aac", "mp3", "opus", "flac"}


def _copies(codec: str, suffix: str, supported: set[str]) -> bool:
    """Whether sound in ``codec`` is copied into a ``suffix`` file as it is (else re-encoded to AAC)."""
    return codec in supported and (VIDEO_OUTPUTS[suffix] != "mp4" or codec in _MP4_SOUND)


def _aac_layout(layout) -> str:
    """The channel layout sound is re-encoded in: its own, or for channels without a named order (a
    camera's raw PCM), the usual one of their count; other counts are mixed down to stereo."""
    if not layout.name.endswith("channels"):
        return layout.name
    return {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}.get(layout.nb_channels, "stereo")


def is_video(path: Path | str) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


class VideoSupportMissing(RuntimeError):
    pass


def require_av():
    """PyAV, or VideoSupportMissing saying how to install it."""
    try:
        import av
    except ImportError:
        raise VideoSupportMissing(VIDEO_HINT) from None
    return av


@dataclass(frozen=True)
class VideoResult:
    frames: int
    width: int
    height: int
    audio: str  # "none", "copied" or REENCODED


def _even(n: int) -> int:
    return max(2, n - n % 2)


# HDR to SDR (ITU-R BT.2100 and the BT.2408 conventions). A phone films HDR by default (an iPhone's HLG,
# many Androids' HDR10 PQ); read as they are, their frames look washed out and dim. They are converted to
# the SDR frames a player would show: to display light in nits (PQ's EOTF; HLG's inverse OETF and its
# OOTF for a 1000-nit display), HDR reference white (203 nits, BT.2408) as SDR white, BT.2020 primaries
# to BT.709 (BT.2087's matrix in linear light), then highlights above 75% of SDR white rolled off
# (extended Reinhard on luminance, which keeps hues; 1000 nits, a typical grading peak, reaches white, and
# reference white itself ends at 241 of 255), and BT.1886's display gamma inverted (what an SDR frame's
# values are).
_HDR_WHITE_NITS, _HDR_PEAK_NITS, _KNEE = 203.0, 1000.0, 0.75
_BT2020_TO_BT709 = np.array([[1.6605, -0.5876, -0.0728],
                             [-0.1246, 1.1329, -0.0083],
                             [-0.0182, -0.1006, 1.1187]], dtype=np.float32)
_LUMA_2020 = np.array([0.2627, 0.6780, 0.0593], dtype=np.float32)
_LUMA_709 = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
_HLG_A = 0.17883277
_HLG_B, _HLG_C = 1 - 4 * _HLG_A, 0.5 - _HLG_A * np.log(4 * _HLG_A)
_PQ_M1, _PQ_M2 = 2610 / 16384, 2523 / 4096 * 128
_PQ_C1, _PQ_C2, _PQ_C3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32


def _hdr_curve(signal: np.ndarray, transfer: int) -> np.ndarray:
    """Per channel: PQ-coded signal in [0, 1] -> display light relative to HDR reference white; HLG-coded
    -> scene light in [0, 1] (HLG's OOTF, which depends on luminance, comes after)."""
    if transfer == _PQ:
        e = np.power(signal, 1 / _PQ_M2)
        nits = 10000 * np.power(np.maximum(e - _PQ_C1, 0) / (_PQ_C2 - _PQ_C3 * e), 1 / _PQ_M1)
        return nits / _HDR_WHITE_NITS
    return np.where(signal <= 0.5, signal * signal / 3, (np.exp((signal - _HLG_C) / _HLG_A) + _HLG_B) / 12)


def _roll_off(luma: np.ndarray) -> np.ndarray:
    """SDR-relative luminance mapped into [0, 1]: unchanged up to the knee, then extended Reinhard with
    slope 1 at the knee and the peak landing on 1."""
    u = np.maximum(luma - _KNEE, 0) / (1 - _KNEE)
    p = (_HDR_PEAK_NITS / _HDR_WHITE_NITS - _KNEE) / (1 - _KNEE)
    return np.where(luma <= _KNEE, luma, _KNEE + (1 - _KNEE) * np.minimum(u * (1 + u / p**2) / (1 + u), 1))


# The per-channel curves as tables (computed once): a 16-bit frame's codes in, and linear light to
# BT.1886 code values out, indexed at 20 bits (its first step is under one output level). A 1080p frame
# then converts in 70-85 ms on the 2-core CPU, a tenth of the time painting it takes there
# (benchmarks/hdr_frames.py), where the curves' powers computed for every pixel cost several times that.
_OUT_STEPS = (1 << 20) - 1


@functools.lru_cache(maxsize=None)
def _tables(transfer: int) -> tuple[np.ndarray, np.ndarray]:
    codes = np.arange(65536, dtype=np.float64) / 65535
    gamma = np.rint(np.power(np.arange(_OUT_STEPS + 1) / _OUT_STEPS, 1 / 2.4) * 255)
    return _hdr_curve(codes, transfer).astype(np.float32), gamma.astype(np.uint8)


def hdr_to_sdr(signal: np.ndarray, transfer: int, bt2020: bool = True) -> np.ndarray:
    """(H, W, 3) uint16 PQ or HLG R'G'B' -> (H, W, 3) uint8 SDR R'G'B' (BT.709 primaries, BT.1886)."""
    curve, gamma = _tables(transfer)
    linear = curve[signal]
    if transfer == _HLG:  # the OOTF for a 1000-nit display (system gamma 1.2), then relative to white
        luma = np.maximum(linear @ _LUMA_2020, 1e-12)[..., None]
        linear *= (_HDR_PEAK_NITS / _HDR_WHITE_NITS) * np.power(luma, np.float32(0.2))
    if bt2020:
        linear = linear @ _BT2020_TO_BT709.T
    np.maximum(linear, 0, out=linear)
    luma = (linear @ _LUMA_709)[..., None]
    linear *= _roll_off(luma) / np.maximum(luma, 1e-6)
    np.clip(linear, 0, 1, out=linear)
    return gamma[np.rint(linear * _OUT_STEPS).astype(np.int32)]


def _rgb(frame) -> np.ndarray:
    """A decoded frame as an upright (H, W, 3) uint8 RGB array, by its file's matrix (_source_colorspace)
    and range (the frame's own: swscale reads it, full-range 10-bit included); HDR frames (PQ, HLG) are
    converted to SDR (hdr_to_sdr) from 16 bits a channel."""
    transfer, space = int(frame.color_trc), _source_colorspace(frame)
    if transfer in _HDR_TRANSFERS:
        signal = frame.to_ndarray(format="rgb48le", src_colorspace=space)
        rgb = hdr_to_sdr(signal, transfer, int(frame.color_primaries) == _BT2020)
    else:
        rgb = frame.to_ndarray(format="rgb24", src_colorspace=space)
    quarter_turns = round((frame.rotation or 0) / 90) % 4  # counterclockwise, as np.rot90 turns
    return np.ascontiguousarray(np.rot90(rgb, quarter_turns)) if quarter_turns else rgb


def _source_colorspace(frame) -> int:
    """The frame's YUV matrix; untagged, the one players assume (swscale's own default is BT.601 always)."""
    space = int(frame.colorspace)
    if space in (_UNSPECIFIED, 0):
        return _BT709 if frame.height >= 720 else _BT601
    return space


class _Batches:
    """Frames gathered into same-size batches for the network, their timestamps carried along."""

    def __init__(self, size: int) -> None:
        self.size, self.frames, self.stamps = size, [], []

    def add(self, rgb: np.ndarray, stamp) -> bool:
        self.frames.append(torch.from_numpy(rgb).permute(2, 0, 1))
        self.stamps.append(stamp)
        return len(self.frames) >= self.size

    def take(self) -> tuple[torch.Tensor, list]:
        batch = torch.stack(self.frames).float().div_(255)
        stamps = self.stamps
        self.frames, self.stamps = [], []
        return batch, stamps


@contextlib.contextmanager
def _written_whole(target: Path) -> Iterator[Path]:
    """A path to write the video to, renamed to ``target`` only when the block completes."""
    part = target.with_name(f"{target.stem}.part{target.suffix}")
    try:
        yield part
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)


REENCODED = "re-encoded to AAC"


def _sound_stream(out, ain, suffix: str):
    """The output's sound stream for the input's ``ain`` (None: no sound) and what is done to the sound:
    "none", "copied", or REENCODED (the stream is then an AAC encoder)."""
    if ain is None:
        return None, "none"
    if _copies(ain.codec_context.name, suffix, out.supported_codecs):
        return out.add_stream_from_template(ain), "copied"
    aout = out.add_stream("aac", rate=ain.codec_context.sample_rate)
    aout.layout, aout.format = _aac_layout(ain.codec_context.layout), "fltp"  # AAC's sample format
    return aout, REENCODED


def _rate(vin):
    """Frames per second of the input's video stream (30 when it says none)."""
    return vin.average_rate or vin.guessed_rate or 30


def _video_stream(out, vin, size: tuple[int, int]):
    """The output's H.264 stream: (height, width) ``size``, the input's rate and time base (so every
    frame keeps its timestamp), tagged BT.709 limited range, as the frames are converted."""
    vout = out.add_stream("libx264", rate=_rate(vin))
    vout.height, vout.width = size
    vout.pix_fmt = "yuv420p"
    vout.codec_context.time_base = vout.time_base = vin.time_base
    vout.options = {"crf": str(CRF), "preset": PRESET}
    ctx = vout.codec_context
    ctx.colorspace, ctx.color_primaries, ctx.color_trc, ctx.color_range = _BT709, _BT709, _BT709, _MPEG_RANGE
    return vout


def stylize_video(stylizer, options, src: Path | str, target: Path | str, progress: bool = True,
                  on_frames: Callable[[int], None] | None = None, batch_size: int | None = None) -> VideoResult:
    """Every frame of ``src`` stylized (stylizer and options as for an image) into ``target`` (H.264; the
    container from its suffix, VIDEO_OUTPUTS), its sound kept.

    ``on_frames(n)`` is called with the number of frames written so far after each batch (the server's
    progress); an exception it raises stops the run, and leaves no file under ``target``'s name.
    ``batch_size``: frames per ``stylizer.stylize`` call (default: BATCH for the device, 1 with tiles)."""
    av = require_av()
    src, target = Path(src), Path(target)
    if target.suffix.lower() not in VIDEO_OUTPUTS:
        raise ValueError(f"{target}: a video is written as {', '.join(VIDEO_OUTPUTS)}")
    if batch_size is None:
        batch_size = 1 if options.tile else BATCH.get(stylizer.device.type, 1)
    with av.open(str(src)) as inp, _written_whole(target) as part:
        if not inp.streams.video:
            raise ValueError(f"{src} has no video stream")
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        ain = inp.streams.audio[0] if inp.streams.audio else None
        with av.open(str(part), "w", format=VIDEO_OUTPUTS[target.suffix.lower()]) as out:
            vout, size = None, None
            aout, audio = _sound_stream(out, ain, target.suffix.lower())
            encoder = aout if audio == REENCODED else None
            batches, frames, warned, shape = _Batches(batch_size), 0, False, None
            bar = tqdm(total=vin.frames or None, desc=src.name, unit="frame", disable=not progress, leave=False)

            def paint() -> None:
                nonlocal frames
                batch, stamps = batches.take()
                styled = stylizer.stylize(batch, options)  # max_size and strength as for an image
                pixels = styled.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
                for rgb, (pts, time_base) in zip(pixels, stamps):
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:size[0], :size[1]]), format="rgb24")
                    frame = frame.reformat(format="yuv420p", dst_colorspace=_BT709, dst_color_range=_MPEG_RANGE)
                    frame.pts, frame.time_base = pts, time_base
                    out.mux(vout.encode(frame))
                frames += len(stamps)
                bar.update(len(stamps))
                if on_frames is not None:
                    on_frames(frames)

            def sound(packet) -> None:
                if encoder is not None:
                    for samples in packet.decode():
                        samples.pts = None  # the encoder counts samples itself
                        out.mux(encoder.encode(samples))
                elif packet.dts is not None:
                    packet.stream = aout
                    out.mux(packet)

            # The file's header is written with the first packet, and the video stream is added only once the
            # first frame gives its upright size: sound that comes before it waits.
            waiting: list | None = []
            for packet in inp.demux(*([vin] + ([ain] if ain is not None else []))):
                if packet.stream is ain:
                    if waiting is None:
                        sound(packet)
                    else:
                        waiting.append(packet)
                    continue
                for frame in packet.decode():
                    if not warned and int(frame.color_trc) in _HDR_TRANSFERS:
                        log.info("%s is HDR video (%s): its frames are converted to SDR (BT.2100 to BT.709, "
                                 "reference white 203 nits)", src, _HDR_TRANSFERS[int(frame.color_trc)])
                        warned = True
                    rgb = _rgb(frame)
                    if shape is None:  # the first frame fixes the output's size: after max_size, even for 4:2:0
                        shape = rgb.shape
                        h, w = fitted_size(*shape[:2], options.max_size)
                        size = (_even(h), _even(w))
                        vout = _video_stream(out, vin, size)
                        for held in waiting:
                            sound(held)
                        waiting = None
                    elif rgb.shape != shape:
                        raise ValueError(f"{src}: the frame size changes from {shape[1]}x{shape[0]} to "
                                         f"{rgb.shape[1]}x{rgb.shape[0]} mid-stream")
                    if frame.pts is None:  # a file without timestamps: the frame's place at the stream's rate
                        index = frames + len(batches.stamps)
                        frame.pts = round(index / _rate(vin) / vin.time_base)
                    stamp = (frame.pts, vin.time_base)
                    if batches.add(rgb, stamp):
                        paint()
            if batches.frames:
                paint()
            bar.close()
            if vout is None:
                raise ValueError(f"{src}: no frame could be decoded")
            out.mux(vout.encode(None))
            if encoder is not None:
                out.mux(encoder.encode(None))
    return VideoResult(frames, size[1], size[0], audio)


@dataclass(frozen=True)
class VideoProbe:
    """What a video file's header says, before any frame is decoded."""

    width: int  # stored size (a portrait clip's frames are turned upright later)
    height: int
    frames: int | None  # the container's count, else estimated from duration and rate; None: unknown
    seconds: float | None
    audio: bool


# The containers of VIDEO_SUFFIXES, as FFmpeg's demuxers name them ("mov,mp4,m4a,3gp,3g2,mj2" reads them
# all). Recognised by content: FFmpeg also reads a PNG or JPEG as a one-frame "video", which is refused.
VIDEO_CONTAINERS = {"mov", "mp4", "matroska", "webm", "avi"}


def probe_video(path: Path | str) -> VideoProbe:
    """The header of ``path``; ValueError when it is not a video of VIDEO_CONTAINERS (a still image, a
    sound file, anything else). A frame count the header states wrongly is caught later, while stylizing."""
    av = require_av()
    try:
        with av.open(str(path)) as inp:
            if not VIDEO_CONTAINERS & set(inp.format.name.split(",")):
                raise ValueError(f"not a video container of {', '.join(sorted(VIDEO_CONTAINERS))} "
                                 f"(FFmpeg reads it as {inp.format.long_name or inp.format.name})")
            if not inp.streams.video:
                raise ValueError("the file has no video stream")
            vin = inp.streams.video[0]
            seconds = None
            if vin.duration is not None and vin.time_base is not None:
                seconds = float(vin.duration * vin.time_base)
            elif inp.duration is not None:
                seconds = inp.duration / av.time_base
            frames = vin.frames or (round(seconds * float(_rate(vin))) if seconds else None)
            return VideoProbe(vin.codec_context.width, vin.codec_context.height, frames, seconds,
                              bool(inp.streams.audio))
    except av.FFmpegError as exc:
        raise ValueError(f"not a video FFmpeg can read ({exc.strerror or exc})") from None
