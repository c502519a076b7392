"""One residual-block convolution (128->128, 3x3) in each arithmetic the CPU offers, side by side.

The ten residual convs are ~60% of the network's FLOPs, so their kernel speed bounds the stylize
speed-up (issue 5). This compares, on the same weights and input:

* fp32 NCHW (the reference's layout and precision),
* bf16 channels_last (the project's fast path),
* int8 with per-channel weights through PyTorch's ``x86`` quantized engine (VNNI), alone and with
  the quantize/dequantize that the floating-point norms around it would need,
* Winograd F(2x2, 3x3) (Lavin & Gray 2016) in bf16, written with PyTorch ops: 16 batched GEMMs with
  2.25x fewer multiply-adds than the direct conv, plus the input and output transforms (each a few
  elementwise passes over memory); and its GEMMs alone, the bound a fused transform could approach,

* int8 through oneDNN's own conv op (the one PyTorch's compiler uses), reading a bf16 input quantized
  with its own range and writing bf16: the whole cost an int8 residual conv would add to the network,

and prints each one's error against fp32 (PSNR over the output's range) so a faster kernel cannot
hide a worse result.

    python benchmarks/bench_conv_kernels.py                 # 128x128 (the residual blocks at 512 px input)
    python benchmarks/bench_conv_kernels.py --quick
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import alternate, machine, summary
from style_transfer.metrics import psnr


# Winograd F(2x2, 3x3): a 4x4 input tile d gives the 2x2 output A^T [(G g G^T) * (B^T d B)] A.
_WINO_G = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def winograd_weights(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(out, in, 3, 3) -> (16, in, out): the transformed kernel, one GEMM operand per tile position."""
    u = torch.einsum("ak,oikl,bl->abio", _WINO_G, weight.float(), _WINO_G)
    return u.reshape(16, weight.shape[1], weight.shape[0]).to(dtype)


