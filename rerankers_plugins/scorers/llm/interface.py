"""The core's one LLM interface: :class:`LLM` (``complete(messages) -> Reply`` and its async
twin), where ``messages`` are ``{"role": "system" | "user" | "assistant", "content": str}`` dicts.
The framework wrappers (:mod:`._frameworks`) and the rerankers (:mod:`.base`) both build on it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from rerankers_plugins.scorers.limits import Usage

__all__ = ["LLM", "Message", "Reply", "text_of"]

Message = dict[str, str]


@dataclass(frozen=True)
class Reply:
    """An LLM answer: its text and, where the model returned them, the first token's log-probabilities
    (``{token: logprob}`` over the top alternatives) and the call's token usage (a
    :class:`~rerankers_plugins.scorers.limits.Usage`: input, output and total tokens; None where the
    framework reports none, as for a plain function, which may return a ``Reply`` with it)."""

    text: str
    first_token_logprobs: dict[str, float] | None = None
    usage: Usage | None = None


class LLM:
    """The core's LLM interface. Build one with :func:`as_llm`."""

    def __init__(
        self,
        complete: Callable[[list[Message]], Reply],
        acomplete: Callable[[list[Message]], Awaitable[Reply]] | None = None,
        name: str = "llm",
    ) -> None:
        self._complete = complete
        self._acomplete = acomplete
        self.name = name

    def complete(self, messages: list[Message]) -> Reply:
        return self._complete(messages)

    async def acomplete(self, messages: list[Message]) -> Reply:
        if self._acomplete is not None:
            return await self._acomplete(messages)
        return await asyncio.to_thread(self._complete, messages)


def text_of(content: Any) -> str:
    """The text of a model's message content: a string, or content blocks joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks
        return "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
    return "" if content is None else str(content)
