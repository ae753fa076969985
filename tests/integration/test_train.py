"""`rerankers-plugins train` / fine_tune: a tiny BERT trained on a tiny BEIR folder written here."""

from __future__ import annotations

import json
import logging
import shutil
import statistics
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import build_encoder
from transformers import TrainerCallback

from rerankers_plugins import BaseScorer, ConfigError, CrossEncoderScorer, ScoreScale, rerank
from rerankers_plugins.eval.beir import load_beir
from rerankers_plugins.ops.fusion import zscore
from rerankers_plugins.train import fine_tune, first_stage, mine_negatives
from rerankers_plugins.train.rows import _distill_rows
from rerankers_plugins.train.rows import training_rows as _rows
from rerankers_plugins.types import Candidate

TOPICS = {
    "cat": ["the cat sat on the mat", "cats sat on the red mat", "the dog sat in the river"],
    "bank": ["the bank rate of interest on a loan", "money in the bank", "the river bank is green"],
    "paris": ["paris is the capital city of france", "people live in paris", "berlin is a city"],
    "berlin": ["berlin is the capital of germany", "the population of berlin", "paris museum day"],
    "apple": ["the red apple is a fruit", "apple pie with fruit", "green tree in the day"],
    "cancer": ["cancer risk in patients", "vitamin and cancer study", "blood of patients"],
    "gene": ["the gene and protein of the cell", "genes in cells", "the brain and the heart"],
    "heart": ["blood and the heart of patients", "heart study", "the brain study"],
}
QUERIES = {
    "q-cat": ("where do cats sit", "cat-0"),
    "q-cat2": ("the cat on the mat", "cat-1"),
    "q-bank": ("interest rate of a bank loan", "bank-0"),
    "q-bank2": ("money in a bank", "bank-1"),
    "q-paris": ("capital of france", "paris-0"),
    "q-paris2": ("who lives in paris", "paris-1"),
    "q-berlin": ("capital of germany", "berlin-0"),
    "q-berlin2": ("population of berlin", "berlin-1"),
    "q-apple": ("red apple fruit", "apple-0"),
    "q-apple2": ("apple pie", "apple-1"),
    "q-cancer": ("cancer risk", "cancer-0"),
    "q-gene": ("gene protein cell", "gene-0"),
    "q-heart": ("heart and blood", "heart-0"),
}


