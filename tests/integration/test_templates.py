"""Document templates: what each scorer reads of a candidate (its text and chosen metadata).

Every scorer kind is checked the same way: a scorer with ``document_template`` scores candidates
exactly as the same scorer without one scores candidates whose text *is* the filled template (the
reference: ``str.format`` on the candidate's fields; for the field-list form Cohere's documented
recipe, ``yaml.dump(doc, sort_keys=False)``). The API scorers are checked on the wire: the
loopback server must receive the filled texts.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from local_servers import RerankServer
from tiny import build_colbert, build_encoder, build_t5

from rerankers_plugins import (
    BM25Scorer,
    CachedScorer,
    Candidate,
    ConfigError,
    DocumentTemplate,
    FakeScorer,
    LongDocument,
    rerank,
)
from rerankers_plugins.batch.engine import pipeline_fingerprint
from rerankers_plugins.pipeline.leaves import as_strategy

QUERY = "heart blood pressure"
CANDIDATES = [
    Candidate(
        "The results are shown in Table 3.",
        id="d1",
        metadata={"title": "Heart blood pressure trial", "year": 2019},
    ),
    Candidate("Blood pressure of the heart rises.", id="d2", metadata={"title": "Methods", "year": 2020}),
    Candidate("Nothing about it.", id="d3", metadata={"title": "Unrelated", "year": 2021}),
]
TEMPLATE = "{title} ({year})\n{text}"


def filled(candidates: list[Candidate], template: str = TEMPLATE) -> list[Candidate]:
    """The reference: each candidate's text replaced by ``str.format`` of its fields."""
    return [
        Candidate(template.format(text=c.text, id=c.id, **c.metadata), id=c.id, metadata=c.metadata)
        for c in candidates
    ]


def scores(scorer, candidates) -> dict[str, float]:
    return {s.id: s.score for s in rerank(QUERY, candidates, scorer)}


# -- every scorer kind ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    from tiny import build_bi_encoder, build_cross_encoder

    from rerankers_plugins.scorers.poly_encoder import build_poly_encoder

    root = tmp_path_factory.mktemp("templates")
    poly = root / "poly"
    build_poly_encoder(str(build_encoder(root / "enc")), codes=4, max_length=64).save_pretrained(poly)
    return {
        "cross-encoder": build_cross_encoder(root / "ce"),
        "bi-encoder": build_bi_encoder(root / "bi"),
        "colbert": build_colbert(root / "colbert"),
        "seq2seq": build_t5(root / "t5"),
        "poly-encoder": poly,
    }


LOCAL = {
    "cross-encoder": lambda d, **kw: _cls("CrossEncoderScorer")(str(d), dtype="float32", **kw),
    "bi-encoder": lambda d, **kw: _cls("BiEncoderScorer")(str(d), dtype="float32", **kw),
    "colbert": lambda d, **kw: _cls("ColBERTScorer")(str(d), dtype="float32", **kw),
    "seq2seq": lambda d, **kw: _cls("Seq2SeqScorer")(str(d), dtype="float32", **kw),
    "poly-encoder": lambda d, **kw: _cls("PolyEncoderScorer")(str(d), dtype="float32", **kw),
}


def _cls(name: str):
    import rerankers_plugins

    return getattr(rerankers_plugins, name)


@pytest.mark.parametrize("kind", sorted(LOCAL))
def test_a_local_model_reads_the_filled_template(kind, dirs):
    templated = LOCAL[kind](dirs[kind], document_template=TEMPLATE)
    plain = LOCAL[kind](dirs[kind])
    got, want = scores(templated, CANDIDATES), scores(plain, filled(CANDIDATES))
    assert got == pytest.approx(want, abs=1e-5)
    assert got != pytest.approx(scores(plain, CANDIDATES), abs=1e-5)  # the metadata was read


@pytest.mark.parametrize(
    "make",
    [lambda **kw: FakeScorer(**kw), lambda **kw: BM25Scorer(stemming=False, **kw)],
    ids=["fake", "bm25"],
)
def test_fake_and_bm25_read_the_filled_template(make):
    got = scores(make(document_template=TEMPLATE), CANDIDATES)
    assert got == scores(make(), filled(CANDIDATES))
    # "Table 3" loses on its text alone; its title says what it is about
    assert got["d1"] > scores(make(), CANDIDATES)["d1"]


