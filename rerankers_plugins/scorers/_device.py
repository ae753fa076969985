"""Where and in what precision a local model runs: the device (CUDA when present), the dtype
(``"auto"``: bfloat16 only where this hardware is fast at it, decided from the CPU's features and,
where they are not decisive, a one-off probe), and the padded-token budget of a batch.
"""

from __future__ import annotations

import functools
import logging
import statistics
import time
from pathlib import Path
from typing import Any, Literal

from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError

__all__ = [
    "BF16_PROBE_MARGIN",
    "CPU_BATCH_TOKENS_PER_THREAD",
    "DTYPES",
    "DTypeName",
    "cpu_flags",
    "cpu_has_fast_bf16",
    "resolve_device",
    "resolve_dtype",
    "resolve_max_batch_tokens",
]

logger = logging.getLogger(__name__)

DTypeName = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (``/proc/cpuinfo``, Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def _bf16_matmul_speedup() -> float:
    """float32 time / bfloat16 time of a cross-encoder-sized linear layer (512 tokens, 384 -> 1536),
    median of 5 after a warm-up, on the current thread count."""
    torch = require("torch", "cross-encoder")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 384, generator=gen)
    w = torch.randn(1536, 384, generator=gen)
    times: dict[Any, float] = {}
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            xd, wd = x.to(dtype), w.to(dtype)
            torch.nn.functional.linear(xd, wd)
            runs = []
            for _ in range(5):
                t0 = time.perf_counter()
                torch.nn.functional.linear(xd, wd)
                runs.append(time.perf_counter() - t0)
            times[dtype] = statistics.median(runs)
    return times[torch.float32] / max(times[torch.bfloat16], 1e-9)


#: bfloat16 must beat float32 by this factor in the probe to be chosen without AMX
BF16_PROBE_MARGIN = 1.25


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True where bfloat16 matrix products run faster than float32 on this CPU.

    AMX-BF16 (Sapphire Rapids and later, when the hypervisor exposes it) decides at once: its tile
    units run bf16 several times faster than float32. AVX512-BF16 alone is not enough: measured on
    two such virtual machines, bf16 linear layers ran 1.5x faster on one and 0.6x (slower) on the
    other. So on those CPUs a ~50 ms probe times one linear layer in both dtypes, once per process,
    and bf16 is chosen only if it is at least ``BF16_PROBE_MARGIN`` x faster. Without either flag
    PyTorch emulates bf16 and float32 is kept. The choice is logged at INFO.
    """
    flags = cpu_flags()
    if "amx_bf16" in flags:
        logger.info("dtype='auto' on CPU: AMX-BF16 present, using bfloat16")
        return True
    if "avx512_bf16" not in flags:
        return False
    speedup = _bf16_matmul_speedup()
    chosen = speedup >= BF16_PROBE_MARGIN
    logger.info(
        "dtype='auto' on CPU: AVX512-BF16 without AMX; bf16 matmul measured %.2fx float32, using %s",
        speedup,
        "bfloat16" if chosen else "float32",
    )
    return chosen


def resolve_device(device: str | None) -> str:
    """``None`` -> ``"cuda"`` when a CUDA device is present, else ``"cpu"``; explicit strings are checked."""
    torch = require("torch", "cross-encoder")
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a valid torch device: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was requested but no CUDA device is available")
    return str(dev)


def resolve_dtype(dtype: str, device: str) -> Any:
    """Map a dtype name to a ``torch.dtype`` for ``device``.

    ``"auto"`` picks bfloat16 where the hardware runs it fast (CUDA devices with bf16 support; CPUs
    with AMX-BF16, or AVX512-BF16 where a one-off probe finds bf16 faster: :func:`cpu_has_fast_bf16`)
    and float32 everywhere else. float16 on CPU is refused: PyTorch's CPU
    float16 kernels are slow and lose precision.
    """
    torch = require("torch", "cross-encoder")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    kind = torch.device(device).type
    if dtype == "auto":
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if kind == "cpu" and cpu_has_fast_bf16():
            return torch.bfloat16
        return torch.float32
    if dtype == "float16" and kind == "cpu":
        raise ConfigError('dtype="float16" is not supported on CPU; use "bfloat16" or "float32"')
    return getattr(torch, dtype)


#: padded tokens per forward pass per CPU thread under ``max_batch_tokens="auto"``
CPU_BATCH_TOKENS_PER_THREAD = 1024


def resolve_max_batch_tokens(value: int | str | None, device: str, *, threads: int = 1) -> int | None:
    """``"auto"`` -> a cap on padded tokens per batch chosen by device and thread count; ints are checked.

    On CPU the cap is ``CPU_BATCH_TOKENS_PER_THREAD`` x threads (at most 8192): one thread runs
    small batches fastest (less memory traffic per token; measured on 100 SciFact pairs), while
    each added thread needs work of its own or it idles (a 1024-token batch at 512 tokens a pair
    holds two pairs, too few rows for two threads to split the matrix products well). Accelerators
    get no cap. The measured optimum was the same for float32 and int8; bfloat16 follows the same rule.

        >>> resolve_max_batch_tokens("auto", "cpu", threads=2)
        2048
        >>> resolve_max_batch_tokens("auto", "cuda") is None
        True
    """
    if value == "auto":
        if device != "cpu":
            return None
        return min(CPU_BATCH_TOKENS_PER_THREAD * max(1, int(threads)), 8192)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"max_batch_tokens must be a positive int, 'auto' or None, got {value!r}")
    return value
