"""``compile=``: compiled transformer blocks score as the eager model does, compile at load and never
inside a request, and fall back to eager, with a warning, where compiling fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from rerankers_plugins import (
    BiEncoderScorer,
    ColBERTScorer,
    ConfigError,
    CrossEncoderScorer,
    PolyEncoderScorer,
    Seq2SeqScorer,
)
from rerankers_plugins.scorers import _compile, _device
from rerankers_plugins.scorers.poly_encoder import build_poly_encoder
from tests.conformance.hub_layouts import build_qwen3_causal
from tests.tiny import build_bi_encoder, build_colbert, build_cross_encoder, build_encoder, build_t5

QUERY = "where do cats sit"
DOCS = [
    "the cat sat on the mat",
    "dogs bark at night",
    "a cat",
    "Paris is a city in France and a capital",
    "x",
]


@pytest.fixture
def cpu(monkeypatch):
    """The CPU's features as ``resolve_compile`` reads them (flags, and a C++ compiler or none)."""

    def set_(flags: set[str], compiler: str | None = "g++") -> None:
        monkeypatch.setattr(_device, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(_compile, "_cxx_compiler", lambda: compiler)
        _device.cpu_has_fast_bf16.cache_clear()

    yield set_
    _device.cpu_has_fast_bf16.cache_clear()


def test_auto_compiles_only_bfloat16_on_a_cpu_fast_at_it(cpu):
    cpu({"avx512f", "amx_bf16"})
    assert _compile.resolve_compile("auto", "cpu", torch.bfloat16)
    assert not _compile.resolve_compile("auto", "cpu", torch.float32)  # float32 is at its ceiling eagerly
    cpu({"avx512f", "amx_bf16"}, compiler=None)  # inductor cannot build its kernels
    assert not _compile.resolve_compile("auto", "cpu", torch.bfloat16)
    cpu({"avx2", "fma"})  # bfloat16 asked for on a CPU that emulates it: compiling gains nothing
    assert not _compile.resolve_compile("auto", "cpu", torch.bfloat16)
    assert _compile.resolve_compile(True, "cpu", torch.float32)
    assert not _compile.resolve_compile(False, "cpu", torch.bfloat16)


@pytest.mark.parametrize("value", ["yes", 1, None, "true"])
def test_a_bad_compile_setting_is_refused_before_loading(value, tmp_path):
    with pytest.raises(ConfigError, match="compile must be 'auto', True or False"):
        CrossEncoderScorer(str(tmp_path / "never-read"), compile=value)


def test_onnx_runtime_refuses_compile_true(tiny_ce_dir):
    with pytest.raises(ConfigError, match="compile=True compiles the torch model"):
        CrossEncoderScorer(str(tiny_ce_dir), runtime="onnx", compile=True)


def test_transformer_blocks_are_the_repeated_layers():
    from transformers import BertConfig, BertModel

    model = BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)
    )
    blocks = _compile.transformer_blocks(model)
    assert blocks == list(model.encoder.layer)


def _builders(tmp: Path):
    def poly() -> PolyEncoderScorer:
        out = tmp / "poly"
        build_poly_encoder(str(build_encoder(tmp / "enc")), codes=4, max_length=64).save_pretrained(out)
        return out

    return {
        "cross-encoder": lambda d: (CrossEncoderScorer, build_cross_encoder(d), {}),
        "causal (Qwen3-Reranker)": lambda d: (
            CrossEncoderScorer,
            build_qwen3_causal(d),
            {"prompt_format": "qwen3"},
        ),
        "bi-encoder": lambda d: (BiEncoderScorer, build_bi_encoder(d), {}),
        "ColBERT": lambda d: (ColBERTScorer, build_colbert(d), {}),
        "seq2seq (MonoT5)": lambda d: (Seq2SeqScorer, build_t5(d), {}),
        "poly-encoder": lambda d: (PolyEncoderScorer, poly(), {}),
    }


