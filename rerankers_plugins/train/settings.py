"""The settings of one training run: every option of ``fine_tune``, checked once, frozen.

The run identity (what an interrupted run directory records, and what a rerun must match to resume
it) is derived from the fields: every field is part of it unless it is declared with
``identity=False`` (``field(metadata=NOT_IDENTITY)``), which marks settings that do not change the
trained model (where it is written, progress bars, callbacks, the dev evaluation's depth).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from rerankers_plugins._validate import as_int, as_real
from rerankers_plugins.errors import ConfigError

if TYPE_CHECKING:
    from rerankers_plugins.pipeline.leaves import ScorerLike

__all__ = ["ARCHS", "LOSSES", "NOT_IDENTITY", "TEACHER_DEPTH", "PipelineSpec", "TrainSettings"]

LOSSES: tuple[str, ...] = ("bce", "listwise", "margin-mse")
ARCHS: tuple[str, ...] = ("cross-encoder", "poly-encoder")
#: first-stage candidates a distillation teacher scores per query: what a reranker sees in use
TEACHER_DEPTH = 100
#: field metadata of a setting that does not change the trained model: left out of the run identity
NOT_IDENTITY: Mapping[str, bool] = {"identity": False}

#: a first stage or teacher: a name / pipeline spec (``"bm25"``, ``"KIND:key=value"``,
#: ``"FILE.toml#NAME"``) or a scorer / strategy object
PipelineSpec = Union[str, "ScorerLike"]


def _help(text: str, **cli: Any) -> dict[str, Any]:
    """A setting's help text, written once for ``fine_tune``'s docs and the ``train`` command, and
    how the command shows it (``metavar``, ``choices``, ``aliases``; ``cli=False``: Python only)."""
    return {"help": text, **cli}


def _path(value: str | os.PathLike[str]) -> str:
    return str(Path(value).resolve())


def _identity_value(value: Any) -> Any:
    """A setting as the identity file holds it: JSON scalars as they are, anything else by repr."""
    return value if value is None or isinstance(value, (str, int, float, bool)) else repr(value)


@dataclass(frozen=True)
class TrainSettings:
    """Every setting of a training run (see :func:`rerankers_plugins.train.fine_tune`)."""

    data_dir: str | os.PathLike[str] = field(
        metadata=_help("directory with corpus.jsonl, queries.jsonl, qrels/<split>.tsv (held resolved)")
    )
    base: str = field(metadata=_help("encoder or one-label cross-encoder: Hub id, directory or 'minilm'"))
    out: str | os.PathLike[str] = field(
        metadata={**NOT_IDENTITY, **_help("new (or empty) directory for the trained model")}
    )
    split: str = field(default="train", metadata=_help("qrels split to train on"))
    negatives: PipelineSpec = field(
        default="bm25",
        metadata=_help(
            "first stage for hard negatives: bm25, bi-encoder (negatives_model over the corpus), a "
            "pipeline KIND[:k=v,...] / FILE.toml#NAME reranking BM25's top 100, or a batch job's output "
            "directory (its run)",
            metavar="bm25|bi-encoder|PIPELINE|DIR",
        ),
    )
    negatives_model: str = field(default="minilm", metadata=_help("bi-encoder for negatives='bi-encoder'"))
    per_query: int = field(default=8, metadata=_help("hard negatives per query"))
    depth: int = field(default=30, metadata=_help("negatives are drawn from this many top candidates"))
    epochs: float = field(default=1.0, metadata=_help("passes over the training rows"))
    max_steps: int | None = field(default=None, metadata=_help("stop after this many steps"))
    max_length: int = field(default=256, metadata=_help("token window of (query, document) pairs"))
    loss: str = field(default="bce", metadata=_help("what the model learns from", choices=LOSSES))
    teacher: PipelineSpec | None = field(
        default=None,
        metadata=_help(
            "teacher for loss='margin-mse': a pipeline, or a batch job's output directory (its scores)",
            metavar="PIPELINE|DIR",
        ),
    )
    dev_split: str | None = field(
        default=None, metadata=_help("qrels split for dev metrics (default: carved from train)")
    )
    dev_fraction: float = field(default=0.1, metadata=_help("share of train queries held out as dev"))
    dev_depth: int = field(
        default=100, metadata={**NOT_IDENTITY, **_help("BM25 candidates reranked per dev query")}
    )
    batch_size: int = field(default=16, metadata=_help("pairs per training step"))
    learning_rate: float = field(default=2e-5, metadata=_help("learning rate", aliases=("--lr",)))
    warmup_ratio: float = field(
        default=0.1, metadata=_help("share of the steps the learning rate warms up over")
    )
    save_steps: int = field(default=200, metadata=_help("checkpoint every N steps (the resume point)"))
    seed: int = field(default=0, metadata=_help("seed of the dev split, negatives and training"))
    device: str | None = field(
        default=None, metadata={**NOT_IDENTITY, **_help("cpu, cuda, ...; None: the best there is")}
    )
    overwrite: bool = field(
        default=False, metadata={**NOT_IDENTITY, **_help("replace a finished model in out")}
    )
    progress: bool = field(default=True, metadata={**NOT_IDENTITY, **_help("progress bars")})
    callbacks: Sequence[Any] = field(
        default=(),
        metadata={**NOT_IDENTITY, **_help("transformers TrainerCallbacks (Python only)", cli=False)},
    )
    arch: str = field(
        default="cross-encoder",
        metadata=_help(
            "what to train: a cross-encoder or a poly-encoder (cached document codes)", choices=ARCHS
        ),
    )
    #: document codes of a poly-encoder; None for a cross-encoder (it has none)
    codes: int | None = field(default=16, metadata=_help("document codes of a poly-encoder"))
    #: a ``queries.jsonl``-style file of queries without judgments (distillation only)
    unlabeled: str | os.PathLike[str] | None = field(
        default=None,
        metadata=_help(
            "with loss='margin-mse': more queries to distil on, without judgments (queries any qrels file "
            "judges are left out)",
            metavar="QUERIES.jsonl",
        ),
    )

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("data_dir", _path(self.data_dir))
        put("out", str(self.out))
        put("unlabeled", None if self.unlabeled is None else _path(self.unlabeled))
        put("callbacks", tuple(self.callbacks))
        self._check_choices()
        put("codes", as_int(self.codes, "codes", minimum=1) if self.arch == "poly-encoder" else None)
        put("per_query", as_int(self.per_query, "per_query", minimum=1))
        put("depth", as_int(self.depth, "depth", minimum=self.per_query))
        put("batch_size", as_int(self.batch_size, "batch_size", minimum=1))
        put("max_length", as_int(self.max_length, "max_length", minimum=8))
        put("max_steps", as_int(self.max_steps, "max_steps", minimum=1, allow_none=True))
        put("save_steps", as_int(self.save_steps, "save_steps", minimum=1))
        put("dev_depth", as_int(self.dev_depth, "dev_depth", minimum=1))
        put("seed", as_int(self.seed, "seed"))
        put("epochs", as_real(self.epochs, "epochs", positive=True))
        put("learning_rate", as_real(self.learning_rate, "learning_rate", positive=True))
        put("warmup_ratio", as_real(self.warmup_ratio, "warmup_ratio"))
        put("dev_fraction", as_real(self.dev_fraction, "dev_fraction"))
        if not 0 <= self.dev_fraction < 1:
            raise ConfigError(f"dev_fraction must be in [0, 1), got {self.dev_fraction!r}")

    def _check_choices(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.loss == "margin-mse" and self.teacher is None:
            raise ConfigError("loss='margin-mse' distils from a teacher: pass teacher= (--teacher PIPELINE)")
        if self.unlabeled is not None and self.loss != "margin-mse":
            raise ConfigError(
                f"unlabeled queries have no labels to learn from with loss={self.loss!r}: they are used by "
                "distillation (loss='margin-mse' with a teacher)"
            )

    @property
    def teacher_depth(self) -> int | None:
        """First-stage candidates the teacher scores per query (distillation only)."""
        return max(self.depth, TEACHER_DEPTH) if self.loss == "margin-mse" else None

    def identity(self) -> dict[str, Any]:
        """The run identity: every field not declared ``NOT_IDENTITY``, JSON-ready."""
        return {
            f.name: _identity_value(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.metadata.get("identity", True)
        }
