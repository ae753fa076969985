"""Every scorer option is reachable from both adapters' conveniences, with the scorer's default,
and what a user passes arrives at the scorer as given."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path

import pytest

from rerankers_plugins import ConfigError, DocumentTemplate
from rerankers_plugins._params import docstring_args
from rerankers_plugins.integrations import langchain as lc
from rerankers_plugins.integrations import llama_index as li
from rerankers_plugins.registry import BACKENDS, load
from rerankers_plugins.scorers._hf import LoadOptions
from rerankers_plugins.scorers.base import BaseScorer

KINDS = sorted(k for k, b in BACKENDS.items() if b.convenience)
ADAPTERS = {"langchain": (lc, lc.RerankCompressor), "llama_index": (li, li.RerankPostprocessor)}
#: the scorers that load a local checkpoint take LoadOptions' fields as keywords (``**load``)
LOCAL = {"cross-encoder", "bi-encoder", "colbert", "poly-encoder", "seq2seq"}


def constructor(kind: str) -> dict[str, object]:
    """What a user can pass to the scorer, read from its signature: the named parameters and
    their defaults, plus LoadOptions' fields for the local scorers."""
    cls = load(BACKENDS[kind].target)
    params = inspect.signature(cls.__init__).parameters
    out: dict[str, object] = {
        n: p.default
        for n, p in params.items()
        if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    if kind in LOCAL:
        assert "load" in params and params["load"].kind is inspect.Parameter.VAR_KEYWORD
        out.update({f.name: f.default for f in dataclasses.fields(LoadOptions)})
    return out


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
@pytest.mark.parametrize("kind", KINDS)
def test_every_option_is_a_field_with_the_scorers_default(kind: str, adapter: str) -> None:
    module, base = ADAPTERS[adapter]
    convenience = getattr(module, BACKENDS[kind].convenience or "")
    fields = {n: f for n, f in convenience.model_fields.items() if n not in base.model_fields}
    params = constructor(kind)
    assert set(fields) == set(params), f"{convenience.__name__}: {set(fields) ^ set(params)}"
    for name, default in params.items():
        field = fields[name]
        if default is inspect.Parameter.empty:
            assert field.is_required(), f"{convenience.__name__}.{name} should be required"
        else:
            assert field.default == default, f"{convenience.__name__}.{name}"
        assert field.description, f"{convenience.__name__}.{name} has no description"


def test_the_defaults_that_had_drifted_now_agree() -> None:
    # Seq2SeqRerank.batch_size was 32 against the scorer's 16; ColBERTRerank had no normalize,
    # Seq2SeqRerank no template, CrossEncoderRerank no max_batch_tokens
    assert lc.Seq2SeqRerank.model_fields["batch_size"].default == 16
    assert li.Seq2SeqRerank.model_fields["batch_size"].default == 16
    assert li.ColBERTRerank.model_fields["normalize"].default is True
    assert "template" in lc.Seq2SeqRerank.model_fields
    assert lc.CrossEncoderRerank.model_fields["max_batch_tokens"].default == "auto"


@pytest.mark.parametrize("kind", sorted(BACKENDS))
def test_every_option_is_documented_in_its_scorers_docstring(kind: str) -> None:
    # the help users see (adapter field descriptions) is the scorer's own Args: entry, so an
    # undocumented parameter shows up here, not as an adapter that fails to import
    cls = load(BACKENDS[kind].target)
    documented = set(docstring_args(cls)) | (set(docstring_args(LoadOptions)) if kind in LOCAL else set())
    missing = set(constructor(kind)) - documented
    assert not missing, f"{cls.__name__}: no Args: entry for {sorted(missing)}"


def test_help_reads_the_docstring_and_follows_as_for() -> None:
    from rerankers_plugins.integrations.langchain import ColBERTRerank, PolyEncoderRerank

    # ColBERT documents its own max_length; the poly-encoder's device is "as for CrossEncoderScorer"
    assert "ColBERT" not in ColBERTRerank.model_fields["max_length"].description
    assert "[CLS]" in ColBERTRerank.model_fields["max_length"].description
    assert PolyEncoderRerank.model_fields["device"].description.startswith("None picks CUDA")
    assert "Hub branch" in PolyEncoderRerank.model_fields["revision"].description


def test_secrets_and_objects_are_decided_by_their_types() -> None:
    from rerankers_plugins.integrations.langchain import CohereRerank, RemoteRerank

    fields = CohereRerank.model_fields
    # typed Secret / a URL that may carry credentials: excluded from dumps and never shown
    assert fields["api_key"].exclude and not fields["api_key"].repr
    assert RemoteRerank.model_fields["base_url"].exclude and not RemoteRerank.model_fields["base_url"].repr
    # typed as objects (a client, a RetryPolicy): passed through, never dumped, still shown
    for name in ("client", "async_client", "retry"):
        assert fields[name].exclude and fields[name].repr, name
    # plain settings are dumped
    assert not fields["timeout"].exclude


def _given(convenience: type, options: dict[str, object], *args: object) -> dict[str, object]:
    """The options the built scorer received: its constructor arguments, or (for the LLM
    rerankers, built from an object and not from settings) the attributes it keeps them in."""
    scorer = convenience(*args, **options).scorer
    if isinstance(scorer, BaseScorer):
        return scorer.init_args()[1]
    return {k: getattr(scorer, k) for k in options}


REMOTE = {
    "protocol": "v1",
    "path": "/rerank",
    "model": "m",
    "timeout": 3.5,
    "deadline": 9.0,
    "batch_size": 7,
    "max_concurrency": 2,
    "on_error": "keep_order",
    "truncate": False,
}


def _llm(messages: object) -> str:
    return "[1] > [2]"


LLM = {
    "llm-listwise": {
        "window": 6,
        "step": 3,
        "max_words": 50,
        "system_prompt": "Rank for {query}.",
        "prompt": "{num} passages:\n{passages}\nQuery: {query}",
        "passage_template": "<{index}> {passage}",
        "passage_separator": "\n--\n",
        "answer_format": "choice_select",
        "name": "x",
        "max_tokens": 5000,
        "document_template": DocumentTemplate("{title}: {text}"),
    },
    "llm-pointwise": {
        "mode": "grade",
        "max_words": 40,
        "max_concurrency": 2,
        "unparsable_score": 0.5,
        "system_prompt": None,
        "prompt": "Grade {passage} for {query}, 0-10.",
        "name": "y",
        "max_tokens": 6000,
        "document_template": DocumentTemplate("{title}: {text}"),
    },
    "llm-pairwise": {
        "compare_top": 4,
        "both_orders": False,
        "max_words": 30,
        "system_prompt": "Compare for {query}.",
        "prompt": "{query}? A: {passage_a} B: {passage_b}",
        "name": "z",
        "max_tokens": 7000,
        "document_template": DocumentTemplate("{title}: {text}"),
    },
}


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_remote_options_arrive_at_the_scorer(adapter: str) -> None:
    module, _ = ADAPTERS[adapter]
    assert _given(module.RemoteRerank, REMOTE, "http://127.0.0.1:9") == REMOTE


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
@pytest.mark.parametrize("kind", sorted(LLM))
def test_llm_options_arrive_at_the_scorer(kind: str, adapter: str) -> None:
    module, _ = ADAPTERS[adapter]
    convenience = getattr(module, BACKENDS[kind].convenience or "")
    assert _given(convenience, LLM[kind], _llm) == LLM[kind]
    # and every option of those scorers is exercised here, so a new one cannot go untested
    assert set(LLM[kind]) == set(constructor(kind)) - {"llm"}


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_cross_encoder_options_arrive_at_the_scorer(adapter: str, tiny_ce_dir: Path) -> None:
    module, _ = ADAPTERS[adapter]
    options = {
        "max_length": 64,
        "batch_size": 3,
        "dtype": "float32",
        "activation": None,
        "max_batch_tokens": 256,
        "warmup": False,
        "local_files_only": True,
        "model_kwargs": {"attn_implementation": "eager"},
    }
    got = _given(module.CrossEncoderRerank, options, str(tiny_ce_dir))
    assert got == options
    # activation=None is passed on (raw logits), not taken for "unset"
    assert (
        module.CrossEncoderRerank(str(tiny_ce_dir), activation=None, warmup=False).scorer.scale.name
        == "LOGIT"
    )


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_a_renamed_option_still_works_with_a_warning(adapter: str, tiny_ce_dir: Path) -> None:
    module, _ = ADAPTERS[adapter]
    with pytest.warns(FutureWarning, match=r"doc_length=\.\.\.\) is now max_length="):
        built = module.ColBERTRerank(str(tiny_ce_dir), doc_length=12, dtype="float32")
    assert built.max_length == 12
    assert built.scorer.max_length == 12
    with pytest.raises(ConfigError, match="pass max_length= only"):
        module.ColBERTRerank(str(tiny_ce_dir), doc_length=12, max_length=12)


def test_renamed_scorer_options_warn_and_refuse_both(tiny_ce_dir: Path) -> None:
    from rerankers_plugins.scorers.colbert import ColBERTScorer

    with pytest.warns(FutureWarning, match="ColBERTScorer"):
        scorer = ColBERTScorer(str(tiny_ce_dir), doc_length=16, dtype="float32")
    assert scorer.max_length == 16
    # the scorer remembers the option under today's name: its copy neither warns nor differs
    assert scorer.init_args()[1] == {"max_length": 16, "dtype": "float32"}
    with pytest.raises(ConfigError, match="pass max_length= only"):
        ColBERTScorer(str(tiny_ce_dir), doc_length=16, max_length=16)


def test_types_come_from_the_signature() -> None:
    # the field's type is the constructor's: a value the scorer would refuse is refused by pydantic
    hints = typing.get_type_hints(load(BACKENDS["colbert"].target).__init__)
    assert lc.ColBERTRerank.model_fields["cache_dtype"].annotation == hints["cache_dtype"]
