"""What both adapters share: the fields of the named conveniences and how they build a scorer.

The field mixins are plain pydantic models (both frameworks' bases are pydantic v2 models); each
adapter combines them with its own base class, so a convenience is declared once for both.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import pickle
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, create_model, field_serializer, field_validator

from rerankers_plugins._secret import Secret
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.pipeline.leaves import ScorerLike
from rerankers_plugins.registry import BACKENDS, get_scorer, load
from rerankers_plugins.scorers.base import translate_renamed
from rerankers_plugins.spec import load_pipeline, scorer_options

logger = logging.getLogger(__name__)

_Adapter = TypeVar("_Adapter", bound="SettingsSerialized")

__all__ = [
    "OPTION_HELP",
    "PEER_NAMES",
    "RETRIEVAL_SCORE_KEYS",
    "SettingsSerialized",
    "build_scorer",
    "conveniences",
    "copy_metadata",
    "describe_scorer",
    "option_fields",
    "peer_options",
    "pickle_state",
    "positional_model",
    "rebuild_scorer",
]

#: metadata keys LangChain vector stores and rerankers put a document's score under, tried in order
RETRIEVAL_SCORE_KEYS: tuple[str, ...] = ("relevance_score", "score", "similarity_score", "_score")


def copy_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A new metadata dict for a returned document: each value deep-copied where it can be, and
    shared where it cannot (a lock, a client): what we add never touches the caller's objects,
    and an uncopyable value never makes reranking fail."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        try:
            out[key] = copy.deepcopy(value)
        except Exception:  # any object may refuse to be copied; sharing it is the documented fallback
            logger.debug(
                "metadata %r cannot be deep-copied (%s); the value is shared", key, type(value).__name__
            )
            out[key] = value
    return out


def pickle_state(model: Any, state: dict[str, Any]) -> dict[str, Any]:
    """The pickled state of an adapter: copies of pydantic's dicts (never the live ones), without
    the strategy (rebuilt from ``scorer`` on load) or an API key, and a clear error for an
    unpicklable scorer."""
    state = dict(state)
    state["__dict__"] = dict(state["__dict__"])
    if (
        state["__dict__"].get("api_key") is not None
    ):  # conveniences: the scorer re-reads it from the environment
        state["__dict__"]["api_key"] = None
    state["__pydantic_private__"] = {
        k: v for k, v in (state.get("__pydantic_private__") or {}).items() if k != "_strategy"
    }
    try:
        pickle.dumps(state["__dict__"].get("scorer"))
    except Exception as exc:
        raise TypeError(
            f"{type(model).__name__} cannot be pickled: its scorer cannot ({type(exc).__name__}: {exc})"
        ) from exc
    return state


#: options users bring from LangChain's and LlamaIndex's own rerankers, under their names there:
#: peer name -> (our name, or None where we have no such option; what to do instead)
PEER_NAMES: dict[str, tuple[str | None, str]] = {
    "model_name": ("model", "HuggingFaceCrossEncoder(model_name=...) is model=..."),
    "cohere_api_key": ("api_key", "langchain-cohere's cohere_api_key is api_key=..."),
    "keep_retrieval_score": (
        "include_details",
        "SentenceTransformerRerank's keep_retrieval_score: the retrieval score is kept in "
        "metadata['retrieval_score'] with include_details=True (the default)",
    ),
    "choice_batch_size": ("window", "LLMRerank's choice_batch_size is window=... (passages per LLM call)"),
    "top_k": ("top_n", "top_k is top_n=..."),
    "choice_select_prompt": (
        None,
        "the LLM rerankers write their own prompts; pass a function as llm= to own it",
    ),
    "format_node_batch_fn": (None, "the LLM rerankers format passages themselves (max_words= cuts them)"),
    "parse_choice_select_answer_fn": (
        None,
        "LLM answers are parsed and repaired by the rerankers themselves",
    ),
    "user_agent": (None, "pass a configured client to CohereScorer(client=...) instead"),
}


def peer_options(cls: type[Any], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the options of a peer reranker renamed to ours where the meaning is the same
    (logged), and a ConfigError that says what to do for those we do not take."""
    fields = getattr(cls, "model_fields", {})
    out = dict(data)
    kind = getattr(cls, "kind", None)
    if kind in BACKENDS:  # a convenience: its scorer's renamed options, under their new names
        # the warning names the user's line: peer_options < the convenience's __init__ < the caller
        out = translate_renamed(load(BACKENDS[kind].target), out, stacklevel=3)
    for peer, (ours, hint) in PEER_NAMES.items():
        if peer not in out or peer in fields:
            continue
        if ours is None or ours not in fields:
            raise ConfigError(f"{cls.__name__} has no {peer!r} option: {hint}")
        if ours in out and out[ours] != out[peer]:
            raise ConfigError(f"{cls.__name__}: pass {ours}= or {peer}=, not both ({hint})")
        logger.info("%s: %s", cls.__name__, hint)
        out[ours] = out.pop(peer)
    kwargs = out.get("model_kwargs")
    if isinstance(kwargs, Mapping) and "device" in kwargs and "device" in fields:
        # HuggingFaceCrossEncoder(model_kwargs={"device": ...}): our scorers take device= itself
        kwargs = dict(kwargs)
        device = kwargs.pop("device")
        if out.get("device") not in (None, device):
            raise ConfigError(
                f"{cls.__name__}: device={out['device']!r} and model_kwargs['device']={device!r} disagree"
            )
        out["device"], out["model_kwargs"] = device, kwargs or None
    return out


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


