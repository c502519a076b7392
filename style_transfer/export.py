"""Export a trained model to ONNX, checked by ONNX Runtime against PyTorch (issue 17, part 6).

So a model runs outside PyTorch (ONNX Runtime, OpenVINO, TensorRT, a browser): one file with dynamic
batch, height and width, the checkpoint's own metadata in the ONNX metadata, and a check that
ONNX Runtime's output matches the PyTorch network's at :data:`MIN_PSNR` dB or better on two sizes, one
of them odd, before the file is kept.

The graph is the plain network (``TransformerNet(rewrites=False)``): kernels.py's exact rewrites pick
their path from the input's shape, which a graph with symbolic sizes cannot, and they only change
rounding. Input: float32 (B, 3, H, W) RGB in [0, 1], H and W at least ``TransformerNet.MIN_SIZE``;
output: the same shape, to be clamped to [0, 1] (the network's output is unclamped, as in PyTorch).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_model
from .imageio import atomic_write_bytes
from .metrics import psnr
from .network import TransformerNet

log = logging.getLogger(__name__)

FORMATS = ("onnx",)
# The same bar as the issue's: far above what the eye sees (the fp16 export check is 35 dB).
MIN_PSNR = 40.0
# Checked sizes (H, W): one even, one odd in both sides, both past the downsampling's rounding.
CHECK_SIZES = ((256, 256), (193, 255))


def _missing(exc: ImportError) -> RuntimeError:
    return RuntimeError(f"ONNX export needs the 'export' extra ({exc.name} is missing): "
                        "pip install 'style-transfer[export]'")


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _probe(h: int, w: int) -> torch.Tensor:
    """A deterministic photo-like image: smooth gradients and an edge (not noise, which no model sees)."""
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([0.5 + 0.4 * torch.sin(6 * x + 2 * y), (0.2 + 0.7 * y * (x > 0.45)),
                        0.5 + 0.4 * torch.cos(8 * x * y)])[None].clamp(0, 1)


class _Styled(torch.nn.Module):
    """A conditional network with its style mix fixed: the exported graph takes the image alone."""

    def __init__(self, model: TransformerNet, style: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("style", torch.tensor([style]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.style)


def export_onnx(checkpoint: Path | str, out: Path | str, style: tuple[float, ...] | None = None) -> dict[str, Any]:
    """Write ``checkpoint`` as an ONNX model to ``out`` after checking it with ONNX Runtime; returns
    ``{"path", "psnr_db": {"HxW": dB}, "bytes"}``. A model below MIN_PSNR at any checked size is not kept.
    ``style``: a multi-style model's mix (stylize.style_mix), fixed in the graph; None: its first style."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise _missing(exc) from None
    trained, info = load_model(checkpoint)
    model = TransformerNet(info.config, rewrites=False)
    model.load_state_dict(trained.state_dict())
    if style is not None:
        model = _Styled(model, style)
    model.eval()
    height = torch.export.Dim("height", min=TransformerNet.MIN_SIZE)
    width = torch.export.Dim("width", min=TransformerNet.MIN_SIZE)
    batch = torch.export.Dim("batch", min=1)
    try:
        # The exporter narrates each phase on stdout and logs every graph pass: keep this one line.
        with contextlib.redirect_stdout(io.StringIO()), _quiet("onnx_ir", "onnxscript"):
            program = torch.onnx.export(model, (_probe(64, 64),), dynamo=True, input_names=["image"],
                                        output_names=["stylized"], verbose=False,
                                        dynamic_shapes={"x": {0: batch, 2: height, 3: width}})
    except ImportError as exc:  # onnxscript / onnx
        raise _missing(exc) from None
    proto = program.model_proto
    metadata = {**info.to_metadata(), **({"style_mix": json.dumps(list(style))} if style else {}), "input": "image: float32 (B, 3, H, W) RGB in [0, 1], H, W >= 8",
                "output": "stylized: float32 (B, 3, H, W) RGB, clamp to [0, 1]"}
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    scores = {}
    with torch.no_grad():
        for h, w in CHECK_SIZES:
            image = _probe(h, w)
            reference = model(image).clamp(0, 1)
            got = torch.from_numpy(session.run(None, {"image": image.numpy()})[0]).clamp(0, 1)
            scores[f"{h}x{w}"] = round(psnr(got, reference), 1)
    worst = min(scores.values())
    if worst < MIN_PSNR:
        raise ValueError(f"the ONNX model differs from PyTorch ({worst} dB < {MIN_PSNR} dB at "
                         f"{min(scores, key=scores.get)}); not written")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, data)
    log.info("wrote %s (%d bytes; ONNX Runtime vs PyTorch: %s dB)", out, len(data),
             ", ".join(f"{k} {v}" for k, v in scores.items()))
    return {"path": out, "psnr_db": scores, "bytes": len(data)}
