"""dtype="auto" on CPU: bfloat16 only where this CPU runs it faster than float32."""

from __future__ import annotations

import pytest
from deps import dev

from rerankers_plugins.scorers import _device


@pytest.fixture(autouse=True)
def _fresh_choice():
    _device.cpu_has_fast_bf16.cache_clear()
    yield
    _device.cpu_has_fast_bf16.cache_clear()


def _cpu(monkeypatch, flags, speedup=None):
    monkeypatch.setattr(_device, "cpu_flags", lambda: frozenset(flags))

    def probe():
        if speedup is None:
            raise AssertionError("the probe must not run when the flags decide")
        return speedup

    monkeypatch.setattr(_device, "_bf16_matmul_speedup", probe)


def test_amx_picks_bf16_without_probing(monkeypatch):
    torch = dev("torch")
    _cpu(monkeypatch, {"avx512f", "amx_bf16", "avx512_bf16"})
    assert _device.resolve_dtype("auto", "cpu") is torch.bfloat16


def test_no_bf16_instructions_keeps_float32_without_probing(monkeypatch):
    torch = dev("torch")
    _cpu(monkeypatch, {"avx2", "fma"})
    assert _device.resolve_dtype("auto", "cpu") is torch.float32


@pytest.mark.parametrize(("speedup", "expected"), [(0.6, "float32"), (1.1, "float32"), (1.5, "bfloat16")])
def test_avx512_bf16_alone_follows_the_probe(monkeypatch, speedup, expected):
    torch = dev("torch")
    _cpu(monkeypatch, {"avx512f", "avx512_bf16"}, speedup)
    assert _device.resolve_dtype("auto", "cpu") is getattr(torch, expected)
    assert _device.resolve_dtype("float32", "cpu") is torch.float32  # explicit dtypes never probe