@pytest.mark.slow  # compiles six models (5-25 s each on 2 cores)
@pytest.mark.parametrize(
    "kind",
    ["cross-encoder", "causal (Qwen3-Reranker)", "bi-encoder", "ColBERT", "seq2seq (MonoT5)", "poly-encoder"],
)
def test_compiled_blocks_score_as_eager_and_compile_only_at_load(kind, tmp_path):
    cls, path, extra = _builders(tmp_path)[kind](tmp_path / "model")
    eager = cls(str(path), dtype="float32", compile=False, **extra)
    assert not eager.compiled.active and eager.compiled.blocks == 0
    before = counters["stats"]["unique_graphs"]
    compiled = cls(str(path), dtype="float32", compile=True, **extra)
    assert compiled.compiled.active and compiled.compiled.blocks >= 2
    assert compiled.compiled.seconds > 0
    graphs = counters["stats"]["unique_graphs"]
    # every block was compiled (each has a graph of its own), none left to run eagerly
    assert graphs - before >= compiled.compiled.blocks
    # requests of shapes the warm-up never saw: one document, many, long and short
    for query, docs in [(QUERY, DOCS), ("another query", DOCS[:1]), (QUERY * 3, [d * 4 for d in DOCS] * 3)]:
        np.testing.assert_allclose(compiled.score(query, docs), eager.score(query, docs), atol=1e-5)
    assert counters["stats"]["unique_graphs"] == graphs  # nothing was compiled inside a request
    assert compiled.compiled.active


@pytest.mark.slow  # a second process that loads torch and tries to compile (15 s)
def test_a_compile_that_fails_falls_back_to_eager_with_a_warning(tiny_ce_dir, tmp_path):
    """No working C++ compiler for inductor's kernels (in a process of its own: inductor remembers
    the compiler it found)."""
    code = textwrap.dedent(
        f"""
        import json, logging
        logging.basicConfig(level=logging.WARNING)
        from rerankers_plugins import CrossEncoderScorer
        eager = CrossEncoderScorer({str(tiny_ce_dir)!r}, dtype="float32", compile=False)
        scorer = CrossEncoderScorer({str(tiny_ce_dir)!r}, dtype="float32", compile=True)
        print(json.dumps({{
            "active": scorer.compiled.active, "error": scorer.compiled.error,
            "compiled": scorer.score({QUERY!r}, {DOCS!r}), "eager": eager.score({QUERY!r}, {DOCS!r}),
        }}))
        """
    )
    env = dict(
        os.environ,
        CXX=str(tmp_path / "no-such-compiler"),
        TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"),  # nothing compiled before is reused
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["active"] is False
    assert result["error"]
    assert "running them eagerly from now on" in out.stderr
    np.testing.assert_allclose(result["compiled"], result["eager"], atol=1e-6)


@pytest.mark.slow  # compiles two tiny blocks
def test_an_input_the_eager_block_rejects_raises_its_error_and_keeps_compiling():
    layers = torch.nn.ModuleList([torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)])
    model = torch.nn.Sequential(*layers)
    holder = torch.nn.Module()
    holder.layers = layers
    state = _compile.compile_blocks([holder])
    assert state.blocks == 2 and state.active
    graphs = counters["stats"]["unique_graphs"]
    with torch.inference_mode():
        good = torch.randn(3, 8)
        expected = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(2)])
        expected.load_state_dict(model.state_dict())
        torch.testing.assert_close(model(good), expected(good))
        assert counters["stats"]["unique_graphs"] >= graphs + 2  # both blocks ran compiled
        with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
            model(torch.randn(3, 5))
    assert state.active  # a bad input is not a compile failure


@pytest.mark.slow  # compiles a tiny model in bfloat16 and times it both ways
def test_auto_keeps_compiled_blocks_only_where_they_measure_faster(tiny_ce_dir, cpu):
    cpu({"avx512f", "amx_bf16"})  # a CPU fast at bfloat16: dtype and compile "auto" both choose it
    scorer = CrossEncoderScorer(str(tiny_ce_dir))
    assert scorer.dtype == torch.bfloat16
    state = scorer.compiled
    assert state.blocks == 2 and state.speedup is not None
    assert state.active == (state.speedup >= _compile.MIN_SPEEDUP)
    if not state.active:
        assert "measured" in (state.error or "")
    eager = CrossEncoderScorer(str(tiny_ce_dir), compile=False)
    np.testing.assert_allclose(scorer.score(QUERY, DOCS), eager.score(QUERY, DOCS), atol=2e-2)


@pytest.mark.slow  # compiles a tiny model and breaks it
def test_a_failure_while_auto_times_the_blocks_leaves_them_eager(tiny_ce_dir):
    scorer = CrossEncoderScorer(str(tiny_ce_dir), dtype="float32", compile=True)
    state = scorer.compiled
    calls = {"n": 0}

    def run() -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the first timed compiled run fails as a broken kernel would
            state.fall_back(RuntimeError("kernel failed"))

    state.keep_if_faster(run)
    assert not state.active
    assert state.error == "RuntimeError: kernel failed"  # not overwritten by a timing verdict
    assert state.speedup is None
