"""Pointwise LLM reranking: each passage judged alone (yes/no, or a 0-10 grade), with bounded
concurrency. Answers are untrusted: they go through parsers with a defined fallback."""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from rerankers_plugins.errors import ConfigError
from rerankers_plugins.scorers._aio import gather_cancelling
from rerankers_plugins.scorers.base import ScoreResult
from rerankers_plugins.scorers.llm.base import LLMBase, Message, Reply, clean, truncate_words
from rerankers_plugins.scorers.llm.prompts import Template
from rerankers_plugins.templates import TemplateLike
from rerankers_plugins.types import ScoreScale

__all__ = ["POINTWISE_PROMPTS", "POINTWISE_SYSTEM", "LLMPointwiseScorer"]

logger = logging.getLogger(__name__)

_YES = re.compile(r"^\W*(yes|relevant|true)\b", re.IGNORECASE)
_NO = re.compile(r"^\W*(no|not relevant|irrelevant|false)\b", re.IGNORECASE)
POINTWISE_SYSTEM = "You judge whether a passage is relevant to a search query."
#: the user message of each judgement, per mode: {query} and {passage}
POINTWISE_PROMPTS = {
    "yes_no": "Query: {query}\n\nPassage: {passage}\n\nIs the passage relevant to the query? Answer with Yes or No only.",
    "grade": (
        "Query: {query}\n\nPassage: {passage}\n\nHow relevant is the passage to the query, from 0 (not at all) "
        "to 10 (perfectly)? Answer with the number only."
    ),
}

_GRADE = re.compile(r"(?<![\d.])(10|[0-9])(?:\s*/\s*10)?(?![\d])")


