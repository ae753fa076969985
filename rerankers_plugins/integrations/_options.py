"""What both adapters share: the fields of the named conveniences and how they build a scorer.

The field mixins are plain pydantic models (both frameworks' bases are pydantic v2 models); each
adapter combines them with its own base class, so a convenience is declared once for both.
"""

from __future__ import annotations

import copy
import json
import logging
import pickle
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_serializer, field_validator

from rerankers_plugins._secret import Secret
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.pipeline.leaves import ScorerLike
from rerankers_plugins.registry import BACKENDS, get_scorer, load
from rerankers_plugins.scorers.base import BaseScorer

#: constructor options never written into a description (credentials: read from the environment
#: again where the backend supports it)
_SECRET_OPTIONS = frozenset({"api_key"})

logger = logging.getLogger(__name__)

__all__ = [
    "PEER_NAMES",
    "RETRIEVAL_SCORE_KEYS",
    "BiEncoderFields",
    "CohereFields",
    "ColBERTFields",
    "CrossEncoderFields",
    "LLMListwiseFields",
    "LLMPairwiseFields",
    "LLMPointwiseFields",
    "PolyEncoderFields",
    "RemoteFields",
    "Seq2SeqFields",
    "SettingsSerialized",
    "build_scorer",
    "conveniences",
    "copy_metadata",
    "describe_scorer",
    "peer_options",
    "pickle_state",
    "positional_model",
    "rebuild_scorer",
]

#: metadata keys LangChain vector stores and rerankers put a document's score under, tried in order
RETRIEVAL_SCORE_KEYS: tuple[str, ...] = ("relevance_score", "score", "similarity_score", "_score")


_NULLABLE = {"activation"}  # None is a meaningful value for these (raw logits), not "unset"


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


def describe_scorer(scorer: Any) -> dict[str, Any]:
    """A registry backend's scorer as JSON-ready settings: ``{"backend": name, "options": {...}}``
    (its constructor arguments; credentials left out), which :func:`rebuild_scorer` turns back
    into an equal scorer. Anything else raises ConfigError naming it."""
    target = f"{type(scorer).__module__}:{type(scorer).__qualname__}"
    kind = next((k for k, b in BACKENDS.items() if b.target == target), None)
    label = getattr(scorer, "name", type(scorer).__name__)
    if kind is not None and not isinstance(scorer, BaseScorer):
        raise ConfigError(
            f"{type(scorer).__name__} ({label!r}) cannot be described as settings: it is built from an "
            f"object ({BACKENDS[kind].positional}=...), not from settings; pickle the adapter instead"
        )
    if kind is None or not isinstance(scorer, BaseScorer):
        raise ConfigError(
            f"{type(scorer).__name__} ({label!r}) cannot be described as settings: only a registry "
            f"backend ({', '.join(sorted(BACKENDS))}) can. Serialize an adapter built from one "
            "(e.g. CrossEncoderRerank(model=...)), or pickle it instead."
        )
    args, options = scorer.init_args()
    positional = BACKENDS[kind].positional
    if args:
        if len(args) > 1 or positional is None:
            raise ConfigError(f"{label!r}: built with {len(args)} positional arguments; cannot be described")
        options = {positional: args[0], **options}
    options = {k: v for k, v in options.items() if k not in _SECRET_OPTIONS and not isinstance(v, Secret)}
    from rerankers_plugins.scorers._http import url_secrets

    for key, value in options.items():
        if isinstance(value, str) and "://" in value and url_secrets(value):
            raise ConfigError(
                f"{label!r} cannot be described as settings: its {key} holds credentials; pass the key "
                "as api_key= or through the environment instead"
            )
    for key, value in options.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{label!r} cannot be described as settings: its option {key}={type(value).__name__} "
                "is an object, not a setting; pickle the adapter instead"
            ) from None
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
    def _describe(self, scorer: Any) -> Any:
        """Serialized as settings: the registry backend's name and options (no keys)."""
        return describe_scorer(scorer)

    def _check_describable(self) -> None:
        if type(self).model_fields["scorer"].exclude is not True:
            describe_scorer(getattr(self, "scorer"))  # noqa: B009 (declared by the adapter)

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
        if b.convenience is None or b.fields is None:
            continue
        doc = (
            f"``{base.__mro__[1].__name__}`` over {b.summary}.\n\n"
            f"Built from the registry's ``{kind!r}`` backend: the fields below are its options; "
            "``top_n``, ``threshold`` and the rest are the base class's."
        )
        namespace = {"__module__": module, "__qualname__": b.convenience, "__doc__": doc, "kind": kind}
        out[b.convenience] = type(b.convenience, (load(b.fields), base), namespace)
    return out


