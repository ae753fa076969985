"""A newcomer's first hour: offline model by name, clear load errors in the caller's syntax,
extras named, the demo evaluation collection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rerankers_plugins import (
    BackendError,
    BiEncoderScorer,
    ConfigError,
    CrossEncoderScorer,
    get_scorer,
    packaged_model_path,
    rerank,
)
from rerankers_plugins.cli import main
from rerankers_plugins.data import demo_data_dir, load_demo_corpus
from rerankers_plugins.eval.beir import load_beir


def test_packaged_model_by_name_everywhere():
    path = packaged_model_path("minilm")
    assert (Path(path) / "config.json").is_file()
    by_name = get_scorer("bi-encoder", model="minilm")
    assert by_name.name == "minilm"
    out = rerank("capital of France", ["Bananas are yellow.", "Paris is the capital of France."], by_name)
    assert out[0].text.startswith("Paris")
    with pytest.raises(ConfigError, match="no packaged model"):
        packaged_model_path("bert-huge")


def test_embedding_model_refused_as_cross_encoder(tiny_bi_dir):
    for model in ("minilm", str(tiny_bi_dir)):
        with pytest.raises(ConfigError, match="no classification head") as info:
            CrossEncoderScorer(model)
        assert "BiEncoderScorer" in str(info.value)


@pytest.mark.parametrize(
    ("build", "example"),
    [
        (lambda m: CrossEncoderScorer(m), "CrossEncoderScorer('./model-dir')"),
        (lambda m: BiEncoderScorer(m), "BiEncoderScorer('./model-dir')"),
    ],
    ids=["cross-encoder", "bi-encoder"],
)
def test_unreachable_hub_id_fails_at_once_in_the_callers_syntax(build, example, caplog):
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # set by conftest: the Hub is never reached in tests
    with pytest.raises(BackendError) as info:
        build("some-org/not-cached-model")
    assert "HF_HUB_OFFLINE=1 is set" in str(info.value)  # refused before any request or retry
    message = str(info.value)
    assert example in message and "hf download some-org/not-cached-model" in message
    assert "retry" not in caplog.text.lower()


def test_cli_load_error_uses_command_line_syntax(capsys):
    assert main(["demo", "--model", "some-org/not-cached-model"]) == 2
    err = capsys.readouterr().err
    assert "--model ./model-dir" in err and "Scorer(" not in err


def test_help_has_no_markup(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "demo" in out and "eval" in out


def test_demo_collection_is_shipped_in_beir_format():
    data = load_beir(demo_data_dir())
    corpus_ids = {c.id for c in data.corpus}
    assert len(data.corpus) == 40 and len(data.queries) == 20
    assert all(doc in corpus_ids for judged in data.qrels.values() for doc in judged)
    assert [c.id for c in load_demo_corpus()] == [c.id for c in data.corpus]


def test_eval_demo_needs_a_source(capsys):
    assert main(["eval", "--pipeline", "f=fake"]) == 2
    assert "--demo" in capsys.readouterr().err


_BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pydantic", "langchain_core", "langchain_classic", "llama_index"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
import rerankers_plugins
for module in ("rerankers_plugins.integrations.langchain", "rerankers_plugins.integrations.llama_index"):
    try:
        __import__(module)
    except rerankers_plugins.MissingExtraError as exc:
        print(exc)
"""


def test_integrations_without_their_extra_name_it():
    out = subprocess.run([sys.executable, "-c", _BLOCK], capture_output=True, text=True, check=True).stdout
    assert 'pip install "rerankers-plugins[langchain]"' in out
    assert 'pip install "rerankers-plugins[llama-index]"' in out
