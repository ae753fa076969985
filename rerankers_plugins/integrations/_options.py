"""The named conveniences of both adapters (``CrossEncoderRerank``, ``CohereRerank``, ...): their
fields, derived from the scorers' constructors (never copied by hand), and how they build a scorer.

The field mixins are plain pydantic models (both frameworks' bases are pydantic v2 models); each
adapter combines them with its own convenience base, so a convenience is declared once for both.
"""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, create_model

from rerankers_plugins._secret import Secret
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.integrations._base import RerankAdapter, peer_options
from rerankers_plugins.pipeline.leaves import ScorerLike
from rerankers_plugins.registry import BACKENDS, load

__all__ = [
    "OPTION_HELP",
    "ConvenienceAdapter",
    "build_scorer",
    "conveniences",
    "option_fields",
    "positional_model",
]


def positional_model(
    cls: type[Any], kind: str, args: tuple[Any, ...], data: dict[str, Any]
) -> dict[str, Any]:
    """A convenience's one positional argument is its backend's first argument (``model``, ``llm``,
    ``base_url``), as for the scorers: ``BiEncoderRerank("minilm")``."""
    if not args:
        return data
    positional = BACKENDS[kind].positional
    if len(args) > 1 or positional is None:
        raise ConfigError(
            f"{cls.__name__} takes at most one positional argument ({positional or 'none'}); pass the rest by name"
        )
    if positional in data:
        raise ConfigError(f"{cls.__name__}: {positional} given both positionally and as {positional}=")
    return {positional: args[0], **data}


class ConvenienceAdapter(RerankAdapter):
    """An adapter whose scorer is built from its own fields: the options of the registry's
    ``kind`` backend (:func:`option_fields`). Those options built the model, so they are fixed once
    it is built: assigning one (or ``scorer``) is a ConfigError saying to build a new one."""

    kind: ClassVar[str]
    scorer: ScorerLike = Field(default=None, description="Built from the fields below.", exclude=True)  # type: ignore[assignment]

    def __init__(self, *args: Any, **data: Any) -> None:
        data = peer_options(type(self), positional_model(type(self), self.kind, args, data))
        scorer = self._built(data)  # may record what it built in data (a wrapped object's name)
        super().__init__(**{**data, "scorer": scorer})

    def _built(self, data: dict[str, Any]) -> ScorerLike:
        """The scorer the fields (``data``) describe."""
        return build_scorer(self.kind, data)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "scorer" or name in option_fields(self.kind).model_fields:
            raise ConfigError(
                f"{type(self).__name__}.{name} is fixed once the model is built from it: build a new "
                f"{type(self).__name__}(...) (or give the adapter itself a scorer= and assign that)"
            )
        super().__setattr__(name, value)


def conveniences(base: type[Any], module: str) -> dict[str, type[Any]]:
    """One convenience class per registry backend that declares one: ``base`` (an adapter's
    convenience base, which builds its scorer from ``kind``) combined with the backend's fields."""
    out: dict[str, type[Any]] = {}
    for kind, b in BACKENDS.items():
        if b.convenience is None:
            continue
        adapter = next(
            c for c in base.__mro__ if RerankAdapter in c.__bases__ and c is not ConvenienceAdapter
        )
        doc = (
            f"``{adapter.__name__}`` over {b.summary}.\n\n"
            f"Built from the registry's ``{kind!r}`` backend: the fields below are its options; "
            "``top_n``, ``threshold`` and the rest are the base class's."
        )
        namespace = {"__module__": module, "__qualname__": b.convenience, "__doc__": doc, "kind": kind}
        out[b.convenience] = type(b.convenience, (option_fields(kind), base), namespace)
    return out


def build_scorer(kind: str, data: dict[str, Any]) -> ScorerLike:
    """Build the scorer a convenience describes with its fields (the registry's ``kind`` entry):
    every option the caller gave is passed on as given (the scorer checks it), the rest keep the
    scorer's own defaults."""
    if data.get("scorer") is not None:
        raise ConfigError(f"pass either scorer=... or the {kind} model options, not both")
    backend = BACKENDS[kind]
    fields = option_fields(kind).model_fields
    args = []
    positional = backend.positional
    if positional is not None:
        if data.get(positional) is not None:
            args.append(data[positional])
        elif fields[positional].is_required():
            raise ConfigError(f"the {kind} convenience needs {positional}=...")
    options = {k: data[k] for k in fields if k != positional and k in data}
    if isinstance(options.get("api_key"), SecretStr):
        options["api_key"] = Secret(options["api_key"].get_secret_value())
    built: ScorerLike = load(backend.target)(*args, **options)
    return built