def build_scorer(kind: str, data: dict[str, Any]) -> ScorerLike:
    """Build the scorer a convenience describes with its fields (the registry's ``kind`` entry)."""
    if data.get("scorer") is not None:
        raise ConfigError(f"pass either scorer=... or the {kind} model options, not both")
    backend = BACKENDS[kind]
    fields: type[BaseModel] = load(backend.fields or "")
    args = []
    positional = backend.positional
    if positional is not None:
        if data.get(positional) is not None:
            args.append(data[positional])
        elif fields.model_fields[positional].is_required():
            raise ConfigError(f"the {kind} convenience needs {positional}=...")
    names = [n for n in fields.model_fields if n != positional]
    options = {k: data[k] for k in names if k in data and (data[k] is not None or k in _NULLABLE)}
    if isinstance(options.get("api_key"), SecretStr):
        options["api_key"] = Secret(options["api_key"].get_secret_value())
    built: ScorerLike = load(backend.target)(*args, **options)
    return built


DType = Literal["auto", "float32", "bfloat16", "float16"]


class _LocalFields(BaseModel):
    model: str = Field(description="Hugging Face Hub id or local directory.")
    device: str | None = Field(default=None, description="None: CUDA if present, else CPU.")
    batch_size: int = Field(default=32, description="Inputs per forward pass.")
    dtype: DType = Field(
        default="auto", description="auto: bfloat16 where the hardware is fast at it, else float32."
    )


class CrossEncoderFields(_LocalFields):
    max_length: int | None = Field(default=None, description="Token window; None uses the model's.")
    trust_remote_code: bool = Field(
        default=False, description="Run the checkpoint's own modelling code (e.g. jina-reranker-v2)."
    )
    model_kwargs: dict[str, Any] | None = Field(
        default=None, description="Passed to from_pretrained (e.g. attn_implementation)."
    )
    activation: Literal["sigmoid"] | None = Field(
        default="sigmoid", description="sigmoid: scores 0..1 (PROBABILITY); None: raw logits (LOGIT)."
    )
    backend: Literal["torch", "onnx", "onnx-int8"] = Field(
        default="torch",
        description="torch; or ONNX Runtime on CPU: onnx (float32), onnx-int8 (int8, the onnx extra).",
    )
    prompt_format: Literal["qwen3", "mxbai-v2", "bge-gemma"] | None = Field(
        default=None,
        description="A causal-LM reranker's published prompt (Qwen3-Reranker, mxbai-rerank-v2, bge-reranker-v2-gemma).",
    )
    instruction: str | None = Field(
        default=None, description="Task instruction of an instruction-following reranker; None: the model's."
    )
    reuse_prefix: bool = Field(
        default=True, description="Causal rerankers: run the prompt's shared prefix once per call."
    )


class Seq2SeqFields(_LocalFields):
    variant: Literal["monot5", "rankt5"] = Field(
        default="monot5",
        description="monot5: P(true) (PROBABILITY); rankt5: the score token's logit (LOGIT).",
    )
    max_length: int = Field(default=512, description="Encoder tokens per pair; longer documents are cut.")
    true_token: str = Field(default="true", description="MonoT5's positive answer word.")
    false_token: str = Field(default="false", description="MonoT5's negative answer word.")
    score_token: str = Field(default="<extra_id_10>", description="RankT5's scoring token.")


