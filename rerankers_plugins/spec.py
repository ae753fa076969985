"""Pipeline specs: the one format that ``eval --config``, ``tune`` and the adapters' ``from_spec`` read.

A pipeline spec is a dict. A scorer: ``{"scorer": "<registry name>", <constructor options>}``, where
``model = "minilm"`` stands for the all-MiniLM-L6-v2 weights of the ``demo`` extra. A strategy:

* ``{"threshold": <spec>, "absolute": 0.5, "relative": ..., "min_keep": ...}``
* ``{"selective": <spec>, "k": 20, "rest": "keep", "skip_if_margin": ..., "skip_if_top": ...}``
* ``{"cascade": [{"stage": <spec>, "keep": 30, "threshold": ..., "name": ...}, ...]}``
* ``{"hybrid": [{"signal": <spec> | "retrieval", "weight": 0.7, "name": ...}, ...], "method": "weighted"}``
* ``{"cached": <spec>}``, ``{"long_document": <spec>, "max_words": 200}``
* ``{"use": "<name of another pipeline in the same file>"}``

A file holds ``[pipelines.<name>]`` tables; a top-level ``pipeline = "<name>"`` names the one
:func:`load_pipeline` builds when no name is given (``rerankers-plugins tune`` writes such files).

On the command line, ``NAME=KIND[:key=value,...]`` builds a scorer spec, e.g.
``maxsim=colbert:model=minilm`` (values are parsed as int, float, bool or None where they look
like one).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rerankers_plugins.errors import ConfigError
from rerankers_plugins.pipeline.leaves import ScorerLike
from rerankers_plugins.registry import BACKENDS, STRATEGIES, get_scorer, load

__all__ = [
    "Spec",
    "build_pipeline",
    "build_pipelines",
    "dumps_pipeline_file",
    "inline",
    "load_pipeline",
    "load_pipeline_file",
    "parse_pipeline_arg",
    "pipeline_spec",
    "scorer_options",
    "scorer_spec",
    "write_pipeline_file",
]

#: a pipeline spec: plain data (str, numbers, bools, lists, dicts), as TOML and JSON hold it
Spec = dict[str, Any]


#: scorer kinds whose document vectors a pipeline spec keeps on disk by default, under
#: ``~/.cache/rerankers-plugins/<kind>`` (keyed by the weights' digest and settings), so that reruns of
#: ``eval``, ``tune`` and ``batch`` encode only the queries
DISK_CACHED: tuple[str, ...] = ("colbert", "bi-encoder")


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_pipeline_arg(arg: str) -> tuple[str, Spec]:
    """``"maxsim=colbert:model=minilm,max_length=256"`` -> ``("maxsim", {"scorer": "colbert", ...})``.

    >>> parse_pipeline_arg("ce=cross-encoder:model=./ce,batch_size=16")
    ('ce', {'scorer': 'cross-encoder', 'model': './ce', 'batch_size': 16})
    """
    name, sep, rest = arg.partition("=")
    if not sep or not name or not rest:
        raise ConfigError(f"--pipeline must look like NAME=KIND[:key=value,...], got {arg!r}")
    kind, _, opts = rest.partition(":")
    spec: Spec = {"scorer": kind}
    for item in filter(None, opts.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"pipeline option {item!r} in {arg!r} must look like key=value")
        spec[key] = _value(value)
    return name, spec


def _read_toml(path: str | Path) -> dict[str, Any]:
    import tomllib

    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read pipeline file {path}: {exc}") from exc


def _pipelines_of(data: Mapping[str, Any], where: str) -> dict[str, Spec]:
    pipelines = data.get("pipelines")
    if not isinstance(pipelines, dict) or not pipelines:
        raise ConfigError(f"{where} has no [pipelines.<name>] tables")
    return pipelines


def load_pipeline_file(path: str | Path) -> dict[str, Spec]:
    """``[pipelines.<name>]`` tables of a TOML file."""
    return _pipelines_of(_read_toml(path), str(path))


def build_pipeline(spec: Spec, named: Mapping[str, ScorerLike] | None = None) -> ScorerLike:
    """Build one spec (see the module docstring); ``named`` resolves ``{"use": name}``. Scorer
    kinds and strategy keys come from :mod:`rerankers_plugins.registry`."""
    from rerankers_plugins.pipeline import Signal, Stage

    named = named or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"a pipeline spec must be a table/dict, got {spec!r}")
    spec = dict(spec)

    def sub(value: Any) -> ScorerLike:
        if isinstance(value, str):
            if value not in named:
                raise ConfigError(f"pipeline {value!r} is not defined (known: {sorted(named)})")
            return named[value]
        return build_pipeline(value, named)

    if "use" in spec:
        return sub(spec["use"])
    if "scorer" in spec:
        kind = spec.pop("scorer")
        if kind in DISK_CACHED:  # reruns reuse the document vectors
            spec.setdefault("cache_dir", str(Path.home() / ".cache" / "rerankers-plugins" / kind))
        return get_scorer(kind, **spec)
    key = _strategy_key(spec)
    cls: Callable[..., ScorerLike] = load(STRATEGIES[key])
    inner = spec.pop(key)
    if key == "cascade":
        return cls(
            [
                Stage(sub(s["stage"]), keep=s.get("keep"), threshold=s.get("threshold"), name=s.get("name"))
                for s in inner
            ]
        )
    if key == "hybrid":
        signals = [
            Signal(
                s["signal"] if s["signal"] == "retrieval" else sub(s["signal"]),
                s["weight"],
                name=s.get("name"),
            )
            for s in inner
        ]
        return cls(signals, **spec)
    return cls(sub(inner), **spec)


def _strategy_key(spec: Mapping[str, Any]) -> str:
    keys = [k for k in STRATEGIES if k in spec]
    if len(keys) != 1:
        raise ConfigError(
            f"cannot tell what pipeline this is: {dict(spec)!r} (a spec has 'scorer', 'use' or one of "
            f"{sorted(STRATEGIES)})"
        )
    return keys[0]


def build_pipelines(specs: Mapping[str, Spec]) -> dict[str, ScorerLike]:
    """Build every named spec, in order; later ones may ``use`` earlier ones (built once, shared)."""
    built: dict[str, ScorerLike] = {}
    for name, spec in specs.items():
        built[name] = build_pipeline(spec, built)
    return built


def load_pipeline(source: str | Path | Mapping[str, Any], name: str | None = None) -> ScorerLike:
    """One pipeline, built: from a TOML file (``"file.toml"`` or ``"file.toml#name"``), from a
    document with ``pipelines`` tables, or from a single spec dict.

    Without a name, a file's (or document's) top-level ``pipeline = "<name>"`` picks it, else its
    only pipeline; a file of several pipelines and no such key is a ConfigError listing them.
    Pipelines it ``use``s are built with it.

    >>> load_pipeline({"scorer": "fake"}).name
    'fake-overlap'
    """
    return build_pipeline(pipeline_spec(source, name))


def pipeline_spec(source: str | Path | Mapping[str, Any], name: str | None = None) -> Spec:
    """The spec :func:`load_pipeline` builds, standing alone (every ``use`` inlined): what a batch
    job's workers build from and its fingerprint covers.

    >>> pipeline_spec({"pipelines": {"a": {"scorer": "bm25"}, "b": {"threshold": "a", "absolute": 1.0}},
    ...                "pipeline": "b"})
    {'threshold': {'scorer': 'bm25'}, 'absolute': 1.0}
    """
    if isinstance(source, Mapping):
        data: Mapping[str, Any] = source
        where = "the pipeline document"
        if "pipelines" not in data:
            return dict(data)
    else:
        path, _, fragment = str(source).partition("#")
        name = name or fragment or None
        data, where = _read_toml(path), path
    specs = _pipelines_of(data, where)
    default = data.get("pipeline")
    name = name or (default if isinstance(default, str) else None)
    if name is None:
        if len(specs) != 1:
            raise ConfigError(
                f"{where} has {len(specs)} pipelines ({', '.join(specs)}): name one (file.toml#name), "
                'or add a top-level pipeline = "<name>"'
            )
        name = next(iter(specs))
    if name not in specs:
        raise ConfigError(f"{where} has no pipeline {name!r}; it has {', '.join(specs)}")
    spec: Spec = inline(specs[name], specs)
    return spec


def inline(spec: Any, specs: Mapping[str, Spec]) -> Any:
    """``spec`` with every ``{"use": name}`` and string stage / signal replaced by the named spec
    (recursively), so that it stands alone.

    >>> inline({"cascade": [{"stage": "a", "keep": 5}]}, {"a": {"scorer": "bm25"}})
    {'cascade': [{'stage': {'scorer': 'bm25'}, 'keep': 5}]}
    """
    return _inline(spec, specs, ())


def _inline(spec: Any, specs: Mapping[str, Spec], seen: tuple[str, ...]) -> Any:
    def named(ref: str) -> Any:
        if ref not in specs:
            raise ConfigError(f"pipeline {ref!r} is not defined (known: {sorted(specs)})")
        if ref in seen:
            raise ConfigError(f"pipeline {ref!r} uses itself ({' -> '.join((*seen, ref))})")
        return _inline(specs[ref], specs, (*seen, ref))

    if not isinstance(spec, dict):
        return spec
    if "use" in spec:
        return named(spec["use"])
    if "scorer" in spec:
        return dict(spec)
    key = _strategy_key(spec)
    out = dict(spec)
    if key == "cascade":
        out[key] = [
            {
                **s,
                "stage": named(s["stage"])
                if isinstance(s["stage"], str)
                else _inline(s["stage"], specs, seen),
            }
            for s in spec[key]
        ]
    elif key == "hybrid":
        out[key] = [
            {
                **s,
                "signal": s["signal"]
                if s["signal"] == "retrieval"
                else named(s["signal"])
                if isinstance(s["signal"], str)
                else _inline(s["signal"], specs, seen),
            }
            for s in spec[key]
        ]
    else:
        inner = spec[key]
        out[key] = named(inner) if isinstance(inner, str) else _inline(inner, specs, seen)
    return out


# -- scorers back to specs ---------------------------------------------------------------------------


def scorer_options(scorer: Any) -> tuple[str, dict[str, Any]]:
    """A registry backend's scorer as its registry name and constructor options (credentials left
    out, the positional argument under its name), which :func:`~rerankers_plugins.registry.get_scorer`
    turns back into an equal scorer. ConfigError naming anything that cannot be: a scorer outside
    the registry, one built from an object, an option that is an object or a URL with credentials."""
    from rerankers_plugins._params import parameters
    from rerankers_plugins._secret import Secret
    from rerankers_plugins.scorers.base import BaseScorer
    from rerankers_plugins.templates import DocumentTemplate

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
    # credentials are never written (read from the environment again where the backend can):
    # the options typed as secrets, and any value that is one
    params = parameters(type(scorer))
    options = {
        k: v.setting() if isinstance(v, DocumentTemplate) else v
        for k, v in options.items()
        if not (k in params and params[k].secret) and not isinstance(v, Secret)
    }
    _check_settings(label, options)
    return kind, options


def _check_settings(label: str, options: Mapping[str, Any]) -> None:
    """ConfigError where an option is not a plain setting: a URL holding credentials, an object."""
    from rerankers_plugins._secret import url_secrets

    for key, value in options.items():
        if isinstance(value, str) and "://" in value and url_secrets(value):
            raise ConfigError(
                f"{label!r} cannot be described as settings: its {key} holds credentials; pass the key "
                "as api_key= or through the environment instead"
            )
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{label!r} cannot be described as settings: its option {key}={type(value).__name__} "
                "is an object, not a setting; pickle the adapter instead"
            ) from None


def scorer_spec(scorer: Any) -> Spec:
    """A registry backend's scorer as a spec: ``{"scorer": kind, **options}`` (see :func:`scorer_options`).

    >>> from rerankers_plugins import BM25Scorer
    >>> scorer_spec(BM25Scorer(k1=1.5))
    {'scorer': 'bm25', 'k1': 1.5}
    """
    kind, options = scorer_options(scorer)
    return {"scorer": kind, **options}


# -- writing TOML --------------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(key: Any) -> str:
    if not isinstance(key, str):
        raise ConfigError(f"a pipeline spec's keys are strings, got {key!r}")
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    # JSON's escapes are TOML's, except that TOML also wants DEL escaped
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where}: {value} cannot be written to a pipeline file")
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v, where) for v in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{_key(k)} = {_toml(v, f'{where}.{k}')}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    if value is None:
        raise ConfigError(f"{where} is None, which TOML cannot hold: leave the option out for its default")
    raise ConfigError(f"{where} is a {type(value).__name__}, not a setting a pipeline file can hold")


def dumps_pipeline_file(
    pipelines: Mapping[str, Spec], *, default: str | None = None, header: str = ""
) -> str:
    """A pipeline file's text: ``header`` as comment lines, ``pipeline = default``, then one
    ``[pipelines.<name>]`` table per spec (nested specs as inline tables). Reads back, with
    :func:`load_pipeline_file`, as exactly ``pipelines``.

    >>> print(dumps_pipeline_file({"p": {"selective": {"scorer": "bm25"}, "k": 20}}, default="p"))
    pipeline = "p"
    <BLANKLINE>
    [pipelines.p]
    selective = { scorer = "bm25" }
    k = 20
    <BLANKLINE>
    """
    if default is not None and default not in pipelines:
        raise ConfigError(f"default pipeline {default!r} is not among {list(pipelines)}")
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    if default is not None:
        lines.append(f"pipeline = {_string(default)}")
    for name, spec in pipelines.items():
        if not isinstance(spec, Mapping):
            raise ConfigError(f"pipeline {name!r} must be a table/dict, got {spec!r}")
        lines += ["", f"[pipelines.{_key(name)}]"]
        lines += [f"{_key(k)} = {_toml(v, f'{name}.{k}')}" for k, v in spec.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


def write_pipeline_file(
    path: str | Path, pipelines: Mapping[str, Spec], *, default: str | None = None, header: str = ""
) -> Path:
    """Write :func:`dumps_pipeline_file` to ``path`` (through a temporary file, renamed)."""
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(dumps_pipeline_file(pipelines, default=default, header=header), encoding="utf-8")
    tmp.replace(out)
    return out
