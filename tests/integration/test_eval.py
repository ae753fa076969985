"""Evaluation harness and `rerankers-plugins eval` on a small BEIR-format dataset written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from deps import dev

from rerankers_plugins import ConfigError, FakeScorer
from rerankers_plugins.cli import main
from rerankers_plugins.eval.harness import evaluate
from rerankers_plugins.spec import build_pipelines, parse_pipeline_arg

DOCS = {
    "d1": ("Apples", "red apple orchards grow sweet fruit"),
    "d2": ("Cars", "red sports cars are fast"),
    "d3": ("Bananas", "bananas are yellow fruit"),
    "d4": ("Trees", "apple tree pruning in winter"),
    "d5": ("Rivers", "the river bank floods in spring"),
    "d6": ("Money", "the bank raised the interest rate"),
}
QUERIES = {"q1": "red apple fruit", "q2": "bank interest rate", "q3": "yellow bananas", "q9": "unjudged"}
QRELS = [("q1", "d1", 1), ("q2", "d6", 1), ("q3", "d3", 1)]


@pytest.fixture
def beir_dir(tmp_path: Path) -> Path:
    root = tmp_path / "mini"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "\n".join(json.dumps({"_id": k, "title": t, "text": x}) for k, (t, x) in DOCS.items()),
        encoding="utf-8",
    )
    (root / "queries.jsonl").write_text(
        "\n".join(json.dumps({"_id": k, "text": v}) for k, v in QUERIES.items()), encoding="utf-8"
    )
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "\n".join(f"{q}\t{d}\t{s}" for q, d, s in QRELS), encoding="utf-8"
    )
    return root


def test_evaluate_api(beir_dir):
    report = evaluate(beir_dir, {"fake": FakeScorer()}, k=5, progress=False)
    assert report.queries == 3  # unjudged queries are left out
    assert [r.name for r in report.results] == ["BM25", "fake"]
    fake = report.results[1]
    assert fake.metrics["ndcg@10"] == pytest.approx(1.0)
    assert set(fake.metrics) == {"ndcg@10", "mrr@10", "map@100", "recall@5"}
    assert len(fake.latencies_ms) == 3  # one timed call per query
    table = report.table()
    assert table.splitlines()[0].startswith(
        "| pipeline | NDCG@10 | MRR@10 | MAP@100 | RECALL@5 | index s | median ms"
    )
    assert "| fake | 1.000 |" in table


def test_latency_summary_is_the_nearest_rank_percentile() -> None:
    from rerankers_plugins.eval.harness import PipelineResult

    result = PipelineResult("x", {}, [5.0, 1.0, 3.0, 100.0, 2.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0], {})
    assert result.median_ms == 6.0
    assert result.p95_ms == 100.0  # sorted[round(0.95 * 10)]: the slowest of 11, not an average
    assert PipelineResult("y", {}, [], {}).p95_ms == 0.0


def test_run_files_and_plot(beir_dir, tmp_path):
    report = evaluate(beir_dir, {"fake": FakeScorer()}, k=5, progress=False)
    paths = report.write_runs(tmp_path / "runs")
    lines = (tmp_path / "runs" / "fake.trec").read_text().splitlines()
    assert lines[0].split()[:4] == ["q1", "Q0", "d1", "1"]
    assert len(paths) == 2
    png = report.plot(tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pipeline_specs():
    assert parse_pipeline_arg("x=fake:name=y") == ("x", {"scorer": "fake", "name": "y"})
    with pytest.raises(ConfigError, match="NAME=KIND"):
        parse_pipeline_arg("fake")
    built = build_pipelines(
        {
            "base": {"scorer": "fake"},
            "hyb": {"hybrid": [{"signal": "base", "weight": 0.7}, {"signal": "retrieval", "weight": 0.3}]},
            "cas": {"cascade": [{"stage": {"scorer": "bm25"}, "keep": 3}, {"stage": "hyb", "keep": 2}]},
            "thr": {"threshold": "base", "absolute": 0.5},
        }
    )
    assert built["cas"].stages[1].scorer is built["hyb"]
    with pytest.raises(ConfigError, match="not defined"):
        build_pipelines({"x": {"cached": "missing"}})


def test_cli_eval_with_config(beir_dir, tmp_path, capsys):
    config = tmp_path / "p.toml"
    config.write_text(
        '[pipelines.fake]\nscorer = "fake"\n\n[pipelines.cascade]\n'
        'cascade = [{ stage = { scorer = "bm25" }, keep = 4 }, { stage = "fake", keep = 2 }]\n',
        encoding="utf-8",
    )
    code = main(
        [
            "eval",
            str(beir_dir),
            "--config",
            str(config),
            "--pipeline",
            "f2=fake",
            "--k",
            "5",
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| fake | 1.000 |" in out and "| cascade |" in out and "| f2 | 1.000 |" in out
    assert (tmp_path / "out" / "quality_latency.png").is_file()
    assert (tmp_path / "out" / "runs" / "cascade.trec").is_file()


def test_cli_eval_errors(beir_dir, tmp_path, capsys):
    assert main(["eval", str(beir_dir)]) == 2
    assert main(["eval", str(tmp_path / "nope"), "--pipeline", "f=fake"]) == 2
    assert "is not a BEIR directory" in capsys.readouterr().err


def test_demo_evaluation_reports_indexing_apart_and_labels_recall_truthfully():
    from rerankers_plugins import Cascade, ColBERTScorer, FakeScorer, Stage
    from rerankers_plugins.data import demo_data_dir

    maxsim = ColBERTScorer("minilm")  # no disk cache: indexing is real work here
    pipelines = {
        "maxsim": maxsim,
        "cascade": Cascade([Stage(FakeScorer(), keep=3, name="fake"), Stage(maxsim)]),
    }
    report = evaluate(demo_data_dir(), pipelines, k=20, progress=False)
    by_name = {r.name: r for r in report.results}
    assert by_name["maxsim"].index_s > 0  # the candidate pool was encoded before timing
    assert by_name["cascade"].depth == 3
    row = next(line for line in report.table().splitlines() if line.startswith("| cascade"))
    assert "(at 3)" in row  # its recall@20 is really a recall at 3


@pytest.mark.parametrize("stemming", [True, False])
def test_bm25_first_stage_and_bm25_scorer_tokenize_alike(stemming: bool) -> None:
    # one tokenisation: over the same texts, the first stage's scores are the scorer's scores
    # (they disagreed on stemming where PyStemmer was missing: one stemmed, the other refused)
    from rerankers_plugins.eval.first_stage import BM25Retriever
    from rerankers_plugins.scorers.lexical import BM25Scorer
    from rerankers_plugins.types import Candidate

    texts = [
        "Running shoes for running on trails",
        "The runner ran a marathon",
        "Shoe repair and leather care",
        "Cooking pasta at home",
    ]
    query = "runs in running shoes"
    hits = BM25Retriever([Candidate(t, id=str(i)) for i, t in enumerate(texts)], stemming=stemming).retrieve(
        query, k=4
    )
    expected = BM25Scorer(stemming=stemming).score(query, texts)
    got = {int(h.id): h.retrieval_score for h in hits}
    assert got == pytest.approx({i: s for i, s in enumerate(expected) if s > 0})
    # stemming changes what matches: "shoes" meets "Shoe" only through their stem
    assert sorted(got) == ([0, 2] if stemming else [0])


@pytest.mark.slow  # ranx compiles its numba kernels on first use: 30 to 50 s in a fresh environment
def test_metrics_equal_ranx_on_random_runs() -> None:
    """The harness's metrics (rerankers_plugins.eval.metrics) against ranx.evaluate, the reference
    they are written from, on random judgments and tie-free runs: graded relevance, unjudged and
    zero-judged documents, a judged query missing from the run, an unjudged query in it."""
    import random

    ranx = dev("ranx")
    from rerankers_plugins.eval import metrics

    rng = random.Random(7)
    names = [f"{m}@{k}" for m in ("ndcg", "mrr", "map", "recall") for k in (1, 3, 10, 100)]
    names += ["ndcg", "map"]
    for trial in range(20):
        qrels = {
            f"q{i}": {f"d{j}": rng.choice([0, 1, 1, 2, 3]) for j in rng.sample(range(40), rng.randint(1, 8))}
            for i in range(12)
        }
        qrels = {q: j for q, j in qrels.items() if any(r >= 1 for r in j.values())}
        run = {}
        for q in qrels:
            docs = [f"d{j}" for j in rng.sample(range(40), rng.randint(1, 30))]
            run[q] = dict(zip(docs, rng.sample(range(1000), len(docs)), strict=True))  # no ties
        run.pop(next(iter(run)))  # a judged query the run misses
        run["unjudged"] = {"d1": 1.0}
        ours = metrics.evaluate(qrels, run, names)
        ref = ranx.evaluate(ranx.Qrels(qrels), ranx.Run(run), names, make_comparable=True)
        for name in names:
            assert ours[name] == pytest.approx(float(ref[name]), abs=1e-12), (trial, name)


def test_bm25_scorer_on_candidates_of_stopwords_only_scores_zero() -> None:
    # bm25s divides by the mean document length: with only stopwords every length is 0 and its
    # scores were NaN (a RuntimeWarning, then a BackendError), found by tune's simulation test
    from rerankers_plugins import rerank
    from rerankers_plugins.scorers.lexical import BM25Scorer

    assert BM25Scorer().score("red apple", ["the", "a", "of the"]) == [0.0, 0.0, 0.0]
    assert [s.text for s in rerank("red apple", ["the", "a red apple"], BM25Scorer())] == [
        "a red apple",
        "the",
    ]


def test_bm25s_logs_as_the_program_configures_logging() -> None:
    # bm25s sets its logger to DEBUG when imported: a program logging at WARNING saw its DEBUG
    # lines (one per index built) until the level it set was taken back
    import logging

    from rerankers_plugins.scorers.lexical import BM25Scorer

    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    root = logging.getLogger()
    handler, level = Keep(), root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    try:
        BM25Scorer().score("red apple", ["red apple pie", "a bank"])
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert not [r for r in seen if r.name.startswith("bm25s") and r.levelno < logging.WARNING]
