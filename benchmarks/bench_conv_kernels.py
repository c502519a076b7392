"""One residual-block convolution (128->128, 3x3) in each arithmetic the CPU offers, side by side.

The ten residual convs are ~60% of the network's FLOPs, so their kernel speed bounds the stylize
speed-up (issue 5). This compares, on the same weights and input:

* fp32 NCHW (the reference's layout and precision),
* bf16 channels_last (the project's fast path),
* int8 with per-channel weights through PyTorch's ``x86`` quantized engine (VNNI), alone and with
  the quantize/dequantize that the floating-point norms around it would need,

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
