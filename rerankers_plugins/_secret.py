"""Secrets: a string that never shows itself in reprs, logs or tracebacks (:class:`Secret`), the
credentials a URL holds (:func:`url_secrets`, :func:`shown_url`), and their redaction from the
HTTP clients' logs (:func:`hide_in_http_logs`, :func:`redact`)."""

from __future__ import annotations

import logging
import os
import re
import threading
import urllib.parse
import weakref
from collections.abc import Sequence
from typing import Annotated

from rerankers_plugins.errors import ConfigError

__all__ = [
    "MAY_HOLD_CREDENTIALS",
    "CredentialURL",
    "Secret",
    "hide_in_http_logs",
    "redact",
    "secret_from",
    "shown_url",
    "split_query",
    "url_secrets",
]

#: marks a parameter type whose values may carry credentials (``Annotated[str, MAY_HOLD_CREDENTIALS]``):
#: such options are used, never shown, never serialized, like :class:`Secret` ones
MAY_HOLD_CREDENTIALS = "may hold credentials"
#: a URL that may carry credentials (``http://user:KEY@host``, ``?api_key=KEY``)
CredentialURL = Annotated[str, MAY_HOLD_CREDENTIALS]


class Secret:
    """Holds an API key; ``str()``/``repr()`` print ``'**********'``. Use :meth:`get_secret_value`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("Secret values are not picklable")


def secret_from(value: str | Secret | None, env: str, *, required: bool, who: str) -> Secret | None:
    """The key passed in, else the environment variable ``env``; ConfigError if required and absent."""
    if isinstance(value, Secret):
        return value
    if value is None:
        value = os.environ.get(env) or None
    if value is None:
        if required:
            raise ConfigError(
                f"{who} needs an API key: pass api_key=... or set the {env} environment variable"
            )
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{who}: api_key must be a non-empty string")
    return Secret(value.strip())


_SECRET_PARAMS = re.compile(
    r"(?i)^(api[-_]?key|key|token|access[-_]?token|auth|authorization|password|passwd|secret|client[-_]?secret"
    r"|sig|signature|x-api-key|subscription[-_]?key|code)$"
)


def split_query(url: str) -> tuple[str, list[tuple[str, str]]]:
    """``url`` without its query string, and the query's parameters (sent with every request,
    so that a path can be appended to the base URL)."""
    parts = urllib.parse.urlsplit(url)
    base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    return base, urllib.parse.parse_qsl(parts.query, keep_blank_values=True)


def _query_pairs(query: str) -> list[tuple[str, str, str, bool]]:
    """Each ``name=value`` of a query string as written: the pair, its name, its value, and whether
    the value is a credential (under a name that says so)."""
    out = []
    for pair in query.split("&") if query else []:
        name, _, value = pair.partition("=")
        secret = bool(value) and _SECRET_PARAMS.match(urllib.parse.unquote_plus(name)) is not None
        out.append((pair, name, value, secret))
    return out


def url_secrets(url: str) -> list[Secret]:
    """The secret parts of ``url``: a userinfo password (or a lone user name) and the values of
    query parameters whose names say they are credentials."""
    parts = urllib.parse.urlsplit(url)
    found = []
    if parts.password:
        found.append(parts.password)
    elif parts.username:
        found.append(parts.username)
    for _, _, value, secret in _query_pairs(parts.query):
        if secret:
            found += [value, urllib.parse.unquote_plus(value)]  # as written, and as decoded
    return [Secret(v) for v in found]


def shown_url(url: str) -> str:
    """``url`` as it may be shown: the parts :func:`url_secrets` finds replaced by ``***`` where
    they stand (the password, else a lone user name; the credential query values), so that a short
    password never masks a piece of the scheme, host or path that happens to contain it."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        host = netloc.rpartition("@")[2]
        if parts.password:
            netloc = f"{netloc.partition(':')[0]}:***@{host}"
        elif parts.username:
            netloc = f"***@{host}"
    query = "&".join(f"{name}=***" if secret else pair for pair, name, _, secret in _query_pairs(parts.query))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class _RedactSecrets(logging.Filter):
    """On the ``httpx`` logger (which logs every request URL at INFO): replaces the credentials our
    scorers found in their base URLs by ``***`` before any handler sees the record. Secrets are
    held per owning scorer, weakly: a collected scorer's credentials are forgotten with it."""

    def __init__(self) -> None:
        super().__init__()
        self._owners: weakref.WeakKeyDictionary[object, tuple[Secret, ...]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def add(self, owner: object, secrets: Sequence[Secret]) -> None:
        with self._lock:
            self._owners[owner] = tuple(secrets)

    @property
    def secrets(self) -> set[Secret]:
        with self._lock:
            return {s for held in self._owners.values() for s in held}

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self.secrets
        if secrets:
            message = record.getMessage()
            clean = redact(message, list(secrets))
            if clean != message:
                record.msg, record.args = clean, ()
        return True


_HTTPX_FILTER = _RedactSecrets()
logging.getLogger("httpx").addFilter(_HTTPX_FILTER)


def hide_in_http_logs(owner: object, secrets: Sequence[Secret]) -> None:
    """Redact ``secrets`` from what the HTTP client logs (URLs holding credentials) for as long
    as ``owner`` (the scorer whose URL holds them) lives."""
    if secrets:
        _HTTPX_FILTER.add(owner, secrets)


def redact(text: str, secrets: Sequence[Secret]) -> str:
    """``text`` with every secret (and its URL-encoded form) replaced by ``***``."""
    for secret in sorted({s.get_secret_value() for s in secrets}, key=len, reverse=True):
        if secret:
            for form in (
                secret,
                urllib.parse.quote(secret, safe=""),
                urllib.parse.quote_plus(secret, safe=""),
            ):
                text = text.replace(form, "***")
    return text
