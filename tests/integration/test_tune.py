"""`rerankers-plugins tune` and `rerankers_plugins.eval.tune` on the demo collection: the choice,
its proof, the pipeline file it writes (loaded in Python and both adapters, reproduced by `eval`),
the first stages it takes, and every bad input it refuses."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from rerankers_plugins import Candidate, ConfigError, rerank
from rerankers_plugins.cli import main
from rerankers_plugins.data import demo_data_dir
from rerankers_plugins.eval.beir import load_beir
from rerankers_plugins.eval.harness import evaluate
from rerankers_plugins.eval.tune import prepare, tune
from rerankers_plugins.eval.tune.report import TuneReport
from rerankers_plugins.spec import load_pipeline

DEMO = demo_data_dir()
#: scorers that cost next to nothing, for the tests of everything around the choice
FAST = {"bm25": {"scorer": "bm25"}, "fake": {"scorer": "fake"}}


@pytest.fixture(scope="module")
def tuning():
    """BM25 and the word-overlap fake over the demo collection's BM25 candidates (the notebook and
    the slow SciFact test tune real models)."""
    return prepare(DEMO, FAST, progress=False)


@pytest.fixture(scope="module")
def report(tuning) -> TuneReport:
    return tuning.report(budget_ms=200)


def test_the_choice_fits_the_budget_and_is_proved_on_held_out_queries(report):
    assert report.choice is not None
    chosen = report.chosen
    assert chosen.fits and chosen.predicted_ms <= 200 * (1 - report.headroom)
    assert "5-fold" in report.split and "fewer than 50" in " ".join(report.warnings)  # 20 judged queries
    lo, hi = report.choice.test_ci
    assert lo <= report.choice.test_ndcg <= hi and report.choice.test_queries == 20
    assert len(report.choice.folds) == 5
    # the frontier: cheaper and better, configuration after configuration
    front = report.frontier
    assert all(
        a.predicted_ms <= b.predicted_ms and a.dev_ndcg < b.dev_ndcg for a, b in itertools.pairwise(front)
    )
    assert all(
        c.dev_ndcg <= max(f.dev_ndcg for f in front if f.predicted_ms <= c.predicted_ms)
        for c in report.configs
    )
    # the choice ran for real on the test queries, ranking every query exactly as simulated
    measured = report.measured[0]
    assert measured.name == chosen.name and measured.agree == measured.queries > 0
    assert all(m.agree == m.queries for m in report.measured)
    assert {c.kind for c in report.configs} == {"single", "fusion", "gate", "cascade"}


def test_the_first_stage_is_reported_depth_by_depth(report):
    rows = report.depths
    assert [r.depth for r in rows] == [10, 20]
    assert all(r.oracle >= r.ndcg for r in rows) and rows[0].recall <= rows[1].recall
    assert rows[1].fewer == 19  # the demo's BM25 finds fewer than 20 candidates for 19 queries
    assert "limits quality" in report.bottleneck()


def test_the_cost_model_grows_with_depth(tuning):
    search = tuning.search
    for scorer in ("bm25", "fake"):
        for qid in search.q:
            assert search.pred[f"{scorer}@10"][qid] <= search.pred[f"{scorer}@20"][qid]


def test_the_written_pipeline_loads_everywhere_and_eval_reproduces_its_test_figure(report, tmp_path):
    out = report.write(tmp_path / "tuned")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["pipeline.toml", "report.md", "frontier.png", "dev_queries.txt", "test_queries.txt"]
    )
    path = out / "pipeline.toml"
    pipeline = load_pipeline(path)
    data = load_beir(DEMO)
    ids = (out / "test_queries.txt").read_text().split()
    # eval with the file on the test queries: exactly the figure tune simulated
    evaluated = evaluate(data, {"tuned": pipeline}, k=20, query_ids=ids, progress=False)
    assert evaluated.results[1].metrics["ndcg@10"] == pytest.approx(report.chosen.test_ndcg, abs=1e-12)
    # the same pipeline in both adapters
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from rerankers_plugins.integrations.langchain import RerankCompressor
    from rerankers_plugins.integrations.llama_index import RerankPostprocessor

    query = data.queries[ids[0]]
    candidates = [
        Candidate(f"passage {i} about plants and sunlight", str(i), retrieval_score=30.0 - i)
        for i in range(25)
    ]
    expected = [s.id for s in rerank(query, candidates, pipeline)]
    docs = [Document(c.text, id=c.id, metadata={"score": c.retrieval_score}) for c in candidates]
    compressor = RerankCompressor.from_spec(path, top_n=None)
    assert [d.id for d in compressor.compress_documents(docs, query)] == expected
    nodes = [NodeWithScore(node=TextNode(text=c.text, id_=c.id), score=c.retrieval_score) for c in candidates]
    post = RerankPostprocessor.from_spec(str(path), top_n=None)
    assert [n.node.node_id for n in post.postprocess_nodes(nodes, QueryBundle(query))] == expected
    assert len(expected) == report.chosen.depth  # the depth head: exactly the candidates measured
    from rerankers_plugins.integrations.langchain import BiEncoderRerank

    with pytest.raises(ConfigError, match="builds its scorer from its own fields"):
        BiEncoderRerank.from_spec(path)
    with pytest.raises(ConfigError, match="pass no scorer="):
        RerankCompressor.from_spec(path, scorer=pipeline)


def test_one_search_answers_any_budget(tuning):
    tight, loose = tuning.report(budget_ms=5), tuning.report(budget_ms=1000)
    if tight.chosen is not None:
        assert tight.chosen.predicted_ms <= loose.configs[0].predicted_ms or tight.chosen.predicted_ms <= 4.5
    assert loose.chosen is not None and loose.chosen.dev_ndcg >= (
        tight.chosen.dev_ndcg if tight.chosen else 0
    )
    p50 = tuning.report(budget_ms=1000, percentile="p50")
    assert p50.label == "p50" and p50.chosen is not None
    nothing = tuning.report(budget_ms=0.001)
    assert nothing.choice is None and nothing.measured[0].name == nothing.cheapest.name
    assert "nothing fits" in nothing.summary() and nothing.cheapest.name in nothing.summary()


def test_the_same_seed_gives_the_same_choice():
    first = tune(DEMO, FAST, budget_ms=50, seed=3, progress=False)
    again = tune(DEMO, FAST, budget_ms=50, seed=3, progress=False)
    assert first.chosen is not None and first.chosen.name == again.chosen.name
    assert first.test_ids == again.test_ids and first.choice.test_ci == again.choice.test_ci


def test_cli_tune_writes_its_folder_and_says_so(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["tune", "--demo", "--budget-ms", "100", "--scorer", "fake=fake", "--scorer", "bm25=bm25"]
    assert main([*args, "--out", str(out), "--no-progress", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "chosen:" in printed and "Pareto frontier" in printed and "| depth | recall@depth |" in printed
    assert load_pipeline(out / "pipeline.toml") is not None
    # a second run replaces its own earlier folder, never anything else
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert main([*args, "--out", str(tmp_path / "mine"), "--no-progress"]) == 2
    assert "is not a tune report folder" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"
    # nothing fits: said, exit 1, no pipeline written
    assert main([*args[:3], "0.001", *args[4:], "--out", str(tmp_path / "none"), "--no-progress"]) == 1
    assert "nothing fits" in capsys.readouterr().out
    assert not (tmp_path / "none" / "pipeline.toml").exists() and (tmp_path / "none" / "report.md").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"budget_ms": 0}, "budget_ms must be a number of milliseconds > 0"),
        ({"budget_ms": -5}, "budget_ms must be"),
        ({"budget_ms": "fast"}, "budget_ms must be"),
        ({"budget_ms": float("nan")}, "budget_ms must be"),
        ({"budget_ms": 100, "percentile": 0}, "percentile must be a number in"),
        ({"budget_ms": 100, "percentile": 100}, "percentile must be"),
        ({"budget_ms": 100, "percentile": "p101"}, "percentile must be"),
        ({"budget_ms": 100, "percentile": "fast"}, "percentile must be"),
        ({"budget_ms": 100, "headroom": 1.0}, "headroom must be"),
        ({"budget_ms": 100, "concurrency": 0}, "concurrency must be >= 1"),
    ],
)
def test_bad_options_are_refused_before_any_scoring(options, message):
    with pytest.raises(ConfigError, match=message):
        tune(DEMO, {"x": {"scorer": "cross-encoder", "model": "/nonexistent"}}, progress=False, **options)


def test_cli_refuses_a_budget_that_is_not_a_number(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["tune", "--demo", "--budget-ms", "soon"])
    assert exc.value.code == 2
    assert "the budget must be a number of milliseconds > 0, got 'soon'" in capsys.readouterr().err


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="candidate scorer 'ce' cannot be loaded"):
        tune(
            DEMO,
            {"ce": {"scorer": "cross-encoder", "model": str(tmp_path / "missing")}},
            budget_ms=50,
            progress=False,
        )
    with pytest.raises(ConfigError, match="tune searches over leaf scorers"):
        tune(
            DEMO,
            {"c": {"cached": {"scorer": "fake"}}, "s": {"selective": {"scorer": "fake"}}},
            budget_ms=50,
            progress=False,
        )
    with pytest.raises(ConfigError, match="must be letters, digits"):
        tune(DEMO, {"retrieval": {"scorer": "fake"}}, budget_ms=50, progress=False)
    empty = tmp_path / "empty"
    (empty / "qrels").mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        (empty / name).write_text((Path(DEMO) / name).read_text())
    (empty / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
    with pytest.raises(ConfigError, match="no judged queries in split 'test'"):
        tune(empty, FAST, budget_ms=50, progress=False)
    with pytest.raises(ConfigError, match="no qrels file for dev split 'dev'"):
        tune(DEMO, FAST, budget_ms=50, dev_split="dev", progress=False)


def test_a_trec_run_is_the_first_stage_and_bad_runs_are_named(tmp_path):
    data = load_beir(DEMO)
    doc_ids = [c.id for c in data.corpus]
    run = tmp_path / "dense.trec"
    lines = []
    for i, qid in enumerate(sorted(data.queries)):
        for rank, doc in enumerate(doc_ids[i : i + 15], start=1):
            lines.append(f"{qid} Q0 {doc} {rank} {20.0 - rank} dense")
    run.write_text("\n".join(lines) + "\n")
    report = tune(DEMO, FAST, budget_ms=100, first_stage=run, progress=False)
    assert report.first_stage == "run dense.trec"
    assert [r.depth for r in report.depths] == [10] and report.depths[0].fewer == 0
    assert all(m.agree == m.queries for m in report.measured)
    # eval reads the same run: alone, it is evaluated as it is
    alone = evaluate(data, {}, k=15, first_stage=run, progress=False)
    assert alone.results[0].name == "run dense.trec" and len(alone.results) == 1

    bad = tmp_path / "bad.trec"
    bad.write_text("q01 Q0 d00 1\n")
    with pytest.raises(ConfigError, match=r"is not a TREC run .*line 1 has 4 fields"):
        tune(DEMO, FAST, budget_ms=50, first_stage=bad, progress=False)
    bad.write_text("q01 Q0 d00 one 1.0 x\n")
    with pytest.raises(ConfigError, match="line 1: rank 'one'"):
        tune(DEMO, FAST, budget_ms=50, first_stage=bad, progress=False)
    bad.write_text("q01 Q0 nope 1 1.0 x\nq01 Q0 gone 2 0.5 x\n")
    with pytest.raises(ConfigError, match=r"names 2 unknown document ids .*'gone', 'nope'"):
        tune(DEMO, FAST, budget_ms=50, first_stage=bad, progress=False)
    bad.write_text("zz Q0 d00 1 1.0 x\n")
    with pytest.raises(ConfigError, match=r"unknown query ids .*'zz'"):
        tune(DEMO, FAST, budget_ms=50, first_stage=bad, progress=False)
    bad.write_text("q01 Q0 d00 1 1.0 x\nq01 Q0 d00 2 0.5 x\n")
    with pytest.raises(ConfigError, match="lists documents \\['d00'\\] twice"):
        tune(DEMO, FAST, budget_ms=50, first_stage=bad, progress=False)


def _corpus():
    return [
        json.loads(line) for line in (Path(DEMO) / "corpus.jsonl").read_text().splitlines() if line.strip()
    ]


def test_a_langchain_retriever_is_called_once_per_query():
    from langchain_core.documents import Document
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.vectorstores import InMemoryVectorStore

    store = InMemoryVectorStore.from_documents(
        [Document(f"{d['title']}. {d['text']}", id=d["_id"]) for d in _corpus()],
        DeterministicFakeEmbedding(size=32),
    )
    inner = store.as_retriever(search_kwargs={"k": 12})
    calls: list[str] = []

    class Counting(BaseRetriever):
        def _get_relevant_documents(self, query, *, run_manager):
            calls.append(query)
            return inner.invoke(query)

    report = tune(DEMO, FAST, budget_ms=100, first_stage=Counting(), progress=False)
    assert report.first_stage == "retriever Counting"
    assert len(calls) == 20 and len(set(calls)) == 20  # once per judged query
    assert [r.depth for r in report.depths] == [10] and all(m.agree == m.queries for m in report.measured)


def test_a_llama_index_retriever_and_a_failing_one():
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding

    index = VectorStoreIndex.from_documents(
        [Document(text=f"{d['title']}. {d['text']}", id_=d["_id"]) for d in _corpus()],
        embed_model=MockEmbedding(embed_dim=16),
    )
    report = tune(
        DEMO, FAST, budget_ms=100, first_stage=index.as_retriever(similarity_top_k=11), progress=False
    )
    assert report.first_stage.startswith("retriever") and report.depths[0].fewer == 0

    def broken(query: str) -> list[Candidate]:
        raise TimeoutError("the vector database is down")

    with pytest.raises(
        ConfigError, match="retriever failed on query 'q01': TimeoutError: the vector database is down"
    ):
        tune(DEMO, FAST, budget_ms=100, first_stage=broken, progress=False)
    with pytest.raises(ConfigError, match="unknown document ids"):
        tune(
            DEMO, FAST, budget_ms=100, first_stage=lambda q: [Candidate("x", "not-in-corpus")], progress=False
        )


def test_nothing_is_half_written(report, tmp_path, monkeypatch):
    def broken(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(TuneReport, "plot", broken)
    with pytest.raises(OSError, match="disk full"):
        report.write(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temporary one is left


@pytest.mark.slow
def test_tune_on_scifact_chooses_proves_and_reproduces(tmp_path):
    """SciFact beside the repository (or $RERANKERS_DATA): 60 judged queries, BM25 top-30, BM25 and
    MaxSim; the choice's rankings run for real equal the simulated ones, and eval on the written
    pipeline gives back the test figure."""
    import os

    root = Path(
        os.environ.get("RERANKERS_DATA") or Path(__file__).resolve().parents[3] / "shared/data/scifact"
    )
    if not (root / "corpus.jsonl").is_file():
        pytest.skip("no SciFact data beside the repository")
    scorers = {"bm25": {"scorer": "bm25"}, "maxsim": {"scorer": "colbert", "model": "minilm"}}
    report = tune(root, scorers, budget_ms=500, queries=60, max_depth=30, progress=False)
    assert (
        report.choice is not None and 39 <= len(report.configs) <= 45
    )  # 2 scorers x 3 depths x 7, 3 cascades
    assert all(m.agree == m.queries for m in report.measured)
    assert report.choice.vs_first_stage.queries == 60  # five folds: every query is a test query once
    out = report.write(tmp_path / "scifact")
    ids = (out / "test_queries.txt").read_text().split()
    check = evaluate(
        root, {"tuned": load_pipeline(out / "pipeline.toml")}, k=30, query_ids=ids, progress=False
    )
    assert check.results[1].metrics["ndcg@10"] == pytest.approx(report.chosen.test_ndcg, abs=1e-12)


def test_tune_passes_on_every_option_of_prepare():
    import inspect

    from rerankers_plugins.eval.tune import SearchOptions

    keyword_only = {n for n, p in inspect.signature(prepare).parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert set(SearchOptions.__annotations__) == keyword_only


def test_latency_with_requests_in_flight_and_a_shallow_search():
    report = tune(DEMO, FAST, budget_ms=100, percentile="p50", concurrency=3, max_depth=10, progress=False)
    assert report.concurrency == 3 and report.label == "p50"
    assert {c.depth for c in report.configs} == {10} and [r.depth for r in report.depths] == [10]
    assert report.chosen is not None and all(m.agree == m.queries for m in report.measured)
    assert "3 in flight" in report.summary()
