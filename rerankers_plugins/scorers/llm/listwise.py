"""RankGPT-style listwise reranking with sliding windows.

The window loop is written once, as a :data:`~rerankers_plugins.scorers.llm.base.Dialogue`: the
sync and async paths drive the same generator, each with its own LLM call. Windows depend on each
other (each sees the previous one's winners), so the calls are sequential by design.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

from rerankers_plugins.errors import ConfigError
from rerankers_plugins.ops.permutation import parse_ranking, repair_permutation
from rerankers_plugins.ops.windows import sliding_windows
from rerankers_plugins.scorers.base import ScoreResult
from rerankers_plugins.scorers.llm.base import Dialogue, LLMBase, Message, Reply, clean, truncate_words
from rerankers_plugins.scorers.llm.prompts import Template, parse_choice_select
from rerankers_plugins.templates import TemplateLike
from rerankers_plugins.types import ScoreScale

__all__ = ["LISTWISE_PASSAGE", "LISTWISE_PROMPT", "LISTWISE_SYSTEM", "LLMListwiseRanker"]

logger = logging.getLogger(__name__)

LISTWISE_SYSTEM = (
    "You are RankGPT, an intelligent assistant that can rank passages based on their relevancy to the query."
)
#: the user message of each ranking call (RankGPT's): {query}, {passages} and {num}
LISTWISE_PROMPT = (
    "I will provide you with {num} passages, each indicated by a numerical identifier []. "
    "Rank the passages based on their relevance to the search query: {query}\n\n{passages}\n\n"
    "Search Query: {query}\n"
    "Rank the {num} passages above based on their relevance to the search query. List them in "
    "descending order using identifiers, the most relevant first. The output format should be "
    "[] > [], e.g., [2] > [1]. Only respond with the ranking results, do not say any word or explain."
)
#: how each passage of a window is shown: {index} (1-based) and {passage}
LISTWISE_PASSAGE = "[{index}] {passage}"


class LLMListwiseRanker(LLMBase):
    """RankGPT-style listwise reranking with a sliding window (scale RANK_ONLY: an order, no scores).

    Passages are labelled ``[1]..[k]`` and the model answers ``[3] > [1] > [2]``. Windows of
    ``window`` passages move from the back of the list to the front by ``step``, so the best
    candidates bubble up. Each passage is cut to ``max_words`` words. Every answer is repaired into
    a valid permutation; ``details`` report the number of LLM calls and of repaired answers.

    The prompt is yours to change, piece by piece (:mod:`.prompts`): ``system_prompt``, ``prompt``
    (the user message) and ``passage_template``, with named placeholders checked at construction.
    LlamaIndex's ``choice_select_prompt`` becomes these options through
    :func:`~.prompts.choice_select_options`.

    Args:
        llm: a LangChain chat model, a LlamaIndex LLM, or a function(messages) -> str.
        window: passages per LLM call.
        step: how far the window moves up the list each call; None: half the window (10 for 20).
        max_words: each passage is cut to this many words in the prompt.
        system_prompt: the system message of every ranking call, with {query} and {num} if you
            like; None sends no system message.
        prompt: the user message of every ranking call: {query} and {passages} (the window's
            passages, each shown by passage_template) required, {num} (how many) optional.
        passage_template: how each passage is shown in {passages}: {index} (1, 2, ...) and
            {passage} (its text, on one line, cut to max_words).
        passage_separator: what stands between two passages in {passages}.
        answer_format: how answers are read: "ranking" (``[2] > [1]``, any brackets, bare
            numbers) or "choice_select" (LlamaIndex's ``Doc: 2, Relevance: 8`` lines, ordered by
            relevance).
        name: model name shown in details; None: the LLM's own.
        max_tokens: a token budget over this reranker's LLM calls: a call whose estimate would
            pass it is refused before it is sent (``BudgetExceeded``); None (default): no budget.
        document_template: what the LLM reads of each candidate (None: its text), as for
            :class:`~rerankers_plugins.CrossEncoderScorer`; the passage it reads is then cut to
            ``max_words``.
    """

    scale = ScoreScale.RANK_ONLY

    def __init__(
        self,
        llm: Any,
        *,
        window: int = 20,
        step: int | None = None,
        max_words: int = 300,
        system_prompt: str | None = LISTWISE_SYSTEM,
        prompt: str = LISTWISE_PROMPT,
        passage_template: str = LISTWISE_PASSAGE,
        passage_separator: str = "\n",
        answer_format: Literal["ranking", "choice_select"] = "ranking",
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
        if step is None:
            step = max(1, window // 2)
        sliding_windows(window, window, step)  # validates window and step
        owner = type(self).__name__
        self._system = (
            None
            if system_prompt is None
            else Template.check(owner, "system_prompt", system_prompt, optional=("query", "num"))
        )
        self._prompt = Template.check(
            owner, "prompt", prompt, required=("query", "passages"), optional=("num",)
        )
        self._passage = Template.check(
            owner, "passage_template", passage_template, required=("index", "passage")
        )
        if not isinstance(passage_separator, str):
            raise ConfigError(
                f"{owner}(passage_separator=...) must be a string, got {type(passage_separator).__name__}"
            )
        if answer_format not in ("ranking", "choice_select"):
            raise ConfigError(
                f"{owner}(answer_format=...) must be 'ranking' or 'choice_select', got {answer_format!r}"
            )
        self.window = window
        self.step = step
        self.system_prompt = system_prompt
        self.prompt = prompt
        self.passage_template = passage_template
        self.passage_separator = passage_separator
        self.answer_format = answer_format

    def messages(self, query: str, passages: Sequence[str]) -> list[Message]:
        """The messages of one ranking call over ``passages`` (one window)."""
        body = self.passage_separator.join(
            self._passage.render(index=str(i + 1), passage=truncate_words(clean(p), self.max_words))
            for i, p in enumerate(passages)
        )
        values = {"query": clean(query), "num": str(len(passages))}
        user: Message = {"role": "user", "content": self._prompt.render(passages=body, **values)}
        if self._system is None:
            return [user]
        return [{"role": "system", "content": self._system.render(**values)}, user]

    def parse(self, answer: str) -> list[int]:
        """The 1-based passage ids an answer names, best first (``answer_format``), unrepaired."""
        if self.answer_format == "choice_select":
            return parse_choice_select(answer)
        return parse_ranking(answer)

    def _apply(
        self, order: list[int], start: int, end: int, reply: Reply, stats: dict[str, int]
    ) -> list[int]:
        k = end - start
        perm, fix = repair_permutation(self.parse(reply.text), k)
        if fix["parsed"] == 0:
            stats["unparsed"] += 1
            logger.warning(
                "%s: no ranking in the LLM's answer %r; window kept in its previous order",
                self.name,
                reply.text[:80],
            )
        elif fix["out_of_range"] or fix["duplicates"] or fix["missing"]:
            stats["repaired"] += 1
            logger.info(
                "%s: answer repaired: %d out of range and %d repeated ids dropped, %d missing passages "
                "kept after the ranked ones in their previous order",
                self.name,
                fix["out_of_range"],
                fix["duplicates"],
                fix["missing"],
            )
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
