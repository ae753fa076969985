"""What the five local-model scorers (cross-encoder, bi-encoder, ColBERT, poly-encoder, seq2seq)
share: :class:`LocalScorer`, over the one loader of :mod:`~rerankers_plugins.scorers._hf`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rerankers_plugins.scorers._hf import Checkpoint, load_options
from rerankers_plugins.scorers.base import BaseScorer

__all__ = ["LocalScorer"]


class LocalScorer(BaseScorer):
    """What the five local-model scorers share: a :class:`Checkpoint` opened once in the
    constructor (:meth:`_open`), its device, dtype, token budget and model name, the tokenizer,
    and a copy that reloads the model from its files."""

    rebuild_on_copy = True  # a copy reloads the model from its files

    checkpoint: Checkpoint
    device: str
    dtype: Any
    max_batch_tokens: int | None
    max_length: int
    model: str
    _tokenizer: Any

    def _open(
        self,
        model: str,
        device: str | None,
        dtype: str,
        max_batch_tokens: int | str | None,
        load: Mapping[str, Any],
        **how: Any,
    ) -> Checkpoint:
        """:meth:`Checkpoint.open` for this scorer (``load``: its ``**load`` keywords; ``how``:
        ``extra``, ``precision``), recorded as its ``checkpoint``, ``device``, ``dtype``,
        ``max_batch_tokens``, ``model`` and ``name``."""
        options = load_options(type(self).__name__, load)
        ckpt = Checkpoint.open(
            model, device=device, dtype=dtype, max_batch_tokens=max_batch_tokens, options=options, **how
        )
        self.checkpoint, self.device, self.dtype = ckpt, ckpt.device, ckpt.dtype
        self.max_batch_tokens, self.model, self.name = ckpt.max_batch_tokens, model, model
        return ckpt

    def fingerprint(self) -> Mapping[str, Any]:
        """What the scores depend on: the model, its token window and dtype, the scorer's own
        settings (:meth:`settings`), and the checkpoint's files digest and revision (a model
        retrained in place, even only a ``1_Dense/`` module, is another model)."""
        return {
            "model": self.name,
            "max_length": self.max_length,
            "dtype": str(self.dtype),
            **self.score_settings(),
            **self.checkpoint.fingerprint(),
        }

    def score_settings(self) -> Mapping[str, Any]:
        """The settings besides model, window and dtype that change this scorer's scores."""
        return {}

    @property
    def tokenizer(self) -> Any:
        """The checkpoint's tokenizer (to count tokens as the model sees them)."""
        return self._tokenizer
