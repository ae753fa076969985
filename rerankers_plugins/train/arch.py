"""What differs between training a cross-encoder and a poly-encoder, one class per kind.

``fine_tune`` prepares the data, the rows and the trainer's arguments the same way for both, then
asks the run's :class:`Arch` for the rest: the training-arguments class, the model, the trainer
(collate and loss), saving, the scorer that evaluates the saved directory, and the model card's
head.

A cross-encoder trains with sentence-transformers' ``CrossEncoderTrainer`` and losses. A
poly-encoder (:mod:`rerankers_plugins.scorers.poly_encoder`) trains with transformers' ``Trainer``
on the same rows and the same losses computed on its scores: binary cross-entropy with positives
weighted ``per_query`` (as sentence-transformers' ``BinaryCrossEntropyLoss``), ListNet (as its
``ListNetLoss``) and margin-MSE (as its ``MarginMSELoss``). The loop, checkpoints and resuming are
the trainer's in both.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.scorers._hf import load_model
from rerankers_plugins.scorers._tokens import pad_right
from rerankers_plugins.scorers.poly_encoder import QUERY_LENGTH, tokenize
from rerankers_plugins.train.settings import TrainSettings

if TYPE_CHECKING:
    from rerankers_plugins.scorers.base import Scorer

__all__ = ["ARCHITECTURES", "Arch", "CrossEncoderArch", "PolyEncoderArch", "collate", "poly_trainer"]

logger = logging.getLogger(__name__)


class Arch(ABC):
    """One kind of model to train."""

    #: the ``arch`` setting that selects it
    name: str

    @abstractmethod
    def training_arguments(self, **kwargs: Any) -> Any:
        """The trainer's arguments object from the shared keyword arguments."""

    @abstractmethod
    def build(self, settings: TrainSettings, base_path: str, *, fresh_head: bool, device: str) -> Any:
        """The model to train from ``base_path`` (``fresh_head``: the base is not yet a reranker)."""

    @abstractmethod
    def trainer(self, model: Any, args: Any, train_dataset: Any, settings: TrainSettings) -> Any:
        """A trainer of ``model`` on ``train_dataset`` under ``settings.loss``."""

    def save(self, model: Any, out: Path) -> None:
        """Write the trained model where :meth:`scorer` loads it."""
        model.save_pretrained(str(out))

    @abstractmethod
    def scorer(self, out: Path) -> Scorer:
        """The scorer of a saved model directory (the dev evaluation uses it)."""

    @abstractmethod
    def card_head(self, out: Path, settings: Mapping[str, Any]) -> str:
        """The model card's front matter and title, saying how to load ``out``."""


def _fresh_pooler(model: Any, torch: Any) -> None:
    """Re-initialise the [CLS] pooler of an encoder that was not trained as a classifier.

    An embedding model trained with mean pooling (all-MiniLM-L6-v2) keeps a pooler with tiny weights
    (std 0.009): its output barely varies between inputs, so the new head's gradient reaches the
    encoder ~50x attenuated and BCE training sits on the constant predictor (measured on SciFact:
    a flat loss for a whole epoch at lr 2e-5 and 1e-4). Xavier-uniform weights restore the signal."""
    hf = getattr(model, "model", None)
    body = getattr(hf, getattr(hf, "base_model_prefix", ""), None)
    dense = getattr(getattr(body, "pooler", None), "dense", None)
    if isinstance(dense, torch.nn.Linear):
        with torch.no_grad():
            torch.nn.init.xavier_uniform_(dense.weight)
            dense.bias.zero_()
        logger.info("re-initialised the encoder's [CLS] pooler for the new classification head")


