"""Both adapters translate symmetrically, and every strategy example of docs/strategies.md runs unchanged
in both (with a real tiny cross-encoder and bi-encoder)."""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path

import pytest
from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from rerankers_plugins import (
    Candidate,
    ConfigError,
    FakeScorer,
    Hybrid,
    Selective,
    Signal,
    Strategy,
    rerank,
)
from rerankers_plugins.integrations import langchain as lc
from rerankers_plugins.integrations import llama_index as li
from rerankers_plugins.registry import BACKENDS

STRATEGIES_GUIDE = Path(__file__).resolve().parents[2] / "docs" / "strategies.md"
QUERY = "red apple"
ROWS = [
    ("The red apple fell from the tree.", 0.31, 0.9),
    ("Paris is the capital of France.", 0.80, 0.1),
    ("Apple pie with red apples and cinnamon.", 0.52, 0.5),
    ("Bananas are yellow.", 0.45, 0.7),
    ("A red sports car.", 0.20, 0.3),
]


def documents() -> list[Document]:
    return [
        Document(t, id=f"d{i}", metadata={"trust": trust, "score": r, "nested": {"i": i}})
        for i, (t, r, trust) in enumerate(ROWS)
    ]


def nodes() -> list[NodeWithScore]:
    return [
        NodeWithScore(
            node=TextNode(text=t, id_=f"d{i}", metadata={"trust": trust, "nested": {"i": i}}), score=r
        )
        for i, (t, r, trust) in enumerate(ROWS)
    ]


def candidates() -> list[Candidate]:
    return [
        Candidate(t, id=f"d{i}", metadata={"trust": trust}, retrieval_score=r)
        for i, (t, r, trust) in enumerate(ROWS)
    ]


def run_both(scorer, **kw):
    docs, ns = documents(), nodes()
    docs_before, nodes_before = copy.deepcopy(docs), [n.model_dump() for n in ns]
    got_lc = lc.RerankCompressor(scorer=scorer, **kw).compress_documents(docs, QUERY)
    got_li = li.RerankPostprocessor(scorer=scorer, metadata_mode="none", **kw).postprocess_nodes(
        ns, query_bundle=QueryBundle(QUERY)
    )
    assert docs == docs_before and [n.model_dump() for n in ns] == nodes_before
    return got_lc, got_li


