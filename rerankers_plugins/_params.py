"""What a scorer's constructor takes, read from the constructor and its class docstring, never
listed by hand: each parameter's type, default and help text (its entry under ``Args:``), and
whether its value is a secret (typed :class:`~rerankers_plugins._secret.Secret`, or a string
annotated :data:`~rerankers_plugins._secret.MAY_HOLD_CREDENTIALS`) or a live object (typed as an
object rather than a value: a client, a policy, a chat model). The adapters' convenience fields,
the pipeline-file writer and the command line all read :func:`parameters`, so a parameter a scorer
gains is an option everywhere, with its help, the moment it is documented.

``**load: Unpack[LoadKwargs]`` expands to the :class:`~rerankers_plugins.scorers._hf.LoadOptions`
fields, with their defaults and their help from that class's docstring.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Param", "docstring_args", "parameters"]

_EMPTY = inspect.Parameter.empty
#: types whose values are settings (written to a pipeline file, shown, compared), not live objects
_VALUES: tuple[type, ...] = (
    str,
    bytes,
    int,
    float,
    bool,
    Path,
    os.PathLike,
    dict,
    list,
    tuple,
    Mapping,
    Sequence,
)


@dataclass(frozen=True)
class Param:
    """One constructor parameter as an option."""

    name: str
    annotation: Any
    default: Any  #: ``inspect.Parameter.empty`` when required
    help: str
    secret: bool  #: a credential (typed Secret): used, never shown, never serialized
    credentials: (
        bool  #: a value that may carry credentials (a URL): never shown; serialized only without them
    )
    live: bool  #: an object, not a value: passed through, never serialized

    @property
    def required(self) -> bool:
        return self.default is _EMPTY


_ENTRY = re.compile(r"^(\*\*)?([A-Za-z_][\w]*(?:\s*,\s*[A-Za-z_][\w]*)*)\s*:\s*(.*)$")
_ROLE = re.compile(r":[a-z]+:`~?(?:[\w.]+\.)?([^`<]+?)`")


def _plain(text: str) -> str:
    """reStructuredText markup to plain words: ``:class:`~a.B``` -> ``B``, double backquotes dropped."""
    return " ".join(_ROLE.sub(r"\1", text).replace("``", "").split())


def _first_sentence(text: str) -> str:
    """Up to the first full stop that ends a sentence (not the one of "e.g." or "i.e.")."""
    for match in re.finditer(r"(?<=[a-z0-9)\]'\"])\.(\s|$)", text):
        if not re.search(r"\b(e\.g|i\.e|etc|vs)$", text[: match.start()]):
            return text[: match.start() + 1]
    return text


def _args_section(doc: str) -> list[str]:
    """The non-blank lines of a docstring's ``Args:`` section, up to the next section."""
    lines = doc.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Args:"), None)
    if start is None:
        return []
    body = [line for line in lines[start + 1 :] if line.strip()]
    indent = len(body[0]) - len(body[0].lstrip()) if body else 0
    out: list[str] = []
    for line in body:
        if len(line) - len(line.lstrip()) < indent:
            break  # the next section
        out.append(line[indent:])
    return out


@functools.cache
def docstring_args(owner: type) -> dict[str, str]:
    """The ``Args:`` entries of ``owner``'s docstring, one plain-text paragraph per parameter name
    (an entry naming several, ``device, dtype: ...``, gives each the text; ``**load`` none)."""
    out: dict[str, str] = {}
    names: list[str] = []
    for line in _args_section(inspect.getdoc(owner) or ""):
        if line[0].isspace():  # a continuation of the entry above
            for name in names:
                out[name] += " " + line.strip()
            continue
        match = _ENTRY.match(line)
        if match is None:
            break
        names = [] if match.group(1) else [n.strip() for n in match.group(2).split(",")]
        out.update((name, match.group(3)) for name in names)
    return {name: _plain(text) for name, text in out.items()}


_AS_FOR = re.compile(r"^(?:as for|see) (?::[a-z]+:`~?(?:[\w.]+\.)?(\w+)`|``?(\w+)``?|(\w+Scorer))")


def _help(owner: type, name: str) -> str:
    """The first sentence of ``name``'s entry in ``owner``'s docstring (or in the class an entry
    defers to: "as for :class:`CrossEncoderScorer`"); empty when undocumented."""
    raw = docstring_args(owner).get(name, "")
    match = _AS_FOR.match(raw)
    if match is not None:
        import rerankers_plugins

        other = getattr(rerankers_plugins, next(g for g in match.groups() if g), None)
        if isinstance(other, type) and other is not owner:
            return _help(other, name)
    return _first_sentence(raw)


def _members(annotation: Any) -> list[Any]:
    """The types a (possibly union, possibly Annotated) annotation allows, None left out."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _members(a)]
    return [] if annotation is type(None) else [annotation]


def _is_secret(annotation: Any) -> bool:
    from rerankers_plugins._secret import Secret

    return any(m is Secret for m in _members(annotation))


def _may_hold_credentials(annotation: Any) -> bool:
    from rerankers_plugins._secret import MAY_HOLD_CREDENTIALS

    if typing.get_origin(annotation) is typing.Annotated:
        return MAY_HOLD_CREDENTIALS in typing.get_args(annotation)[1:]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_may_hold_credentials(m) for m in typing.get_args(annotation))
    return False


def _param(owner: type, name: str, annotation: Any, default: Any) -> Param:
    return Param(
        name,
        annotation,
        default,
        _help(owner, name),
        secret=_is_secret(annotation),
        credentials=_may_hold_credentials(annotation),
        live=_is_live(annotation),
    )


def _is_value(member: Any) -> bool:
    origin = typing.get_origin(member) or member
    if origin is typing.Literal:
        return True
    return isinstance(origin, type) and (issubclass(origin, _VALUES) or issubclass(origin, enum.Enum))


def _is_live(annotation: Any) -> bool:
    from rerankers_plugins._secret import Secret

    members = [m for m in _members(annotation) if m is not Secret]
    return bool(members) and not all(_is_value(m) for m in members)


def _unpacked(owner: type, annotation: Any) -> list[Param]:
    """The options of ``**load: Unpack[LoadKwargs]``: the :class:`LoadOptions` fields."""
    from rerankers_plugins.scorers._hf import LoadKwargs, LoadOptions

    if typing.get_origin(annotation) is not typing.Unpack or typing.get_args(annotation)[0] is not LoadKwargs:
        return []
    hints = typing.get_type_hints(LoadKwargs, include_extras=True)
    return [_param(LoadOptions, f.name, hints[f.name], f.default) for f in dataclasses.fields(LoadOptions)]


def parameters(owner: type) -> dict[str, Param]:
    """The keyword options of ``owner``'s constructor (``self`` and ``*args`` left out)."""
    return dict(_parameters(owner))


@functools.cache
def _parameters(owner: Any) -> dict[str, Param]:
    init = owner.__init__
    hints = typing.get_type_hints(init, include_extras=True)
    out: dict[str, Param] = {}
    for name, p in inspect.signature(init).parameters.items():
        if name == "self" or p.kind is p.VAR_POSITIONAL:
            continue
        annotation = hints.get(name, Any)
        if p.kind is p.VAR_KEYWORD:
            out.update((q.name, q) for q in _unpacked(owner, annotation))
            continue
        out[name] = _param(owner, name, annotation, p.default)
    return out
