"""Pipelines described as data (command line or TOML), built into scorers and strategies.

A pipeline spec is a dict. A scorer: ``{"scorer": "<registry name>", <constructor options>}``, where
``model = "minilm"`` stands for the all-MiniLM-L6-v2 weights of the ``demo`` extra. A strategy:

* ``{"threshold": <spec>, "absolute": 0.5, "relative": ..., "min_keep": ...}``
* ``{"selective": <spec>, "k": 20, "rest": "keep"}``
* ``{"cascade": [{"stage": <spec>, "keep": 30, "threshold": ...}, ...]}``
* ``{"hybrid": [{"signal": <spec> | "retrieval", "weight": 0.7, "name": ...}, ...], "method": "weighted"}``
* ``{"cached": <spec>}``, ``{"long_document": <spec>, "max_words": 200}``
* ``{"use": "<name of another pipeline in the same file>"}``

On the command line, ``NAME=KIND[:key=value,...]`` builds a scorer spec, e.g.
``maxsim=colbert:model=minilm`` (values are parsed as int, float, bool or None where they look
like one).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rerankers_plugins.errors import ConfigError
from rerankers_plugins.pipeline.leaves import ScorerLike
from rerankers_plugins.registry import STRATEGIES, get_scorer, load

__all__ = ["build_pipeline", "build_pipelines", "load_pipeline_file", "parse_pipeline_arg"]


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


def parse_pipeline_arg(arg: str) -> tuple[str, dict[str, Any]]:
    """``"maxsim=colbert:model=minilm,max_length=256"`` -> ``("maxsim", {"scorer": "colbert", ...})``.

    >>> parse_pipeline_arg("ce=cross-encoder:model=./ce,batch_size=16")
    ('ce', {'scorer': 'cross-encoder', 'model': './ce', 'batch_size': 16})
    """
    name, sep, rest = arg.partition("=")
    if not sep or not name or not rest:
        raise ConfigError(f"--pipeline must look like NAME=KIND[:key=value,...], got {arg!r}")
    kind, _, opts = rest.partition(":")
    spec: dict[str, Any] = {"scorer": kind}
    for item in filter(None, opts.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"pipeline option {item!r} in {arg!r} must look like key=value")
        spec[key] = _value(value)
    return name, spec


def load_pipeline_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """``[pipelines.<name>]`` tables of a TOML file."""
    import tomllib

    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read pipeline file {path}: {exc}") from exc
    pipelines = data.get("pipelines")
    if not isinstance(pipelines, dict) or not pipelines:
        raise ConfigError(f"{path} has no [pipelines.<name>] tables")
    return pipelines


def build_pipeline(spec: dict[str, Any], named: dict[str, ScorerLike] | None = None) -> ScorerLike:
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
        if kind == "colbert":  # reruns reuse the document vectors
            spec.setdefault("cache_dir", str(Path.home() / ".cache" / "rerankers-plugins" / "colbert"))
        return get_scorer(kind, **spec)
    keys = [k for k in STRATEGIES if k in spec]
    if len(keys) != 1:
        raise ConfigError(
            f"cannot tell what pipeline this is: {spec!r} (a spec has 'scorer', 'use' or one of {sorted(STRATEGIES)})"
        )
    key = keys[0]
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


def build_pipelines(specs: dict[str, dict[str, Any]]) -> dict[str, ScorerLike]:
    """Build every named spec, in order; later ones may ``use`` earlier ones (built once, shared)."""
    built: dict[str, ScorerLike] = {}
    for name, spec in specs.items():
        built[name] = build_pipeline(spec, built)
    return built
