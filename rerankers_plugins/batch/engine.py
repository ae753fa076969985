"""``rerank_dataset``: rerank every query of a large input with one pipeline, on the embedded local
engine or on Ray Data, writing each row exactly once (see :mod:`.store`), resumable.

How a shard is computed is the same on both engines (:func:`run_shard`): its queries go in blocks of
``block_queries``; a block's queries run through the pipeline together, each in its own thread, and
their calls to a local model are computed in rounds (:class:`~rerankers_plugins.scorers._scheduler.Rounds`):
the pairs of every query of the block at the same stage, length-sorted across the queries, so a
batch holds pairs of similar length whatever query they come from. Which pairs share a batch depends
on the block alone, so both engines compute the same batches and give the same scores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rerankers_plugins._validate import as_int
from rerankers_plugins.batch.inputs import BadRow, QueryRows, Shard, read_input
from rerankers_plugins.batch.store import Store, default_format
from rerankers_plugins.errors import ConfigError, RerankError
from rerankers_plugins.pipeline.leaves import ScorerLike, leaf_nodes
from rerankers_plugins.pipeline.ranking import Strategy
from rerankers_plugins.pipeline.rerank import check_options, explain
from rerankers_plugins.scorers._scheduler import Rounds, in_rounds
from rerankers_plugins.spec import Spec
from rerankers_plugins.types import Scored, thaw

__all__ = [
    "ENGINES",
    "BatchSummary",
    "JobSettings",
    "ShardResult",
    "TooManyErrors",
    "pipeline_fingerprint",
    "rerank_dataset",
    "resolve_spec",
    "run_shard",
]

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")
#: the tag of the run file's lines
RUN_TAG = "rerankers-plugins"


class TooManyErrors(RerankError):
    """A job stopped because more rows than ``max_errors`` were left out; its complete shards stay."""


@dataclass(frozen=True)
class JobSettings:
    """What decides a job's rows besides its input and pipeline (recorded in the manifest: a re-run
    must use the same)."""

    top_n: int | None = None
    threshold: float | None = None
    shard_queries: int = 64
    block_queries: int = 16
    format: str = "parquet"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shard_queries", as_int(self.shard_queries, "shard_queries", minimum=1))
        object.__setattr__(self, "block_queries", as_int(self.block_queries, "block_queries", minimum=1))


@dataclass(frozen=True)
class ShardResult:
    """What computing one shard gives: its rows and errors (records of the output files), the pairs
    it scored, the seconds it took and which worker computed it."""

    shard: str
    rows: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    pairs: int
    seconds: float
    worker: str
    failed_blocks: int = 0


@dataclass(frozen=True)
class BatchSummary:
    """A finished (or stopped) job: rows of the input, pairs scored by this run, rows left out (the
    whole job's), shards, shards skipped as already complete, wall time, pairs per second per worker."""

    output: str
    engine: str
    rows: int
    pairs: int
    errors: int
    shards: int
    skipped_shards: int
    wall_s: float
    workers: Mapping[str, float] = field(default_factory=dict)

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.wall_s if self.wall_s > 0 else 0.0

    def __str__(self) -> str:
        per = ", ".join(f"{w} {v:.1f}" for w, v in sorted(self.workers.items())) or "-"
        return (
            f"{self.rows} rows, {self.pairs} pairs scored, {self.errors} rows in errors.jsonl; "
            f"{self.shards} shards ({self.skipped_shards} already complete, skipped); "
            f"{self.wall_s:.1f} s, {self.pairs_per_s:.1f} pairs/s ({self.engine}); pairs/s per worker: {per}"
        )


# -- the pipeline ----------------------------------------------------------------------------------


def resolve_spec(pipeline: Spec | str | Path | Any) -> Spec:
    """A self-contained spec from ``pipeline``: a spec dict, ``"FILE.toml"`` / ``"FILE.toml#NAME"``
    (a pipeline file; its ``use`` references inlined), ``"KIND[:key=value,...]"`` (a registry
    scorer, as on the command line) or a registry scorer object (its settings). The spec is what a
    Ray worker builds its pipeline from and what the pipeline fingerprint covers."""
    from rerankers_plugins.spec import parse_pipeline_arg, pipeline_spec, scorer_spec

    if isinstance(pipeline, Mapping):
        return pipeline_spec(pipeline)
    if isinstance(pipeline, (str, Path)):
        text = str(pipeline)
        if text.partition("#")[0].endswith(".toml"):
            return pipeline_spec(text)
        return parse_pipeline_arg(f"pipeline={text}")[1]
    try:
        return scorer_spec(pipeline)
    except ConfigError as exc:
        raise ConfigError(
            f"a batch job needs its pipeline as settings (a spec dict, FILE.toml#NAME or KIND:key=value), "
            f"so that every worker builds the same one and a re-run can tell it is the same: {exc}"
        ) from None


def pipeline_fingerprint(spec: Spec, pipeline: ScorerLike) -> str:
    """sha256 of the spec and of every leaf's own fingerprint (the model files' digest, dtype,
    activation, ...): a changed checkpoint under the same path is another pipeline."""
    strategy = check_options(pipeline, None, None)
    leaves = [
        {
            "class": f"{type(leaf.leaf).__module__}.{type(leaf.leaf).__qualname__}",
            "name": leaf.name,
            "settings": leaf.fingerprint(),
        }
        for leaf in leaf_nodes(strategy)
    ]
    text = json.dumps({"spec": spec, "leaves": leaves}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# -- one shard ---------------------------------------------------------------------------------------


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


#: details that have their own column, and a cascade's per-query stage latencies: in a block a
#: query's stage waits for the block's other queries, so they would time the block, and rows would
#: differ from run to run (summary.json has the job's throughput)
_COLUMNS_OF_DETAILS = ("original_rank", "score", "reranked", "retrieval_score", "dropped_by", "stage_ms")


def _records(q: QueryRows, kept: Sequence[Scored], dropped: Sequence[Scored]) -> list[dict[str, Any]]:
    out = []
    rows = {r.doc_id: r.row for r in q.rows}
    for rank, s in [*((i + 1, s) for i, s in enumerate(kept)), *((None, s) for s in dropped)]:
        details = {k: v for k, v in thaw(s.details).items() if k not in _COLUMNS_OF_DETAILS}
        out.append(
            {
                "row": rows[str(s.candidate.id)],
                "query_id": q.query_id,
                "doc_id": s.candidate.id,
                "score": _finite(s.score),
                "rank": rank,
                "original_rank": int(s.details["original_rank"]) + 1,
                "retrieval_score": s.candidate.retrieval_score,
                "reranked": bool(s.details.get("reranked", True)),
                "dropped_by": s.details.get("dropped_by"),
                "details": json.dumps(details, sort_keys=True, default=str),
            }
        )
    return out


def _run_block(
    strategy: Strategy, settings: JobSettings, block: Sequence[QueryRows]
) -> list[list[dict[str, Any]]]:
    """The rows of each query of ``block``, its queries run together (see the module docstring)."""
    rounds = Rounds(len(block))
    results: list[list[dict[str, Any]] | None] = [None] * len(block)
    errors: list[BaseException] = []

    def one(index: int, q: QueryRows) -> None:
        in_rounds.set((rounds, index))
        try:
            ex = explain(
                q.query,
                [r.candidate() for r in q.rows],
                strategy,
                top_n=settings.top_n,
                threshold=settings.threshold,
            )
            results[index] = _records(q, ex.kept, ex.dropped)
        except BaseException as exc:
            errors.append(exc)
        finally:
            rounds.leave()

    threads = [
        threading.Thread(target=one, args=(i, q), name=f"rerankers-plugins-batch-{i}", daemon=True)
        for i, q in enumerate(block)
    ]
    for t in threads:
        t.start()
    rounds.serve()  # this thread computes every round (one torch thread pool, whatever the block)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]


def run_shard(
    strategy: Strategy,
    shard: Shard,
    settings: JobSettings,
    *,
    retries: int = 2,
    worker: str | None = None,
    on_block: Callable[[int, int], None] | None = None,
) -> ShardResult:
    """Compute one shard: its queries in blocks; a block whose pipeline raises is tried ``retries``
    more times, then its rows go to the errors with the reason. ``on_block(rows, pairs)`` after
    each block (progress)."""
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    shard = _fillable(strategy, shard)
    errors = [b.record(shard.id) for q in shard.queries for b in q.bad]
    pairs = failed = 0
    queries = [q for q in shard.queries if q.rows]
    if on_block is not None and len(queries) < len(shard.queries):
        on_block(sum(len(q.bad) for q in shard.queries if not q.rows), 0)
    for at in range(0, len(queries), settings.block_queries):
        block = queries[at : at + settings.block_queries]
        n = sum(len(q.rows) for q in block)
        for attempt in range(retries + 1):
            try:
                for out in _run_block(strategy, settings, block):
                    rows.extend(out)
                pairs += n
                break
            except Exception as exc:
                if attempt < retries:
                    logger.warning(
                        "%s: a block of %d queries failed (%s: %s); trying again",
                        shard.id,
                        len(block),
                        type(exc).__name__,
                        exc,
                    )
                    continue
                failed += 1
                reason = f"the pipeline failed on this row's block after {retries + 1} tries: {type(exc).__name__}: {exc}"
                logger.error("%s: %s (%d rows to errors.jsonl)", shard.id, reason, n)
                errors.extend(
                    BadRow(r.row, q.query_id, r.doc_id, reason).record(shard.id)
                    for q in block
                    for r in q.rows
                )
        if on_block is not None:
            on_block(n + sum(len(q.bad) for q in block), n)
    return ShardResult(
        shard.id, rows, errors, pairs, time.perf_counter() - start, worker or _worker_name(), failed
    )


def _fillable(strategy: Strategy, shard: Shard) -> Shard:
    """``shard`` with every row that a leaf's document template cannot be filled from (a field its
    metadata lacks) moved to the query's bad rows, naming the field: one row's missing column
    never takes its block's other rows to the errors."""
    templates = [t for t in dict.fromkeys(leaf.template for leaf in leaf_nodes(strategy)) if t is not None]
    if not templates:
        return shard
    queries = []
    for q in shard.queries:
        kept, bad = [], list(q.bad)
        for r in q.rows:
            try:
                for template in templates:
                    template.render(r.candidate(), repr(r.doc_id))
                kept.append(r)
            except ConfigError as exc:
                bad.append(BadRow(r.row, q.query_id, r.doc_id, str(exc)))
        queries.append(replace(q, rows=tuple(kept), bad=tuple(sorted(bad, key=lambda b: b.row))))
    return replace(shard, queries=tuple(queries))


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# -- the job -------------------------------------------------------------------------------------------


class _Job:
    """The driver's side of a job: commits shard results, counts, enforces ``max_errors``."""

    def __init__(self, store: Store, max_errors: int | None, bar: Any) -> None:
        self.store, self.max_errors, self.bar = store, max_errors, bar
        self.errors = 0
        self.pairs = 0
        self.committed: set[str] = set()
        self.busy: dict[str, list[float]] = {}
        self._started = time.perf_counter()
        self._scored = 0

    def progress(self, rows: int, pairs: int) -> None:
        """The bar: rows done (its rate and ETA), pairs scored per second."""
        if self.bar is None:
            return
        self._scored += pairs
        self.bar.set_postfix_str(
            f"{self._scored / (time.perf_counter() - self._started):.1f} pairs/s", refresh=False
        )
        self.bar.update(rows)

    def commit(self, result: ShardResult, count_progress: bool) -> None:
        if result.shard in self.committed:  # a shard delivered twice (an engine's retry): written once
            return
        self.store.commit(result.shard, result.rows, result.errors)
        self.committed.add(result.shard)
        self.pairs += result.pairs
        self.errors += len(result.errors)
        pairs, seconds = self.busy.setdefault(result.worker, [0.0, 0.0])
        self.busy[result.worker] = [pairs + result.pairs, seconds + result.seconds]
        if count_progress:
            self.progress(len(result.rows) + len(result.errors), result.pairs)
        self.stop()

    def stop(self) -> None:
        """TooManyErrors when the job's rows left out are past ``max_errors``."""
        if self.max_errors is not None and self.errors > self.max_errors:
            raise TooManyErrors(
                f"stopped: {self.errors} rows left out (more than max_errors={self.max_errors}); see "
                f"{self.store.errors_dir}. The complete shards are kept: to go on, run again with a higher "
                "--max-errors (or none); to start over with a fixed input or pipeline, --overwrite"
            )


def _bar(total: int, progress: bool) -> Any:
    """A tqdm bar (rows, their rate and ETA; pairs/s after it), or None without tqdm (logged)."""
    import importlib.util

    if not progress:
        return None
    if importlib.util.find_spec("tqdm") is None:
        logger.info("no progress bar: tqdm is not installed (the eval extra has it)")
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="row", desc="rerank", smoothing=0.1)


def rerank_dataset(
    pipeline: Spec | str | Path | Any,
    input: str | Path,
    output: str | Path,
    *,
    beir: str | Path | None = None,
    engine: str = "local",
    top_n: int | None = None,
    threshold: float | None = None,
    shard_queries: int = 64,
    block_queries: int = 16,
    retries: int = 2,
    max_errors: int | None = None,
    overwrite: bool = False,
    output_format: str | None = None,
    progress: bool = True,
    actors: int | None = None,
    num_cpus: float | None = None,
    num_gpus: float = 0,
    address: str | None = None,
) -> BatchSummary:
    """Rerank every query of ``input`` with ``pipeline`` and write the result to ``output``.

    ``pipeline``: a spec, ``"FILE.toml#NAME"``, ``"KIND[:key=value,...]"`` or a registry scorer (see
    :func:`resolve_spec`). ``input``: parquet (a file or a folder of them) or JSON Lines rows with
    ``query_id``, ``query``, ``doc_id``, ``text`` and optionally ``retrieval_score`` (other columns
    become the candidates' metadata), or a TREC run with ``beir``, the BEIR directory its ids come
    from. A query's candidates are reranked together, in input order.

    ``output``: a new or empty directory, or one holding this same job (same input, pipeline and
    settings), which is resumed: complete shards are skipped. Another job there is refused unless
    ``overwrite``. ``top_n`` / ``threshold`` keep rows out of the run file (they stay in the rows
    files, marked dropped). ``shard_queries`` queries make a shard (the unit written at once),
    ``block_queries`` a block (reranked together). A block whose pipeline raises is tried
    ``retries`` more times, then its rows go to the errors; more than ``max_errors`` rows left out
    stops the job with :class:`TooManyErrors`.

    ``engine="ray"`` (the ``ray`` extra) runs the shards on Ray Data: ``actors`` workers (default:
    the cluster's CPUs / ``num_cpus``), each building the pipeline once from its spec, with
    ``num_cpus`` / ``num_gpus`` each; ``address`` joins a running cluster (default: the one this
    process is connected to, else a new local one).
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if max_errors is not None:
        max_errors = as_int(max_errors, "max_errors", minimum=0)
    tries = as_int(retries, "retries", minimum=0)
    assert tries is not None
    retries = tries
    started = time.perf_counter()
    settings = JobSettings(top_n, threshold, shard_queries, block_queries, output_format or default_format())
    spec = resolve_spec(pipeline)
    from rerankers_plugins.spec import build_pipeline

    built = build_pipeline(spec)
    strategy = check_options(built, top_n, threshold)
    job_input = read_input(input, beir)
    shards = job_input.shards(settings.shard_queries)
    store = Store(output, settings.format)
    manifest = {
        "format_version": 1,
        "input": {
            "fingerprint": job_input.fingerprint,
            "source": job_input.source,
            "rows": job_input.rows,
            "beir": None if beir is None else str(beir),
        },
        "pipeline": {"fingerprint": pipeline_fingerprint(spec, built), "spec": spec},
        "job": asdict(settings),
        "shards": [s.id for s in shards],
    }
    done = store.open(manifest, overwrite=overwrite)
    pending = [s for s in shards if s.id not in done]
    if done:
        logger.info(
            "%s: %d of %d shards already complete, skipped", output, len(shards) - len(pending), len(shards)
        )
    bar = _bar(sum(s.rows for s in pending), progress and bool(pending))
    job = _Job(store, max_errors, bar)
    job.errors = sum(store.errors_of(s.id) for s in shards if s.id in done)
    try:
        job.stop()  # a job stopped by max_errors goes on only with a higher limit
        if engine == "local" or not pending:
            for shard in pending:
                job.commit(
                    run_shard(strategy, shard, settings, retries=retries, on_block=job.progress), False
                )
        else:
            from rerankers_plugins.batch.ray import run_on_ray

            del built, strategy  # the workers build their own
            run_on_ray(
                spec,
                pending,
                settings,
                lambda result: job.commit(result, True),
                retries=retries,
                actors=actors,
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                address=address,
                progress=progress,
            )
    finally:
        if bar is not None:
            bar.close()
    summary = BatchSummary(
        output=str(output),
        engine=engine,
        rows=job_input.rows,
        pairs=job.pairs,
        errors=job.errors,
        shards=len(shards),
        skipped_shards=len(shards) - len(pending),
        wall_s=time.perf_counter() - started,
        workers={w: p / s for w, (p, s) in job.busy.items() if s > 0},
    )
    store.finish([s.id for s in shards], {**asdict(summary), "pairs_per_s": summary.pairs_per_s}, RUN_TAG)
    return summary