def _logprob(value: Any) -> float:
    """A log-probability as a float; NaN, non-numbers and +inf count as impossible (-inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or value > 0:
        return -math.inf
    return float(value)


class LLMPointwiseScorer(LLMBase):
    """Each passage judged alone, with bounded concurrency.

    ``mode="yes_no"`` (scale PROBABILITY): P(yes) from the first token's log-probabilities where the
    model returns them (``P = e^yes / (e^yes + e^no)``), else 1.0 for a yes answer and 0.0 for no.
    ``mode="grade"`` (scale RELEVANCE): a 0-10 grade, divided by 10. An answer that parses as
    neither gets ``unparsable_score`` (default 0.0), ``details["parsed"] = False`` and a warning.

    The prompt is yours to change (:mod:`.prompts`): ``system_prompt`` and ``prompt``, with named
    placeholders checked at construction; ``mode`` still says how the answer is read, so a prompt
    of yours asks for Yes/No (or a 0-10 grade).

    Args:
        llm: a LangChain chat model, a LlamaIndex LLM, or a function(messages) -> str.
        mode: ``"yes_no"``: P(yes); ``"grade"``: a 0-10 grade / 10.
        max_words: each passage is cut to this many words in the prompt.
        max_concurrency: LLM calls in flight at once.
        unparsable_score: score of an answer that parses as neither.
        system_prompt: the system message of every judgement, with {query} if you like; None
            sends no system message.
        prompt: the user message of every judgement: {query} and {passage} (its text, on one
            line, cut to max_words) required; None: the mode's own question.
        name: model name shown in details; None: the LLM's own.
        max_tokens: a token budget over this reranker's LLM calls: a call whose estimate would
            pass it is refused before it is sent (``BudgetExceeded``); None (default): no budget.
        document_template: what the LLM reads of each candidate (None: its text), as for
            :class:`~rerankers_plugins.CrossEncoderScorer`; the passage it reads is then cut to
            ``max_words``.
    """

    def __init__(
        self,
        llm: Any,
        *,
        mode: Literal["yes_no", "grade"] = "yes_no",
        max_words: int = 300,
        max_concurrency: int = 8,
        unparsable_score: float = 0.0,
        system_prompt: str | None = POINTWISE_SYSTEM,
        prompt: str | None = None,
        name: str | None = None,
        max_tokens: int | None = None,
        document_template: TemplateLike | None = None,
    ) -> None:
        super().__init__(
            llm,
            max_words=max_words,
            max_concurrency=max_concurrency,
            name=name,
            max_tokens=max_tokens,
            document_template=document_template,
        )
        if mode not in ("yes_no", "grade"):
            raise ConfigError(f"mode must be 'yes_no' or 'grade', got {mode!r}")
        if not 0.0 <= unparsable_score <= 1.0:
            raise ConfigError(f"unparsable_score must be in 0..1, got {unparsable_score}")
        owner = type(self).__name__
        self._system = (
            None
            if system_prompt is None
            else Template.check(owner, "system_prompt", system_prompt, optional=("query",))
        )
        self._prompt = Template.check(
            owner,
            "prompt",
            POINTWISE_PROMPTS[mode] if prompt is None else prompt,
            required=("query", "passage"),
        )
        self.mode = mode
        self.unparsable_score = unparsable_score
        self.system_prompt = system_prompt
        self.prompt = prompt
        self.scale = ScoreScale.PROBABILITY if mode == "yes_no" else ScoreScale.RELEVANCE

    def fingerprint(self) -> Mapping[str, Any]:
        """What changes a judgement, for cache keys: the LLM, the prompt mode and truncation, and
        the prompts where they are not the default ones (so the keys of default prompts stay)."""
        out: dict[str, Any] = {
            "llm": self.llm.name,
            "mode": self.mode,
            "max_words": self.max_words,
            "unparsable_score": self.unparsable_score,
        }
        if self.system_prompt != POINTWISE_SYSTEM:
            out["system_prompt"] = self.system_prompt
        if self.prompt is not None:
            out["prompt"] = self.prompt
        return out

    def messages(self, query: str, passage: str) -> list[Message]:
        """The messages of one judgement."""
        q = clean(query)
        user: Message = {
            "role": "user",
            "content": self._prompt.render(query=q, passage=truncate_words(clean(passage), self.max_words)),
        }
        if self._system is None:
            return [user]
        return [{"role": "system", "content": self._system.render(query=q)}, user]

    def judge(self, reply: Reply) -> tuple[float, dict[str, Any]]:
        """Score and details for one answer."""
        if self.mode == "yes_no":
            lps = reply.first_token_logprobs or {}
            yes = [_logprob(v) for t, v in lps.items() if t.strip().lower() == "yes"]
            no = [_logprob(v) for t, v in lps.items() if t.strip().lower() == "no"]
            if yes or no:
                ly = max(yes, default=-math.inf)
                ln = max(no, default=-math.inf)
                top = max(ly, ln)
                if top == -math.inf:  # NaN / -inf for both answers: no probability to read
                    logger.warning(
                        "%s: unusable log-probabilities %s; scored %.2f",
                        self.name,
                        lps,
                        self.unparsable_score,
                    )
                    return self.unparsable_score, {"answer": reply.text[:40], "parsed": False}
                p = math.exp(ly - top) / (math.exp(ly - top) + math.exp(ln - top))
                return p, {"answer": reply.text[:40], "parsed": True, "source": "logprobs"}
            if _YES.search(reply.text):
                return 1.0, {"answer": reply.text[:40], "parsed": True, "source": "text"}
            if _NO.search(reply.text):
                return 0.0, {"answer": reply.text[:40], "parsed": True, "source": "text"}
        else:
            m = _GRADE.search(reply.text)
            if m:
                return int(m.group(1)) / 10.0, {"answer": reply.text[:40], "parsed": True, "source": "text"}
        logger.warning(
            "%s: unparsable answer %r; scored %.2f", self.name, reply.text[:80], self.unparsable_score
        )
        return self.unparsable_score, {"answer": reply.text[:40], "parsed": False}

    def _result(self, replies: list[Reply]) -> ScoreResult:
        judged = [self.judge(r) for r in replies]
        unparsed = sum(not d["parsed"] for _, d in judged)
        return ScoreResult(
            values=[s for s, _ in judged],
            info={"llm_calls": len(replies), "unparsed": unparsed},
            per_item=[d for _, d in judged],
        )

    def score_details(self, query: str, texts: Sequence[str]) -> ScoreResult:
        if self.max_concurrency == 1 or len(texts) < 2:
            return self._result([self._call(self.messages(query, t)) for t in texts])
        import contextvars
        from concurrent.futures import ThreadPoolExecutor

        def one(t: str) -> Reply:
            return self._call(self.messages(query, t))

        # each worker runs in a copy of the caller's context: a framework's run context (LangChain's
        # callbacks and tracing) reaches the model calls made on the workers
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(texts))) as pool:
            futures = [pool.submit(contextvars.copy_context().run, one, t) for t in texts]
            try:
                replies = [f.result() for f in futures]
            except BaseException:  # one failed: the calls not yet started are never made
                for f in futures:
                    f.cancel()
                raise
        return self._result(replies)

    async def ascore_details(self, query: str, texts: Sequence[str]) -> ScoreResult:
        bound = asyncio.Semaphore(self.max_concurrency)

        async def one(t: str) -> Reply:
            async with bound:
                return await self._acall(self.messages(query, t))

        # one failure cancels the calls still running or waiting (they spend no more)
        return self._result(await gather_cancelling([one(t) for t in texts]))

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return list(self.score_details(query, texts).values)