def write_beir(root: Path, *, extra_qrels: str = "", dev: bool = False) -> Path:
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    with (root / "corpus.jsonl").open("w") as f:
        for topic, texts in TOPICS.items():
            for i, text in enumerate(texts):
                f.write(json.dumps({"_id": f"{topic}-{i}", "title": "", "text": text}) + "\n")
    with (root / "queries.jsonl").open("w") as f:
        for qid, (text, _) in QUERIES.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
        f.write(json.dumps({"_id": "q-none", "text": "what is a museum"}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"]
    lines += [f"{qid}\t{doc}\t1" for qid, (_, doc) in QUERIES.items()]
    lines.append("q-none\tparis-2\t0")  # judged, but no positive: skipped and counted
    (root / "qrels" / "train.tsv").write_text("\n".join(lines) + "\n" + extra_qrels)
    if dev:
        (root / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq-heart\theart-0\t1\n")
    return root


@pytest.fixture(scope="module")
def beir(tmp_path_factory) -> Path:
    return write_beir(tmp_path_factory.mktemp("beir"))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    return build_encoder(tmp_path_factory.mktemp("tiny-encoder"))


FAST = {
    "per_query": 2,
    "depth": 4,
    "batch_size": 8,
    "learning_rate": 3e-3,
    "warmup_ratio": 0.0,
    "dev_depth": 10,
    "progress": False,
}


@pytest.fixture(scope="module")
def trained(beir, encoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "bce"
    return out, fine_tune(beir, str(encoder), out, max_steps=150, save_steps=1000, dev_fraction=0.2, **FAST)


def test_the_run_says_when_its_own_numbers_are_bad(trained):
    """A model below its first stage on dev, or a rising loss, is a warning in the result and the
    model card: never a silent success."""
    out, result = trained
    card = (out / "README.md").read_text()
    below = result.dev_metrics["model_ndcg@10"] < result.dev_metrics["bm25_ndcg@10"]
    rising = result.last_loss > result.first_loss
    assert len(result.warnings) == below + rising
    assert all(w in card for w in result.warnings)
    assert ("below its first stage" in card) == below


def test_bce_training_lowers_the_loss_and_saves_a_loadable_model(beir, trained):
    out, result = trained
    assert result.steps == 150 and result.loss == "bce"
    history = json.loads((out / "training.json").read_text())["loss_history"]
    assert len(history) >= 6
    assert sum(history[-3:]) / 3 < 0.75 * (sum(history[:3]) / 3)
    assert result.skipped_queries == 1  # q-none
    assert result.train_queries + result.dev_queries == len(QUERIES)
    assert result.dev_queries == round(len(QUERIES) * 0.2)
    assert {"model_ndcg@10", "bm25_ndcg@10", "model_mrr@10"} <= set(result.dev_metrics)
    card = (out / "README.md").read_text()
    assert str(result.base) in card and "| loss | bce |" in card and "| steps | 150 |" in card
    assert not (out / ".training").exists(), "checkpoints and rows are removed after a finished run"

    assert len(result.dev_query_ids) == result.dev_queries
    wins = positive_first(beir, CrossEncoderScorer(str(out)), result.dev_query_ids)
    assert sum(wins) >= 0.9 * len(wins), (wins, history)


def positive_first(beir: Path, scorer: object, held_out: tuple[str, ...]) -> list[bool]:
    """For each training query: does its known positive outrank the negatives mined for it?"""
    data = load_beir(beir, "train")
    train = {q: data.queries[q] for q in data.queries if q in QUERIES and q not in held_out}
    mined = dict(mine_negatives(train, data.qrels, first_stage("bm25", data.corpus), per_query=2, depth=4))
    texts = {str(c.id): c for c in data.corpus}
    wins = []
    for qid, negatives in mined.items():
        positive = texts[QUERIES[qid][1]]
        ranked = rerank(train[qid], [positive, *negatives], scorer)
        wins.append(ranked[0].candidate.id == positive.id)
    return wins


def test_the_trained_directory_drops_into_the_adapters(trained):
    from langchain_core.documents import Document

    from rerankers_plugins.integrations.langchain import CrossEncoderRerank
    from rerankers_plugins.integrations.llama_index import CrossEncoderRerank as LICrossEncoderRerank

    out, _ = trained
    docs = [Document(page_content=t) for t in TOPICS["cat"]]
    lc = CrossEncoderRerank(model=str(out), top_n=1).compress_documents(docs, "where do cats sit")
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    nodes = [NodeWithScore(node=TextNode(text=t)) for t in TOPICS["cat"]]
    li = LICrossEncoderRerank(model=str(out), top_n=1).postprocess_nodes(
        nodes, QueryBundle("where do cats sit")
    )
    assert lc[0].page_content == li[0].node.get_content() == TOPICS["cat"][0]


def test_mined_negatives_exclude_positives_and_are_deterministic(beir):
    data = load_beir(beir, "train")
    stage = first_stage("bm25", data.corpus)
    mined = dict(mine_negatives(data.queries, data.qrels, stage, per_query=3, depth=6, seed=1))
    assert set(mined) == set(data.queries)
    for qid, negs in mined.items():
        positives = {d for d, g in data.qrels[qid].items() if g > 0}
        ids = [str(c.id) for c in negs]
        assert not positives & set(ids)
        assert len(ids) == len(set(ids)) <= 3
    again = dict(mine_negatives(data.queries, data.qrels, stage, per_query=3, depth=6, seed=1))
    assert {q: [c.id for c in v] for q, v in again.items()} == {
        q: [c.id for c in v] for q, v in mined.items()
    }
    # a query's draw does not depend on which other queries are mined with it
    subset = {q: data.queries[q] for q in ("q-bank", "q-gene")}
    alone = dict(mine_negatives(subset, data.qrels, stage, per_query=3, depth=6, seed=1))
    assert [c.id for c in alone["q-gene"]] == [c.id for c in mined["q-gene"]]
    one, two = (
        dict(mine_negatives(data.queries, data.qrels, stage, per_query=2, depth=8, seed=s)) for s in (1, 2)
    )
    assert any([c.id for c in one[q]] != [c.id for c in two[q]] for q in one), "the seed changes the draw"


class Interrupt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 7:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def interrupted(beir, encoder, tmp_path_factory):
    """A run interrupted at step 7 of 10, checkpointed at step 5: tests resume copies of it."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    with pytest.raises(KeyboardInterrupt):
        fine_tune(beir, str(encoder), out, max_steps=10, save_steps=5, callbacks=[Interrupt()], **FAST)
    return out


def test_an_interrupted_run_resumes_from_its_last_checkpoint(beir, encoder, interrupted, tmp_path, caplog):
    out = tmp_path / "run"
    shutil.copytree(interrupted, out)
    assert (out / ".training" / "checkpoints" / "checkpoint-5").is_dir()
    assert not (out / "training.json").exists()
    with caplog.at_level(logging.WARNING):
        result = fine_tune(beir, str(encoder), out, max_steps=10, save_steps=5, **FAST)
    assert result.resumed_from == "checkpoint-5" and result.steps == 10
    assert any("resuming" in r.getMessage() for r in caplog.records)
    scores = CrossEncoderScorer(str(out)).score("where do cats sit", ["the cat sat on the mat"])
    assert len(scores) == 1 and 0.0 <= scores[0] <= 1.0


@pytest.mark.parametrize("loss", ["listwise", "margin-mse"])
def test_listwise_and_distillation_losses_train(beir, encoder, tmp_path, loss):
    teacher = "bm25" if loss == "margin-mse" else None
    result = fine_tune(beir, str(encoder), tmp_path / loss, max_steps=2, loss=loss, teacher=teacher, **FAST)
    # one row per training query: a graded list (listwise) or a distilled group (margin-mse)
    assert result.steps == 2 and result.training_rows == result.train_queries
    assert result.first_loss is not None
    scores = CrossEncoderScorer(str(tmp_path / loss)).score("capital of france", ["paris is the capital"])
    assert len(scores) == 1 and 0.0 <= scores[0] <= 1.0


def test_a_dev_split_file_is_held_out(tmp_path, encoder):
    root = write_beir(tmp_path / "beir", dev=True)  # q-heart is judged in both train and dev
    result = fine_tune(root, str(encoder), tmp_path / "out", max_steps=1, dev_split="dev", **FAST)
    assert result.dev_queries == 1 and result.train_queries == len(QUERIES) - 1


def test_bad_input_is_refused_clearly(beir, encoder, tmp_path, trained):
    with pytest.raises(ConfigError, match=r"split 'dev' not found.*splits here: train"):
        fine_tune(beir, str(encoder), tmp_path / "a", split="dev", **FAST)
    bad = write_beir(tmp_path / "bad", extra_qrels="q-cat\tghost-1\t1\nq-cat\tghost-2\t1\n")
    with pytest.raises(ConfigError, match=r"2 document\(s\) not in corpus.jsonl.*'ghost-1', 'ghost-2'"):
        fine_tune(bad, str(encoder), tmp_path / "b", **FAST)
    from transformers import GPT2Config

    decoder = tmp_path / "gpt2"
    GPT2Config(n_layer=1, n_embd=32, n_head=2, architectures=["GPT2LMHeadModel"]).save_pretrained(decoder)
    with pytest.raises(ConfigError, match="is not an encoder"):
        fine_tune(beir, str(decoder), tmp_path / "c", **FAST)
    with pytest.raises(ConfigError, match=r"margin-mse.*teacher"):
        fine_tune(beir, str(encoder), tmp_path / "d", loss="margin-mse", **FAST)
    out, _ = trained
    with pytest.raises(ConfigError, match=r"already holds a trained model.*overwrite"):
        fine_tune(beir, str(encoder), out, **FAST)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="holds files no training run wrote"):
        fine_tune(beir, str(encoder), tmp_path / "mine", overwrite=True, **FAST)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    # a file named like ours is not enough to make a directory ours
    (tmp_path / "mine" / "training.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds files no training run wrote"):
        fine_tune(beir, str(encoder), tmp_path / "mine", overwrite=True, **FAST)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_overwrite_replaces_a_finished_model_and_nothing_else(beir, encoder, trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained[0], out)  # a finished run (150 steps)
    result = fine_tune(beir, str(encoder), out, max_steps=1, overwrite=True, **FAST)
    assert result.steps == 1 and json.loads((out / "training.json").read_text())["steps"] == 1
    (out / "my-notes.md").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds files no training run wrote \(my-notes.md\)"):
        fine_tune(beir, str(encoder), out, max_steps=1, overwrite=True, **FAST)
    assert (out / "my-notes.md").read_text() == "mine" and (out / "config.json").is_file()


def test_an_interrupted_run_with_other_settings_is_not_resumed(beir, encoder, interrupted, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(interrupted, out)
    changed = {**FAST, "per_query": 1}
    with pytest.raises(
        ConfigError, match="interrupted run with other settings or data \\(per_query differ\\)"
    ):
        fine_tune(beir, str(encoder), out, max_steps=10, save_steps=5, **changed)
    result = fine_tune(beir, str(encoder), out, max_steps=1, save_steps=5, overwrite=True, **changed)
    assert result.resumed_from is None and result.steps == 1


def test_cli_train(beir, encoder, tmp_path, capsys):
    from rerankers_plugins.cli import main

    out = tmp_path / "cli"
    code = main(
        [
            "train",
            str(beir),
            "--base",
            str(encoder),
            "--out",
            str(out),
            "--max-steps",
            "2",
            "--per-query",
            "2",
            "--depth",
            "4",
            "--dev-depth",
            "10",
            "--no-progress",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0 and "2 steps" in text and "dev model_ndcg@10" in text
    assert main(["train", str(beir), "--base", str(encoder), "--out", str(out), "--no-progress"]) == 2
    assert "already holds a trained model" in capsys.readouterr().err


def test_distillation_adds_unlabeled_queries_but_never_a_judged_one(tmp_path, encoder, caplog):
    root = write_beir(tmp_path / "beir")
    with (root / "queries.jsonl").open("a") as f:
        f.write(json.dumps({"_id": "q-held", "text": "the city of paris"}) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq-held\tparis-1\t1\n")
    extra = tmp_path / "unlabeled.jsonl"
    extra.write_text(
        "\n".join(
            json.dumps(row)
            for row in (
                {"_id": "u-river", "text": "the green river bank"},
                {"_id": "u-brain", "text": "a study of the brain"},
                {"_id": "q-cat", "text": "judged in train, under its own id"},
                {"_id": "q-held", "text": "a test query, under its own id"},
                {"_id": "u-copy", "text": " The  City of PARIS"},  # a test query's text, another id
                {"_id": "u-brain", "text": "a study of the brain"},  # repeated: used once
            )
        )
        + "\n"
    )
    distil = {**FAST, "loss": "margin-mse", "teacher": "bm25", "max_steps": 1}
    labelled = fine_tune(root, str(encoder), tmp_path / "labelled", **distil)
    with caplog.at_level(logging.WARNING, logger="rerankers_plugins.train.fine_tune"):
        more = fine_tune(root, str(encoder), tmp_path / "more", unlabeled=extra, **distil)
    assert labelled.unlabeled_queries == 0 and more.unlabeled_queries == 2
    assert more.training_rows == labelled.training_rows + 2  # one row per distilled query
    assert more.train_queries == labelled.train_queries  # unlabeled ones are counted apart
    (warning,) = [r.getMessage() for r in caplog.records if "unlabeled queries are" in r.getMessage()]
    assert any("1 repeated query ids or texts" in r.getMessage() for r in caplog.records)
    assert "3 of 5 unlabeled queries are judged" in warning and "2 by id, 1 by text" in warning
    assert "'q-cat'" in warning
    assert (
        "| unlabeled queries given (judged ones left out) | 2 |"
        in (tmp_path / "more" / "README.md").read_text()
    )
    with pytest.raises(ConfigError, match=r"unlabeled queries have no labels.*margin-mse"):
        fine_tune(root, str(encoder), tmp_path / "bce", unlabeled=extra, **FAST)
    with pytest.raises(ConfigError, match="not found"):
        fine_tune(root, str(encoder), tmp_path / "gone", unlabeled=tmp_path / "gone.jsonl", **distil)
    extra.write_text('{"id": "u-1", "text": "no _id key"}\n')
    with pytest.raises(ConfigError, match="line 1 is not a query row"):
        fine_tune(root, str(encoder), tmp_path / "bad", unlabeled=extra, **distil)
    extra.write_text('{"_id": "u-1", "text": "fine"}\n{"_id": "u-2", "text": null}\n')
    with pytest.raises(ConfigError, match=r"line 2 is not a query row.*non-empty string"):
        fine_tune(root, str(encoder), tmp_path / "null", unlabeled=extra, **distil)
    extra.write_text('{"_id": "q-cat", "text": "where do cats sit"}\n')
    with pytest.raises(ConfigError, match="no unlabeled query left"):
        fine_tune(root, str(encoder), tmp_path / "none", unlabeled=extra, **distil)
    with pytest.raises(ConfigError, match="depth must be >= 2"):
        fine_tune(root, str(encoder), tmp_path / "shallow", **{**distil, "depth": 1})


class Oracle(BaseScorer):
    """A teacher that knows the judged positives: 1 for them, 0 for every other document."""

    name = "oracle"
    scale = ScoreScale.PROBABILITY

    def __init__(self, positives: set[str]) -> None:
        self.positives = positives

    def score(self, query, texts):
        return [1.0 if t in self.positives else 0.0 for t in texts]


def test_the_teacher_sees_past_the_negatives_depth_so_a_deeper_positive_is_the_anchor(beir):
    data = load_beir(beir, "train")
    texts = {str(c.id): c.text for c in data.corpus}
    lists = first_stage("bm25", data.corpus)(list(data.queries.values()), 100)
    deep = {
        qid: next(i for i, c in enumerate(cands) if c.id == QUERIES[qid][1])
        for qid, cands in zip(data.queries, lists, strict=True)
        if qid in QUERIES and QUERIES[qid][1] in [c.id for c in cands[1:]]
    }
    assert deep, "the tiny collection has queries whose positive BM25 ranks below first"
    rows = list(
        _rows(
            data,
            sorted(deep),
            loss="margin-mse",
            negatives="bm25",
            teacher=Oracle({texts[QUERIES[q][1]] for q in deep}),
            per_query=1,
            depth=1,
            seed=0,
            negatives_model="minilm",
        )
    )
    assert [r["positive"] for r in rows] == [texts[QUERIES[q][1]] for q in sorted(deep)]
    head = {q: lists[list(data.queries).index(q)][0].text for q in deep}
    assert [r["negative_1"] for r in rows] == [head[q] for q in sorted(deep)]  # the top 1, not deeper


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(2, 40),
    data=st.data(),
    per_query=st.integers(1, 6),
    seed=st.integers(0, 3),
)
def test_a_distillation_row_anchors_on_a_judged_positive_and_draws_negatives_from_the_head(
    n, data, per_query, seed
):
    ids = [f"d{i}" for i in range(n)]
    cands = [Candidate(text=f"text of {d}", id=d) for d in ids]  # first-stage order
    scores = dict(zip(ids, data.draw(st.lists(st.floats(-50, 50), min_size=n, max_size=n)), strict=True))
    judged = data.draw(st.dictionaries(st.sampled_from(ids), st.integers(0, 2), max_size=n))
    depth = data.draw(st.integers(1, n))
    rows = list(_distill_rows("q", "query", cands, scores, judged, per_query, depth, seed))
    head = set(ids[:depth])
    positives = [d for d in ids if judged.get(d, 0) > 0]
    if len(rows) == 0:  # only when no other head document is left to contrast with
        anchor = max(positives or ids, key=lambda d: scores[d])
        assert not [d for d in head if d != anchor and judged.get(d, 0) <= 0]
        return
    (row,) = rows
    by_text = {c.text: str(c.id) for c in cands}
    anchor = by_text[row["positive"]]
    best = max(positives or ids, key=lambda d: scores[d])
    assert scores[anchor] == scores[best] and (judged.get(anchor, 0) > 0) == bool(positives)
    negatives = [by_text[row[f"negative_{i}"]] for i in range(1, per_query + 1)]
    drawn = list(dict.fromkeys(negatives))
    assert set(drawn) <= head - {anchor} - set(positives)
    assert negatives == drawn + [drawn[-1]] * (per_query - len(drawn))  # padding repeats the last
    assert len(drawn) == min(per_query, len([d for d in head if d != anchor and judged.get(d, 0) <= 0]))
    mean = statistics.fmean(scores.values())
    std = statistics.pstdev(scores.values()) or 1.0
    assert row["label"][: len(drawn) + 1] == pytest.approx(
        [(scores[d] - mean) / std for d in [anchor, *drawn]]
    )
    again = list(_distill_rows("q", "query", cands, scores, judged, per_query, depth, seed))
    assert again == rows, "deterministic for a seed"


@pytest.mark.slow  # trains a student for 5 s
def test_distillation_teaches_the_student_the_teachers_order(beir, encoder, tmp_path):
    from rerankers_plugins.train import as_pipeline

    out = tmp_path / "student"
    fine_tune(
        beir, str(encoder), out, loss="margin-mse", teacher="bm25", max_steps=100, save_steps=1000, **FAST
    )
    history = json.loads((out / "training.json").read_text())["loss_history"]
    assert sum(history[-3:]) / 3 < 0.75 * (sum(history[:3]) / 3), history
    data = load_beir(beir, "train")
    teacher, student = as_pipeline("bm25"), CrossEncoderScorer(str(out))
    lists = first_stage("bm25", data.corpus)(list(data.queries.values()), 100)
    agree = total = 0
    for query, cands in zip(data.queries.values(), lists, strict=True):
        judged = {str(s.candidate.id): s.score for s in rerank(query, cands, teacher)}
        z = dict(zip(judged, zscore(list(judged.values())), strict=True))
        mine = dict(
            zip([str(c.id) for c in cands], student.score(query, [c.text for c in cands]), strict=True)
        )
        for a in z:
            for b in z:
                if z[a] - z[b] > 1.0:  # pairs the teacher clearly orders
                    total += 1
                    agree += mine[a] > mine[b]
    assert total >= 15 and agree / total >= 0.85, (agree, total)
