"""Server settings: one BaseSettings, from the environment (STYLE_TRANSFER_*) or `python -m server` flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    max_compare_models: int = Field(8, ge=1)
