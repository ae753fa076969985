"""The composition contract under random nestings (depth up to 3) of every strategy around fake
leaves, sync and async, in ``rerank`` and in both adapters.

Guarantees checked for every generated pipeline and candidate list:
ids out are a subset of ids in, without duplicates; every candidate is either kept or marked
dropped (by whom and why); no outer layer returns what an inner one dropped; an unreranked entry is
never cut by a threshold; ties keep input order; caller objects are never mutated; a failing leaf
with ``on_error="keep_order"`` never raises; sync and async agree.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import re
import zlib
from collections.abc import Iterator, Sequence

from deps import dev
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rerankers_plugins import (
    BackendError,
    BaseScorer,
    CachedScorer,
    Calibrated,
    Candidate,
    Cascade,
    Hybrid,
    LongDocument,
    Ranking,
    ScoreScale,
    Selective,
    Signal,
    Stage,
    Strategy,
    Threshold,
    aexplain,
    as_strategy,
    explain,
    rerank,
)

QUERY = "red apple pie"
WORDS = ["red", "apple", "pie", "banana", "boat", "car", "tree", "green"]


def _h(*parts: str) -> int:
    return zlib.crc32("\x00".join(parts).encode())


class Table(BaseScorer):
    """Deterministic PROBABILITY scores with frequent ties (one decimal)."""

    scale = ScoreScale.PROBABILITY

    def __init__(self, name: str) -> None:
        self.name = name

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return [(_h(self.name, query, t) % 11) / 10 for t in texts]


class Logits(BaseScorer):
    scale = ScoreScale.LOGIT

    def __init__(self, name: str) -> None:
        self.name = name

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return [float(_h(self.name, query, t) % 21 - 10) for t in texts]


class Constant(BaseScorer):
    scale = ScoreScale.PROBABILITY

    def __init__(self, name: str) -> None:
        self.name = name

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return [0.5] * len(texts)


class Failing(BaseScorer):
    """A backend that is down, configured to fall back."""

    scale = ScoreScale.RELEVANCE
    on_error = "keep_order"

    def __init__(self, name: str) -> None:
        self.name = name

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        raise BackendError("server unreachable")


class Ranks:
    """A listwise ranker (RANK_ONLY): order by a hash of the text, ties by position."""

    def __init__(self, name: str) -> None:
        self.name = name

    def rank(self, query: str, texts: Sequence[str]) -> list[int]:
        return sorted(range(len(texts)), key=lambda i: _h(self.name, texts[i]) % 7)


class Probe(Strategy):
    """Pass-through layer that records what it was given and what the layer inside kept."""

    def __init__(self, inner, log: list[tuple[set[int], set[int]]]) -> None:
        self.inner = as_strategy(inner)
        self.scale, self.name, self.log = self.inner.scale, self.inner.name, log

    def _record(self, given: Ranking, out: Ranking) -> Ranking:
        self.log.append(({e.position for e in given}, {e.position for e in out}))
        return out

    def run(self, query: str, ranking: Ranking) -> Ranking:
        return self._record(ranking, self.inner.run(query, ranking))

    async def arun(self, query: str, ranking: Ranking) -> Ranking:
        return self._record(ranking, await self.inner.arun(query, ranking))


def _scale(p) -> ScoreScale:
    return as_strategy(p).scale


@st.composite
def pipelines(
    draw,
    depth: int,
    log: list,
    leaves: tuple[str, ...] = ("table", "logits", "ranks", "failing"),
    direct: bool = True,
):
    """A random pipeline: leaves, derived leaves, and strategies nested up to ``depth``."""
    counter = draw(st.integers(0, 10**6))
    name = f"n{counter}"
    if depth == 0 or draw(st.integers(0, 3)) == 0:  # mostly composites: deep nestings are the point
        kind = draw(st.sampled_from(leaves))
        leaf = {"table": Table, "logits": Logits, "ranks": Ranks, "failing": Failing, "constant": Constant}[
            kind
        ](name)
        if kind in ("table", "logits", "constant"):
            wrap = draw(st.sampled_from(["none", "cached", "long", "calibrated"]))
            if wrap == "cached":
                leaf = CachedScorer(leaf)
            elif wrap == "long":
                leaf = LongDocument(leaf, max_words=2, overlap=1)
            elif wrap == "calibrated":
                leaf = Calibrated(leaf, "platt", {"a": 1.5, "b": -0.2})
        return leaf
    kind = draw(st.sampled_from(["threshold", "selective", "cascade", "hybrid"]))
    inner = draw(pipelines(depth - 1, log, leaves, direct))
    if kind == "threshold":
        if _scale(inner) is ScoreScale.RANK_ONLY:
            node = Selective(inner, k=draw(st.integers(1, 6)))
        else:
            node = Threshold(
                inner,
                absolute=draw(st.none() | st.sampled_from([0.0, 0.3, 0.5, 0.8])),
                relative=draw(st.none() | st.sampled_from([0.0, 0.2, 3.0])),
                min_keep=draw(st.integers(0, 3)),
            )
    elif kind == "selective":
        node = Selective(inner, k=draw(st.integers(1, 6)), rest=draw(st.sampled_from(["keep", "drop"])))
    elif kind == "cascade":
        second = draw(pipelines(depth - 1, log, leaves, direct))
        first_keep = draw(st.none() | st.integers(1, 8))
        second_keep = draw(st.none() | st.integers(1, first_keep or 8))
        stages = [
            Stage(inner, keep=first_keep, name=f"{name}a"),
            Stage(second, keep=second_keep, name=f"{name}b"),
        ]
        node = Cascade(stages)
    else:
        second = draw(pipelines(depth - 1, log, leaves, direct))
        method = draw(st.sampled_from(["weighted", "rrf"]))
        if method == "weighted" and ScoreScale.RANK_ONLY in (_scale(inner), _scale(second)):
            method = "rrf"
        signals = [Signal(inner, 0.5, name=f"{name}x"), Signal(second, 0.3, name=f"{name}y")]
        if direct and draw(st.booleans()):
            signals.append(Signal("retrieval", 0.1, name=f"{name}r"))
        if direct and draw(st.booleans()):
            signals.append(Signal(lambda c: c.metadata["trust"], 0.1, name=f"{name}m"))
        node = Hybrid(signals, method=method, normalize=draw(st.sampled_from(["minmax", "zscore"])))
    return Probe(node, log)  # every composite is probed: what it dropped must stay dropped


candidate_lists = st.lists(
    st.tuples(
        st.lists(st.sampled_from(WORDS), min_size=0, max_size=5).map(" ".join),
        st.floats(-5, 5, allow_nan=False),
        st.floats(0, 1),
    ),
    min_size=0,
    max_size=12,
).map(
    lambda rows: [
        Candidate(text, id=f"d{i}", metadata={"trust": trust, "tags": [i]}, retrieval_score=r)
        for i, (text, r, trust) in enumerate(rows)
    ]
)

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(cands, ex, log, top_n, threshold) -> None:
    ids_in = [c.id for c in cands]
    kept = [s.id for s in ex.kept]
    dropped = [s.id for s in ex.dropped]
    assert len(set(kept)) == len(kept), "a candidate was duplicated"
    assert set(kept) <= set(ids_in)
    assert sorted(kept + dropped) == sorted(ids_in), "a candidate was lost, or kept and dropped at once"
    assert all(s.details["dropped_by"] and s.details["drop_reason"] is not None for s in ex.dropped)
    assert [s.rank for s in ex.kept] == list(range(len(ex.kept)))
    if top_n is not None:
        assert len(ex.kept) <= top_n
    positions = {s.details["original_rank"] for s in ex.kept}
    for seen, inner_kept in log:  # no outer layer returns what an inner one dropped
        assert not (seen - inner_kept) & positions
    for s in ex.dropped:  # a threshold never cuts what was not reranked
        by, reason = s.details["dropped_by"], s.details["drop_reason"]
        if by == "threshold" or by.startswith("Threshold(") or "threshold" in reason:
            assert s.details["reranked"], (by, reason)
    if threshold is not None:
        assert all(s.score >= threshold for s in ex.kept if s.details["reranked"])
    _check_drops(ex, {})  # every drop shows the numbers it was decided on


@PROPS
@given(data=st.data(), cands=candidate_lists)
def test_random_nestings_keep_the_contract_sync_and_async(data, cands):
    log: list = []
    pipeline = data.draw(pipelines(3, log))
    top_n = data.draw(st.none() | st.integers(1, 6))
    scale = _scale(pipeline)
    threshold = None if scale is ScoreScale.RANK_ONLY else data.draw(st.none() | st.sampled_from([0.0, 0.5]))
    snapshot = copy.deepcopy(cands)
    ex = explain(QUERY, cands, pipeline, top_n=top_n, threshold=threshold)
    assert cands == snapshot and all(a.metadata == b.metadata for a, b in zip(cands, snapshot, strict=True))
    _check(cands, ex, log, top_n, threshold)
    log.clear()
    aex = asyncio.run(aexplain(QUERY, cands, pipeline, top_n=top_n, threshold=threshold))
    _check(cands, aex, log, top_n, threshold)
    assert [(s.id, s.score, s.details["reranked"]) for s in aex.kept] == [
        (s.id, s.score, s.details["reranked"]) for s in ex.kept
    ]
    assert cands == snapshot


@PROPS
@given(data=st.data(), cands=candidate_lists)
def test_ties_keep_input_order_at_any_depth(data, cands):
    """With every leaf scoring a constant, no strategy may reorder anything."""
    log: list = []
    pipeline = data.draw(pipelines(3, log, leaves=("constant",), direct=False))
    out = rerank(QUERY, cands, pipeline)
    positions = [s.details["original_rank"] for s in out]
    assert positions == sorted(positions)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), cands=candidate_lists)
def test_random_nestings_in_both_adapters(data, cands):
    dev("langchain_core")
    dev("llama_index.core")
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from rerankers_plugins.integrations.langchain import RerankCompressor
    from rerankers_plugins.integrations.llama_index import RerankPostprocessor

    log: list = []
    pipeline = data.draw(pipelines(3, log))
    top_n = data.draw(st.none() | st.integers(1, 6))
    core = [s.id for s in rerank(QUERY, cands, pipeline, top_n=top_n)]

    docs = [Document(c.text, id=c.id, metadata={**c.metadata, "score": c.retrieval_score}) for c in cands]
    docs_before = copy.deepcopy(docs)
    lc = RerankCompressor(scorer=pipeline, top_n=top_n)
    out = lc.compress_documents(docs, QUERY)
    assert [d.id for d in out] == core
    assert [d.id for d in asyncio.run(lc.acompress_documents(docs, QUERY))] == core
    assert docs == docs_before

    nodes = [
        NodeWithScore(
            node=TextNode(text=c.text, id_=c.id, metadata=dict(c.metadata)), score=c.retrieval_score
        )
        for c in cands
    ]
    nodes_before = copy.deepcopy(nodes)
    li = RerankPostprocessor(scorer=pipeline, top_n=top_n, metadata_mode="none")
    got = li.postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))
    assert [n.node.node_id for n in got] == core
    assert [
        n.node.node_id for n in asyncio.run(li.apostprocess_nodes(nodes, query_bundle=QueryBundle(QUERY)))
    ] == core
    assert [n.model_dump() for n in nodes] == [n.model_dump() for n in nodes_before]


# -- explanations: a drop shows the numbers it was decided on ---------------------------------------

_QUOTED = re.compile(r"^score (-?\d[\d.]*(?:e[-+]\d+)?) ")
_STAGE = re.compile(r"^cascade stage '(.*)'$")


@st.composite
def cutting_pipelines(draw, depth: int, names: Iterator[int], leaves: dict[str, BaseScorer]):
    """Cascades, selectives and thresholds nested up to ``depth`` over leaves that tie often (and
    one that falls back); ``leaves`` collects every cascade stage that is a bare leaf, by label."""
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        kind = draw(st.sampled_from(["table", "table", "logits", "ranks", "failing"]))
        return {"table": Table, "logits": Logits, "ranks": Ranks, "failing": Failing}[kind](f"l{next(names)}")
    kind = draw(st.sampled_from(["threshold", "selective", "cascade", "cascade"]))
    if kind == "cascade":
        stages, receives = [], 12
        for _ in range(draw(st.integers(1, 3))):
            inner = draw(cutting_pipelines(depth - 1, names, leaves))
            keep = draw(st.none() | st.integers(1, receives))
            receives = keep or receives
            cut = (
                None
                if _scale(inner) is ScoreScale.RANK_ONLY
                else draw(st.none() | st.sampled_from([0.0, 0.3, 0.5, 0.8]))
            )
            label = f"s{next(names)}"
            if isinstance(inner, BaseScorer):
                leaves[label] = inner
            stages.append(Stage(inner, keep=keep, threshold=cut, name=label))
        return Cascade(stages)
    inner = draw(cutting_pipelines(depth - 1, names, leaves))
    if kind == "selective" or _scale(inner) is ScoreScale.RANK_ONLY:
        return Selective(inner, k=draw(st.integers(1, 6)), rest=draw(st.sampled_from(["keep", "drop"])))
    return Threshold(
        inner,
        absolute=draw(st.none() | st.sampled_from([0.0, 0.3, 0.5, 0.8])),
        relative=draw(st.none() | st.sampled_from([0.0, 0.2, 3.0])),
        min_keep=draw(st.integers(0, 3)),
    )


def _check_drops(ex, leaves: dict[str, BaseScorer]) -> None:
    for s in ex.dropped:
        d = s.details
        by, reason = d["dropped_by"], d["drop_reason"]
        quoted = _QUOTED.match(reason)
        if quoted:  # the score a reason quotes is the score the entry shows
            assert quoted[1] == f"{s.score:.6g}", (by, reason, s.score)
            assert d["score"] == s.score and d["reranked"], (by, reason)
        stage = _STAGE.match(by)
        if stage:  # dropped by a cascade stage: that stage's score, entry and name
            label = stage[1]
            assert d["stage_reached"] == label, (by, d["stage_reached"])
            assert d["stages"][label] == (s.score if d["reranked"] else None), (
                by,
                dict(d["stages"]),
                s.score,
            )
            if label in leaves and d["reranked"]:  # and it is the number that model gives the text
                assert s.score == leaves[label].score(QUERY, [s.text])[0]
        elif by.startswith("Threshold("):
            assert quoted and d["reranked"], (by, reason)
        elif by.startswith("selective("):  # the tail a Selective drops was not scored by it
            assert not d["reranked"], (by, reason)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), cands=candidate_lists)
def test_every_drop_shows_the_score_it_was_dropped_for(data, cands):
    leaves: dict[str, BaseScorer] = {}
    pipeline = data.draw(cutting_pipelines(3, itertools.count(), leaves))
    top_n = data.draw(st.none() | st.integers(1, 6))
    ex = explain(QUERY, cands, pipeline, top_n=top_n)
    _check_drops(ex, leaves)
    aex = asyncio.run(aexplain(QUERY, cands, pipeline, top_n=top_n))
    _check_drops(aex, leaves)
    assert [
        (s.id, s.score, dict(s.details["stages"]) if "stages" in s.details else None) for s in aex.dropped
    ] == [(s.id, s.score, dict(s.details["stages"]) if "stages" in s.details else None) for s in ex.dropped]


# -- the guarantees again, where the inputs are at their least tidy, and through both adapters -----

#: candidates as users hand them over: ids missing or repeated, texts repeated, empty text; the
#: retrieval scores all there or all absent (a mix is a ConfigError, tested elsewhere)
messy_lists = st.tuples(
    st.lists(
        st.tuples(
            st.lists(st.sampled_from(WORDS), min_size=0, max_size=4).map(" ".join),
            st.none() | st.sampled_from(["a", "b", "c"]),
            st.floats(-5, 5, allow_nan=False),
        ),
        max_size=10,
    ),
    st.booleans(),
).map(
    lambda drawn: [
        Candidate(
            text,
            id=cid,
            metadata={"trust": i / 10, "tags": [i], "nested": {"at": i}},
            retrieval_score=r if drawn[1] else None,
        )
        for i, (text, cid, r) in enumerate(drawn[0])
    ]
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), cands=messy_lists)
def test_nothing_lost_or_duplicated_when_ids_repeat_or_are_missing(data, cands):
    # entries are told apart by position, not by id: two candidates with one id (or none) are two
    log: list = []
    pipeline = data.draw(pipelines(3, log))
    top_n = data.draw(st.none() | st.integers(1, 6))
    snapshot = copy.deepcopy(cands)
    ex = explain(QUERY, cands, pipeline, top_n=top_n)
    positions = [s.details["original_rank"] for s in (*ex.kept, *ex.dropped)]
    assert sorted(positions) == list(range(len(cands))), "a candidate was lost or duplicated"
    for s in (*ex.kept, *ex.dropped):  # each result is the candidate at its position, unchanged
        assert s.candidate == cands[s.details["original_rank"]]
    assert all(s.details["dropped_by"] for s in ex.dropped)
    assert cands == snapshot and [c.metadata for c in cands] == [c.metadata for c in snapshot]


def _mutable(i: int) -> dict:
    """A framework document's metadata as users build it: plain, mutable, nested."""
    return {"trust": i / 10, "tags": [i], "nested": {"at": i}}