# -- missing fields, defaults, bad templates ------------------------------------------------------


def test_a_missing_field_names_the_field_and_the_candidate():
    scorer = FakeScorer(document_template="{section}\n{text}")
    with pytest.raises(ConfigError, match=r"'section'.*candidate 'd2'.*metadata keys: title, year"):
        rerank(QUERY, [CANDIDATES[1]], scorer)
    # a field held as None is missing too: never "None" in what the model reads
    with pytest.raises(ConfigError, match="'section'"):
        rerank(QUERY, [Candidate("x", id="n", metadata={"section": None})], scorer)
    # a candidate without an id is named by its position
    with pytest.raises(ConfigError, match="at position 1"):
        rerank(QUERY, [Candidate("a", metadata={"section": "s"}), Candidate("b")], scorer)


def test_metadata_as_data_frames_and_loaders_hold_it():
    import numpy as np

    c = Candidate(
        "Körper",
        id="d",
        metadata={
            "source-url": "u",
            "year": np.int64(2020),
            "authors": ["Ann", "Bo"],
            "src": {"name": "PubMed"},
        },
    )
    # a column name that is no identifier is still a key; lists and maps read as plain values
    assert (
        DocumentTemplate("{source-url}|{authors}|{src}|{text}").render(c)
        == "u|['Ann', 'Bo']|{'name': 'PubMed'}|Körper"
    )
    structured = DocumentTemplate(["year", "authors", "text"]).render(c)
    assert structured == "year: 2020\nauthors:\n- Ann\n- Bo\ntext: Körper\n"  # no !!python tags, no escapes
    # a missing cell of a data frame is NaN: missing, as None is
    with pytest.raises(ConfigError, match="'title'"):
        DocumentTemplate("{title} {text}").render(Candidate("x", metadata={"title": float("nan")}))


def test_a_declared_default_fills_a_missing_field():
    seen = []

    class Spy(FakeScorer):
        def score(self, query, texts):
            seen.extend(texts)
            return super().score(query, texts)

    template = DocumentTemplate("{section}|{text}", defaults={"section": "-"})
    rerank(
        QUERY,
        [
            Candidate("a", metadata={"section": "Intro"}),
            Candidate("b"),
            Candidate("c", metadata={"section": None}),
        ],
        Spy(document_template=template),
    )
    assert seen == ["Intro|a", "-|b", "-|c"]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (3, "must be a format string"),
        (b"{text}", "must be a format string"),
        ("{0} {text}", r"placeholder \{0\} names nothing"),
        ("{} {text}", r"placeholder \{\} names nothing"),
        ("{meta.title} {text}", r"placeholder \{meta.title\}"),
        ("{title!x} {text}", "unknown conversion !x"),
        ("{tags[0]} {text}", r"placeholder \{tags\[0\]\}"),
        ("{text", "not a valid format string"),
        ("text}", "not a valid format string"),
        ("just words", "has no placeholder"),
        ([], "non-empty strings"),
        (["title", ""], "non-empty strings"),
        (["title", "title"], "twice"),
    ],
)
def test_a_bad_template_is_refused_at_construction(template, message):
    with pytest.raises(ConfigError, match=message):
        FakeScorer(document_template=template)


def test_bad_defaults_and_bad_function_results_are_refused():
    with pytest.raises(ConfigError, match=r"defaults for \['titel'\] name no field"):
        DocumentTemplate("{title} {text}", defaults={"titel": ""})
    with pytest.raises(ConfigError, match="is None"):
        DocumentTemplate("{title} {text}", defaults={"title": None})
    with pytest.raises(ConfigError, match="not a function"):
        DocumentTemplate(lambda c: c.text, defaults={"x": ""})
    with pytest.raises(ConfigError, match="returned int for candidate 'd1'"):
        rerank(QUERY, CANDIDATES, FakeScorer(document_template=lambda c: 7))
    with pytest.raises(ConfigError, match="failed on candidate 'd1': KeyError"):
        rerank(QUERY, CANDIDATES, FakeScorer(document_template=lambda c: c.metadata["nope"]))


