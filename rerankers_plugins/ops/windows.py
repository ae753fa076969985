"""Sliding windows for listwise reranking, from the back of the list to the front.

RankGPT reorders a long list with a window that starts at the bottom and moves up by ``step``:
each window's best candidates are carried into the next (overlapping) window, so strong candidates
found deep in the list bubble up to the top in a single pass.
"""

from __future__ import annotations

from rerankers_plugins.errors import ConfigError

__all__ = ["sliding_windows"]


def sliding_windows(n: int, window: int, step: int) -> list[tuple[int, int]]:
    """``(start, end)`` slices covering ``range(n)``, last window first; ``end - start <= window``.

    The first window ends at ``n``; each next one starts ``step`` earlier; the last starts at 0 and
    is always a full window (``(0, window)``), so the top of the list is ranked with its winners
    even when ``step`` does not divide the list (RankGPT's loop would end on a sliver there).
    A list no longer than the window is a single window. ``step <= window`` keeps windows
    overlapping (or touching), which is what lets a candidate move from the bottom to the top.

        >>> sliding_windows(100, window=20, step=10)[:3], sliding_windows(100, window=20, step=10)[-1]
        ([(80, 100), (70, 90), (60, 80)], (0, 20))
        >>> len(sliding_windows(100, window=20, step=10))
        9
        >>> sliding_windows(25, window=10, step=5)
        [(15, 25), (10, 20), (5, 15), (0, 10)]
        >>> sliding_windows(21, window=20, step=20)
        [(1, 21), (0, 20)]
        >>> sliding_windows(7, window=20, step=10)
        [(0, 7)]
        >>> sliding_windows(0, window=20, step=10)
        []
    """
    if window < 2:
        raise ConfigError(f"window must be >= 2, got {window}")
    if not 1 <= step <= window:
        raise ConfigError(f"step must be in 1..window ({window}), got {step}")
    if n <= 0:
        return []
    if n <= window:
        return [(0, n)]
    out = []
    end = n
    while True:
        start = max(end - window, 0)
        if start == 0:
            out.append((0, min(window, n)))
            return out
        out.append((start, end))
        end -= step