#: what each option means, written once for every backend that takes it (one name per idea);
#: ``(backend, option)`` keys say what differs for one backend
OPTION_HELP: dict[str | tuple[str, str], str] = {
    "model": "Hugging Face Hub id or local directory.",
    ("cohere", "model"): "Cohere rerank model.",
    ("remote", "model"): "Model name for v1 servers serving several.",
    "llm": "A LangChain chat model, a LlamaIndex LLM, or a function(messages) -> str.",
    "base_url": "Server root, e.g. http://tei:8080 (may hold credentials: never shown).",
    (
        "cohere",
        "base_url",
    ): "A Cohere-compatible endpoint; default Cohere's API (may hold credentials: never shown).",
    "device": "None: CUDA if present, else CPU.",
    "dtype": "auto: bfloat16 where the hardware is fast at it, else float32.",
    "batch_size": "Inputs per forward pass.",
    ("cohere", "batch_size"): "Documents per request.",
    ("remote", "batch_size"): "Documents per request.",
    "max_batch_tokens": "Token budget of a length-sorted batch; auto: sized for the device; None: batch_size only.",
    "max_length": "Tokens the model reads per document (the pair, for a cross-encoder); None: the model's.",
    ("seq2seq", "max_length"): "Encoder tokens per pair; longer documents are cut.",
    ("poly-encoder", "max_length"): "Document tokens kept; None: as trained.",
    (
        "colbert",
        "max_length",
    ): "Document tokens kept; None: the checkpoint's (else 180; 300 for plain encoders).",
    (
        "cohere",
        "max_length",
    ): "Server-side truncation of each document, in tokens (Cohere's max_tokens_per_doc).",
    "query_length": "Query tokens kept.",
    (
        "colbert",
        "query_length",
    ): "Query tokens, markers and [MASK] padding included; None: the checkpoint's (else 32).",
    "trust_remote_code": "Run the checkpoint's own modelling code (e.g. jina-reranker-v2).",
    "local_files_only": "Never reach the Hub: the model must be a directory or already cached.",
    "model_kwargs": "Passed to from_pretrained (e.g. attn_implementation).",
    "activation": "sigmoid: scores 0..1 (PROBABILITY); None: raw logits (LOGIT).",
    "backend": "torch; or ONNX Runtime on CPU: onnx (float32), onnx-int8 (int8, the onnx extra).",
    "warmup": "Run one tiny batch at load, so the first query does not pay for it.",
    "prompt_format": "A causal-LM reranker's published prompt (qwen3, mxbai-v2, bge-gemma); None: known from the model id.",
    "instruction": "Task instruction of an instruction-following reranker; None: the model's.",
    "reuse_prefix": "Causal rerankers: run the prompt's shared prefix once per call.",
    "variant": "monot5: P(true) (PROBABILITY); rankt5: the score token's logit (LOGIT).",
    "true_token": "MonoT5's positive answer word (or token id).",
    "false_token": "MonoT5's negative answer word (or token id).",
    "score_token": "RankT5's scoring token (or token id).",
    "template": "The prompt, with {query} and {document}; None: the variant's published one.",
    "query_prompt": "None: the checkpoint's query prompt.",
    "document_prompt": "None: the checkpoint's document / passage prompt.",
    "cache_dir": "Directory for document vectors shared across processes.",
    "cache_bytes": "Memory bound of the in-process document cache.",
    "cache_dtype": "auto: float32 vectors for a float32 encoder (exact scores), else float16.",
    "normalize": "True: mean MaxSim in [-1, 1] (SIMILARITY); False: the raw sum (LOGIT), as colbert-ai returns.",
    "layout": "Force colbert, pylate or plain instead of detecting the checkpoint's layout.",
    "api_key": "Default: the backend's environment variable (COHERE_API_KEY, RERANK_API_KEY).",
    "client": "A configured client to use instead of building one.",
    "async_client": "A configured async client to use instead of building one.",
    "timeout": "Seconds per request.",
    "deadline": "Total seconds per call, retries included; then fail or fall back.",
    "max_concurrency": "Requests in flight at once.",
    "retry": "RetryPolicy: attempts and backoff on 429, 5xx and timeouts.",
    "on_error": "keep_order: on failure, keep the original order (marked).",
    "protocol": "tei: POST /rerank; v1: POST /v1/rerank.",
    "path": "Endpoint path, e.g. /rerank for Infinity.",
    "truncate": "Ask the server to truncate inputs to its model's limit.",
    "max_words": "Each passage is cut to this many words in the prompt.",
    "window": "Passages per LLM call.",
    "step": "How far the window moves up the list each call.",
    "system_prompt": "The system message of every ranking call.",
    "name": "Model name shown in details; None: the LLM's own.",
    "mode": "yes_no: P(yes); grade: 0-10 / 10.",
    ("llm-pointwise", "max_concurrency"): "LLM calls in flight at once.",
    "unparsable_score": "Score of an answer that parses as neither.",
    "top_k": "How many of the best candidates to order by comparisons.",
    "both_orders": "Ask each comparison in both orders (position bias).",
}

#: options held as secrets or that may hold credentials: never dumped, never shown
_HIDDEN_OPTIONS = frozenset({"api_key", "base_url"})
#: options whose value is a live object, not a setting: passed through, never dumped
_OBJECT_OPTIONS = frozenset({"client", "async_client", "retry"})


def _field(kind: str, name: str, annotation: Any, default: Any) -> tuple[Any, Any]:
    """One convenience field for a scorer parameter: its type and default, the shared help text."""
    help_text = OPTION_HELP.get((kind, name)) or OPTION_HELP.get(name)
    if not help_text:
        raise ConfigError(f"option {name!r} of the {kind} backend has no help text in OPTION_HELP")
    if name == "api_key":
        annotation = SecretStr | None
    required = default is inspect.Parameter.empty
    info = Field(
        default=... if required else default,
        description=help_text,
        exclude=True if name in _HIDDEN_OPTIONS | _OBJECT_OPTIONS else None,
        repr=name not in _HIDDEN_OPTIONS,
    )
    return annotation, info


@functools.cache
def option_fields(kind: str) -> type[BaseModel]:
    """The convenience fields of the registry's ``kind`` backend: one pydantic field per parameter
    of its scorer's constructor, with the constructor's type and default (so the adapters can
    neither miss an option nor disagree on a default), and the help text of :data:`OPTION_HELP`."""
    backend = BACKENDS[kind]
    cls = load(backend.target)
    hints = typing.get_type_hints(cls.__init__)
    fields: dict[str, Any] = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        fields[name] = _field(kind, name, hints.get(name, Any), param.default)
    name = f"{backend.convenience or cls.__name__}Fields"
    config = ConfigDict(arbitrary_types_allowed=True)
    return create_model(name, __config__=config, __module__=__name__, **fields)
