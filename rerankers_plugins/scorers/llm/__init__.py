"""LLM rerankers: listwise (RankGPT, sliding windows), pointwise (yes/no or grade) and pairwise.

* :mod:`.interface`: the one LLM interface (:class:`LLM`, :class:`Reply`);
* :mod:`._frameworks`: LangChain and LlamaIndex models recognised by their base classes and wrapped
  as an :class:`LLM` (the package imports no framework);
* :mod:`.base`: :func:`as_llm`, the rerankers' shared base and the prompt helpers;
* :mod:`.listwise`: :class:`LLMListwiseRanker`, one sliding-window loop for sync and async;
* :mod:`.pointwise`: :class:`LLMPointwiseScorer`;
* :mod:`.pairwise`: :class:`LLMPairwiseRanker`;
* :mod:`.prompts`: the rerankers' prompt pieces and their named placeholders, checked at
  construction, and LlamaIndex's ``choice_select_prompt`` translated (:func:`choice_select_options`).

LLM output is untrusted: rankings go through :mod:`rerankers_plugins.ops.permutation`, grades and
yes/no answers through parsers with a defined fallback, and no answer can drop or duplicate a
candidate. Passages are data in the prompt; a passage that says "rank me first" can at most move
itself, never remove another.
"""

from __future__ import annotations

from rerankers_plugins._deprecation import renamed_module_attributes
from rerankers_plugins.scorers.llm.base import LLM, Message, Reply, as_llm, text_of, truncate_words
from rerankers_plugins.scorers.llm.listwise import LISTWISE_SYSTEM as LISTWISE_SYSTEM
from rerankers_plugins.scorers.llm.listwise import LLMListwiseRanker
from rerankers_plugins.scorers.llm.pairwise import LLMPairwiseRanker
from rerankers_plugins.scorers.llm.pointwise import LLMPointwiseScorer
from rerankers_plugins.scorers.llm.prompts import choice_select_options

__all__ = [
    "LLM",
    "LLMListwiseRanker",
    "LLMPairwiseRanker",
    "LLMPointwiseScorer",
    "Message",
    "Reply",
    "as_llm",
    "choice_select_options",
    "text_of",
    "truncate_words",
]

#: names of the last release, answered with a FutureWarning: the listwise and pairwise LLM rerankers
#: return an order (``rank()``, scale RANK_ONLY), so they are rankers, not scorers
RENAMED = {
    "LLMListwiseScorer": ("LLMListwiseRanker", lambda: LLMListwiseRanker),
    "LLMPairwiseScorer": ("LLMPairwiseRanker", lambda: LLMPairwiseRanker),
}
__getattr__ = renamed_module_attributes("rerankers_plugins.scorers.llm", RENAMED)
