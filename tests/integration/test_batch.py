"""Batch jobs on the local engine: the rows written (scores as ``explain`` gives them, every input
row exactly once, bad rows quarantined with their reason), resume and refusal, crashes at any point,
failing blocks, and the command line. The Ray engine runs the same job in test_batch_ray.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from unittest import mock

import pytest
from batch_helpers import POISON, PoisonScorer, demo_rows, output_of, write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rerankers_plugins import Candidate, explain
from rerankers_plugins.batch import TooManyErrors, read_input, rerank_dataset
from rerankers_plugins.cli import main
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.registry import register
from rerankers_plugins.spec import build_pipeline


def _by_query(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["query_id"], []).append(r)
    return out


def test_rows_are_what_explain_gives_each_query(tiny_ce_dir: Path, tmp_path: Path) -> None:
    """A cascade (tiny cross-encoder keeps 4, then the token-overlap scorer) with top_n=2: every
    query's rows equal ``explain`` on its own (scores to 1e-5: the job batches pairs of several
    queries together), kept rows ranked 1.., the rest marked with who dropped them; run.trec holds
    the kept rows, best first."""
    spec = {
        "cascade": [
            {"stage": {"scorer": "cross-encoder", "model": str(tiny_ce_dir)}, "keep": 4},
            {"stage": {"scorer": "fake"}},
        ]
    }
    rows_in = demo_rows(k=8)
    src = write_jsonl(tmp_path / "in.jsonl", rows_in)
    summary = rerank_dataset(
        spec, src, tmp_path / "out", top_n=2, shard_queries=3, block_queries=2, progress=False
    )
    rows, errors = output_of(tmp_path / "out")
    assert errors == []
    assert summary.rows == summary.pairs == len(rows) == len(rows_in)
    pipeline = build_pipeline(spec)
    run = (tmp_path / "out" / "run.trec").read_text().splitlines()
    for qid, got in _by_query(rows).items():
        given_rows = [r for r in rows_in if r["query_id"] == qid]
        cands = [
            Candidate(r["text"], id=r["doc_id"], retrieval_score=r["retrieval_score"]) for r in given_rows
        ]
        ex = explain(given_rows[0]["query"], cands, pipeline, top_n=2)
        want = [(s.id, s.score, s.details.get("dropped_by")) for s in [*ex.kept, *ex.dropped]]
        assert [(r["doc_id"], r["dropped_by"]) for r in got] == [(d, by) for d, _, by in want]
        for r, (_, score, _) in zip(got, want, strict=True):
            assert r["score"] == pytest.approx(score, abs=1e-5)
        assert [r["rank"] for r in got] == [1, 2] + [None] * (len(got) - 2)
        assert all(r["dropped_by"] for r in got[2:]) and got[0]["dropped_by"] is None
        for r in got:
            assert given_rows[r["original_rank"] - 1]["doc_id"] == r["doc_id"]
            assert rows_in[r["row"]]["doc_id"] == r["doc_id"]
        assert [line.split()[2] for line in run if line.split()[0] == qid] == [s.id for s in ex.kept]


def test_bad_rows_are_quarantined_with_their_reason_and_every_row_is_written_once(tmp_path: Path) -> None:
    good = demo_rows(k=3, queries=2)
    q = good[0]
    bad = [
        {**q, "doc_id": "new1", "text": "   "},
        {**q, "doc_id": "new2", "query": "another question"},
        dict(q),
        {**q, "doc_id": "new3", "retrieval_score": float("nan")},
        {**q, "doc_id": "new4", "text": None},
        {"query_id": "q-empty", "query": "", "doc_id": "d1", "text": "some text"},
        {"query": "no id", "doc_id": "d1", "text": "x"},
        "{not json",
        {**q, "doc_id": "doc 9"},
        {**q, "doc_id": "new5", "text": "\ud800"},
        {**q, "doc_id": "new6", "retrieval_score": 10**400},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", [*good, *bad])
    with src.open("ab") as f:
        f.write(b'{"query_id": "q01", "text": "\xff"}\n')
    bad.append("invalid UTF-8")
    summary = rerank_dataset({"scorer": "fake"}, src, tmp_path / "out", shard_queries=1, progress=False)
    rows, errors = output_of(tmp_path / "out")
    reasons = {e["row"]: e["reason"] for e in errors}
    n = len(good)
    assert reasons[n] == "empty text"
    assert reasons[n + 1].startswith("another query text than row 0")
    assert reasons[n + 2] == "candidate listed twice for this query (first at row 0)"
    assert "not a finite number" in reasons[n + 3]
    assert reasons[n + 4] == "text is NoneType, not a string"
    assert reasons[n + 5] == "the query has no text"
    assert reasons[n + 6] == "no query_id"
    assert reasons[n + 7].startswith("not a JSON object")
    assert reasons[n + 8] == "doc_id 'doc 9' holds whitespace, which a TREC run cannot"
    assert reasons[n + 9] == "text is not valid Unicode (a lone surrogate)"
    assert reasons[n + 10].endswith("is not a finite number")
    assert reasons[n + 11].startswith("not UTF-8 text")
    assert sorted([r["row"] for r in rows] + list(reasons)) == list(range(n + len(bad)))
    assert summary.errors == len(bad) == len(errors)
    assert (tmp_path / "out" / "errors.jsonl").read_text().count("\n") == len(bad)


def test_a_finished_job_is_skipped_and_another_job_in_its_directory_refused(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", demo_rows(k=4))
    out = tmp_path / "out"
    first = rerank_dataset({"scorer": "fake"}, src, out, shard_queries=2, progress=False)
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "summary.json"}
    again = rerank_dataset({"scorer": "fake"}, src, out, shard_queries=2, progress=False)
    assert (again.skipped_shards, again.pairs) == (first.shards, 0)
    assert {
        p.name: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "summary.json"
    } == before

    with pytest.raises(ConfigError, match=r"another job: a different pipeline .*--overwrite"):
        rerank_dataset({"scorer": "bm25"}, src, out, shard_queries=2, progress=False)
    other = write_jsonl(tmp_path / "other.jsonl", demo_rows(k=5))
    with pytest.raises(ConfigError, match=r"a different input"):
        rerank_dataset({"scorer": "fake"}, other, out, shard_queries=2, progress=False)
    with pytest.raises(ConfigError, match=r"a different job settings"):
        rerank_dataset({"scorer": "fake"}, src, out, shard_queries=3, progress=False)
    replaced = rerank_dataset({"scorer": "fake"}, other, out, shard_queries=2, overwrite=True, progress=False)
    assert replaced.skipped_shards == 0 and len(output_of(out)[0]) == replaced.rows
    killed = tmp_path / "killed"  # a run killed while writing its manifest leaves its temporary file
    killed.mkdir()
    (killed / ".manifest.json.tmp-99999").write_text("{")
    assert (
        rerank_dataset({"scorer": "fake"}, src, killed, shard_queries=2, progress=False).skipped_shards == 0
    )
    assert not list(killed.glob(".*"))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no batch job"):
        rerank_dataset({"scorer": "fake"}, src, tmp_path / "elsewhere", progress=False)


class _Crash(BaseException):
    """The process dying: nothing in the job catches it."""


_WORDS = ["apple", "red", "pie", "blue", "sky", ""]


@st.composite
def _inputs(draw: st.DrawFn) -> list[dict]:
    rows = []
    for _ in range(draw(st.integers(1, 25))):
        qid = draw(st.sampled_from(["a", "b", "c", "d", "e", ""]))
        rows.append(
            {
                "query_id": qid,
                "query": draw(st.sampled_from([f"query {qid}", f"query {qid}", ""])),
                "doc_id": draw(st.sampled_from(["1", "2", "3", "4", "5"])),
                "text": " ".join(draw(st.lists(st.sampled_from(_WORDS), max_size=3))),
            }
        )
    return rows


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_inputs(), shard=st.integers(1, 3), block=st.integers(1, 3), crash=st.integers(0, 40))
def test_after_a_crash_at_any_point_a_rerun_writes_every_row_exactly_once(
    tmp_path_factory: pytest.TempPathFactory, rows: list[dict], shard: int, block: int, crash: int
) -> None:
    """Whatever the input (bad rows, duplicates, empty queries), wherever the process dies (before
    any of the job's file renames), the re-run completes the job and its output equals an
    uninterrupted run's: every input row once, in the rows or the errors, none twice."""
    tmp = tmp_path_factory.mktemp("crash")
    src = write_jsonl(tmp / "in.jsonl", rows)
    options = {"shard_queries": shard, "block_queries": block, "progress": False}
    rerank_dataset({"scorer": "fake"}, src, tmp / "whole", **options)

    import os

    real, calls = os.replace, [0]

    def dying(a: object, b: object) -> None:
        if calls[0] == crash:
            raise _Crash
        calls[0] += 1
        real(a, b)

    crashed = False
    with mock.patch("rerankers_plugins.batch.store.os.replace", dying):
        try:
            rerank_dataset({"scorer": "fake"}, src, tmp / "out", **options)
        except _Crash:
            crashed = True
    if crashed and not (tmp / "out" / "manifest.json").exists():
        assert not any((tmp / "out").rglob("shard-*"))
    resumed = rerank_dataset({"scorer": "fake"}, src, tmp / "out", **options)
    got, errors = output_of(tmp / "out")
    want, want_errors = output_of(tmp / "whole")
    assert got == want and errors == want_errors
    assert sorted([r["row"] for r in got] + [e["row"] for e in errors]) == list(range(len(rows)))
    assert resumed.rows == len(rows)
    for name in ("run.trec", "errors.jsonl"):
        assert (tmp / "out" / name).read_text() == (tmp / "whole" / name).read_text()
    assert not [p for p in (tmp / "out").rglob(".*") if p.is_file()]


def test_a_failing_block_is_retried_then_quarantined_and_max_errors_stops_the_job(tmp_path: Path) -> None:
    register("poison", "batch_helpers:PoisonScorer")
    rows = demo_rows(k=3, queries=6)
    poisoned = rows[4]["query_id"]  # the second query
    rows = [
        {**r, "text": r["text"] + " " + POISON} if r["query_id"] == poisoned and i % 3 == 0 else r
        for i, r in enumerate(rows)
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    PoisonScorer.calls.clear()

    def job(out: str, **kw: object):
        return rerank_dataset(
            {"scorer": "poison"}, src, tmp_path / out, shard_queries=2, block_queries=2, progress=False, **kw
        )

    summary = job("out", retries=1)
    got, errors = output_of(tmp_path / "out")
    # the poisoned query's block (the first two queries) failed twice; its six rows are in the errors
    block = {rows[0]["query_id"], poisoned}
    assert {e["query_id"] for e in errors} == block and len(errors) == 6
    assert all(
        e["reason"].startswith("the pipeline failed on this row's block after 2 tries: RuntimeError")
        for e in errors
    )
    assert {r["query_id"] for r in got}.isdisjoint(block) and len(got) + len(errors) == len(rows)
    assert summary.errors == 6
    assert (
        PoisonScorer.calls["poison"] == 2 * 2 + 2 * 2
    )  # the failing block's two queries twice, two blocks once
    with pytest.raises(TooManyErrors, match="more than max_errors=5"):
        job("stopped", retries=0, max_errors=5)
    assert [p.name for p in (tmp_path / "stopped" / "rows").iterdir()] == ["shard-00000.parquet"]
    with pytest.raises(TooManyErrors, match="higher --max-errors"):  # the same limit again: nothing more
        job("stopped", retries=0, max_errors=5)
    assert [p.name for p in (tmp_path / "stopped" / "rows").iterdir()] == ["shard-00000.parquet"]
    finished = job("stopped", retries=0)
    assert finished.skipped_shards == 1 and finished.errors == 6


def test_inputs_agree_jsonl_parquet_and_a_trec_run_with_its_beir_directory(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rerankers_plugins.data import demo_data_dir

    rows = demo_rows(k=5)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    with (tmp_path / "bm25.trec").open("w") as f:
        for r in rows:
            f.write(f"{r['query_id']} Q0 {r['doc_id']} 0 {r['retrieval_score']!r} bm25\n")
        f.write("broken line\n")
        f.write("q01 Q0 no-such-doc 9 0.1 bm25\n")
    jsonl = read_input(write_jsonl(tmp_path / "in.jsonl", rows))
    parquet = read_input(tmp_path / "in.parquet")
    trec = read_input(tmp_path / "bm25.trec", beir=demo_data_dir())
    assert jsonl.queries == parquet.queries
    strip = [
        [(r.query_id, r.query, r.doc_id, r.text, r.retrieval_score) for r in q.rows] for q in jsonl.queries
    ]
    assert [
        [(r.query_id, r.query, r.doc_id, r.text, r.retrieval_score) for r in q.rows] for q in trec.queries
    ] == strip
    assert sorted(b.reason.split(":")[0] for q in trec.queries for b in q.bad) + [
        b.reason[:16] for b in trec.orphans
    ] == [
        "doc_id not in " + str(Path(demo_data_dir()) / "corpus.jsonl"),
        "not a TREC run l",
    ]
    with pytest.raises(ConfigError, match="--beir"):
        read_input(tmp_path / "bm25.trec")
    pq.write_table(pa.Table.from_pylist([{"query_id": "q", "text": "t"}]), tmp_path / "thin.parquet")
    with pytest.raises(ConfigError, match="no column query, doc_id"):
        read_input(tmp_path / "thin.parquet")


def test_command_line_batch_then_eval_of_its_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("bm25s")
    src = write_jsonl(tmp_path / "in.jsonl", demo_rows(k=10))
    out = tmp_path / "job"
    args = [
        "batch",
        "--pipeline",
        "fake",
        "--input",
        str(src),
        "--output",
        str(out),
        "--no-progress",
        "--shard-queries",
        "4",
    ]
    assert main(args) == 0
    assert "0 already complete" in capsys.readouterr().out
    assert main(args) == 0
    assert "already complete, skipped" in capsys.readouterr().out
    assert main([*args[:2], "bm25", *args[3:]]) == 2
    assert "holds another job" in capsys.readouterr().err
    assert (
        main(
            ["eval", "--demo", "--run", str(out / "run.trec"), "--out", str(tmp_path / "ev"), "--no-progress"]
        )
        == 0
    )
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("| run run.trec |"))
    assert 0 < float(line.split("|")[2]) <= 1  # NDCG@10 of the job's run, read back without reranking
    summary = json.loads((out / "summary.json").read_text())  # the second (skipping) run's
    assert (summary["rows"], summary["pairs"], summary["skipped_shards"]) == (
        len(demo_rows(k=10)),
        0,
        summary["shards"],
    )
    assert math.isfinite(summary["wall_s"])


def test_train_reads_a_jobs_run_as_negatives_and_its_scores_as_the_teacher(tmp_path: Path) -> None:
    """A batch job over BM25's top 100 gives ``train`` the same rows as the pipeline it ran would:
    its run as the first stage for negatives, its scores as a distillation teacher's."""
    from rerankers_plugins.data import demo_data_dir
    from rerankers_plugins.eval.beir import load_beir
    from rerankers_plugins.eval.first_stage import BM25Retriever
    from rerankers_plugins.train.rows import training_rows

    data = load_beir(demo_data_dir(), split="train")
    bm25 = BM25Retriever(data.corpus)
    rows = [
        {"query_id": qid, "query": data.queries[qid], "doc_id": c.id, "text": c.text}
        for qid in sorted(data.queries)
        for c in bm25.retrieve(data.queries[qid], 100)
    ]
    job = tmp_path / "job"
    rerank_dataset({"scorer": "fake"}, write_jsonl(tmp_path / "in.jsonl", rows), job, progress=False)
    common = {"per_query": 4, "depth": 30, "seed": 0, "negatives_model": "minilm"}
    qids = sorted(data.queries)
    mined = list(training_rows(data, qids, loss="bce", negatives=str(job), teacher=None, **common))
    assert mined and mined == list(
        training_rows(data, qids, loss="bce", negatives="fake", teacher=None, **common)
    )
    distilled = list(
        training_rows(data, qids, loss="margin-mse", negatives="bm25", teacher=str(job), **common)
    )
    by_pipeline = list(
        training_rows(data, qids, loss="margin-mse", negatives="bm25", teacher="fake", **common)
    )
    assert distilled and distilled == by_pipeline
    (job / "run.trec").unlink()
    with pytest.raises(ConfigError, match="not finished"):
        list(training_rows(data, qids, loss="margin-mse", negatives="bm25", teacher=str(job), **common))