def test_a_function_template_reads_the_whole_candidate():
    got = scores(FakeScorer(document_template=lambda c: f"{c.metadata['title']} {c.text}"), CANDIDATES)
    assert got == scores(FakeScorer(), filled(CANDIDATES, "{title} {text}"))


# -- fingerprints, caches, copies -----------------------------------------------------------------


def test_the_template_is_part_of_the_fingerprint_and_of_cache_keys():
    plain, titled = as_strategy(FakeScorer()), as_strategy(FakeScorer(document_template="{title} {text}"))
    assert "document_template" not in plain.fingerprint()
    assert titled.fingerprint()["document_template"]["template"] == "{title} {text}"
    assert pipeline_fingerprint({}, plain) != pipeline_fingerprint({}, titled)
    other = as_strategy(
        FakeScorer(document_template=DocumentTemplate("{title} {text}", defaults={"title": ""}))
    )
    assert other.fingerprint() != titled.fingerprint()

    inner = FakeScorer(document_template="{title} {text}")
    cache = CachedScorer(inner)
    first = scores(cache, CANDIDATES)
    # the same text under another title is another key: never the first title's cached score
    retitled = [Candidate(c.text, id=c.id, metadata={"title": "blood"}) for c in CANDIDATES]
    second = scores(cache, retitled)
    assert second == scores(FakeScorer(), filled(retitled, "{title} {text}"))
    assert second != first and cache.misses == 6 and inner.calls == 2


def test_a_long_document_is_filled_in_then_split():
    inner = FakeScorer(document_template="{title} {text}")
    got = scores(LongDocument(inner, max_words=4, overlap=1), CANDIDATES)
    assert got == scores(
        LongDocument(FakeScorer(), max_words=4, overlap=1), filled(CANDIDATES, "{title} {text}")
    )
    assert as_strategy(LongDocument(inner, max_words=4, overlap=1)).fingerprint()["document_template"]


def test_templates_survive_pickles_and_copies():
    for template in ["{title} {text}", ["title", "text"], DocumentTemplate("{a}{text}", defaults={"a": "x"})]:
        scorer = FakeScorer(document_template=template)
        for copied in (pickle.loads(pickle.dumps(scorer)), copy.deepcopy(scorer)):
            assert as_strategy(copied).fingerprint() == as_strategy(scorer).fingerprint()


# -- the adapters -----------------------------------------------------------------------------------


def test_both_adapters_conveniences_take_a_template(dirs):
    from langchain_core.documents import Document
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

    from rerankers_plugins.integrations.langchain import CrossEncoderRerank as LCRerank
    from rerankers_plugins.integrations.llama_index import CrossEncoderRerank as LIRerank

    ce = str(dirs["cross-encoder"])
    want = scores(LOCAL["cross-encoder"](dirs["cross-encoder"]), filled(CANDIDATES))
    docs = [Document(page_content=c.text, metadata=dict(c.metadata), id=c.id) for c in CANDIDATES]
    out = LCRerank(ce, dtype="float32", top_n=3, document_template=TEMPLATE).compress_documents(docs, QUERY)
    assert {d.id: d.metadata["relevance_score"] for d in out} == pytest.approx(want, abs=1e-5)
    assert docs[0].metadata == dict(CANDIDATES[0].metadata)  # nothing added to the caller's documents

    nodes = [
        NodeWithScore(node=TextNode(text=c.text, id_=c.id, metadata=dict(c.metadata))) for c in CANDIDATES
    ]
    # a node's text carries its metadata in EMBED mode; under a template the template alone decides
    for post in (
        LIRerank(ce, dtype="float32", top_n=3, document_template=TEMPLATE),
        LIRerank(ce, dtype="float32", top_n=3, document_template=TEMPLATE, metadata_mode=MetadataMode.NONE),
    ):
        got = post.postprocess_nodes(nodes, QueryBundle(QUERY))
        assert {n.node.node_id: n.score for n in got} == pytest.approx(want, abs=1e-5)
    embed = LIRerank(
        ce, dtype="float32", top_n=3, document_template=TEMPLATE, metadata_mode=MetadataMode.EMBED
    )
    got = embed.postprocess_nodes(nodes, QueryBundle(QUERY))
    assert {n.node.node_id: n.score for n in got} != pytest.approx(want, abs=1e-5)  # as asked: metadata twice


