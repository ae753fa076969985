"""What both adapters are, framework aside: one base class, :class:`RerankAdapter`.

It holds the fields every reranking adapter has (``scorer``, ``top_n``, ``threshold``,
``skip_empty``), checks them as the core checks them (a ConfigError naming the option, never
pydantic's wrapper of it, at construction and at every assignment, so that a scorer assigned
later is the one the next call uses), builds the options of each rerank call from them, pickles
without the live parts, serializes ``scorer`` as settings, loads a pipeline spec
(:meth:`RerankAdapter.from_spec`) and takes the options users bring from the frameworks' own
rerankers under their names there (:data:`PEER_NAMES`). Each adapter adds only what differs
between LangChain and LlamaIndex: its base class, how documents become candidates and back.
"""

from __future__ import annotations

import copy
import json
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from rerankers_plugins._validate import as_real, check_top_n
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.pipeline.leaves import ScorerLike
from rerankers_plugins.pipeline.rerank import RerankOptions, check_options
from rerankers_plugins.registry import BACKENDS, get_scorer, load
from rerankers_plugins.scorers.base import translate_renamed
from rerankers_plugins.spec import load_pipeline, scorer_options

__all__ = [
    "PEER_NAMES",
    "RETRIEVAL_SCORE_KEYS",
    "RerankAdapter",
    "copy_metadata",
    "describe_scorer",
    "peer_options",
    "rebuild_scorer",
]

logger = logging.getLogger(__name__)

_Adapter = TypeVar("_Adapter", bound="RerankAdapter")

