"""Document templates: what a scorer reads of a candidate, its text and chosen metadata.

Retrieved chunks carry a title, a section, a source or a date in their metadata; a reranker that
reads the chunk text alone ranks a "Results" or "Table 3" chunk below one that merely repeats the
query's words. Every leaf scorer takes ``document_template=``, in one of three forms:

- a format string, ``"{title}\\n{section}\\n{text}"``: ``{text}`` and ``{id}`` are the candidate's,
  any other name is a metadata key (``{date:%Y}`` formats as ``str.format`` does);
- a list of field names, ``["title", "text"]``: the structured form Cohere documents for its
  rerank models (one YAML document per candidate, keys in the order given, as Cohere's
  ``yaml.dump(doc, sort_keys=False)`` recipe writes it, non-ASCII text kept as text and values
  written as plain data); any scorer reads it;
- a function of the :class:`~rerankers_plugins.Candidate` returning the text.

In a pipeline file (TOML) a template with defaults is a table:
``document_template = { template = "{section}: {text}", defaults = { section = "" } }``.

A field the candidate lacks (or holds as None) is a :class:`~rerankers_plugins.ConfigError` naming
the field and the candidate, unless the template declares a default for it
(``DocumentTemplate("{title}\\n{text}", defaults={"title": ""})``): never a silent "None" in what
the model reads. The template is part of the scorer's fingerprint (cache keys, batch manifests).

>>> from rerankers_plugins import Candidate
>>> t = DocumentTemplate("{title} | {text}")
>>> t.render(Candidate("Mice were fed.", id="d1", metadata={"title": "Methods"}))
'Methods | Mice were fed.'
>>> print(DocumentTemplate(["title", "text"]).render(Candidate("Mice were fed.", metadata={"title": "Methods"})), end="")
title: Methods
text: Mice were fed.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import marshal
import math
import numbers
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.types import Candidate, thaw

__all__ = ["DocumentTemplate", "TemplateLike", "as_template"]


def _placeholders(template: str) -> list[str]:
    """The field names of a format string, each checked to be a name a candidate can carry.

    >>> _placeholders("{title}: {text} ({date:%Y}) {source-url}")
    ['title', 'text', 'date', 'source-url']
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:  # "Single '}' encountered", "expected '}' before end of string"
        raise ConfigError(f"document_template {template!r} is not a valid format string: {exc}") from None
    names = []
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        # str.format reads "{a.b}" and "{a[0]}" as attribute and item access, "{}" and "{0}" as
        # positional arguments: nothing a candidate carries; any other key (a DataFrame column
        # such as "source-url" or "Publication Year") is a metadata key
        if not field or field.isdigit() or any(c in field for c in ".[]"):
            shown = "{" + field + "}"
            raise ConfigError(
                f"document_template {template!r}: placeholder {shown} names nothing a candidate can "
                "carry (use {text}, {id} or a metadata key such as {title}; for anything else pass a "
                "function of the candidate)"
            )
        if spec and "{" in spec:
            raise ConfigError(f"document_template {template!r}: nested placeholders are not supported")
        if conversion not in (None, "r", "s", "a"):
            raise ConfigError(
                f"document_template {template!r}: unknown conversion !{conversion} (str.format knows !r, !s, !a)"
            )
        names.append(field)
    return names


def _code_digest(fn: Callable[..., Any]) -> str:
    """A function's identity for fingerprints: its qualified name and a digest of its code."""
    code = getattr(fn, "__code__", None)
    name = f"{getattr(fn, '__module__', None)}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
    if code is None:  # a callable object, a partial, a builtin: its name and type only
        return f"{name}:{type(fn).__module__}.{type(fn).__qualname__}"
    return f"{name}:{hashlib.sha256(marshal.dumps(code)).hexdigest()[:16]}"


