"""`python -m server`: start uvicorn with the settings from flags or STYLE_TRANSFER_* variables."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvicorn

from .app import create_app
from .settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m server", description="Serve style-transfer models over HTTP.")
    parser.add_argument("--host", help="bind address (default: $STYLE_TRANSFER_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: $STYLE_TRANSFER_PORT or 8000)")
    parser.add_argument("--weights", type=Path, help="checkpoint folder (default: $STYLE_TRANSFER_WEIGHTS or weights)")
    parser.add_argument("--device", help="auto, cpu or cuda (default: $STYLE_TRANSFER_DEVICE or auto)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = Settings(**overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":
    main()
