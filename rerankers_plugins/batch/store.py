"""A batch job's output directory: the manifest, one rows file and one errors file per shard, and
the files assembled when every shard is done.

::

    DIR/manifest.json            the input's and the pipeline's fingerprints, the job's settings
    DIR/rows/shard-00000.parquet   row, query_id, doc_id, score, rank, original_rank, ... (or .jsonl)
    DIR/errors/shard-00000.jsonl   the shard's rows left out, with the reason
    DIR/run.trec, DIR/errors.jsonl, DIR/summary.json   when every shard is done

Exactly once: a shard's files are written under a temporary name (a dot file, which parquet
readers skip), flushed to disk and renamed; the errors file first, the rows file last, so a shard
is complete exactly when its rows file exists, and a crash at any point leaves either no rows file
or a whole one. A re-run writes the same names again, so nothing is ever written twice.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError

__all__ = ["FORMATS", "ROW_COLUMNS", "Store", "default_format", "read_rows"]

FORMATS = ("parquet", "jsonl")
#: the columns of a rows file, in order
ROW_COLUMNS = (
    "row",
    "query_id",
    "doc_id",
    "score",
    "rank",
    "original_rank",
    "retrieval_score",
    "reranked",
    "dropped_by",
    "details",
)
_OURS = ("manifest.json", "rows", "errors", "run.trec", "errors.jsonl", "summary.json")


def default_format() -> str:
    """parquet where pyarrow is installed, else JSON Lines (the local engine needs nothing more)."""
    import importlib.util

    return "parquet" if importlib.util.find_spec("pyarrow") is not None else "jsonl"


def _schema() -> Any:
    pa = require("pyarrow", "batch")
    return pa.schema(
        [
            ("row", pa.int64()),
            ("query_id", pa.string()),
            ("doc_id", pa.string()),
            ("score", pa.float64()),
            ("rank", pa.int64()),
            ("original_rank", pa.int64()),
            ("retrieval_score", pa.float64()),
            ("reranked", pa.bool_()),
            ("dropped_by", pa.string()),
            ("details", pa.string()),
        ]
    )


def _write_atomic(path: Path, write: Any) -> None:
    """``write(tmp_path)``, flushed to disk, then renamed to ``path`` (atomic on one filesystem)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _jsonl_writer(records: Sequence[Mapping[str, Any]]) -> Any:
    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")

    return write


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The records of one rows or errors file (parquet or JSON Lines)."""
    if path.suffix == ".parquet":
        pq = require("pyarrow.parquet", "batch")
        return list(pq.read_table(path).to_pylist())
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class Store:
    """The output directory of one job (see the module docstring)."""

    def __init__(self, directory: str | Path, fmt: str) -> None:
        if fmt not in FORMATS:
            raise ConfigError(f"output format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        self.directory = Path(directory)
        self.format = fmt
        self.rows_dir = self.directory / "rows"
        self.errors_dir = self.directory / "errors"

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"

    def rows_path(self, shard: str) -> Path:
        return self.rows_dir / f"{shard}.{self.format}"

    def errors_path(self, shard: str) -> Path:
        return self.errors_dir / f"{shard}.jsonl"

    def open(self, manifest: Mapping[str, Any], *, overwrite: bool) -> set[str]:
        """Start or resume the job ``manifest`` describes; the ids of its complete shards.

        A directory holding another job (another input, pipeline or settings) is refused, naming
        what differs, unless ``overwrite`` (which deletes this package's files there first); so is
        a non-empty directory that holds no job."""
        if self.directory.is_dir():
            for leftover in self.directory.glob(".*.tmp-*"):
                leftover.unlink(missing_ok=True)  # a killed run's unfinished manifest or run file
        if overwrite:
            for name in _OURS:
                target = self.directory / name
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
        if self.manifest_path.is_file():
            try:
                held = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigError(
                    f"cannot read {self.manifest_path}: {exc}; --overwrite starts over"
                ) from exc
            self._check_same(held, manifest)
        elif self.directory.is_dir() and any(self.directory.iterdir()):
            raise ConfigError(
                f"{self.directory} is not empty and holds no batch job (no manifest.json): choose an empty "
                "or new --output directory"
            )
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.manifest_path, _jsonl_text(json.dumps(dict(manifest), indent=2) + "\n"))
        self.rows_dir.mkdir(exist_ok=True)
        self.errors_dir.mkdir(exist_ok=True)
        for leftover in [*self.rows_dir.glob(".*.tmp-*"), *self.errors_dir.glob(".*.tmp-*")]:
            leftover.unlink(missing_ok=True)  # a killed run's unfinished file
        return {p.name.removesuffix(f".{self.format}") for p in self.rows_dir.glob(f"shard-*.{self.format}")}

    def _check_same(self, held: Mapping[str, Any], manifest: Mapping[str, Any]) -> None:
        differ = []
        for key, what in (("input", "input"), ("pipeline", "pipeline"), ("job", "job settings")):
            mine, theirs = manifest.get(key), held.get(key)
            if key in ("input", "pipeline"):
                mine = (mine or {}).get("fingerprint")
                theirs = (theirs or {}).get("fingerprint")
            if mine != theirs:
                differ.append(f"{what} ({_short(theirs)} there, {_short(mine)} here)")
        if differ:
            done = len(list(self.rows_dir.glob("shard-*"))) if self.rows_dir.is_dir() else 0
            raise ConfigError(
                f"{self.directory} holds another job: a different {' and '.join(differ)}. Its {done} complete "
                "shard(s) would mix with this job's rows: choose another --output, or --overwrite to start over"
            )

    def commit(
        self, shard: str, rows: Sequence[Mapping[str, Any]], errors: Sequence[Mapping[str, Any]]
    ) -> None:
        """Write one shard: its errors, then its rows (which mark it complete)."""
        _write_atomic(self.errors_path(shard), _jsonl_writer(errors))
        if self.format == "parquet":
            pa = require("pyarrow", "batch")
            pq = require("pyarrow.parquet", "batch")
            table = pa.Table.from_pylist([dict(r) for r in rows], schema=_schema())
            _write_atomic(self.rows_path(shard), lambda tmp: pq.write_table(table, tmp))
        else:
            _write_atomic(self.rows_path(shard), _jsonl_writer(rows))

    def errors_of(self, shard: str) -> int:
        path = self.errors_path(shard)
        with path.open(encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())

    def finish(self, shards: Sequence[str], summary: Mapping[str, Any], tag: str) -> None:
        """``run.trec`` (every kept row, each query best first), ``errors.jsonl`` and ``summary.json``,
        from the shards' files, in shard order."""

        def run(tmp: Path) -> None:
            with tmp.open("w", encoding="utf-8") as f:
                for r in self._records(self.rows_path, shards):
                    if r["rank"] is not None:
                        f.write(f"{r['query_id']} Q0 {r['doc_id']} {r['rank']} {r['score']!r} {tag}\n")

        _write_atomic(self.directory / "run.trec", run)
        _write_atomic(
            self.directory / "errors.jsonl", _jsonl_writer(list(self._records(self.errors_path, shards)))
        )
        _write_atomic(
            self.directory / "summary.json", _jsonl_text(json.dumps(dict(summary), indent=2) + "\n")
        )

    def _records(self, path_of: Any, shards: Sequence[str]) -> Iterator[dict[str, Any]]:
        for shard in shards:
            yield from read_rows(path_of(shard))


def _jsonl_text(text: str) -> Any:
    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    return write


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64:
        return value[:12]
    return json.dumps(value, sort_keys=True)