def _lc_docs(cands):
    from langchain_core.documents import Document

    return [
        Document(c.text, id=c.id, metadata={**_mutable(i), "score": c.retrieval_score})
        for i, c in enumerate(cands)
    ]


def _li_nodes(cands):
    from llama_index.core.schema import NodeWithScore, TextNode

    return [
        NodeWithScore(node=TextNode(text=c.text, metadata=_mutable(i)), score=c.retrieval_score)
        for i, c in enumerate(cands)
    ]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), cands=messy_lists)
def test_adapters_keep_ties_in_input_order_and_share_nothing_mutable(data, cands):
    dev("langchain_core")
    dev("llama_index.core")
    from llama_index.core.schema import QueryBundle

    from rerankers_plugins.integrations.langchain import RerankCompressor
    from rerankers_plugins.integrations.llama_index import RerankPostprocessor

    pipeline = data.draw(pipelines(3, [], leaves=("constant",), direct=False))
    top_n = data.draw(st.none() | st.integers(1, 6))

    docs = _lc_docs(cands)
    before = copy.deepcopy(docs)
    lc = RerankCompressor(scorer=pipeline, top_n=top_n)
    out = lc.compress_documents(docs, QUERY)
    ranks = [d.metadata["rerank"]["original_rank"] for d in out]
    assert ranks == sorted(ranks), "ties reordered"
    assert [d.page_content for d in out] == [docs[r].page_content for r in ranks]
    for d in out:  # what is returned is the caller's to change: neither the input nor a rerun moves
        d.metadata["tags"].append("changed")
        d.metadata["nested"]["at"] = "changed"
        d.metadata["rerank"]["original_rank"] = -1
    assert docs == before
    again = lc.compress_documents(docs, QUERY)
    assert [d.metadata["rerank"]["original_rank"] for d in again] == ranks
    assert all("changed" not in d.metadata["tags"] for d in again)

    nodes = _li_nodes(cands)
    nodes_before = [n.model_dump() for n in nodes]
    li = RerankPostprocessor(scorer=pipeline, top_n=top_n, metadata_mode="none")
    got = li.postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))
    li_ranks = [n.node.metadata["rerank"]["original_rank"] for n in got]
    assert li_ranks == ranks
    for n in got:
        n.node.metadata["tags"].append("changed")
        n.node.metadata["nested"]["at"] = "changed"
    assert [n.model_dump() for n in nodes] == nodes_before
    again_li = li.postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))
    assert all("changed" not in n.node.metadata["tags"] for n in again_li)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cands=candidate_lists,
    k=st.integers(1, 6),
    threshold=st.sampled_from([0.2, 0.5, 0.9]),
    nested=st.booleans(),
)
def test_unreranked_tails_are_exempt_from_thresholds_in_both_adapters(cands, k, threshold, nested):
    # Selective reranks the head only: its kept tail is not on the scale, so no threshold, given to
    # rerank or to an adapter, at any depth, may cut it
    dev("langchain_core")
    dev("llama_index.core")
    from llama_index.core.schema import QueryBundle

    from rerankers_plugins.integrations.langchain import RerankCompressor
    from rerankers_plugins.integrations.llama_index import RerankPostprocessor

    inner = Selective(Table("t"), k=k, rest="keep")
    pipeline = Cascade([Stage(inner, name="outer")]) if nested else inner
    tail = set(range(min(k, len(cands)), len(cands)))
    core = explain(QUERY, cands, pipeline, threshold=threshold)
    assert tail <= {s.details["original_rank"] for s in core.kept}
    assert all(s.score >= threshold for s in core.kept if s.details["reranked"])

    # top_n=None: only the threshold may cut (the adapters keep 3 by default, as their peers do)
    out = RerankCompressor(scorer=pipeline, threshold=threshold, top_n=None).compress_documents(
        _lc_docs(cands), QUERY
    )
    assert tail <= {d.metadata["rerank"]["original_rank"] for d in out}
    got = RerankPostprocessor(
        scorer=pipeline, threshold=threshold, top_n=None, metadata_mode="none"
    ).postprocess_nodes(_li_nodes(cands), query_bundle=QueryBundle(QUERY))
    assert [n.node.metadata["rerank"]["original_rank"] for n in got] == [
        d.metadata["rerank"]["original_rank"] for d in out
    ]
