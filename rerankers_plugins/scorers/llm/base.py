"""LLM rerankers: listwise (RankGPT, sliding windows), pointwise (yes/no or grade) and pairwise.

The core knows one LLM interface, :class:`LLM`: ``complete(messages) -> Reply`` and its async twin,
where ``messages`` are ``{"role": "system" | "user" | "assistant", "content": str}`` dicts. :func:`as_llm`
wraps a LangChain chat model, a LlamaIndex LLM (recognised by their base classes, in
:mod:`rerankers_plugins.integrations._chat`) or a plain (sync or async) function, and this module
imports no framework.

LLM output is untrusted: rankings go through :mod:`rerankers_plugins.ops.permutation`, grades and
yes/no answers through parsers with a defined fallback, and no answer can drop or duplicate a
candidate. Passages are data in the prompt; a passage that says "rank me first" can at most move
itself, never remove another.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rerankers_plugins.errors import BackendError, ConfigError
from rerankers_plugins.ops.permutation import parse_ranking, repair_permutation
from rerankers_plugins.ops.windows import sliding_windows
from rerankers_plugins.scorers.base import ScoreResult
from rerankers_plugins.types import ScoreScale

__all__ = [
    "LLM",
    "LLMListwiseScorer",
    "LLMPairwiseScorer",
    "LLMPointwiseScorer",
    "Message",
    "Reply",
    "as_llm",
    "text_of",
    "truncate_words",
]

logger = logging.getLogger(__name__)

Message = dict[str, str]


@dataclass(frozen=True)
class Reply:
    """An LLM answer: its text and, where the model returned them, the first token's log-probabilities
    (``{token: logprob}`` over the top alternatives)."""

    text: str
    first_token_logprobs: dict[str, float] | None = None


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


def as_llm(obj: Any, *, name: str | None = None) -> LLM:
    """Wrap ``obj`` as an :class:`LLM`.

    * an :class:`LLM`: returned as is;
    * a LangChain language model (any ``BaseLanguageModel``, your own ``BaseChatModel`` subclass
      included): messages become ``(role, content)`` tuples; log-probabilities are read from
      ``response_metadata["logprobs"]`` when the model returns them
      (e.g. ``ChatOpenAI(logprobs=True, top_logprobs=5)``);
    * a LlamaIndex LLM (any ``BaseLLM``, a ``CustomLLM`` included): messages become ``ChatMessage``
      objects;
    * a function ``fn(messages) -> str | Reply``, sync or ``async``.
    """
    if isinstance(obj, LLM):
        return obj
    label = name or getattr(obj, "model_name", None) or getattr(obj, "model", None) or type(obj).__name__
    from rerankers_plugins.integrations._chat import framework_llm

    framework = framework_llm(obj, str(label))
    if framework is not None:
        return framework
    if callable(obj):
        fn = obj

        def wrap(value: Any) -> Reply:
            return value if isinstance(value, Reply) else Reply(text_of(value))

        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__):

            async def afn(messages: list[Message]) -> Reply:
                return wrap(await fn(messages))

            def sync_from_async(messages: list[Message]) -> Reply:
                try:
                    asyncio.get_running_loop()
                except RuntimeError:
                    return asyncio.run(afn(messages))
                raise ConfigError(
                    "an async LLM function cannot be called synchronously inside a running event loop; use arerank / the async adapter methods"
                )

            return LLM(sync_from_async, afn, name=str(label))
        return LLM(lambda messages: wrap(fn(messages)), None, name=str(label))
    raise ConfigError(
        f"llm must be a LangChain chat model, a LlamaIndex LLM or a function(messages) -> str, got {type(obj).__name__}"
    )


def truncate_words(text: str, max_words: int) -> str:
    """The first ``max_words`` whitespace-separated words of ``text`` (the per-passage budget).

    >>> truncate_words("one two  three four", 2)
    'one two'
    """
    words = text.split()
    return " ".join(words[:max_words])


def _clean(text: str) -> str:
    # Passages are data: flatten newlines so a passage cannot fake the prompt's structure.
    return " ".join(text.split())


class _LLMBase:
    def __init__(self, llm: Any, *, max_words: int, max_concurrency: int, name: str | None) -> None:
        if max_words < 1:
            raise ConfigError(f"max_words must be >= 1, got {max_words}")
        if max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.llm = as_llm(llm)
        self.max_words = max_words
        self.max_concurrency = max_concurrency
        self.name = name or f"{type(self).__name__}({self.llm.name})"

    def _call(self, messages: list[Message]) -> Reply:
        try:
            return self.llm.complete(messages)
        except ConfigError:
            raise
        except Exception as exc:
            raise BackendError(f"{self.name}: the LLM call failed: {type(exc).__name__}: {exc}") from exc

    async def _acall(self, messages: list[Message]) -> Reply:
        try:
            return await self.llm.acomplete(messages)
        except ConfigError:
            raise
        except Exception as exc:
            raise BackendError(f"{self.name}: the LLM call failed: {type(exc).__name__}: {exc}") from exc


# -- listwise ---------------------------------------------------------------------------------------

LISTWISE_SYSTEM = (
    "You are RankGPT, an intelligent assistant that can rank passages based on their relevancy to the query."
)


class LLMListwiseScorer(_LLMBase):
    """RankGPT-style listwise reranking with a sliding window (scale RANK_ONLY: an order, no scores).

    Passages are labelled ``[1]..[k]`` and the model answers ``[3] > [1] > [2]``. Windows of
    ``window`` passages move from the back of the list to the front by ``step``, so the best
    candidates bubble up. Each passage is cut to ``max_words`` words. Every answer is repaired into
    a valid permutation; ``details`` report the number of LLM calls and of repaired answers.
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
            f"[{i + 1}] {truncate_words(_clean(p), self.max_words)}" for i, p in enumerate(passages)
        )
        k = len(passages)
        return [
            {"role": "system", "content": self.system_prompt},
            {
                "role": "user",
                "content": (
                    f"I will provide you with {k} passages, each indicated by a numerical identifier []. "
                    f"Rank the passages based on their relevance to the search query: {_clean(query)}\n\n{body}\n\n"
                    f"Search Query: {_clean(query)}\n"
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

    def rank_details(self, query: str, texts: Sequence[str]) -> ScoreResult:
        order = list(range(len(texts)))
        stats = {"llm_calls": 0, "repaired": 0, "unparsed": 0}
        for start, end in sliding_windows(len(texts), self.window, self.step):
            if end - start < 2:
                continue
            reply = self._call(self.messages(query, [texts[i] for i in order[start:end]]))
            stats["llm_calls"] += 1
            order = self._apply(order, start, end, reply, stats)
        logger.info("%s: %d LLM calls for %d passages", self.name, stats["llm_calls"], len(texts))
        return ScoreResult(values=order, info=stats)

    async def arank_details(self, query: str, texts: Sequence[str]) -> ScoreResult:
        # Windows depend on each other (each sees the previous one's winners): sequential by design.
        order = list(range(len(texts)))
        stats = {"llm_calls": 0, "repaired": 0, "unparsed": 0}
        for start, end in sliding_windows(len(texts), self.window, self.step):
            if end - start < 2:
                continue
            reply = await self._acall(self.messages(query, [texts[i] for i in order[start:end]]))
            stats["llm_calls"] += 1
            order = self._apply(order, start, end, reply, stats)
        return ScoreResult(values=order, info=stats)

    def rank(self, query: str, texts: Sequence[str]) -> list[int]:
        return list(self.rank_details(query, texts).values)


# -- pointwise --------------------------------------------------------------------------------------

_YES = re.compile(r"^\W*(yes|relevant|true)\b", re.IGNORECASE)
_NO = re.compile(r"^\W*(no|not relevant|irrelevant|false)\b", re.IGNORECASE)
_GRADE = re.compile(r"(?<![\d.])(10|[0-9])(?:\s*/\s*10)?(?![\d])")


def _logprob(value: Any) -> float:
    """A log-probability as a float; NaN, non-numbers and +inf count as impossible (-inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or value > 0:
        return -math.inf
    return float(value)


class LLMPointwiseScorer(_LLMBase):
    """Each passage judged alone, with bounded concurrency.

    ``mode="yes_no"`` (scale PROBABILITY): P(yes) from the first token's log-probabilities where the
    model returns them (``P = e^yes / (e^yes + e^no)``), else 1.0 for a yes answer and 0.0 for no.
    ``mode="grade"`` (scale RELEVANCE): a 0-10 grade, divided by 10. An answer that parses as
    neither gets ``unparsable_score`` (default 0.0), ``details["parsed"] = False`` and a warning.
    """

    def __init__(
        self,
        llm: Any,
        *,
        mode: Literal["yes_no", "grade"] = "yes_no",
        max_words: int = 300,
        max_concurrency: int = 8,
        unparsable_score: float = 0.0,
        name: str | None = None,
    ) -> None:
        super().__init__(llm, max_words=max_words, max_concurrency=max_concurrency, name=name)
        if mode not in ("yes_no", "grade"):
            raise ConfigError(f"mode must be 'yes_no' or 'grade', got {mode!r}")
        if not 0.0 <= unparsable_score <= 1.0:
            raise ConfigError(f"unparsable_score must be in 0..1, got {unparsable_score}")
        self.mode = mode
        self.unparsable_score = unparsable_score
        self.scale = ScoreScale.PROBABILITY if mode == "yes_no" else ScoreScale.RELEVANCE

    def fingerprint(self) -> Mapping[str, Any]:
        """What changes a judgement, for cache keys: the LLM, the prompt mode and truncation."""
        return {
            "llm": self.llm.name,
            "mode": self.mode,
            "max_words": self.max_words,
            "unparsable_score": self.unparsable_score,
        }

    def messages(self, query: str, passage: str) -> list[Message]:
        ask = (
            "Is the passage relevant to the query? Answer with Yes or No only."
            if self.mode == "yes_no"
            else "How relevant is the passage to the query, from 0 (not at all) to 10 (perfectly)? Answer with the number only."
        )
        return [
            {"role": "system", "content": "You judge whether a passage is relevant to a search query."},
            {
                "role": "user",
                "content": f"Query: {_clean(query)}\n\nPassage: {truncate_words(_clean(passage), self.max_words)}\n\n{ask}",
            },
        ]

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
            replies = [f.result() for f in futures]
        return self._result(replies)

    async def ascore_details(self, query: str, texts: Sequence[str]) -> ScoreResult:
        bound = asyncio.Semaphore(self.max_concurrency)

        async def one(t: str) -> Reply:
            async with bound:
                return await self._acall(self.messages(query, t))

        return self._result(list(await asyncio.gather(*(one(t) for t in texts))))

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return list(self.score_details(query, texts).values)


# -- pairwise ---------------------------------------------------------------------------------------

_CHOICE = re.compile(r"\b(?:passage\s*)?([AB])\b")


class LLMPairwiseScorer(_LLMBase):
    """Pairwise comparisons for the top ``top_k`` (scale RANK_ONLY).

    Finding the best k of n by comparisons needs O(n log k) of them with a heap (``heapq.nsmallest``
    over a comparison key), not the n² of all pairs. With ``both_orders`` each comparison is asked
    twice with the passages swapped, to cancel the model's position bias; when the two answers
    disagree the passage that came first in the input wins (a tie keeps the input order). The
    candidates outside the top k follow in their input order. ``details["llm_calls"]`` reports the
    cost.
    """

    scale = ScoreScale.RANK_ONLY

    def __init__(
        self,
        llm: Any,
        *,
        top_k: int = 10,
        both_orders: bool = True,
        max_words: int = 300,
        name: str | None = None,
    ) -> None:
        super().__init__(llm, max_words=max_words, max_concurrency=1, name=name)
        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        self.top_k = top_k
        self.both_orders = both_orders

    def messages(self, query: str, a: str, b: str) -> list[Message]:
        return [
            {"role": "system", "content": "You compare two passages for relevance to a search query."},
            {
                "role": "user",
                "content": (
                    f"Query: {_clean(query)}\n\nPassage A: {truncate_words(_clean(a), self.max_words)}\n\n"
                    f"Passage B: {truncate_words(_clean(b), self.max_words)}\n\n"
                    "Which passage is more relevant to the query? Answer with A or B only."
                ),
            },
        ]

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

        k = min(self.top_k, len(texts))
        top = heapq.nsmallest(k, range(len(texts)), key=functools.cmp_to_key(cmp))
        chosen = set(top)
        order = top + [i for i in range(len(texts)) if i not in chosen]
        logger.info("%s: %d LLM calls for top %d of %d", self.name, calls, k, len(texts))
        return ScoreResult(values=order, info={"llm_calls": calls, "unparsed": unparsed, "top_k": k})

    async def arank_details(self, query: str, texts: Sequence[str]) -> ScoreResult:
        return await asyncio.to_thread(self.rank_details, query, texts)

    def rank(self, query: str, texts: Sequence[str]) -> list[int]:
        return list(self.rank_details(query, texts).values)