def _strategy_block() -> str:
    text = STRATEGIES_GUIDE.read_text(encoding="utf-8")
    section = text[text.index("## Strategies") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def readme_strategies(namespace: dict) -> list:
    """Run the strategies guide's first block as printed; collect every scorer or strategy it builds."""
    built = []
    for node in ast.parse(_strategy_block()).body:
        code = compile(ast.Module([node], type_ignores=[]), str(STRATEGIES_GUIDE), "exec")
        if isinstance(node, ast.Expr):
            value = eval(compile(ast.Expression(node.value), str(STRATEGIES_GUIDE), "eval"), namespace)
            built.append(value)
        else:
            exec(code, namespace)
    built.append(namespace["cal"])
    return [b for b in built if isinstance(b, Strategy) or hasattr(b, "score")]


def fake_llm(messages):
    """A chat function: ranks passages by the order they were given ([1] > [2] > ...)."""
    n = messages[-1]["content"].count("\n[")
    return " > ".join(f"[{i}]" for i in range(1, max(n, 1) + 1))


def test_every_readme_strategy_runs_unchanged_in_both_adapters(tiny_ce, tiny_bi_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the block saves a calibration file
    namespace = {
        "ce": tiny_ce,
        "bi": str(tiny_bi_dir),
        "llm": fake_llm,
        "train_pairs": [(QUERY, t, int("apple" in t)) for t, _, _ in ROWS],
    }
    strategies = readme_strategies(namespace)
    assert (
        len(strategies) == 7
    )  # Threshold, Selective, Cascade, Hybrid, CachedScorer, LongDocument, calibrated
    for s in strategies:
        core = [x.id for x in rerank(QUERY, candidates(), s, top_n=None)]
        got_lc, got_li = run_both(s, top_n=None)
        assert [d.id for d in got_lc] == core, s
        assert [n.node.node_id for n in got_li] == core, s
        for d, n in zip(got_lc, got_li, strict=True):
            same = {k: v for k, v in d.metadata["rerank"].items() if k != "stage_ms"}  # timings differ
            assert same == {k: v for k, v in n.node.metadata["rerank"].items() if k != "stage_ms"}


def test_metadata_signal_works_in_llama_index():
    hybrid = Hybrid([Signal(FakeScorer(), 0.5), Signal(lambda c: c.metadata["trust"], 0.5, name="trust")])
    got_lc, got_li = run_both(hybrid, top_n=2)
    assert [n.node.node_id for n in got_li] == [d.id for d in got_lc] == ["d0", "d2"]
    assert got_li[0].node.metadata["rerank"]["signals"]["trust"] == 0.9


def test_retrieval_score_gate_works_in_langchain():
    gate = Selective(FakeScorer(), k=3, skip_if_top=0.75)  # d1's retrieval score 0.80 decides
    got_lc, got_li = run_both(gate, top_n=None)
    for got in ([d.id for d in got_lc], [n.node.node_id for n in got_li]):
        assert got == ["d0", "d1", "d2", "d3", "d4"]  # first-stage order, model skipped
    assert got_lc[0].metadata["rerank"]["skipped"].startswith("top retrieval score 0.8")
    assert got_lc[0].metadata["rerank"]["retrieval_score"] == 0.31


def test_retrieval_score_key_is_configurable():
    docs = [Document("pear", metadata={"sim": 0.2}), Document("red apple", metadata={"sim": 0.7})]
    hybrid = Hybrid([Signal("retrieval", 1.0)])
    out = lc.RerankCompressor(scorer=hybrid, retrieval_score_key="sim").compress_documents(docs, QUERY)
    assert [d.page_content for d in out] == ["red apple", "pear"]
    # no key: no retrieval scores, so the retrieval signal is the first stage's order
    out = lc.RerankCompressor(scorer=hybrid, retrieval_score_key=None).compress_documents(docs, QUERY)
    assert [d.page_content for d in out] == ["pear", "red apple"]
    docs[0].metadata.pop("sim")
    with pytest.raises(ConfigError, match="retrieval_score_key"):
        lc.RerankCompressor(scorer=hybrid, retrieval_score_key="sim").compress_documents(docs, QUERY)


def test_defaults_follow_each_framework():
    assert lc.RerankCompressor(scorer=FakeScorer()).top_n == 3
    assert li.RerankPostprocessor(scorer=FakeScorer()).top_n == 2
    assert len(lc.RerankCompressor(scorer=FakeScorer()).compress_documents(documents(), QUERY)) == 3
    assert len(li.RerankPostprocessor(scorer=FakeScorer()).postprocess_nodes(nodes(), query_str=QUERY)) == 2


def test_returned_results_share_no_nested_dicts():
    got_lc, got_li = run_both(Hybrid([Signal(FakeScorer(), 1.0)]), top_n=None)
    got_lc[0].metadata["rerank"]["signals"]["fake-overlap"] = -1
    got_lc[0].metadata["nested"]["i"] = 99
    assert got_lc[1].metadata["rerank"]["signals"]["fake-overlap"] != -1
    assert documents()[0].metadata["nested"]["i"] == 0
    got_li[0].node.metadata["rerank"]["fusion"] = "changed"
    assert got_li[1].node.metadata["rerank"]["fusion"] == "weighted"


async def test_async_paths_match_sync():
    hybrid = Hybrid([Signal(FakeScorer(), 0.5), Signal(lambda c: c.metadata["trust"], 0.5, name="trust")])
    compressor = lc.RerankCompressor(scorer=hybrid, top_n=None)
    post = li.RerankPostprocessor(scorer=hybrid, top_n=None, metadata_mode="none")
    a_lc = await compressor.acompress_documents(documents(), QUERY)
    a_li = await post.apostprocess_nodes(nodes(), query_bundle=QueryBundle(QUERY))
    s_lc, s_li = run_both(hybrid, top_n=None)
    assert (
        [d.id for d in a_lc]
        == [d.id for d in s_lc]
        == [n.node.node_id for n in a_li]
        == [n.node.node_id for n in s_li]
    )


def test_conveniences_come_from_the_registry():
    expected = sorted(b.convenience for b in BACKENDS.values() if b.convenience)
    for module, base in ((lc, lc.RerankCompressor), (li, li.RerankPostprocessor)):
        names = sorted(n for n in module.__all__ if n != base.__name__ and n.endswith("Rerank"))
        assert names == expected
        for name in names:
            cls = getattr(module, name)
            assert issubclass(cls, base) and cls.__module__ == module.__name__
    assert li.CrossEncoderRerank.class_name() == "CrossEncoderRerank"