# -- the rendering itself -------------------------------------------------------------------------

_names = st.sampled_from(["title", "section", "source"])
_values = st.one_of(st.text(max_size=20), st.integers(), st.floats(allow_nan=False, allow_infinity=False))


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(max_size=30),
    metadata=st.dictionaries(_names, _values, min_size=3),
    fields=st.lists(_names, min_size=1, max_size=3, unique=True),
)
def test_rendering_is_str_format_and_yaml_and_mutates_nothing(text, metadata, fields):
    candidate = Candidate(text, id="x", metadata=metadata)
    before = copy.deepcopy(candidate)
    template = " | ".join("{" + f + "}" for f in fields) + " || {text}"
    assert DocumentTemplate(template).render(candidate) == template.format(text=text, **metadata)
    structured = DocumentTemplate([*fields, "text"]).render(candidate)
    doc = {**{f: metadata[f] for f in fields}, "text": text}
    assert structured == yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    # (no load-back check here: YAML folds line breaks such as U+0085 to spaces, which a model
    # reads alike; the wire test parses ordinary documents back)
    assert candidate == before


def test_a_template_is_a_pipeline_file_setting(tmp_path):
    from rerankers_plugins.spec import load_pipeline, scorer_spec

    template = DocumentTemplate("{section}: {text}", defaults={"section": "Body"})
    spec = scorer_spec(FakeScorer(document_template=template))
    assert spec == {
        "scorer": "fake",
        "document_template": {"template": "{section}: {text}", "defaults": {"section": "Body"}},
    }
    path = tmp_path / "pipelines.toml"
    path.write_text(
        '[pipelines.titled]\nscorer = "fake"\n'
        'document_template = { template = "{section}: {text}", defaults = { section = "Body" } }\n'
        '[pipelines.fields]\nscorer = "bm25"\ndocument_template = ["title", "text"]\n'
    )
    titled = load_pipeline(path, "titled")
    assert (
        as_strategy(titled).fingerprint() == as_strategy(FakeScorer(document_template=template)).fingerprint()
    )
    assert scores(titled, [Candidate("t", id="a")]) == scores(FakeScorer(), [Candidate("Body: t", id="a")])
    assert as_strategy(load_pipeline(path, "fields")).template == DocumentTemplate(["title", "text"])
    with pytest.raises(ConfigError, match="document_template=function is an object"):
        scorer_spec(FakeScorer(document_template=lambda c: c.text))
    with pytest.raises(ConfigError, match="takes 'template'"):
        FakeScorer(document_template={"tmpl": "{text}"})


def test_the_cohere_structured_form_is_the_documented_yaml_on_the_wire():
    from rerankers_plugins import CohereScorer

    with RerankServer() as server:
        scorer = CohereScorer(api_key="k", base_url=server.url, document_template=["title", "text"])
        rerank(QUERY, CANDIDATES, scorer)
        sent = server.requests[-1]["body"]["documents"]
    # Cohere's recipe for semi-structured documents: yaml.dump(doc, sort_keys=False); unicode kept
    assert sent == [
        yaml.safe_dump({"title": c.metadata["title"], "text": c.text}, sort_keys=False, allow_unicode=True)
        for c in CANDIDATES
    ]
    assert yaml.safe_load(sent[0]) == {
        "title": CANDIDATES[0].metadata["title"],
        "text": CANDIDATES[0].text,
    }


