"""LangChain and LlamaIndex language models as the LLM rerankers' callable.

An object is recognised by the framework's own base classes (a user's ``BaseChatModel`` or
``CustomLLM`` subclass defined anywhere is one), looked up only in frameworks that are already
imported: an object of a framework that was never imported cannot be an instance of it, so this
module imports no framework itself.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from rerankers_plugins.scorers.limits import Usage, usage_from
from rerankers_plugins.scorers.llm.interface import LLM, Message, Reply, text_of

__all__ = ["framework_llm"]


def _base(module: str, name: str) -> type | None:
    loaded = sys.modules.get(module)
    found = getattr(loaded, name, None) if loaded is not None else None
    return found if isinstance(found, type) else None


def _langchain_logprobs(message: Any) -> dict[str, float] | None:
    meta = getattr(message, "response_metadata", None) or {}
    content = (meta.get("logprobs") or {}).get("content") if isinstance(meta.get("logprobs"), dict) else None
    if not content:
        return None
    first = content[0]
    tops = first.get("top_logprobs") or [{"token": first.get("token"), "logprob": first.get("logprob")}]
    return {str(t["token"]): float(t["logprob"]) for t in tops if t.get("token") is not None}


def _langchain_usage(message: Any) -> Usage | None:
    """``AIMessage.usage_metadata`` (``input_tokens``, ``output_tokens``, ``total_tokens``), where
    the chat model reports it."""
    return usage_from(getattr(message, "usage_metadata", None))


def _llama_index_usage(response: Any) -> Usage | None:
    """A ``ChatResponse``'s token usage: ``raw["usage"]`` (the provider's answer: OpenAI's
    ``prompt_tokens`` / ``completion_tokens``, Anthropic's ``input_tokens`` / ``output_tokens``),
    else the counts LlamaIndex copies into ``additional_kwargs``."""
    raw = getattr(response, "raw", None)
    found = usage_from(raw.get("usage") if isinstance(raw, dict) else getattr(raw, "usage", None))
    if found is None:
        found = usage_from(getattr(response, "additional_kwargs", None))
    return found


def _llama_index_logprobs(response: Any) -> dict[str, float] | None:
    lps = getattr(response, "logprobs", None)
    if not lps or not lps[0]:
        return None
    return {str(lp.token): float(lp.logprob) for lp in lps[0]}


def _langchain(obj: Any, label: str) -> LLM | None:
    """A LangChain language model (``BaseLanguageModel``: chat models and completion LLMs).
    Messages become ``(role, content)`` tuples; the call runs in the caller's LangChain run context
    (callbacks, tracing), which the adapter sets."""
    base = _base("langchain_core.language_models.base", "BaseLanguageModel")
    if base is None or not isinstance(obj, base):
        return None
    model: Any = obj
    role_map = {"system": "system", "user": "human", "assistant": "ai"}

    def lc_msgs(messages: list[Message]) -> list[tuple[str, str]]:
        return [(role_map.get(m["role"], m["role"]), m["content"]) for m in messages]

    def complete(messages: list[Message]) -> Reply:
        out = model.invoke(lc_msgs(messages))
        return Reply(text_of(getattr(out, "content", out)), _langchain_logprobs(out), _langchain_usage(out))

    async def acomplete(messages: list[Message]) -> Reply:
        out = await model.ainvoke(lc_msgs(messages))
        return Reply(text_of(getattr(out, "content", out)), _langchain_logprobs(out), _langchain_usage(out))

    return LLM(complete, acomplete, name=label)


def _llama_index(obj: Any, label: str) -> LLM | None:
    """A LlamaIndex LLM (``BaseLLM``: ``LLM``, ``CustomLLM`` and every provider's class): messages
    become ``ChatMessage`` objects for ``chat`` / ``achat``."""
    base = _base("llama_index.core.base.llms.base", "BaseLLM")
    chat_message = _base("llama_index.core.base.llms.types", "ChatMessage")
    if base is None or chat_message is None or not isinstance(obj, base):
        return None
    model: Any = obj

    def li_msgs(messages: list[Message]) -> list[Any]:
        return [chat_message(role=m["role"], content=m["content"]) for m in messages]

    def complete(messages: list[Message]) -> Reply:
        out = model.chat(li_msgs(messages))
        return Reply(text_of(out.message.content), _llama_index_logprobs(out), _llama_index_usage(out))

    async def acomplete(messages: list[Message]) -> Reply:
        out = await model.achat(li_msgs(messages))
        return Reply(text_of(out.message.content), _llama_index_logprobs(out), _llama_index_usage(out))

    metadata = getattr(model, "metadata", None)
    return LLM(complete, acomplete, name=str(getattr(metadata, "model_name", None) or label))


_ADAPTERS: tuple[Callable[[Any, str], LLM | None], ...] = (_langchain, _llama_index)


def framework_llm(obj: Any, label: str) -> LLM | None:
    """``obj`` as an :class:`LLM` when it is a LangChain or LlamaIndex model, else None."""
    for adapt in _ADAPTERS:
        llm = adapt(obj, label)
        if llm is not None:
            return llm
    return None
