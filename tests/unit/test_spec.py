"""Pipeline specs: what ``tune`` writes reads back as exactly the data written, and loads as the
pipeline it names, in Python and in both adapters."""

from __future__ import annotations

import math
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rerankers_plugins import BM25Scorer, Cascade, ConfigError, FakeScorer, Hybrid, Selective
from rerankers_plugins.spec import (
    dumps_pipeline_file,
    inline,
    load_pipeline,
    load_pipeline_file,
    scorer_spec,
    write_pipeline_file,
)

keys = st.text(min_size=1, max_size=8)
scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**62), 2**62),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(keys, st.dictionaries(keys, values, max_size=4), min_size=1, max_size=3))
def test_a_pipeline_file_reads_back_as_exactly_what_was_written(pipelines):
    text = dumps_pipeline_file(pipelines, default=next(iter(pipelines)), header="line one\nline two")
    data = tomllib.loads(text)
    assert data["pipelines"] == pipelines
    assert data["pipeline"] == next(iter(pipelines))
    assert text.startswith("# line one\n# line two\n")


@pytest.mark.parametrize(
    ("value", "message"),
    [(None, "None, which TOML cannot hold"), (math.nan, "cannot be written"), (object(), "not a setting")],
)
def test_values_a_pipeline_file_cannot_hold_are_refused_by_name(value, message):
    with pytest.raises(ConfigError, match=rf"p\.x.*{message}"):
        dumps_pipeline_file({"p": {"x": value}})


def test_load_pipeline_picks_the_named_the_default_or_the_only_pipeline(tmp_path):
    one = write_pipeline_file(tmp_path / "one.toml", {"only": {"scorer": "fake"}})
    assert load_pipeline(one).name == "fake-overlap"
    two = write_pipeline_file(
        tmp_path / "two.toml",
        {
            "base": {"scorer": "fake", "name": "f"},
            "head": {"selective": {"use": "base"}, "k": 2, "rest": "drop"},
        },
        default="head",
    )
    assert isinstance(load_pipeline(two), Selective)
    assert load_pipeline(f"{two}#base").name == "f"
    assert load_pipeline(two, "base").name == "f"
    several = write_pipeline_file(
        tmp_path / "several.toml", {"a": {"scorer": "fake"}, "b": {"scorer": "bm25"}}
    )
    with pytest.raises(ConfigError, match="has 2 pipelines"):
        load_pipeline(several)
    with pytest.raises(ConfigError, match="no pipeline 'c'"):
        load_pipeline(several, "c")
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, renamed


def test_inline_writes_every_named_pipeline_out_and_refuses_cycles():
    specs = {
        "bm25": {"scorer": "bm25"},
        "fake": {"scorer": "fake"},
        "fused": {"hybrid": [{"signal": "fake", "weight": 0.7}, {"signal": "retrieval", "weight": 0.3}]},
        "both": {"cascade": [{"stage": "bm25", "keep": 5}, {"stage": {"use": "fused"}}]},
    }
    alone = inline(specs["both"], specs)
    assert alone == {
        "cascade": [
            {"stage": {"scorer": "bm25"}, "keep": 5},
            {
                "stage": {
                    "hybrid": [
                        {"signal": {"scorer": "fake"}, "weight": 0.7},
                        {"signal": "retrieval", "weight": 0.3},
                    ]
                }
            },
        ]
    }
    built = load_pipeline(alone)
    assert isinstance(built, Cascade) and isinstance(built.stages[1].scorer, Hybrid)
    with pytest.raises(ConfigError, match="uses itself"):
        inline({"use": "a"}, {"a": {"selective": "b"}, "b": {"use": "a"}})


def test_a_registry_scorer_becomes_a_spec_that_rebuilds_it():
    spec = scorer_spec(BM25Scorer(k1=1.5, stemming=False))
    assert spec == {"scorer": "bm25", "k1": 1.5, "stemming": False}
    assert load_pipeline(spec).fingerprint() == BM25Scorer(k1=1.5, stemming=False).fingerprint()
    with pytest.raises(ConfigError, match="only a registry backend"):
        scorer_spec(Selective(FakeScorer()))


def test_a_file_without_pipelines_is_refused(tmp_path):
    path = tmp_path / "empty.toml"
    path.write_text('title = "nothing"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"no \[pipelines.<name>\] tables"):
        load_pipeline_file(path)
    path.write_text("[pipelines\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot read pipeline file"):
        load_pipeline(path)
