"""Training a poly-encoder with transformers' ``Trainer`` on the same rows as the cross-encoder.

The rows (``fine_tune`` writes them) and the losses are the cross-encoder's, computed on the
poly-encoder's scores: binary cross-entropy with positives weighted ``per_query`` (as
sentence-transformers' ``BinaryCrossEntropyLoss``), ListNet (as its ``ListNetLoss``) and margin-MSE
(as its ``MarginMSELoss``). The loop, checkpoints and resuming are the ``Trainer``'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.scorers._hf import pad_right
from rerankers_plugins.scorers.poly_encoder import tokenize

__all__ = ["QUERY_LENGTH", "collate", "poly_trainer"]

#: query tokens kept in training (the scorer's default ``query_length``)
QUERY_LENGTH = 64


def collate(rows: Sequence[Mapping[str, Any]], tokenizer: Any, max_length: int, loss: str) -> dict[str, Any]:
    """A batch of training rows -> tensors: queries and documents tokenized apart, each document
    pointing at its query; labels per document (bce) or ``[B, K]`` with a mask (listwise, margin-mse)."""
    torch = require("torch", "cross-encoder")
    queries = [str(r["query"]) for r in rows]
    if loss == "bce":
        groups = [[str(r["document"])] for r in rows]
        labels = [[float(r["label"])] for r in rows]
    elif loss == "listwise":
        groups = [[str(d) for d in r["docs"]] for r in rows]
        labels = [[float(x) for x in r["labels"]] for r in rows]
    else:
        groups = [
            [str(r["positive"])] + [str(r[f"negative_{i}"]) for i in range(1, len(r["label"]))] for r in rows
        ]
        labels = [[float(x) for x in r["label"]] for r in rows]
    width = max(len(g) for g in groups)
    label_matrix = torch.zeros((len(rows), width))
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, ls in enumerate(labels):
        label_matrix[i, : len(ls)] = torch.tensor(ls)
        mask[i, : len(ls)] = True
    pad_id = int(tokenizer.pad_token_id or 0)
    q_ids, q_mask = pad_right(tokenize(tokenizer, queries, QUERY_LENGTH), pad_id)
    d_ids, d_mask = pad_right(tokenize(tokenizer, [d for g in groups for d in g], max_length), pad_id)
    return {
        "q_ids": q_ids,
        "q_mask": q_mask,
        "d_ids": d_ids,
        "d_mask": d_mask,
        "labels": label_matrix,
        "label_mask": mask,
    }


def batch_loss(model: Any, batch: Mapping[str, Any], loss: str, per_query: int) -> Any:
    """The loss of one collated batch under ``loss``."""
    torch = require("torch", "cross-encoder")
    functional = torch.nn.functional
    mask = batch["label_mask"]
    scores = model(
        q_ids=batch["q_ids"],
        q_mask=batch["q_mask"],
        d_ids=batch["d_ids"],
        d_mask=batch["d_mask"],
        label_mask=mask,
    ).float()
    labels = batch["labels"][mask].float()
    if loss == "bce":
        weight = torch.tensor(float(per_query), device=scores.device)
        return functional.binary_cross_entropy_with_logits(scores, labels, pos_weight=weight)
    matrix = torch.full(mask.shape, float("-inf"), device=scores.device)
    matrix[mask] = scores
    if loss == "listwise":
        target = torch.softmax(batch["labels"].float().masked_fill(~mask, float("-inf")), dim=-1)
        logp = torch.log_softmax(matrix, dim=-1)
        return -torch.where(mask, target * logp, torch.zeros_like(logp)).sum(-1).mean()
    teacher = batch["labels"].float()
    return functional.mse_loss(matrix[:, :1] - matrix[:, 1:], teacher[:, :1] - teacher[:, 1:])


def poly_trainer(
    model: Any,
    args: Any,
    train_dataset: Any,
    *,
    loss: str,
    per_query: int,
    max_length: int,
    callbacks: Sequence[Any] = (),
) -> Any:
    """A transformers ``Trainer`` over ``model`` (a poly-encoder module) computing ``loss``."""
    transformers = require("transformers", "cross-encoder")
    if getattr(args, "n_gpu", 1) > 1:
        # the Trainer would wrap the model in DataParallel, which splits queries and their
        # documents (a different number of rows) apart
        raise ConfigError(
            f"poly-encoder training runs on one device; {args.n_gpu} GPUs are visible: "
            "set CUDA_VISIBLE_DEVICES to one of them"
        )

    class PolyTrainer(transformers.Trainer):  # type: ignore[misc,name-defined]
        def compute_loss(
            self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            value = batch_loss(model, inputs, loss, per_query)
            return (value, {"loss": value}) if return_outputs else value

    tokenizer = model.tokenizer
    return PolyTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        data_collator=lambda rows: collate(rows, tokenizer, max_length, loss),
        callbacks=list(callbacks),
    )