def test_a_rerank_server_receives_the_filled_texts():
    from rerankers_plugins import RemoteScorer

    with RerankServer() as server:
        scorer = RemoteScorer(server.url, protocol="tei", document_template=TEMPLATE)
        got = scores(scorer, CANDIDATES)
        assert server.requests[-1]["body"]["texts"] == [c.text for c in filled(CANDIDATES)]
        assert got == scores(RemoteScorer(server.url, protocol="tei"), filled(CANDIDATES))


@pytest.mark.parametrize("kind", ["llm-listwise", "llm-pointwise", "llm-pairwise"])
def test_the_llm_rerankers_read_the_filled_template(kind):
    from rerankers_plugins.registry import get_scorer

    seen: list[str] = []
    answer = {"llm-listwise": "[1] > [2] > [3]", "llm-pointwise": "Yes", "llm-pairwise": "Passage A"}[kind]

    def spy(messages):  # a plain function is an LLM: messages in, text out
        seen.append("\n".join(m["content"] for m in messages))
        return answer

    ranker = get_scorer(kind, llm=spy, document_template="{title}: {text}")
    rerank(QUERY, CANDIDATES, ranker)
    prompts = "\n".join(seen)
    assert "Heart blood pressure trial: The results are shown in Table 3." in prompts
    assert "Methods: Blood pressure of the heart rises." in prompts


def test_a_missing_field_is_not_masked_by_keep_order():
    from rerankers_plugins import CohereScorer

    with RerankServer() as server:
        scorer = CohereScorer(
            api_key="k", base_url=server.url, on_error="keep_order", document_template="{title}\n{text}"
        )
        with pytest.raises(ConfigError, match="'title'"):
            rerank(QUERY, [Candidate("no title", id="x")], scorer)
        assert server.requests == []  # nothing sent


def test_evaluation_indexes_documents_as_the_template_fills_them(dirs):
    from rerankers_plugins.eval.harness import index_pool

    colbert = LOCAL["colbert"](dirs["colbert"], document_template=TEMPLATE)
    assert index_pool("maxsim", colbert, CANDIDATES) >= 0.0
    encoded = colbert.cache.misses
    rerank(QUERY, CANDIDATES, colbert)
    assert colbert.cache.misses == encoded == len(CANDIDATES)  # reranking found every filled text indexed


def test_a_batch_row_the_template_cannot_fill_is_a_bad_row_not_a_failed_block(tmp_path):
    from batch_helpers import output_of, write_jsonl

    from rerankers_plugins.batch.engine import rerank_dataset

    rows = [
        {"query_id": "q1", "query": QUERY, "doc_id": c.id, "text": c.text, "title": c.metadata["title"]}
        for c in CANDIDATES
    ]
    rows[1] = {k: v for k, v in rows[1].items() if k != "title"}  # one row without the column
    spec = {"scorer": "fake", "document_template": "{title} {text}"}
    summary = rerank_dataset(spec, write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out", progress=False)
    written, errors = output_of(tmp_path / "out")
    assert (
        [e["row"] for e in errors] == [1]
        and "'title'" in errors[0]["reason"]
        and "'d2'" in errors[0]["reason"]
    )
    texts = {c.id: c.text for c in filled(CANDIDATES, "{title} {text}")}
    want = dict(zip(texts, FakeScorer().score(QUERY, list(texts.values())), strict=True))
    assert {r["doc_id"]: r["score"] for r in written} == {k: want[k] for k in ("d1", "d3")}
    assert summary.errors == 1


def test_the_llama_index_text_mode_survives_a_dict_round_trip():
    from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode

    from rerankers_plugins.integrations.llama_index import RerankPostprocessor

    nodes = [NodeWithScore(node=TextNode(text="mice were fed", metadata={"title": "Methods"}), score=1.0)]
    post = RerankPostprocessor(scorer=FakeScorer(document_template="{title}: {text}"), top_n=1)
    again = RerankPostprocessor.from_dict(post.to_dict())
    for p in (post, again):
        assert [c.text for c in p._candidates(nodes)] == ["mice were fed"]  # the template adds the title once
    plain = RerankPostprocessor.from_dict(RerankPostprocessor(scorer=FakeScorer()).to_dict())
    assert plain._text_mode() is MetadataMode.EMBED