class PolyEncoderFields(_LocalFields):
    query_length: int = Field(default=64, description="Query tokens kept.")
    doc_length: int | None = Field(default=None, description="Document tokens kept; None: as trained.")
    cache_dir: str | None = Field(
        default=None, description="Directory for document codes shared across processes."
    )


class BiEncoderFields(_LocalFields):
    max_length: int | None = Field(default=None, description="Token window; None uses the model's.")
    query_prompt: str | None = Field(default=None, description="None: the checkpoint's query prompt.")
    document_prompt: str | None = Field(
        default=None, description="None: the checkpoint's document / passage prompt."
    )


class ColBERTFields(_LocalFields):
    query_length: int | None = Field(
        default=None,
        description="Query tokens, markers and [MASK] padding included; None: the checkpoint's (else 32).",
    )
    doc_length: int | None = Field(
        default=None,
        description="Document tokens kept; None: the checkpoint's (else 180; 300 for plain encoders).",
    )
    cache_dir: str | None = Field(
        default=None, description="Directory for document vectors shared across processes."
    )
    cache_dtype: Literal["auto", "float16", "float32"] = Field(
        default="auto",
        description="auto: float32 vectors for a float32 encoder (exact scores), else float16.",
    )


OnErrorField = Literal["raise", "keep_order"]


class CohereFields(BaseModel):
    model: str = Field(default="rerank-v3.5", description="Cohere rerank model.")
    api_key: SecretStr | None = Field(
        default=None, description="Default: the COHERE_API_KEY environment variable.", exclude=True
    )
    base_url: str | None = Field(
        default=None,
        description="A Cohere-compatible endpoint; default Cohere's API (may hold credentials: never shown).",
        repr=False,
        exclude=True,
    )
    timeout: float = Field(default=30.0, description="Seconds per request.")
    deadline: float | None = Field(
        default=None, description="Total seconds per call, retries included; then fail or fall back."
    )
    max_tokens_per_doc: int | None = Field(
        default=None, description="Server-side truncation of each document."
    )
    on_error: OnErrorField = Field(
        default="raise", description="keep_order: on failure, keep the original order."
    )


class RemoteFields(BaseModel):
    base_url: str = Field(
        description="Rerank server root, e.g. http://tei:8080 (may hold credentials: never shown).",
        repr=False,
        exclude=True,
    )
    protocol: Literal["tei", "v1"] = Field(
        default="tei", description="tei: POST /rerank; v1: POST /v1/rerank."
    )
    path: str | None = Field(default=None, description="Endpoint path, e.g. /rerank for Infinity.")
    deadline: float | None = Field(
        default=None, description="Total seconds per call, retries included; then fail or fall back."
    )
    model: str | None = Field(default=None, description="Model name for v1 servers serving several.")
    api_key: SecretStr | None = Field(
        default=None, description="Bearer token; default RERANK_API_KEY.", exclude=True
    )
    timeout: float = Field(default=30.0, description="Seconds per request.")
    batch_size: int = Field(default=32, description="Documents per request.")
    max_concurrency: int = Field(default=16, description="Requests in flight at once.")
    on_error: OnErrorField = Field(
        default="raise", description="keep_order: on failure, keep the original order."
    )


class _LLMFields(BaseModel):
    llm: Any = Field(description="A LangChain chat model, a LlamaIndex LLM, or a function(messages) -> str.")
    max_words: int = Field(default=300, description="Each passage is cut to this many words in the prompt.")


class LLMListwiseFields(_LLMFields):
    window: int = Field(default=20, description="Passages per LLM call.")
    step: int = Field(default=10, description="How far the window moves up the list each call.")


class LLMPointwiseFields(_LLMFields):
    mode: Literal["yes_no", "grade"] = Field(
        default="yes_no", description="yes_no: P(yes); grade: 0-10 / 10."
    )
    max_concurrency: int = Field(default=8, description="LLM calls in flight at once.")
    unparsable_score: float = Field(default=0.0, description="Score of an answer that parses as neither.")


class LLMPairwiseFields(_LLMFields):
    top_k: int = Field(default=10, description="How many of the best candidates to order by comparisons.")
    both_orders: bool = Field(default=True, description="Ask each comparison in both orders (position bias).")
