"""Length-aware batching: group inputs of similar token length so padding is not wasted.

Pure functions over integer lengths; no model, no tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["length_sorted_batches", "restore_order"]


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches of at most ``batch_size``, longest first.

    Sorting by length before batching means each batch is padded only to its own longest item.
    Longest first makes the first batch the largest, so an out-of-memory error shows at once.
    Equal lengths keep their input order (stable sort).

    Shapes: ``lengths`` is ``[n]``; the result is a partition of ``range(n)``.

        >>> length_sorted_batches([5, 300, 7, 280, 6], batch_size=2)
        [[1, 3], [2, 4], [0]]
        >>> length_sorted_batches([], batch_size=4)
        []
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def restore_order(batches: Sequence[Sequence[int]], values: Sequence[float]) -> list[float]:
    """Undo :func:`length_sorted_batches`: ``values`` (concatenated in batch order) back to input order.

    >>> restore_order([[1, 3], [2, 4], [0]], [10.0, 30.0, 20.0, 40.0, 0.0])
    [0.0, 10.0, 20.0, 30.0, 40.0]
    """
    flat = [i for batch in batches for i in batch]
    if len(flat) != len(values):
        raise ValueError(f"{len(values)} values for {len(flat)} batched indices")
    out = [0.0] * len(flat)
    for i, v in zip(flat, values, strict=True):
        out[i] = v
    return out