class DocumentTemplate:
    """What a scorer reads of each candidate (see the module's description for the three forms).

    Args:
        template: a format string, a list of field names (the structured YAML form), or a
            function ``candidate -> str``.
        defaults: per field, the text used when a candidate lacks it or holds None (format
            strings and field lists only; every key must be one of the template's fields).
    """

    __slots__ = ("_fn", "_yaml", "defaults", "fields", "kind", "template")

    template: str | tuple[str, ...] | Callable[[Candidate], str]
    kind: str
    fields: tuple[str, ...]

    def __init__(self, template: TemplateLike, *, defaults: Mapping[str, Any] | None = None) -> None:
        if isinstance(template, DocumentTemplate):
            defaults = {**template.defaults, **(defaults or {})}
            template = template.template
        elif isinstance(template, Mapping):  # a pipeline file's table: {template, defaults}
            unknown_keys = sorted(set(template) - {"template", "defaults"})
            if "template" not in template or unknown_keys:
                raise ConfigError(
                    "document_template as a table takes 'template' and optionally 'defaults', got keys "
                    f"{sorted(template)}"
                )
            defaults = {**dict(template.get("defaults") or {}), **(defaults or {})}
            template = template["template"]
        self._fn: Callable[[Candidate], Any] | None = None
        self._yaml: Any = None
        if isinstance(template, str):
            self.kind = "format"
            self.fields = tuple(dict.fromkeys(_placeholders(template)))
            if not self.fields:
                raise ConfigError(
                    f"document_template {template!r} has no placeholder: every candidate would read the same "
                    "text (use {text}, and metadata keys such as {title})"
                )
        elif callable(template):
            self.kind = "function"
            self.fields = ()
            self._fn = template
            if defaults:
                raise ConfigError(
                    "document_template: defaults apply to a format string or a field list, not a function"
                )
        elif isinstance(template, Sequence) and not isinstance(template, bytes):
            self.kind = "fields"
            fields = list(template)
            bad = [f for f in fields if not isinstance(f, str) or not f]
            if not fields or bad:
                raise ConfigError(
                    "document_template as a list names the fields to send, as non-empty strings "
                    f"(e.g. ['title', 'text']), got {fields!r}"
                )
            if len(set(fields)) != len(fields):
                raise ConfigError(f"document_template lists a field twice: {fields!r}")
            self.fields = tuple(fields)
            self._yaml = require("yaml", "cohere")
            template = tuple(fields)
        else:
            raise ConfigError(
                "document_template must be a format string ('{title}\\n{text}'), a list of field names "
                f"(['title', 'text']) or a function of the candidate, got {type(template).__name__}"
            )
        self.template = template
        defaults = dict(defaults or {})
        unknown = sorted(set(defaults) - set(self.fields))
        if unknown:
            raise ConfigError(
                f"document_template: defaults for {unknown} name no field of the template (its fields: "
                f"{list(self.fields)})"
            )
        bad_default = {k: v for k, v in defaults.items() if v is None}
        if bad_default:
            raise ConfigError(
                f"document_template: the default of {sorted(bad_default)} is None (give a text)"
            )
        self.defaults: dict[str, Any] = defaults

    def _value(self, candidate: Candidate, field: str, who: str) -> Any:
        value: Any
        if field == "text":
            value = candidate.text
        elif field == "id":
            value = candidate.id
        else:
            value = candidate.metadata.get(field)
        if value is None or (isinstance(value, float) and math.isnan(value)):  # NaN: a missing cell
            if field in self.defaults:
                return self.defaults[field]
            held = ", ".join(sorted(map(str, candidate.metadata))) or "none"
            raise ConfigError(
                f"document_template needs {field!r}, which candidate {who} lacks (its metadata keys: {held}); "
                f"give the field a default, e.g. DocumentTemplate(..., defaults={{{field!r}: ''}})"
            )
        return value

    def render(self, candidate: Candidate, who: str | None = None) -> str:
        """The text a scorer reads for ``candidate`` (``who``: how errors name it)."""
        who = who or (repr(candidate.id) if candidate.id is not None else "without an id")
        if self._fn is not None:
            try:
                out = self._fn(candidate)
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(
                    f"document_template {_code_digest(self._fn).split(':')[0]} failed on candidate {who}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(out, str):
                raise ConfigError(
                    f"document_template returned {type(out).__name__} for candidate {who}, not a str"
                )
            return out
        values = {f: thaw(self._value(candidate, f, who)) for f in self.fields}
        if self._yaml is not None:
            # Cohere's documented recipe for semi-structured documents (docs.cohere.com, "Rerank:
            # semi-structured data"): yaml.dump(doc, sort_keys=False), keys in the order given;
            # plain values only (safe_dump) and text as text (allow_unicode: a multilingual model
            # reads "Café", not "Caf\\xE9")
            doc = {f: _plain(v) for f, v in values.items()}
            return str(self._yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
        try:
            return str(self.template).format_map(values)
        except (ValueError, TypeError) as exc:  # a format spec the value cannot take
            raise ConfigError(f"document_template {self.template!r} on candidate {who}: {exc}") from None

    def setting(self) -> str | list[str] | dict[str, Any]:
        """The template as a pipeline-file setting (ConfigError for a function: it is code)."""
        if self._fn is not None:
            raise ConfigError(
                f"{self!r} is a function, not a setting: use a format string or a field list in a pipeline file"
            )
        body = list(self.template) if isinstance(self.template, tuple) else str(self.template)
        return {"template": body, "defaults": dict(self.defaults)} if self.defaults else body

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the template in cache keys and batch manifests."""
        body: Any = _code_digest(self._fn) if self._fn is not None else self.template
        return {
            "kind": self.kind,
            "template": list(body) if isinstance(body, tuple) else body,
            "defaults": {k: str(v) for k, v in sorted(self.defaults.items())},
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DocumentTemplate) and self.fingerprint() == other.fingerprint()

    def __hash__(self) -> int:
        return hash(repr(self.fingerprint()))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.template, self.defaults))

    def __repr__(self) -> str:
        shown = _code_digest(self._fn).split(":")[0] if self._fn is not None else repr(self.template)
        extra = f", defaults={self.defaults!r}" if self.defaults else ""
        return f"DocumentTemplate({shown}{extra})"


#: what ``document_template=`` accepts
TemplateLike = Union[  # noqa: UP007
    DocumentTemplate, str, Sequence[str], Mapping[str, Any], Callable[[Candidate], str]
]


def _rebuild(template: TemplateLike, defaults: dict[str, Any]) -> DocumentTemplate:
    return DocumentTemplate(template, defaults=defaults)


def _plain(value: Any) -> Any:
    """A metadata value as plain YAML data: mappings and sequences as dicts and lists, numbers of
    any library (numpy, Decimal) as int / float, dates as dates, anything else as its text (never a
    ``!!python/object`` tag in what the model reads).

    >>> import decimal
    >>> _plain({"n": decimal.Decimal("1.5"), "tags": ("a", "b"), "s": {2, 1}})
    {'n': 1.5, 'tags': ['a', 'b'], 's': [1, 2]}
    """
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_plain(v) for v in value), key=repr)
    if value is None or isinstance(value, bool | int | float | str | datetime.date):
        return value
    if hasattr(value, "item") and callable(value.item):  # a numpy scalar
        return _plain(value.item())
    if isinstance(value, decimal.Decimal):  # not a numbers.Real
        return float(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return str(value)


def as_template(value: TemplateLike | None) -> DocumentTemplate | None:
    """``document_template=`` as a :class:`DocumentTemplate` (None stays None: the text alone)."""
    if value is None:
        return None
    return value if isinstance(value, DocumentTemplate) else DocumentTemplate(value)