def winograd_conv(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """3x3 conv, stride 1, of an already padded channels_last (B, C, H+2, W+2) input with even H, W."""
    b, c, hp, wp = x.shape
    h, w = (hp - 2) // 2, (wp - 2) // 2
    xn = x.permute(0, 2, 3, 1)  # the NHWC view; no copy for a channels_last tensor
    r = [xn[:, i : i + 2 * h : 2] for i in range(4)]
    v = torch.empty(4, 4, b, h, w, c, dtype=x.dtype)
    for k, t in enumerate((r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3])):  # rows of B^T d ...
        col = [t[:, :, j : j + 2 * w : 2] for j in range(4)]  # ... then its columns (d B)
        torch.sub(col[0], col[2], out=v[k, 0])
        torch.add(col[1], col[2], out=v[k, 1])
        torch.sub(col[2], col[1], out=v[k, 2])
        torch.sub(col[1], col[3], out=v[k, 3])
    m = torch.bmm(v.view(16, -1, c), u).view(4, 4, b, h, w, -1)
    rows = (m[0] + m[1] + m[2], m[1] - m[2] - m[3])  # A^T m ...
    out = torch.empty(b, h, 2, w, 2, m.shape[-1], dtype=x.dtype)
    for a, t in enumerate(rows):  # ... m A
        torch.add(t[0] + t[1], t[2], out=out[:, :, a, :, 0])
        torch.sub(t[1] - t[2], t[3], out=out[:, :, a, :, 1])
    return (out.view(b, 2 * h, 2 * w, -1) + bias).permute(0, 3, 1, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128, help="spatial size of the conv input (128 = residual blocks at 512 px)")
    ap.add_argument("--channels", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="64x64, 3 repeats")
    args = ap.parse_args()
    if args.quick:
        args.size, args.repeats = 64, 3

    torch.manual_seed(0)
    c, s = args.channels, args.size
    conv = torch.nn.Conv2d(c, c, 3, padding=1).eval()
    # A post-ReLU activation, like the residual block's second conv sees.
    x = torch.randn(1, c, s, s).relu()
    contenders = {}
    outputs = {}
    with torch.no_grad():
        ref = conv(x)
        contenders["fp32 NCHW"] = lambda: conv(x)

        conv_bf16 = copy.deepcopy(conv).to(torch.bfloat16, memory_format=torch.channels_last)
        x_bf16 = x.to(torch.bfloat16, memory_format=torch.channels_last)
        contenders["bf16 channels_last"] = lambda: conv_bf16(x_bf16)
        outputs["bf16 channels_last"] = conv_bf16(x_bf16)

        u = winograd_weights(conv.weight, torch.bfloat16)
        bias_bf16 = conv.bias.to(torch.bfloat16)
        x_padded = torch.nn.functional.pad(x_bf16, (1, 1, 1, 1))  # stays channels_last
        contenders["Winograd F(2,3) bf16"] = lambda: winograd_conv(x_padded, u, bias_bf16)
        outputs["Winograd F(2,3) bf16"] = winograd_conv(x_padded, u, bias_bf16)
        tiles = torch.randn(16, (s // 2) ** 2, c).to(torch.bfloat16)
        contenders["Winograd GEMMs alone"] = lambda: torch.bmm(tiles, u)

        if "x86" in torch.backends.quantized.supported_engines:
            # The quantized tensor API is deprecated in recent PyTorch; this measures it, it does not ship it.
            warnings.filterwarnings("ignore", message=".*quantize.*deprecated.*")
            torch.backends.quantized.engine = "x86"
            from torch.ao.nn import quantized as nnq

            w = conv.weight
            w_scale = w.abs().amax((1, 2, 3)) / 127
            qconv = nnq.Conv2d(c, c, 3, padding=1)
            qconv.set_weight_bias(
                torch.quantize_per_channel(w, w_scale, torch.zeros(c, dtype=torch.long), 0, torch.qint8), conv.bias)
            x_scale = float(x.max()) / 255
            y_abs = float(ref.abs().max())
            qconv.scale, qconv.zero_point = 2 * y_abs / 255, 128
            x_cl = x.contiguous(memory_format=torch.channels_last)
            xq = torch.quantize_per_tensor(x_cl, x_scale, 0, torch.quint8)
            contenders["int8 (x86/VNNI)"] = lambda: qconv(xq)

            def int8_round_trip() -> torch.Tensor:
                return qconv(torch.quantize_per_tensor(x_bf16.float(), x_scale, 0, torch.quint8)).dequantize()

            contenders["int8 + quant/dequant"] = int8_round_trip
            outputs["int8 + quant/dequant"] = int8_round_trip()

        if "x86" in torch.backends.quantized.supported_engines and hasattr(torch.ops.onednn, "qconv2d_pointwise"):
            # What a bf16 network would run: quantize its bf16 input with the image's own range, and
            # have oneDNN write the conv's output straight back in bf16 (no output scale to calibrate).
            w_int8 = torch.round(w / w_scale[:, None, None, None]).to(torch.int8)
            w_zero = torch.zeros(c, dtype=torch.long)

            def to_uint8(t: torch.Tensor) -> tuple[torch.Tensor, float, int]:
                lo, hi = (float(v) for v in torch.aminmax(t))
                scale = max(hi - lo, 1e-12) / 255
                zero = int(round(-lo / scale))
                return torch.quantize_per_tensor(t.float(), scale, zero, torch.quint8).int_repr(), scale, zero

            _, s0, z0 = to_uint8(x_padded)
            packed = torch.ops.onednn.qconv_prepack(w_int8.contiguous(memory_format=torch.channels_last), w_scale,
                                                    s0, z0, [1, 1], [0, 0], [1, 1], 1, list(x_padded.shape))

            def int8_bf16_io() -> torch.Tensor:
                q, scale, zero = to_uint8(x_padded)
                return torch.ops.onednn.qconv2d_pointwise(q, scale, zero, packed, w_scale, w_zero, conv.bias,
                                                          [1, 1], [0, 0], [1, 1], 1, 1.0, 0, torch.bfloat16,
                                                          "none", [], "")

            contenders["int8 oneDNN, bf16 in/out"] = int8_bf16_io
            outputs["int8 oneDNN, bf16 in/out"] = int8_bf16_io()

    with torch.no_grad():
        times = alternate(contenders, args.repeats, warmup=2)
    gflop = 2 * c * c * 9 * s * s / 1e9
    base = statistics.median(times["fp32 NCHW"])
    print(f"# {machine()}")
    print(f"# conv {c}->{c} 3x3 at {s}x{s}: {gflop:.2f} GFLOP; median of {args.repeats} (min-max)\n")
    print("| kernel | ms | GFLOP/s | speed-up vs fp32 | PSNR vs fp32 (dB) |")
    print("|---|---|---|---|---|")
    for name, samples in times.items():
        med = statistics.median(samples)
        err = f"{psnr(outputs[name].float(), ref, data_range=float(ref.max() - ref.min())):.1f}" if name in outputs else "-"
        print(f"| {name} | {summary(samples)} | {gflop / med:.0f} | {base / med:.2f}x | {err} |")


if __name__ == "__main__":
    main()
