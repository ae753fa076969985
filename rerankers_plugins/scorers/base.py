"""The protocols every backend implements, and a small base class with the async default.

A ``Scorer`` turns (query, texts) into one float per text, in the same order, on a declared
:class:`~rerankers_plugins.types.ScoreScale`. A ``Ranker`` (listwise LLMs) returns a permutation
instead. Sorting, top_n and thresholds are *not* a scorer's job: they live once, in
:func:`rerankers_plugins.pipeline.rerank.rerank`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from rerankers_plugins._deprecation import renamed_attribute, warn_renamed
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.types import ScoreScale

__all__ = [
    "AsyncDetailedRanker",
    "AsyncDetailedScorer",
    "AsyncRanker",
    "AsyncScorer",
    "BaseScorer",
    "DetailedRanker",
    "DetailedScorer",
    "DocumentCache",
    "Fallible",
    "Fingerprinted",
    "Indexable",
    "Named",
    "Purity",
    "Ranker",
    "Ranks",
    "Scaled",
    "ScoreResult",
    "Scorer",
    "Scores",
    "Templated",
    "accept_renamed",
    "translate_renamed",
]


@dataclass(frozen=True)
class ScoreResult:
    """What a leaf's optional ``score_details`` / ``rank_details`` (and ``a*``) methods return.

    ``values`` are the scores (or, for a Ranker, the permutation); ``info`` is merged into every
    returned candidate's ``Scored.details`` (e.g. the number of LLM calls); ``per_item``, aligned
    with the texts, into that candidate's details only (e.g. the passage a long document was
    scored by). When a leaf is wrapped (:func:`rerankers_plugins.pipeline.leaves.as_strategy`),
    these methods are preferred over the plain ones.
    """

    values: list[Any]
    info: Mapping[str, Any] = field(default_factory=dict)
    per_item: Sequence[Mapping[str, Any]] | None = None


# -- the leaves: what makes an object a Scorer or a Ranker -----------------------------------------


@runtime_checkable
class Named(Protocol):
    """A backend's name, reported as ``details["model"]`` (a leaf without one goes by its class's name)."""

    @property
    def name(self) -> str: ...


@runtime_checkable
class Scaled(Protocol):
    """The :class:`ScoreScale` of a backend's scores: every scorer declares one."""

    @property
    def scale(self) -> ScoreScale: ...


@runtime_checkable
class Scores(Protocol):
    """What makes an object a scorer when it is wrapped (its ``name`` and ``scale`` are read then)."""

    def score(self, query: str, texts: Sequence[str]) -> list[float]: ...


@runtime_checkable
class Ranks(Protocol):
    """What makes an object a ranker when it is wrapped (its ``name`` is read then)."""

    def rank(self, query: str, texts: Sequence[str]) -> list[int]: ...


@runtime_checkable
class Scorer(Named, Scaled, Scores, Protocol):
    """Scores every text against the query: ``len(score(q, texts)) == len(texts)``, same order."""


@runtime_checkable
class Ranker(Named, Ranks, Protocol):
    """Orders texts by relevance: ``rank(q, texts)`` is a permutation of ``range(len(texts))``, best first."""


# -- optional capabilities: declared here, read once, where a leaf is wrapped (pipeline/leaves.py) ---


@runtime_checkable
class DetailedScorer(Protocol):
    """Scores with details (:class:`ScoreResult`); preferred over ``score`` when a leaf is wrapped
    (an object with this method and no ``score`` is a scorer too)."""

    def score_details(self, query: str, texts: Sequence[str]) -> ScoreResult: ...


@runtime_checkable
class AsyncScorer(Protocol):
    """A native async ``ascore`` (otherwise the sync method runs in a worker thread)."""

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]: ...


@runtime_checkable
class AsyncDetailedScorer(Protocol):
    """A native async ``ascore_details``; preferred over every other method on the async path."""

    async def ascore_details(self, query: str, texts: Sequence[str]) -> ScoreResult: ...


@runtime_checkable
class DetailedRanker(Protocol):
    """Ranks with details (:class:`ScoreResult` whose values are the permutation)."""

    def rank_details(self, query: str, texts: Sequence[str]) -> ScoreResult: ...


@runtime_checkable
class AsyncRanker(Protocol):
    """A native async ``arank``."""

    async def arank(self, query: str, texts: Sequence[str]) -> list[int]: ...


@runtime_checkable
class AsyncDetailedRanker(Protocol):
    """A native async ``arank_details``."""

    async def arank_details(self, query: str, texts: Sequence[str]) -> ScoreResult: ...


@runtime_checkable
class Purity(Protocol):
    """Declares whether a score is a pure function of (query, text) and the settings (``pure``;
    :class:`BaseScorer` says True). A leaf that does not declare it is taken as pure."""

    @property
    def pure(self) -> bool: ...


@runtime_checkable
class Fallible(Protocol):
    """Declares what a failure does (``on_error``): ``"raise"`` (the default of a leaf that does not
    declare it) or ``"keep_order"`` (the leaf passes its input through, marked)."""

    @property
    def on_error(self) -> str: ...


@runtime_checkable
class Fingerprinted(Protocol):
    """Every setting that changes a score, for cache keys (see :meth:`BaseScorer.fingerprint`); a
    leaf without it has no settings of its own."""

    def fingerprint(self) -> Mapping[str, Any]: ...


@runtime_checkable
class Templated(Protocol):
    """What a scorer reads of each candidate: ``document_template`` (a
    :class:`~rerankers_plugins.templates.DocumentTemplate`, a format string, a field list or a
    function of the candidate; None: the text alone). The leaf renders every candidate with it
    before calling the backend, and adds it to the leaf's fingerprint."""

    @property
    def document_template(self) -> Any: ...


