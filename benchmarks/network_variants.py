"""Where the GPU time of one network call goes, and which compile variant is fastest (issue 18's goal:
1024x1024, batch 1, <= 1.5 ms on an H100/H200).

The server's network (``fast.optimize``: exact rewrites, fp16, channels_last) timed with CUDA events at
batch 1 and 8, eager and under ``torch.compile`` with static shapes (the server's ``COMPILE``), with and
without CUDA graphs (``mode="reduce-overhead"``), channels_last on and off; then a ``torch.profiler``
table of the compiled call's kernels, grouped by kind (convolution, norm, padding, elementwise, copy), so
the next step aims at what dominates. One process, the variants timed back to back on one input.

    python benchmarks/network_variants.py --size 1024 --json variants.json      # on a GPU
    python benchmarks/network_variants.py --device cpu --size 128 --repeats 3   # a dry run here
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import time_calls  # noqa: E402
from style_transfer.checkpoint import load_model  # noqa: E402
from style_transfer.device import conv_autotune, dtype_of, resolve_device  # noqa: E402
from style_transfer.fast import optimize  # noqa: E402

# Kernel kinds by name. Triton's fused kernels come first: their names list every op they fused (a
# "convolution" among them when a conv's bias or epilogue was fused), so they are one kind of their own.
KINDS = (("fused (Triton)", ("triton_",)), ("convolution (cuDNN)", ("xmma", "cutlass", "implicit_gemm", "cudnn", "conv")),
         ("norm", ("norm", "welford", "reduce")), ("padding", ("pad",)),
         ("copy", ("copy", "memcpy", "memset", "nchw", "nhwc", "transpose")))


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(key in low for key in keys):
            return kind
    return "elementwise/other"


class PaddedInput(nn.Module):
    """The fast network with its input conv widened from 3 to ``channels`` input channels, the new weights
    zero and the input padded with zero channels: the same function, exactly. With 3 channels cuDNN runs
    the 9x9 input conv in a kernel without tensor cores (0.39 ms of the compiled 2.29 ms at 1024 px on an
    H200, 2026-12-04); 8 fp16 channels make 16-byte pixels, which its tensor-core kernels take."""

    def __init__(self, fast: nn.Module, channels: int = 8) -> None:
        super().__init__()
        self.fast = copy.deepcopy(fast)
        conv = self.fast.net.head[1]
        wide = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride).to(conv.weight)
        with torch.no_grad():
            wide.weight.zero_()
            wide.weight[:, :conv.in_channels] = conv.weight
            wide.bias.copy_(conv.bias)
        if self.fast.channels_last:
            wide = wide.to(memory_format=torch.channels_last)
        self.fast.net.head[1] = wide
        self.extra = channels - conv.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fast(F.pad(x, (0, 0, 0, 0, 0, self.extra)))


def time_ms(fn, x: torch.Tensor, repeats: int, warmup: int) -> float:
    """Median ms per call (common.time_calls): CUDA events on a GPU, the wall clock on the CPU."""
    with torch.inference_mode():
        times = time_calls(lambda: fn(x), x.device, repeats, warmup)
    return times["gpu_ms" if x.is_cuda else "wall_ms"]["median"]


def profile(fn, x: torch.Tensor, calls: int) -> list[dict]:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if x.is_cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.inference_mode(), torch.profiler.profile(activities=activities) as prof:
        for _ in range(calls):
            fn(x)
        if x.is_cuda:
            torch.cuda.synchronize()
    kernels: dict[str, tuple[float, int]] = {}
    for event in prof.key_averages():
        device_us = getattr(event, "device_time_total", 0) or getattr(event, "cuda_time_total", 0)
        if not x.is_cuda or not device_us or event.key.startswith(("aten::", "cuda", "Torch", "Compiled", "##")):
            continue
        # A kernel can be listed twice, as the kernel and as the CPU-side event that launched it under the
        # same name (Triton's launchers), each with the kernel's device time: count it once.
        if event.key not in kernels or device_us > kernels[event.key][0]:
            kernels[event.key] = (device_us, event.count)
    rows = [{"kernel": key[:110], "kind": kind_of(key), "us_per_call": us / calls, "launches_per_call": count / calls}
            for key, (us, count) in kernels.items()]
    return sorted(rows, key=lambda r: -r["us_per_call"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="weights/starry-night.safetensors")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model, info = load_model(args.model, device="cpu")
    precision = "fp16" if device.type == "cuda" else "fp32"
    results: dict = {"model": args.model, "norm": info.norm, "size": args.size, "device": str(device),
                     "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
                     "torch": torch.__version__, "precision": precision, "variants": []}
    dynamic = device.type != "cuda"
    with conv_autotune(device):
        for channels_last in (True, False):
            net = optimize(model, device, dtype_of(precision, device), channels_last=channels_last)
            variants = [("eager", net)]
            if channels_last:
                padded = PaddedInput(net)
                with torch.inference_mode():  # exact in real arithmetic: only rounding may differ
                    probe = torch.rand(1, 3, 64, 64, device=device)
                    diff = (padded(probe) - net(probe)).abs().max().item()
                print(f"input padded to 8 channels: max difference to the network {diff:.2e}", flush=True)
                results["padded_input_max_difference"] = diff
                variants += [("compiled", torch.compile(net, dynamic=dynamic)),
                             ("compiled, CUDA graphs", torch.compile(net, dynamic=dynamic, mode="reduce-overhead")),
                             ("eager, input 8 channels", padded),
                             ("compiled, input 8 channels", torch.compile(padded, dynamic=dynamic))]
            for name, fn in variants:
                if "CUDA graphs" in name and device.type != "cuda":
                    continue
                # Batch 8 compiles for 30 s more and was slower per image than batch 1 (docs/benchmarks.md):
                # measured for the server's variants only.
                for batch in (1, 8) if "8 channels" not in name else (1,):
                    x = torch.rand(batch, 3, args.size, args.size, device=device)
                    t0 = time.perf_counter()
                    try:
                        with torch.inference_mode():
                            fn(x)
                        first_s = time.perf_counter() - t0
                        ms = time_ms(fn, x, args.repeats, args.warmup)
                    except Exception as exc:  # a variant that fails is recorded, the rest still run
                        print(f"{name} cl={channels_last} batch {batch}: failed: {exc!r}"[:300], flush=True)
                        continue
                    row = {"variant": name, "channels_last": channels_last, "batch": batch, "ms": ms,
                           "ms_per_image": ms / batch, "first_call_s": first_s}
                    results["variants"].append(row)
                    print(f"{name:24s} channels_last={channels_last!s:5s} batch {batch}: {ms:8.3f} ms "
                          f"({ms / batch:.3f} per image; first call {first_s:.1f} s)", flush=True)
                    if name.startswith("compiled") and "CUDA graphs" not in name and batch == 1:
                        rows = profile(fn, x, 20)
                        by_kind: dict[str, float] = defaultdict(float)
                        for r in rows:
                            by_kind[r["kind"]] += r["us_per_call"]
                        results.setdefault("profiles", {})[name] = {"by_kind_us": dict(by_kind), "kernels": rows[:25]}
                        print(f"{name}, batch 1, GPU us per call by kind:",
                              {k: round(v, 1) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])})
                        for r in rows[:25]:
                            print(f"  {r['us_per_call']:8.1f} us  x{r['launches_per_call']:.0f}  {r['kind']:18s}"
                                  f" {r['kernel']}")
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