def describe_scorer(scorer: ScorerLike) -> dict[str, Any]:
    """A registry backend's scorer as JSON-ready settings: ``{"backend": name, "options": {...}}``
    (its constructor arguments; credentials left out), which :func:`rebuild_scorer` turns back
    into an equal scorer. Anything else raises ConfigError naming it
    (:func:`rerankers_plugins.spec.scorer_options`)."""
    kind, options = scorer_options(scorer)
    return {"backend": kind, "options": options}


def rebuild_scorer(value: Any) -> Any:
    """A description from :func:`describe_scorer` back to the scorer; anything else unchanged."""
    if isinstance(value, Mapping) and set(value) == {"backend", "options"}:
        kind, options = value["backend"], value["options"]
        if kind not in BACKENDS or not isinstance(options, Mapping):
            raise ConfigError(f"not a scorer description: {dict(value)!r}")
        return get_scorer(kind, **options)
    return value


class SettingsSerialized(BaseModel):
    """What both adapters serialize the same way: ``scorer`` written as its settings
    (:func:`describe_scorer`) and read back from them; a scorer that cannot be described raises a
    ConfigError naming it (not pydantic's wrapper of it)."""

    @field_validator("scorer", mode="before", check_fields=False)
    @classmethod
    def _described(cls, value: Any) -> Any:
        """A scorer description (what serialization writes) is rebuilt into the scorer."""
        return rebuild_scorer(value)

    @field_serializer("scorer", check_fields=False)
    def _describe(self, scorer: ScorerLike) -> Any:
        """Serialized as settings: the registry backend's name and options (no keys)."""
        return describe_scorer(scorer)

    def _check_describable(self) -> None:
        if type(self).model_fields["scorer"].exclude is not True:
            describe_scorer(getattr(self, "scorer"))  # noqa: B009 (declared by the adapter)

    @classmethod
    def from_spec(
        cls: type[_Adapter], source: str | Path | Mapping[str, Any], name: str | None = None, **fields: Any
    ) -> _Adapter:
        """The adapter over the pipeline of a spec file (``rerankers-plugins tune``'s
        ``pipeline.toml``, an ``eval --config`` file, ``"file.toml#name"``) or a spec dict, exactly
        as written: depth, cascades, fusion weights and selective heads included
        (:func:`rerankers_plugins.spec.load_pipeline`). ``fields`` are the adapter's own
        (``top_n``, ``threshold``, ...)."""
        if "scorer" in fields:
            raise ConfigError(f"{cls.__name__}.from_spec builds the scorer from the spec; pass no scorer=")
        if isinstance(getattr(cls, "kind", None), str):
            raise ConfigError(
                f"{cls.__name__} builds its scorer from its own fields; load a spec with the adapter "
                "itself (RerankCompressor.from_spec or RerankPostprocessor.from_spec)"
            )
        return cls(**{**fields, "scorer": load_pipeline(source, name)})

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        self._check_describable()
        return super().model_dump(**kwargs)

    def model_dump_json(self, **kwargs: Any) -> str:
        self._check_describable()
        return super().model_dump_json(**kwargs)


def conveniences(base: type[Any], module: str) -> dict[str, type[Any]]:
    """One convenience class per registry backend that declares one: ``base`` (an adapter's
    convenience base, which builds its scorer from ``kind``) combined with the backend's fields."""
    out: dict[str, type[Any]] = {}
    for kind, b in BACKENDS.items():
        if b.convenience is None:
            continue
        doc = (
            f"``{base.__mro__[1].__name__}`` over {b.summary}.\n\n"
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
