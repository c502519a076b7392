"""Server settings: one BaseSettings, from the environment (STYLE_TRANSFER_*) or `python -m server` flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from style_transfer.stylize import DEFAULT_PAINT_SIZE, check_paint_size


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """"512,1024x768" -> ((512, 512), (768, 1024)): image sizes as (height, width), from ``WxH`` (as in the
    X-Image-Size header) or ``N`` (square), comma-separated; a malformed one is an error that says so."""
    sizes = []
    for item in filter(None, (part.strip().lower() for part in text.split(","))):
        w, sep, h = item.partition("x")
        if not (w.isdigit() and (h.isdigit() if sep else True)) or int(w) < 8 or int(h or w) < 8:
            raise ValueError(f"{item!r} is not an image size: give WxH or N (square), at least 8 px, "
                             f"comma-separated, e.g. 512,1024x768")
        sizes.append((int(h or w), int(w)))
    return tuple(sizes)


class Settings(BaseSettings):
    """Every knob of the service, with the reason for its default."""

    model_config = SettingsConfigDict(env_prefix="STYLE_TRANSFER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    weights: Path = Path("weights")
    device: str = "auto"  # auto: the GPU when there is one, else the CPU
    precision: str = "auto"  # auto: fp16 on a GPU, bf16 on a CPU that has it, else fp32 (device.py)
    fast: bool = True  # the fast path (exact rewrites + reduced precision + channels_last); False: plain fp32
    compile: bool = False  # torch.compile on top (GPUs; on the CPU it measured slower)

    # Uploads: 25 MB covers a full-resolution phone JPEG/PNG; 50 Mpx is above any camera we expect and
    # far below what a decompression bomb claims.
    max_upload_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(50_000_000, ge=64)
    # Long side the output is bounded to when the client asks for nothing smaller (None: by device,
    # style_transfer.stylize.DEFAULT_MAX_SIZE — 1024 px on CPU keeps a request around a second or two;
    # 2048 px on a GPU).
    max_size: int | None = Field(None, ge=8)
    # Long side the network paints at when the client asks for none (0: the image's size); the painting is
    # brought back to the output's size with the photo's fine detail (style_transfer.stylize.DEFAULT_PAINT_SIZE:
    # strokes that stay visible on a large output, and a cheaper one). Only outputs past it are affected.
    paint_size: int = Field(DEFAULT_PAINT_SIZE, ge=0)
    # Images whose long side exceeds this are stylized in tiles (bounded memory).
    tile_size: int = Field(1024, ge=64)

    # One inference worker owns the device; requests wait in a bounded queue.
    queue_size: int = Field(16, ge=1)
    request_timeout_s: float = Field(60.0, gt=0)  # a request still queued after this answers 504
    # Batching of same-size requests (off by default: batch size 1).
    max_batch_size: int = Field(1, ge=1)
    batch_wait_ms: float = Field(5.0, ge=0)
    # Warm-up image size (px): pays one-time costs (allocator, kernels) before /readyz says ready.
    warmup_size: int = Field(256, ge=8)
    # More sizes every model runs before /readyz says ready, at batch size 1 and max_batch_size (on a GPU at
    # every batch size up to it): "WxH" or "N", comma-separated. cuDNN's autotuner (and torch.compile) pays
    # once per input shape, seconds a request would wait, so list the sizes clients send (after max_size).
    # None: none more on the CPU (one shape pays its one-time costs); on a GPU server.inference.GPU_WARMUP_SIZES
    # and the shapes its PHOTO_SIZES are painted at.
    warmup_sizes: str | None = None
    max_compare_models: int = Field(8, ge=1)

    # Video jobs (POST /v1/videos; server/videos.py), when PyAV (the `video` extra) is installed. 200 MB
    # holds a phone's minute of 1080p (~100-130 MB at 30 fps); 1800 frames is that minute, which the
    # 2-core CPU paints in ~15 minutes at 720p. One clip runs at a time; max_video_jobs counts the queued
    # ones too. A result is kept video_ttl_s after it is done, in video_dir (None: a temporary folder,
    # removed at shutdown). An upload streams to the form parser's temporary file as it arrives, counted
    # against max_video_bytes on the way (BodySizeLimit), so it is never held whole in memory.
    video: bool = True
    max_video_bytes: int = Field(200 * 1024 * 1024, ge=1024)
    max_video_frames: int = Field(1800, ge=1)
    max_video_jobs: int = Field(4, ge=1)
    video_ttl_s: float = Field(3600.0, ge=0)
    video_dir: Path | None = None

    # JPEG decode and encode. auto: torchvision's (nvJPEG) on a GPU for the JPEGs it decodes as Pillow does
    # (style_transfer.imageio.jpeg_refusal), Pillow for everything else and on the CPU, where torchvision's
    # codec gives the same pixels and bytes but measured 2-4x slower (docs/benchmarks.md, "JPEG codecs on
    # the CPU"); pillow: Pillow everywhere; torchvision: also on the CPU (for tests and comparisons).
    image_codec: Literal["auto", "pillow", "torchvision"] = "auto"
    # On a CPU (glibc), keep the memory an image frees for the next one instead of returning it to the OS,
    # which faulted every activation in again: 1.48x a 1024 px image on 2 cores (docs/benchmarks.md, "The
    # memory allocator"). The process then stays at its peak memory; false gives it back after each image.
    keep_freed_memory: bool = True

    @field_validator("paint_size")
    @classmethod
    def _check_paint_size(cls, value: int) -> int:
        return check_paint_size(value)

    @field_validator("warmup_sizes")
    @classmethod
    def _check_sizes(cls, value: str | None) -> str | None:
        if value is not None:
            parse_sizes(value)
        return value
