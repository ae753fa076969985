"""The queries a fine-tuning run uses: the split's qrels read and checked (unknown documents,
queries with no positive), the dev queries carved from the training ones (or read from a split of
their own), and unlabeled queries for distillation, with every query a qrels file judges left out
(by id or by text), so that no evaluation query is ever trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rerankers_plugins.errors import ConfigError
from rerankers_plugins.eval.beir import BeirData, load_beir, read_qrels, read_queries
from rerankers_plugins.train.settings import TrainSettings

__all__ = [
    "Queries",
    "carve_dev",
    "check_qrels",
    "dev_ids",
    "extra_queries",
    "load_split",
    "splits",
    "training_queries",
    "unlabeled_queries",
]

logger = logging.getLogger(__name__)


def splits(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "qrels").glob("*.tsv"))


def load_split(root: Path, split: str) -> BeirData:
    if not (root / "qrels" / f"{split}.tsv").is_file():
        raise ConfigError(
            f"split {split!r} not found: {root / 'qrels' / f'{split}.tsv'} is missing "
            f"(splits here: {', '.join(splits(root)) or 'none'})"
        )
    return load_beir(root, split)


def check_qrels(data: BeirData, root: Path, split: str) -> None:
    known = {str(c.id) for c in data.corpus}
    unknown = sorted({d for judged in data.qrels.values() for d in judged if d not in known})
    if unknown:
        raise ConfigError(
            f"qrels/{split}.tsv names {len(unknown)} document(s) not in corpus.jsonl, e.g. "
            f"{', '.join(repr(u) for u in unknown[:5])}: fix the qrels or the corpus"
        )
    missing = sorted(set(data.qrels) - set(data.queries))
    if missing:
        raise ConfigError(
            f"qrels/{split}.tsv names {len(missing)} quer(ies) not in queries.jsonl, e.g. "
            f"{', '.join(repr(m) for m in missing[:5])}"
        )


def _normal(text: str) -> str:
    """A query's text for matching: case and runs of whitespace ignored."""
    return " ".join(text.casefold().split())


def _query_row(line: str) -> tuple[str, str]:
    row = json.loads(line)
    qid, text = row["_id"], row["text"]
    if not isinstance(qid, (str, int)) or isinstance(qid, bool):
        raise TypeError(f"'_id' must be a string or an int, got {qid!r}")
    if not isinstance(text, str) or not text.strip():
        raise TypeError(f"'text' must be a non-empty string, got {text!r}")
    return str(qid), text


def _read_unlabeled(path: Path) -> dict[str, str]:
    """The query rows of ``path``, each id and each text (case and spacing ignored) once."""
    if not path.is_file():
        raise ConfigError(f"unlabeled queries file {path} not found")
    queries: dict[str, str] = {}
    seen: set[str] = set()
    repeated = n = 0
    try:
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):  # noqa: B007 (n names the line in the error)
                if not line.strip():
                    continue
                qid, text = _query_row(line)
                if qid in queries or _normal(text) in seen:
                    repeated += 1
                    continue
                queries[qid] = text
                seen.add(_normal(text))
    except (ValueError, KeyError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise ConfigError(f"{path} line {n} is not a query row ({{'_id': ..., 'text': ...}}): {exc}") from exc
    if repeated:
        logger.warning("%s: %d repeated query ids or texts used once", path, repeated)
    return queries


def _judged(queries: Mapping[str, str], root: Path) -> tuple[set[str], set[str]]:
    """The ids of ``queries`` that a qrels file of ``root`` judges by id, and (the others) by text."""
    judged = {q for split in splits(root) for q in read_qrels(root / "qrels" / f"{split}.tsv")}
    judged_texts = {
        _normal(str(text)) for qid, text in read_queries(root / "queries.jsonl").items() if qid in judged
    }
    by_id = {q for q in queries if q in judged}
    by_text = {q for q, text in queries.items() if q not in by_id and _normal(text) in judged_texts}
    return by_id, by_text


def unlabeled_queries(path: Path, root: Path) -> dict[str, str]:
    """Queries to distil on from a ``queries.jsonl``-style file (``_id``, ``text``), less every query
    that a qrels file of ``root`` judges, by id or by text (case and spacing ignored): those are for
    training or evaluation with their labels, and a test query must never be trained on, labelled
    or not. A repeated id or text is used once (warned); a row without text is refused."""
    queries = _read_unlabeled(path)
    by_id, by_text = _judged(queries, root)
    if by_id or by_text:
        left_out = sorted(by_id | by_text)
        logger.warning(
            "%d of %d unlabeled queries are judged in %s/qrels (%d by id, %d by text; e.g. %s): left "
            "out, so no evaluation query is trained on (give queries of another collection ids of "
            "their own, e.g. a prefix)",
            len(left_out),
            len(queries),
            root,
            len(by_id),
            len(by_text),
            ", ".join(repr(q) for q in left_out[:3]),
        )
    kept = {q: text for q, text in queries.items() if q not in by_id | by_text}
    if not kept:
        raise ConfigError(f"{path} has no unlabeled query left to distil on (rows: {len(queries)})")
    return kept


def carve_dev(qids: Sequence[str], fraction: float, seed: int) -> set[str]:
    shuffled = sorted(qids)
    random.Random(seed).shuffle(shuffled)
    return set(shuffled[: round(len(shuffled) * fraction)])


@dataclass(frozen=True)
class Queries:
    """Which queries a run trains on and which it holds out for dev."""

    train: list[str]
    skipped: int
    dev: set[str]
    dev_qrels: Mapping[str, Mapping[str, int]]
    dev_queries: Mapping[str, str]


def training_queries(data: BeirData, root: Path, settings: TrainSettings) -> Queries:
    labelled = sorted(q for q, judged in data.qrels.items() if any(g > 0 for g in judged.values()))
    skipped = len(data.qrels) - len(labelled)
    if skipped:
        logger.warning(
            "%d of %d queries in qrels/%s.tsv have no positive judgment: skipped",
            skipped,
            len(data.qrels),
            settings.split,
        )
    if settings.dev_split is not None:
        dev_data = load_split(root, settings.dev_split)
        check_qrels(dev_data, root, settings.dev_split)
        dev, dev_qrels, dev_queries = set(dev_data.qrels), dev_data.qrels, dev_data.queries
    else:
        dev = carve_dev(labelled, settings.dev_fraction, settings.seed)
        dev_qrels, dev_queries = data.qrels, data.queries
    train = [q for q in labelled if q not in dev]
    if not train:
        raise ConfigError(
            f"no training queries left in {settings.split!r} (with a positive, outside the dev split)"
        )
    return Queries(train, skipped, dev, dev_qrels, dev_queries)


def dev_ids(queries: Queries) -> list[str]:
    return sorted(q for q in queries.dev if any(g > 0 for g in queries.dev_qrels.get(q, {}).values()))


def extra_queries(settings: TrainSettings, root: Path) -> tuple[dict[str, str], str | None]:
    """The unlabeled queries to distil on and their digest (part of the run identity: the file's
    contents, not only its path); none without ``settings.unlabeled``."""
    if settings.unlabeled is None:
        return {}, None
    extra = unlabeled_queries(Path(settings.unlabeled), root)
    return extra, hashlib.sha256(json.dumps(sorted(extra.items())).encode()).hexdigest()