class CrossEncoderArch(Arch):
    """A one-label sentence-transformers ``CrossEncoder``."""

    name = "cross-encoder"

    def training_arguments(self, **kwargs: Any) -> Any:
        st = require("sentence_transformers", "cross-encoder")
        return st.cross_encoder.CrossEncoderTrainingArguments(**kwargs)

    def build(self, settings: TrainSettings, base_path: str, *, fresh_head: bool, device: str) -> Any:
        st = require("sentence_transformers", "cross-encoder")
        model = load_model(
            "cross-encoder",
            base_path,
            lambda: st.CrossEncoder(base_path, num_labels=1, max_length=settings.max_length, device=device),
        )
        if fresh_head:
            _fresh_pooler(model, require("torch", "cross-encoder"))
        return model

    def trainer(self, model: Any, args: Any, train_dataset: Any, settings: TrainSettings) -> Any:
        st = require("sentence_transformers", "cross-encoder")
        torch = require("torch", "cross-encoder")
        losses = st.cross_encoder.losses
        criteria = {
            "bce": lambda: losses.BinaryCrossEntropyLoss(
                model, pos_weight=torch.tensor(float(settings.per_query))
            ),
            "listwise": lambda: losses.ListNetLoss(model),
            "margin-mse": lambda: losses.MarginMSELoss(model),
        }
        return st.cross_encoder.CrossEncoderTrainer(
            model=model,
            args=args,
            train_dataset=train_dataset,
            loss=criteria[settings.loss](),
            callbacks=list(settings.callbacks),
        )

    def scorer(self, out: Path) -> Scorer:
        from rerankers_plugins.scorers.cross_encoder import CrossEncoderScorer

        return CrossEncoderScorer(str(out))

    def card_head(self, out: Path, settings: Mapping[str, Any]) -> str:
        return f"""---
library_name: sentence-transformers
pipeline_tag: text-ranking
tags: [cross-encoder, reranker, rerankers-plugins]
---

# Cross-encoder fine-tuned with `rerankers-plugins train`

Load it with `CrossEncoderScorer("{out}")` (or any adapter's `model=`), or with
sentence-transformers' `CrossEncoder`. One output label; scores are sigmoid probabilities.

"""


class PolyEncoderArch(Arch):
    """A poly-encoder with ``settings.codes`` document codes (or those of a poly-encoder base)."""

    name = "poly-encoder"

    def training_arguments(self, **kwargs: Any) -> Any:
        transformers = require("transformers", "cross-encoder")
        return transformers.TrainingArguments(**kwargs, remove_unused_columns=False)

    def build(self, settings: TrainSettings, base_path: str, *, fresh_head: bool, device: str) -> Any:
        from rerankers_plugins.scorers.poly_encoder import CONFIG_NAME, build_poly_encoder, load_poly_encoder

        def make() -> Any:
            if (Path(base_path) / CONFIG_NAME).is_file():
                return load_poly_encoder(base_path)
            return build_poly_encoder(
                base_path, codes=settings.codes or 1, max_length=settings.max_length, seed=settings.seed
            )

        model = load_model("poly-encoder", base_path, make, cls="PolyEncoderScorer")
        model.settings.update(
            {"codes": int(model.codes.shape[0]), "max_length": settings.max_length, "base": settings.base}
        )
        return model.to(device)

    def trainer(self, model: Any, args: Any, train_dataset: Any, settings: TrainSettings) -> Any:
        return poly_trainer(
            model,
            args,
            train_dataset,
            loss=settings.loss,
            per_query=settings.per_query,
            max_length=settings.max_length,
            callbacks=settings.callbacks,
        )

    def scorer(self, out: Path) -> Scorer:
        from rerankers_plugins.scorers.poly_encoder import PolyEncoderScorer

        return PolyEncoderScorer(str(out))

    def card_head(self, out: Path, settings: Mapping[str, Any]) -> str:
        return f"""---
library_name: transformers
pipeline_tag: text-ranking
tags: [poly-encoder, reranker, rerankers-plugins]
---

# Poly-encoder fine-tuned with `rerankers-plugins train --arch poly-encoder`

Load it with `PolyEncoderScorer("{out}")` (or `PolyEncoderRerank(model=...)` in either adapter).
{settings.get("codes")} document codes; scores are logits (unbounded dot products).

"""


ARCHITECTURES: Mapping[str, Arch] = {a.name: a for a in (CrossEncoderArch(), PolyEncoderArch())}


def _margin_row(r: Mapping[str, Any]) -> tuple[list[str], list[float]]:
    docs = [str(r["positive"])] + [str(r[f"negative_{i}"]) for i in range(1, len(r["label"]))]
    return docs, [float(x) for x in r["label"]]


#: one training row -> its documents and their labels, in the column layout of each loss's rows
_ROW_GROUPS: Mapping[str, Callable[[Mapping[str, Any]], tuple[list[str], list[float]]]] = {
    "bce": lambda r: ([str(r["document"])], [float(r["label"])]),
    "listwise": lambda r: ([str(d) for d in r["docs"]], [float(x) for x in r["labels"]]),
    "margin-mse": _margin_row,
}


def collate(rows: Sequence[Mapping[str, Any]], tokenizer: Any, max_length: int, loss: str) -> dict[str, Any]:
    """A batch of training rows -> tensors: queries and documents tokenized apart, each document
    pointing at its query; labels per document (bce) or ``[B, K]`` with a mask (listwise, margin-mse)."""
    torch = require("torch", "cross-encoder")
    queries = [str(r["query"]) for r in rows]
    pairs = [_ROW_GROUPS[loss](r) for r in rows]
    groups, labels = [g for g, _ in pairs], [ls for _, ls in pairs]
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
