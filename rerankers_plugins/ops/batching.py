"""Length-aware batching: group inputs of similar token length so padding is not wasted.

Pure functions over integer lengths; no model, no tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

from rerankers_plugins.errors import ConfigError

__all__ = ["length_sorted_batches", "restore_order"]


def length_sorted_batches(
    lengths: Sequence[int], batch_size: int, max_tokens: int | None = None
) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches, longest first.

    Sorting by length before batching means each batch is padded only to its own longest item.
    A batch holds at most ``batch_size`` items and, when ``max_tokens`` is given, at most
    ``max_tokens`` padded tokens (items x longest item; a single item longer than the budget still
    gets a batch of its own). Longest first makes the first batch the largest, so an out-of-memory
    error shows at once. Equal lengths keep their input order (stable sort).

    Shapes: ``lengths`` is ``[n]``; the result is a partition of ``range(n)``.

        >>> length_sorted_batches([5, 300, 7, 280, 6], batch_size=2)
        [[1, 3], [2, 4], [0]]
        >>> length_sorted_batches([5, 300, 7, 280, 6], batch_size=8, max_tokens=600)
        [[1, 3], [2, 4, 0]]
        >>> length_sorted_batches([], batch_size=4)
        []
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError(f"max_tokens must be >= 1 or None, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches:
            batch = batches[-1]
            padded = (len(batch) + 1) * max(lengths[batch[0]], 1)
            if len(batch) < batch_size and (max_tokens is None or padded <= max_tokens):
                batch.append(i)
                continue
        batches.append([i])
    return batches


def restore_order(batches: Sequence[Sequence[int]], values: Sequence[float]) -> list[float]:
    """Undo :func:`length_sorted_batches`: ``values`` (concatenated in batch order) back to input order.

    >>> restore_order([[1, 3], [2, 4], [0]], [10.0, 30.0, 20.0, 40.0, 0.0])
    [0.0, 10.0, 20.0, 30.0, 40.0]
    """
    flat = [i for batch in batches for i in batch]
    if len(flat) != len(values):
        raise ConfigError(f"{len(values)} values for {len(flat)} batched indices")
    out = [0.0] * len(flat)
    for i, v in zip(flat, values, strict=True):
        out[i] = v
    return out
