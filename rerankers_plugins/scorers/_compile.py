"""Compiled transformer blocks for the local scorers: ``compile="auto" | True | False``.

A transformer spends its time in a stack of identical blocks (BERT's ``encoder.layer``, Qwen's
``model.layers``, T5's encoder and decoder ``block``). Between their matrix products, eager PyTorch
runs each bias add, activation, layer norm, residual add and dtype conversion as its own pass over
memory. :func:`compile_blocks` compiles each block with inductor (``torch.compile``, dynamic shapes:
the element-wise work between the products fused into few vectorised loops; the weights stay graph
inputs, so the matrix products are the same oneDNN / MKL calls as eagerly). Each block is compiled
on its own (its own code object, so no block shares Dynamo's per-code recompile limit with another:
a Qwen3 decoder layer's ``layer_idx`` alone makes its graph differ from its neighbours'); identical
graphs are compiled once by inductor, which keeps what it compiled on disk (its cache directory,
``TORCHINDUCTOR_CACHE_DIR``), so a later process loads more of it instead of compiling again.

The compile runs at load (:meth:`CompiledBlocks.warm`: a batch of one and of two rows, the two
shapes inductor specialises), never inside a request; under ``"auto"`` a full batch is then timed
compiled and eager, and the compiled blocks are kept only if they are at least
:data:`MIN_SPEEDUP` x faster on this machine (:meth:`CompiledBlocks.keep_if_faster`). A block that fails to compile or to run
compiled is run eagerly instead, once and for all, with a warning naming the error; an input the
eager model rejects too raises the eager model's error.

``"auto"`` compiles where it can win, and keeps the compiled blocks where they measure faster at
load: on a CPU computing in bfloat16 because the CPU is fast at it (AMX-BF16, or AVX512-BF16 where the probe of
:func:`~rerankers_plugins.scorers._device.cpu_has_fast_bf16` chose it), on Linux with a C++ compiler
for inductor's kernels. There the eager path leaves the bfloat16 matrix units idle between the
products; in float32, compiled blocks measured no gain per call on the cross-encoder workload (the
fused element-wise work cost what the separate operators did: docs/benchmarks.md), so the seconds
of compiling at load are not spent by default (``compile=True`` spends them).
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.scorers._device import cpu_has_fast_bf16

__all__ = [
    "CompileSetting",
    "CompiledBlocks",
    "check_compile",
    "compile_blocks",
    "resolve_compile",
    "transformer_blocks",
]

logger = logging.getLogger(__name__)

CompileSetting = bool | Literal["auto"]

#: a block list is compiled when it holds at least this share of the largest block list's parameters
#: (T5's encoder and decoder stacks both; not a small list beside the main stack)
MIN_BLOCK_SHARE = 0.25

#: under ``compile="auto"`` the compiled blocks are kept only if a full batch runs this much faster
MIN_SPEEDUP = 1.05


def _cxx_compiler() -> str | None:
    """The C++ compiler inductor would use (``CXX``, else ``g++`` / ``c++`` / ``clang++``), if any."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def check_compile(value: Any) -> CompileSetting:
    """``compile=`` checked: ``"auto"``, True or False."""
    if not (value is True or value is False or (isinstance(value, str) and value == "auto")):
        raise ConfigError(f"compile must be 'auto', True or False, got {value!r}")
    return value  # type: ignore[return-value]


def resolve_compile(value: Any, device: str, dtype: Any) -> bool:
    """``compile=`` -> whether this scorer compiles its blocks (see the module docstring).

    >>> import torch
    >>> resolve_compile("auto", "cpu", torch.float32)
    False
    >>> resolve_compile(False, "cpu", torch.bfloat16)
    False
    """
    if check_compile(value) != "auto":
        return bool(value)
    torch = require("torch", "cross-encoder")
    if torch.device(device).type != "cpu" or dtype != torch.bfloat16:
        return False
    if not sys.platform.startswith("linux") or not cpu_has_fast_bf16():
        return False
    if _cxx_compiler() is None:
        logger.info("compile='auto': no C++ compiler (CXX, g++, c++, clang++) for inductor; running eagerly")
        return False
    return True


def transformer_blocks(model: Any) -> list[Any]:
    """The blocks of ``model``'s transformer stacks: the outermost ``ModuleList`` s of two or more
    modules of one class, the largest (by parameters) and any holding at least
    :data:`MIN_BLOCK_SHARE` of it; each of their modules, in order."""
    torch = require("torch", "cross-encoder")
    lists: list[tuple[int, Any]] = []
    taken: set[int] = set()
    for module in model.modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) < 2:
            continue
        if len({type(m) for m in module}) != 1 or id(module) in taken:
            continue
        taken.update(id(sub) for sub in module.modules())
        lists.append((sum(p.numel() for p in module.parameters()), module))
    largest = max((n for n, _ in lists), default=0)
    if largest == 0:
        return []
    return [block for n, module in lists if n >= MIN_BLOCK_SHARE * largest for block in module]


