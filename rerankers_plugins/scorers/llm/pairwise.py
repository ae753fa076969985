"""Pairwise LLM reranking: comparisons for the top k, both orders to cancel position bias."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from rerankers_plugins.errors import ConfigError
from rerankers_plugins.scorers.base import ScoreResult
from rerankers_plugins.scorers.llm.base import LLMBase, Message, clean, truncate_words
from rerankers_plugins.scorers.llm.prompts import Template
from rerankers_plugins.templates import TemplateLike
from rerankers_plugins.types import ScoreScale

__all__ = ["PAIRWISE_PROMPT", "PAIRWISE_SYSTEM", "LLMPairwiseRanker"]

logger = logging.getLogger(__name__)

PAIRWISE_SYSTEM = "You compare two passages for relevance to a search query."
#: the user message of each comparison: {query}, {passage_a} and {passage_b}
PAIRWISE_PROMPT = (
    "Query: {query}\n\nPassage A: {passage_a}\n\nPassage B: {passage_b}\n\n"
    "Which passage is more relevant to the query? Answer with A or B only."
)

_CHOICE = re.compile(r"\b(?:passage\s*)?([AB])\b")


class LLMPairwiseRanker(LLMBase):
    """Pairwise comparisons for the top ``compare_top`` (scale RANK_ONLY).

    Finding the best k of n by comparisons needs O(n log k) of them with a heap (``heapq.nsmallest``
    over a comparison key), not the n² of all pairs. With ``both_orders`` each comparison is asked
    twice with the passages swapped, to cancel the model's position bias; when the two answers
    disagree the passage that came first in the input wins (a tie keeps the input order). The
    candidates outside the top k follow in their input order. ``details["llm_calls"]`` reports the
    cost.

    The prompt is yours to change (:mod:`.prompts`): ``system_prompt`` and ``prompt``, with named
    placeholders checked at construction; the answer is still read as A or B.

    Args:
        llm: a LangChain chat model, a LlamaIndex LLM, or a function(messages) -> str.
        compare_top: how many of the best candidates to order by comparisons (the rest follow in
            their input order; ``top_n`` of rerank still says how many are kept). Was ``top_k``.
        both_orders: ask each comparison in both orders (position bias).
        max_words: each passage is cut to this many words in the prompt.
        system_prompt: the system message of every comparison, with {query} if you like; None
            sends no system message.
        prompt: the user message of every comparison: {query}, {passage_a} and {passage_b} (the
            texts, on one line, cut to max_words) required; ask for an answer of A or B.
        name: model name shown in details; None: the LLM's own.
        max_tokens: a token budget over this reranker's LLM calls: a call whose estimate would
            pass it is refused before it is sent (``BudgetExceeded``); None (default): no budget.
        document_template: what the LLM reads of each candidate (None: its text), as for
            :class:`~rerankers_plugins.CrossEncoderScorer`; the passage it reads is then cut to
            ``max_words``.
    """

    #: top_k means top_n everywhere else (LangChain, LlamaIndex, the adapters' peer options)
    renamed: ClassVar[Mapping[str, str]] = {"top_k": "compare_top"}
    scale = ScoreScale.RANK_ONLY

    def __init__(
        self,
        llm: Any,
        *,
        compare_top: int = 10,
        both_orders: bool = True,
        max_words: int = 300,
        system_prompt: str | None = PAIRWISE_SYSTEM,
        prompt: str = PAIRWISE_PROMPT,
        name: str | None = None,
        max_tokens: int | None = None,
        document_template: TemplateLike | None = None,
    ) -> None:
        super().__init__(
            llm,
            max_words=max_words,
            max_concurrency=1,
            name=name,
            max_tokens=max_tokens,
            document_template=document_template,
        )
        if compare_top < 1:
            raise ConfigError(f"compare_top must be >= 1, got {compare_top}")
        owner = type(self).__name__
        self._system = (
            None
            if system_prompt is None
            else Template.check(owner, "system_prompt", system_prompt, optional=("query",))
        )
        self._prompt = Template.check(owner, "prompt", prompt, required=("query", "passage_a", "passage_b"))
        self.compare_top = compare_top
        self.both_orders = both_orders
        self.system_prompt = system_prompt
        self.prompt = prompt

    def messages(self, query: str, a: str, b: str) -> list[Message]:
        """The messages of one comparison: ``a`` is passage A, ``b`` passage B."""
        q = clean(query)
        user: Message = {
            "role": "user",
            "content": self._prompt.render(
                query=q,
                passage_a=truncate_words(clean(a), self.max_words),
                passage_b=truncate_words(clean(b), self.max_words),
            ),
        }
        if self._system is None:
            return [user]
        return [{"role": "system", "content": self._system.render(query=q)}, user]

    @staticmethod
    def choice(text: str) -> str | None:
        """``"A"``, ``"B"`` or None from an answer (the first standalone A or B)."""
        m = _CHOICE.search(text.strip())
        return m.group(1) if m else None

    def rank_details(self, query: str, texts: Sequence[str]) -> ScoreResult:
        import heapq

        calls = 0
        unparsed = 0
        memo: dict[tuple[int, int], bool] = {}

        def ask(a: int, b: int) -> str | None:
            nonlocal calls, unparsed
            calls += 1
            c = self.choice(self._call(self.messages(query, texts[a], texts[b])).text)
            if c is None:
                unparsed += 1
            return c

        def better(a: int, b: int) -> bool:
            """True when a is judged more relevant than b (ties: the earlier one)."""
            key = (min(a, b), max(a, b))
            if key not in memo:
                lo, hi = key
                first = ask(lo, hi)
                votes = {"lo": 0, "hi": 0}
                if first is not None:
                    votes["lo" if first == "A" else "hi"] += 1
                if self.both_orders:
                    second = ask(hi, lo)
                    if second is not None:
                        votes["hi" if second == "A" else "lo"] += 1
                memo[key] = votes["lo"] >= votes["hi"]  # True: lo wins (ties go to the earlier one)
            lo_wins = memo[key]
            return lo_wins if a < b else not lo_wins

        def cmp(a: int, b: int) -> int:
            return -1 if better(a, b) else 1

        k = min(self.compare_top, len(texts))
        top = heapq.nsmallest(k, range(len(texts)), key=functools.cmp_to_key(cmp))
        chosen = set(top)
        order = top + [i for i in range(len(texts)) if i not in chosen]
        logger.info("%s: %d LLM calls for top %d of %d", self.name, calls, k, len(texts))
        return ScoreResult(values=order, info={"llm_calls": calls, "unparsed": unparsed, "compare_top": k})

    async def arank_details(self, query: str, texts: Sequence[str]) -> ScoreResult:
        return await asyncio.to_thread(self.rank_details, query, texts)

    def rank(self, query: str, texts: Sequence[str]) -> list[int]:
        return list(self.rank_details(query, texts).values)
