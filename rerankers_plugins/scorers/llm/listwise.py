"""RankGPT-style listwise reranking with sliding windows.

The window loop is written once, as a :data:`~rerankers_plugins.scorers.llm.base.Dialogue`: the
sync and async paths drive the same generator, each with its own LLM call. Windows depend on each
other (each sees the previous one's winners), so the calls are sequential by design.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from rerankers_plugins.ops.permutation import parse_ranking, repair_permutation
from rerankers_plugins.ops.windows import sliding_windows
from rerankers_plugins.scorers.base import ScoreResult
from rerankers_plugins.scorers.llm.base import Dialogue, LLMBase, Message, Reply, clean, truncate_words
from rerankers_plugins.types import ScoreScale

__all__ = ["LISTWISE_SYSTEM", "LLMListwiseRanker"]

logger = logging.getLogger(__name__)

LISTWISE_SYSTEM = (
    "You are RankGPT, an intelligent assistant that can rank passages based on their relevancy to the query."
)


class LLMListwiseRanker(LLMBase):
    """RankGPT-style listwise reranking with a sliding window (scale RANK_ONLY: an order, no scores).

    Passages are labelled ``[1]..[k]`` and the model answers ``[3] > [1] > [2]``. Windows of
    ``window`` passages move from the back of the list to the front by ``step``, so the best
    candidates bubble up. Each passage is cut to ``max_words`` words. Every answer is repaired into
    a valid permutation; ``details`` report the number of LLM calls and of repaired answers.

    Args:
        llm: a LangChain chat model, a LlamaIndex LLM, or a function(messages) -> str.
        window: passages per LLM call.
        step: how far the window moves up the list each call.
        max_words: each passage is cut to this many words in the prompt.
        system_prompt: the system message of every ranking call.
        name: model name shown in details; None: the LLM's own.
    """

    scale = ScoreScale.RANK_ONLY

    def __init__(
        self,
        llm: Any,
        *,
        window: int = 20,
        step: int = 10,
        max_words: int = 300,
        system_prompt: str = LISTWISE_SYSTEM,
        name: str | None = None,
    ) -> None:
        super().__init__(llm, max_words=max_words, max_concurrency=1, name=name)
        sliding_windows(window, window, step)  # validates window and step
        self.window = window
        self.step = step
        self.system_prompt = system_prompt

    def messages(self, query: str, passages: Sequence[str]) -> list[Message]:
        body = "\n".join(
            f"[{i + 1}] {truncate_words(clean(p), self.max_words)}" for i, p in enumerate(passages)
        )
        k = len(passages)
        return [
            {"role": "system", "content": self.system_prompt},
            {
                "role": "user",
                "content": (
                    f"I will provide you with {k} passages, each indicated by a numerical identifier []. "
                    f"Rank the passages based on their relevance to the search query: {clean(query)}\n\n{body}\n\n"
                    f"Search Query: {clean(query)}\n"
                    f"Rank the {k} passages above based on their relevance to the search query. List them in "
                    "descending order using identifiers, the most relevant first. The output format should be "
                    "[] > [], e.g., [2] > [1]. Only respond with the ranking results, do not say any word or explain."
                ),
            },
        ]

    def _apply(
        self, order: list[int], start: int, end: int, reply: Reply, stats: dict[str, int]
    ) -> list[int]:
        k = end - start
        perm, fix = repair_permutation(parse_ranking(reply.text), k)
        if fix["parsed"] == 0:
            stats["unparsed"] += 1
            logger.warning(
                "%s: no ranking in the LLM's answer %r; window kept in its previous order",
                self.name,
                reply.text[:80],
            )
        elif fix["out_of_range"] or fix["duplicates"] or fix["missing"]:
            stats["repaired"] += 1
        window = order[start:end]
        return order[:start] + [window[i] for i in perm] + order[end:]

    def _windows(self, query: str, texts: Sequence[str]) -> Dialogue[ScoreResult]:
        """The sliding-window pass: yields each window's prompt, takes its answer, returns the order."""
        order = list(range(len(texts)))
        stats = {"llm_calls": 0, "repaired": 0, "unparsed": 0}
        for start, end in sliding_windows(len(texts), self.window, self.step):
            if end - start < 2:
                continue
            reply = yield self.messages(query, [texts[i] for i in order[start:end]])
            stats["llm_calls"] += 1
            order = self._apply(order, start, end, reply, stats)
        return ScoreResult(values=order, info=stats)

    def rank_details(self, query: str, texts: Sequence[str]) -> ScoreResult:
        result = self.drive(self._windows(query, texts))
        logger.info("%s: %d LLM calls for %d passages", self.name, result.info["llm_calls"], len(texts))
        return result

    async def arank_details(self, query: str, texts: Sequence[str]) -> ScoreResult:
        return await self.adrive(self._windows(query, texts))

    def rank(self, query: str, texts: Sequence[str]) -> list[int]:
        return list(self.rank_details(query, texts).values)
