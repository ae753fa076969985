"""MaxSim, the late-interaction score of ColBERT.

For a query with token vectors ``q_1..q_m`` and a document with token vectors ``d_1..d_n``::

    MaxSim(q, d) = sum_i max_j <q_i, d_j>

Each query token takes its best-matching document token; the maxima are summed over query tokens.
With L2-normalised vectors each term is a cosine in [-1, 1], so the sum lies in [-m, m] (m = number
of valid query tokens) and ``normalize=True`` (the mean over query tokens) lies in [-1, 1].

Pure functions over torch tensors; padding is excluded through boolean masks.
"""

from __future__ import annotations

from typing import Any

from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError

__all__ = ["maxsim", "pad_vectors"]


def pad_vectors(vectors: list[Any], dim: int | None = None) -> tuple[Any, Any]:
    """Stack variable-length ``[n_i, dim]`` tensors into ``[b, n_max, dim]`` plus a ``[b, n_max]`` mask.

    Zero-length inputs are allowed (their mask row is all False). ``dim`` is needed only when every
    input is empty.

        >>> import torch
        >>> x, m = pad_vectors([torch.ones(2, 3), torch.ones(1, 3)])
        >>> tuple(x.shape), m.tolist()
        ((2, 2, 3), [[True, True], [True, False]])
    """
    torch = require("torch", "cross-encoder")
    if not vectors:
        raise ConfigError("pad_vectors needs at least one tensor")
    dim = dim if dim is not None else max((int(v.shape[-1]) for v in vectors), default=0)
    n_max = max(int(v.shape[0]) for v in vectors)
    ref = vectors[0]
    out = torch.zeros((len(vectors), max(n_max, 1), dim), dtype=ref.dtype, device=ref.device)
    mask = torch.zeros((len(vectors), max(n_max, 1)), dtype=torch.bool, device=ref.device)
    for i, v in enumerate(vectors):
        n = int(v.shape[0])
        if n:
            out[i, :n] = v.to(device=ref.device, dtype=ref.dtype)
            mask[i, :n] = True
    return out, mask


def maxsim(
    query: Any,
    docs: Any,
    *,
    query_mask: Any | None = None,
    doc_mask: Any | None = None,
    normalize: bool = False,
) -> Any:
    """Late-interaction scores of one query against a batch of documents.

    Shapes:
        query      ``[m, dim]``        query token vectors
        docs       ``[b, n, dim]``     document token vectors, padded to ``n``
        query_mask ``[m]`` bool        True for real query tokens (default: all)
        doc_mask   ``[b, n]`` bool     True for real document tokens (default: all)
        returns    ``[b]`` float32     sum (or mean, with ``normalize``) over valid query tokens of
                                       the max over valid document tokens of the dot product

    Padding never contributes: masked document tokens are excluded from every max, masked query
    tokens from the sum. A document with no valid token scores 0.

    Worked example (2-d vectors, checkable by hand): the query tokens are (1, 0) and (0, 1); the
    first document's tokens are (1, 0) and (0.6, 0.8), the second's is (0, 1) plus one padding row.
    Document 1: max(1, 0.6) + max(0, 0.8) = 1.8. Document 2: 0 + 1 = 1.0 (the padding row (9, 9)
    would have won both maxima had it counted).

        >>> import torch
        >>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> d = torch.tensor([[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [9.0, 9.0]]])
        >>> dm = torch.tensor([[True, True], [True, False]])
        >>> maxsim(q, d, doc_mask=dm).tolist()
        [1.7999999523162842, 1.0]
        >>> maxsim(q, d, doc_mask=dm, normalize=True).tolist()
        [0.8999999761581421, 0.5]
    """
    torch = require("torch", "cross-encoder")
    if query.ndim != 2 or docs.ndim != 3:
        raise ConfigError(
            f"maxsim expects query [m, dim] and docs [b, n, dim], got {tuple(query.shape)} and {tuple(docs.shape)}"
        )
    if query.shape[-1] != docs.shape[-1]:
        raise ConfigError(f"query dim {query.shape[-1]} != document dim {docs.shape[-1]}")
    if query.device != docs.device:
        raise ConfigError(
            f"query is on {query.device} but documents are on {docs.device}; move them to one device"
        )
    q = query.float()
    d = docs.float()
    sim = torch.einsum("md,bnd->bmn", q, d)  # [b, m, n]
    if doc_mask is not None:
        sim = sim.masked_fill(~doc_mask.to(sim.device)[:, None, :], float("-inf"))
    best = sim.max(dim=-1).values  # [b, m]
    best = torch.where(torch.isfinite(best), best, torch.zeros_like(best))  # empty documents: 0
    if query_mask is not None:
        qm = query_mask.to(best.device)
        best = best * qm[None, :].float()
        count = qm.sum().clamp(min=1).float()
    else:
        count = torch.tensor(float(best.shape[1]), device=best.device).clamp(min=1)
    total = best.sum(dim=-1)
    return total / count if normalize else total
