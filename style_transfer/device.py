"""Device and precision choices, made once at run time."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

DEVICES = ("auto", "cpu", "cuda")
# auto: bf16 where a CPU runs it natively (AVX512-BF16/AMX), fp32 on other CPUs; on GPUs fp16 for
# inference and bf16 for training (see resolve_precision).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu. Asking for cuda without one is an error."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; valid: {', '.join(DEVICES)} (or cuda:N)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but no CUDA GPU is available (use --device cpu or auto)")
    return torch.device(name)


def check_precision(precision: str) -> str:
    """Validate a precision name."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    return precision


def resolve_precision(precision: str, device: torch.device, training: bool = False) -> str:
    """'auto' -> the fastest accurate-enough precision of ``device``; others are returned as given.

    On a GPU, inference gets fp16 and training bf16 (fp16 on GPUs without bf16). fp16 has 3 more
    mantissa bits, and the stylize network's activations stay far inside its range: on an H100 the
    compiled network ran faster in fp16 than in bf16 and closer to the fp32 reference
    (docs/benchmarks.md, "GPU: one NVIDIA H100": "Which compile option and precision"). A network that
    does overflow is caught per image (Stylizer.run). Training keeps bf16: the VGG loss runs on 0..255
    Caffe-scale features whose Gram matrices would overflow fp16's 65504.
    """
    if check_precision(precision) != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if training and torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def dtype_of(precision: str, device: torch.device) -> torch.dtype:
    """The torch dtype of a precision name on ``device``."""
    return _DTYPES[resolve_precision(precision, device)]


@contextlib.contextmanager
def conv_autotune(device: torch.device) -> Iterator[None]:
    """cuDNN's benchmark mode on CUDA (times the conv algorithms once per input shape and keeps the
    fastest), restored afterwards; a no-op elsewhere. The fast inference path runs under it. On an H200
    it made the eager fast path a little faster (docs/benchmarks.md, "GPU": "Eager"), a gain that is
    free after the first image of each shape, and the compiled GPU figures were measured with it on.
    Training sets it for the whole run (train.py)."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to bf16/fp16 (or nothing for fp32)."""
    dtype = dtype_of(precision, device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# glibc's mallopt parameters (malloc.h): the size above which freed memory at the top of the heap goes
# back to the OS, and how many blocks may be mmap'ed.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Make glibc malloc keep the memory the network frees on a CPU, for its next step or image; True if
    it applied. For the whole process, from now on: training, `stylize` and the CPU server call it.

    A training step, or an image through the network, allocates and frees large activation buffers layer
    after layer. glibc serves each block above its mmap threshold (at most 32 MiB) with a fresh mmap and
    unmaps it when freed, and trims the heap's top likewise, so every step faults all of its activations
    into memory again: 555k minor page faults a training step, half of the CPU time in the kernel.
    Served from the heap, never trimmed, the pages stay mapped: 1.32x a training step and 1.48x a
    1024 px image on 2 cores (benchmarks/bench_allocator.py, docs/benchmarks.md). The price: the process
    keeps its peak memory (the server has STYLE_TRANSFER_KEEP_FREED_MEMORY=false to give it back). Not on
    other C libraries (musl, macOS), where mallopt is absent or means something else."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # mallopt returns 1 on success; -1 disables trimming (mallopt(3)); 0 mmap'ed blocks leaves the heap
    # (and mmap only where the heap cannot grow, which glibc still falls back to).
    return libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, -1) == 1


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation failed: CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))
