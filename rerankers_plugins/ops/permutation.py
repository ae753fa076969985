"""Repair of untrusted LLM rankings: whatever the model wrote becomes a valid permutation.

A listwise LLM is asked for ``[3] > [1] > [2]``. It may wrap that in prose, use other brackets,
repeat or invent ids, stop half way, or answer nothing usable. These functions never let such an
answer drop or duplicate a candidate.
"""

from __future__ import annotations

import re

__all__ = ["parse_ranking", "repair_permutation"]

# An id in brackets of any common kind, or a bare number standing alone between separators.
_BRACKETED = re.compile(r"[\[\(\{<【]\s*(\d+)\s*[\]\)\}>】]")
_BARE = re.compile(r"(?<![\w.])(\d+)(?![\w.])")


def parse_ranking(text: str) -> list[int]:
    """The 1-based ids in ``text`` in the order they appear.

    Bracketed ids (``[3]``, ``(3)``, ``{3}``, ``<3>``, ``【3】``) are preferred; when the answer has
    none, bare numbers separated by ``>``, commas or whitespace are read instead. Multi-digit ids are
    whole numbers: ``[11]`` is eleven, not one.

        >>> parse_ranking("Sure! The ranking is [2] > [11] > [1].")
        [2, 11, 1]
        >>> parse_ranking("3 > 1 > 2")
        [3, 1, 2]
        >>> parse_ranking("(4) > {2} > < 1 >")
        [4, 2, 1]
        >>> parse_ranking("I cannot rank these.")
        []
    """
    if not isinstance(text, str):
        return []
    found = [int(m) for m in _BRACKETED.findall(text)]
    if found:
        return found
    return [int(m) for m in _BARE.findall(text)]


def repair_permutation(ids: list[int], n: int) -> tuple[list[int], dict[str, int]]:
    """Turn parsed 1-based ``ids`` into a full 0-based permutation of ``range(n)``.

    Out-of-range ids and repeats are dropped; ids the answer left out are appended in their
    previous (input) order. Returns the permutation and counts of what was repaired.

        >>> repair_permutation([3, 3, 9, 1], 4)
        ([2, 0, 1, 3], {'parsed': 4, 'out_of_range': 1, 'duplicates': 1, 'missing': 2})
        >>> repair_permutation([], 3)[0]
        [0, 1, 2]
    """
    seen: set[int] = set()
    order: list[int] = []
    out_of_range = duplicates = 0
    for i in ids:
        if not 1 <= i <= n:
            out_of_range += 1
        elif i - 1 in seen:
            duplicates += 1
        else:
            seen.add(i - 1)
            order.append(i - 1)
    missing = [i for i in range(n) if i not in seen]
    stats = {
        "parsed": len(ids),
        "out_of_range": out_of_range,
        "duplicates": duplicates,
        "missing": len(missing),
    }
    return order + missing, stats