@dataclass
class CompiledBlocks:
    """The compiled blocks of one scorer's model(s): how many, whether they still run compiled, the
    seconds their compile at load took, and the error that sent them back to eager (if one did)."""

    blocks: int = 0
    active: bool = False
    seconds: float = 0.0
    error: str | None = None
    #: eager time / compiled time of a full batch, where ``compile="auto"`` measured it at load
    speedup: float | None = None
    #: set while keep_if_faster times the eager blocks
    _timing_eager: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fall_back(self, exc: BaseException) -> None:
        with self._lock:
            if not self.active:
                return
            self.active = False
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            self.error = f"{type(exc).__name__}: {' '.join(lines[:2])[:300]}"
        logger.warning(
            "compiled transformer blocks failed (%s); running them eagerly from now on (same scores)",
            self.error,
        )

    def warm(self, run: Callable[[], object]) -> None:
        """Compile now (``run``: the scorer's warm-up batches), timing it; a failure falls back."""
        if not self.active:
            return
        t0 = time.perf_counter()
        run()
        self.seconds = time.perf_counter() - t0
        logger.info(
            "compiled %d transformer blocks in %.1f s at load (%s)",
            self.blocks,
            self.seconds,
            "compiled" if self.active else f"eager: {self.error}",
        )

    def keep_if_faster(self, run: Callable[[], object], *, rounds: int = 3) -> None:
        """Time ``run`` (a full batch) compiled and eager, alternately, ``rounds`` times; keep the
        compiled blocks only if their median is at least :data:`MIN_SPEEDUP` x faster."""
        if not self.active:
            return
        compiled: list[float] = []
        eager: list[float] = []
        try:
            run()  # a batch this size may compile once more (a shape the warm-up did not specialise)
            for _ in range(rounds):
                for times, skip in ((compiled, False), (eager, True)):
                    self._timing_eager = skip
                    t0 = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - t0)
                    if not self.active:  # the compiled blocks failed and fell back: they stay eager
                        return
        finally:
            self._timing_eager = False
        self.speedup = statistics.median(eager) / max(statistics.median(compiled), 1e-9)
        if self.speedup < MIN_SPEEDUP:
            self.active = False
            self.error = f"measured {self.speedup:.2f}x eager at load, below {MIN_SPEEDUP}x"
        logger.info(
            "compile='auto': compiled blocks measured %.2fx eager on a full batch; %s",
            self.speedup,
            "keeping them" if self.active else "running eagerly",
        )


def _guarded(block: Any, compiled: Callable[..., Any], state: CompiledBlocks) -> Callable[..., Any]:
    eager = block._call_impl

    def call(*args: Any, **kwargs: Any) -> Any:
        if state.active and not state._timing_eager:
            try:
                return compiled(*args, **kwargs)
            except Exception as exc:
                out = eager(*args, **kwargs)  # the eager block's own error, if the input is at fault
                state.fall_back(exc)
                return out
        return eager(*args, **kwargs)

    return call


def _own_code(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with a code object of its own. Dynamo keeps compiled graphs, and counts
    recompiles against a limit (8), per code object; blocks' forwards are often one shared wrapper
    (transformers wraps every layer's forward in the same gradient-checkpointing function), and
    ``Module._call_impl`` is one for every module, so without a copy per block the blocks (and
    models) of one process would spend one limit together and the later ones would silently run
    eagerly: 28 Qwen3 decoder layers, each reading its own ``layer_idx``, are 28 graphs."""
    code = function.__code__.replace(co_name=function.__code__.co_name)
    copy = types.FunctionType(
        code, function.__globals__, function.__name__, function.__defaults__, function.__closure__
    )
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__dict__.update(function.__dict__)
    copy.__qualname__ = function.__qualname__
    return copy


def compile_blocks(models: Iterable[Any]) -> CompiledBlocks:
    """Compile the transformer blocks of ``models`` in place (lazily: the first call compiles; see
    :meth:`CompiledBlocks.warm`). Models with no block list are left as they are."""
    torch = require("torch", "cross-encoder")
    state = CompiledBlocks()
    for model in models:
        for block in transformer_blocks(model):
            forward = _own_code(type(block).forward)
            compiled = torch.compile(types.MethodType(forward, block), dynamic=True)
            # stored where Module.compile() stores its compiled call; falls back to eager on failure
            block._compiled_call_impl = _guarded(block, compiled, state)
            state.blocks += 1
    state.active = state.blocks > 0
    return state