#: metadata keys LangChain vector stores and rerankers put a document's score under, tried in order
RETRIEVAL_SCORE_KEYS: tuple[str, ...] = ("relevance_score", "score", "similarity_score", "_score")

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
        "LLMListwiseRerank(llm=..., choice_select_prompt=...) takes LLMRerank's prompt (a string or a "
        "PromptTemplate with {context_str} and {query_str}); the other LLM rerankers take their own "
        "prompt=... and system_prompt=... (docs/backends.md, 'Your own prompts')",
    ),
    "format_node_batch_fn": (
        None,
        "the listwise ranker shows passages with passage_template=... ({index}, {passage}) and "
        "passage_separator=...; max_words= cuts them",
    ),
    "parse_choice_select_answer_fn": (
        None,
        "LLM answers are parsed and repaired by the rerankers themselves: LLMListwiseRerank reads "
        "LLMRerank's 'Doc: 9, Relevance: 7' lines with answer_format='choice_select' (what "
        "choice_select_prompt= sets), '[2] > [1]' rankings with answer_format='ranking'",
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
        out = translate_renamed(load(BACKENDS[kind].target), out, stacklevel=4)
    out = _choice_select(cls, fields, out)
    for peer, (ours, hint) in PEER_NAMES.items():
        if peer not in out or peer in fields:
            continue
        if ours is None and out[peer] is None:  # the peer's own default: nothing to translate
            del out[peer]
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


#: what LlamaIndex's choice_select_prompt becomes (choice_select_options): the listwise ranker's options
_CHOICE_SELECT_FIELDS = ("prompt", "passage_template", "passage_separator", "answer_format")


def _choice_select(cls: type[Any], fields: Mapping[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """LlamaIndex's ``choice_select_prompt`` as the listwise ranker's prompt options, where ``cls``
    has them; a ConfigError for a translated option also given otherwise (``system_prompt`` given
    with it is kept: LLMRerank sends none)."""
    value = data.get("choice_select_prompt")
    if (
        value is None
        or "choice_select_prompt" in fields
        or not all(f in fields for f in _CHOICE_SELECT_FIELDS)
    ):
        return data  # refused (or dropped when None) with the other peer options
    from rerankers_plugins.scorers.llm.prompts import choice_select_options

    out = {k: v for k, v in data.items() if k != "choice_select_prompt"}
    for name, translated in choice_select_options(value).items():
        if name == "system_prompt" and name in out:
            continue
        if name in out and out[name] != translated:
            raise ConfigError(
                f"{cls.__name__}: pass {name}= or choice_select_prompt=, not both (choice_select_prompt "
                f"sets {', '.join(_CHOICE_SELECT_FIELDS)} and system_prompt=None)"
            )
        out[name] = translated
    logger.info("%s: choice_select_prompt translated into the listwise ranker's prompt options", cls.__name__)
    return out


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


def _checked_top_n(value: Any) -> Any:
    return check_top_n(value)


def _checked_threshold(value: Any) -> Any:
    return as_real(value, "threshold", allow_none=True)


class RerankAdapter(BaseModel):
    """The fields and checks both adapters share (see the module docstring). ``top_n`` defaults to
    3, as LangChain's ``CrossEncoderReranker``; the LlamaIndex adapter declares 2, as its
    ``SentenceTransformerRerank``."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    scorer: ScorerLike = Field(description="A Scorer, a Ranker, or a strategy built from them.")
    top_n: int | None = Field(default=3, description="Keep at most this many; None keeps all.")
    threshold: float | None = Field(
        default=None, description="Keep what scores >= this, on the scorer's declared scale."
    )
    skip_empty: bool = Field(
        default=False, description="Leave candidates with empty text out instead of scoring them."
    )

    #: fields a rerank call reads, checked together (the threshold is on the scorer's scale)
    _CHECKED: ClassVar[dict[str, Any]] = {"top_n": _checked_top_n, "threshold": _checked_threshold}

    def __init__(self, **data: Any) -> None:
        data = peer_options(type(self), data)
        # checked here, before pydantic, so that a ConfigError reaches the caller as itself (not in a
        # ValidationError) and nothing is coerced: top_n="3" is refused, not read as 3
        for name, check in self._CHECKED.items():
            if name in data:
                data[name] = check(data[name])
        if data.get("scorer") is not None:
            data["scorer"] = self._accept(rebuild_scorer(data["scorer"]))
        super().__init__(**data)
        check_options(self.scorer, self.top_n, self.threshold)

    @classmethod
    def _accept(cls, scorer: Any) -> ScorerLike:
        """``scorer`` as the adapter takes it (the LangChain adapter wraps LangChain's own
        cross-encoder objects); a ConfigError for anything that is not a scorer, saying what to pass."""
        if isinstance(scorer, str):
            raise ConfigError(
                f"{cls.__name__}(scorer={scorer!r}): scorer is a scorer object, not a name; build one "
                f"(BiEncoderScorer({scorer!r}), get_scorer(...)) or use a convenience such as "
                f"BiEncoderRerank({scorer!r}) / CrossEncoderRerank(model={scorer!r})"
            )
        check_options(scorer, None, None)  # a ConfigError naming what it is not
        return scorer  # type: ignore[no-any-return]

    def __setattr__(self, name: str, value: Any) -> None:
        """Assigning ``scorer``, ``top_n`` or ``threshold`` checks the new combination first (a
        ConfigError leaves the adapter as it was); the next call reranks with what was assigned."""
        if name == "scorer":
            value = self._accept(value)
        elif name in self._CHECKED:
            value = self._CHECKED[name](value)
        if name in ("scorer", "top_n", "threshold"):
            current = {"scorer": self.scorer, "top_n": self.top_n, "threshold": self.threshold}
            check_options(**{**current, name: value})
        super().__setattr__(name, value)

    def _rerank_options(self) -> RerankOptions:
        """What this call of rerank is asked for, built from the fields as they are now."""
        return RerankOptions(
            self.scorer, top_n=self.top_n, threshold=self.threshold, skip_empty=self.skip_empty
        )

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

    # -- pickling and serialization -------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """pydantic's state, copied (LlamaIndex's own ``__getstate__`` deletes unpicklable fields
        from the live object's dict), without an API key (conveniences read it from the
        environment again), and a clear error for an unpicklable scorer."""
        state = dict(BaseModel.__getstate__(self))
        state["__dict__"] = dict(state["__dict__"])
        if state["__dict__"].get("api_key") is not None:
            state["__dict__"]["api_key"] = None
        try:
            pickle.dumps(state["__dict__"].get("scorer"))
        except Exception as exc:
            raise TypeError(
                f"{type(self).__name__} cannot be pickled: its scorer cannot ({type(exc).__name__}: {exc})"
            ) from exc
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        BaseModel.__setstate__(self, state)

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
            describe_scorer(self.scorer)

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        self._check_describable()
        return super().model_dump(**kwargs)

    def model_dump_json(self, **kwargs: Any) -> str:
        self._check_describable()
        return super().model_dump_json(**kwargs)


def settings_json(value: Any) -> bool:
    """Whether ``value`` is a plain setting (JSON can hold it)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