@runtime_checkable
class DocumentCache(Protocol):
    """A document-vector cache: where on disk it keeps vectors (None: memory only)."""

    @property
    def directory(self) -> Path | None: ...


@runtime_checkable
class Indexable(Protocol):
    """A scorer with a document-vector cache (bi-encoder, ColBERT, poly-encoder): ``index(texts)`` encodes and
    stores ahead of scoring, returning how many texts were encoded."""

    @property
    def cache(self) -> DocumentCache: ...

    def index(self, texts: Sequence[str]) -> int: ...


class _InitArgs:
    """A scorer's constructor arguments, kept for copies and descriptions; never shown (they may
    hold keys or URLs with credentials)."""

    __slots__ = ("args", "kwargs")

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        return "<constructor arguments>"


class BaseScorer:
    """Convenience base: subclasses set ``name`` and ``scale`` and implement :meth:`score`.

    :meth:`ascore` runs :meth:`score` in a worker thread so that an event loop is never blocked
    by model compute; backends with a native async client override it.
    """

    name: str = "scorer"
    #: every scorer declares its own (a subclass that does not is refused when it is wrapped:
    #: a silent default scale would make thresholds mean the wrong thing)
    scale: ScoreScale
    #: True for scorers whose state is a loaded model (modules, tensors, tokenizers, locks): a
    #: pickled or deep-copied one is rebuilt from its constructor arguments, so the copy reloads
    #: the model from its files. Others copy their state as any object does.
    rebuild_on_copy: ClassVar[bool] = False
    _init_args: _InitArgs
    #: True when a score depends only on (query, text) and the settings: such scorers can be cached.
    #: A scorer whose score depends on the other candidates (BM25 over the list) sets it False.
    pure: bool = True
    #: what the scorer reads of each candidate (None: its text alone); see :class:`Templated`
    document_template: Any = None
    #: old keyword -> new keyword: an option that was renamed is still accepted under its old name,
    #: with a FutureWarning naming the new one (one name per idea across the scorers)
    renamed: ClassVar[Mapping[str, str]] = {}
    #: the local scorers' old name of ``model`` (the Hub id or directory), as the API scorers say it
    model_id = renamed_attribute("model_id", "model")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        accept_renamed(cls)

    def __new__(cls, *args: Any, **kwargs: Any) -> BaseScorer:
        self = super().__new__(cls)
        # what it was built with (under today's names): how a copy is rebuilt and how an adapter
        # describes it
        self._init_args = _InitArgs(tuple(args), _translate(cls, kwargs, warn=False))
        return self

    def init_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The positional and keyword arguments this scorer was constructed with."""
        held = getattr(self, "_init_args", None)
        return (tuple(held.args), dict(held.kwargs)) if held is not None else ((), {})

    def __reduce_ex__(self, protocol: Any) -> Any:
        if type(self).rebuild_on_copy:
            args, kwargs = self.init_args()
            return (_rebuild, (type(self), args, kwargs))
        return super().__reduce_ex__(protocol)

    def fingerprint(self) -> Mapping[str, Any]:
        """Every setting that changes a score (model, activation, ...), for cache keys. Subclasses
        extend it; plain JSON-like values only."""
        return {}

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        raise NotImplementedError

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        return await asyncio.to_thread(self.score, query, texts)

    def __repr__(self) -> str:
        scale = self.scale if isinstance(self, Scaled) else None  # a subclass may declare none
        shown = scale.value if isinstance(scale, ScoreScale) else scale
        return f"{type(self).__name__}(name={self.name!r}, scale={shown})"


def accept_renamed(cls: type[Any]) -> None:
    """Make ``cls``'s own ``__init__`` take the old names of its ``renamed`` options (each with a
    FutureWarning); for scorers and rankers that declare ``renamed``."""
    init = cls.__dict__.get("__init__")
    if init is None or not getattr(cls, "renamed", None):
        return

    @functools.wraps(init)
    def translated(self: Any, *args: Any, **kw: Any) -> None:
        init(self, *args, **_translate(type(self), kw, warn=True))

    cls.__init__ = translated


def translate_renamed(cls: type[Any], kwargs: dict[str, Any], *, stacklevel: int = 2) -> dict[str, Any]:
    """``kwargs`` for ``cls`` with its renamed options under their new names, each with a
    FutureWarning attributed ``stacklevel`` frames above the caller."""
    if not isinstance(cls, type) or not getattr(cls, "renamed", None):
        return kwargs
    return _translate(cls, kwargs, warn=True, stacklevel=stacklevel + 2)


def _translate(cls: type[Any], kwargs: dict[str, Any], *, warn: bool, stacklevel: int = 3) -> dict[str, Any]:
    """``kwargs`` with every old option name of ``cls.renamed`` replaced by its new one."""
    if not any(old in kwargs for old in cls.renamed):
        return kwargs
    out = dict(kwargs)
    for old, new in cls.renamed.items():
        if old not in out:
            continue
        if new in out:
            raise ConfigError(f"{cls.__name__}: pass {new}= only ({old}= is its old name)")
        if warn:
            # stacklevel 3: the user's line (this function < the __init__ wrapper < the caller)
            warn_renamed(f"{cls.__name__}({old}=...)", f"{new}=", stacklevel=stacklevel)
        out[new] = out.pop(old)
    return out


def _rebuild(cls: type[BaseScorer], args: tuple[Any, ...], kwargs: dict[str, Any]) -> BaseScorer:
    return cls(*args, **kwargs)
