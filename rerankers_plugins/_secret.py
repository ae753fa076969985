"""A secret string that never shows itself in reprs, logs or tracebacks."""

from __future__ import annotations

import os

from rerankers_plugins.errors import ConfigError

__all__ = ["Secret", "secret_from"]


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
