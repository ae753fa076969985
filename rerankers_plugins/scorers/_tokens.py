"""Token rows shared by the local scorers: right padding into a batch, and the one warning a
scorer gives when inputs are longer than its model reads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from rerankers_plugins._optional import require

__all__ = ["TruncationReport", "pad_right"]

logger = logging.getLogger(__name__)


def pad_right(
    rows: Sequence[Sequence[int]], pad_id: int, attend: Sequence[Sequence[int]] | None = None
) -> tuple[Any, Any]:
    """``[B, L]`` token ids right-padded with ``pad_id`` and their attention mask (1 on each row's
    tokens, or that row of ``attend`` where given), as int64 CPU tensors."""
    torch = require("torch", "cross-encoder")
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1 if attend is None else torch.tensor(list(attend[i]), dtype=torch.long)
    return ids, mask


class TruncationReport:
    """Counts tokens of texts against a limit and warns once per scorer when text will be cut.

    Truncation is silent in the underlying libraries; a user reranking 20-page documents with a
    512-token model should hear about it once, not on every call and not never.
    """

    def __init__(
        self, owner: str, hint: str = "Split long documents into passages for full coverage."
    ) -> None:
        self.owner = owner
        self.hint = hint
        self.warned = False

    def token_ids(self, tokenizer: Any, texts: Sequence[str], limit: int) -> list[list[int]]:
        """Token ids of each text without special tokens, capped at ``limit + 1`` (one over the
        limit tells that a text is truncated)."""
        if not texts:
            return []
        enc = tokenizer(
            list(texts),
            add_special_tokens=False,
            truncation=True,
            max_length=limit + 1,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return [list(ids) for ids in enc["input_ids"]]

    def lengths(self, tokenizer: Any, texts: Sequence[str], limit: int) -> list[int]:
        """Token count of each text without special tokens, capped at ``limit + 1``."""
        return [len(ids) for ids in self.token_ids(tokenizer, texts, limit)]

    def check(self, over: int, total: int, limit: int) -> None:
        if over and not self.warned:
            self.warned = True
            logger.warning(
                "%s: %d of %d inputs are longer than the model's %d-token window and are truncated "
                "(only their beginning is scored). %s This warning is shown once per scorer.",
                self.owner,
                over,
                total,
                limit,
                self.hint,
            )
