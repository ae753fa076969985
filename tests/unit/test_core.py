"""Package surface: imports without extras, errors, registry, batching op, fake scorer."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import rerankers_plugins
from rerankers_plugins import ConfigError, FakeScorer, MissingExtraError, RerankError, ScoreScale, get_scorer
from rerankers_plugins._optional import require
from rerankers_plugins.ops.batching import length_sorted_batches, restore_order
from rerankers_plugins.registry import available, register

HEAVY = (
    "torch",
    "sentence_transformers",
    "transformers",
    "langchain_core",
    "llama_index",
    "bm25s",
    "numpy",
    "httpx",
    "cohere",
    "tenacity",
    "pydantic",
    "safetensors",
    "ranx",
)


def test_import_needs_no_extra():
    """With every optional dependency unimportable, the package still imports and names the extra."""
    code = textwrap.dedent(
        f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {HEAVY!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        sys.meta_path.insert(0, Block())
        import rerankers_plugins as rp
        assert not [m for m in sys.modules if m.split(".")[0] in {HEAVY!r}], "heavy import at package import"
        print(rp.rerank("red apple", ["apple", "pear"], rp.FakeScorer())[0].text)
        try:
            rp.CrossEncoderScorer("x")
        except rp.MissingExtraError as e:
            print(e)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "apple"
    assert 'pip install "rerankers-plugins[cross-encoder]"' in out


def test_require_names_extra_and_keeps_inner_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(MissingExtraError, match=r"rerankers-plugins\[cross-encoder\]") as info:
        require("sentence_transformers", "cross-encoder")
    assert isinstance(info.value, ImportError)
    assert isinstance(info.value, RerankError)


def test_missing_extra_for_adapters(monkeypatch):
    monkeypatch.setitem(sys.modules, "langchain_core", None)
    monkeypatch.delitem(sys.modules, "rerankers_plugins.integrations.langchain", raising=False)
    with pytest.raises(MissingExtraError, match=r"rerankers-plugins\[langchain\]"):
        import rerankers_plugins.integrations.langchain  # noqa: F401


def test_public_api_imports_no_optional_dependency():
    """``import rerankers_plugins`` and ``from rerankers_plugins import *`` work with no extra
    loaded: the names of ``__all__`` are all there and no framework or model library is imported."""
    import subprocess

    code = (
        "import sys; from rerankers_plugins import *; import rerankers_plugins as r; "
        "missing = [n for n in r.__all__ if n not in globals()]; "
        "heavy = sorted(m for m in ('torch', 'transformers', 'sentence_transformers', 'langchain_core', "
        "'llama_index', 'httpx', 'cohere', 'numpy') if m in sys.modules); print(missing, heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[] []", done.stdout + done.stderr
    assert rerankers_plugins.__version__
    assert issubclass(ConfigError, ValueError)


def test_registry():
    assert get_scorer("fake", name="f").name == "f"
    assert available()["cross-encoder"].endswith(":CrossEncoderScorer")
    with pytest.raises(ConfigError, match="unknown scorer 'nope'"):
        get_scorer("nope")
    register("my-fake", "rerankers_plugins.scorers.fake:FakeScorer")
    assert isinstance(get_scorer("my-fake"), FakeScorer)
    with pytest.raises(ConfigError, match=r"package\.module:Class"):
        register("bad", "no_colon")


def test_length_sorted_batches_partition_and_restore():
    lengths = [3, 9, 1, 9, 4, 7, 2]
    batches = length_sorted_batches(lengths, 3)
    assert batches == [[1, 3, 5], [4, 0, 6], [2]]
    assert sorted(i for b in batches for i in b) == list(range(7))
    values = [float(lengths[i]) for b in batches for i in b]
    assert restore_order(batches, values) == [float(x) for x in lengths]
    with pytest.raises(ValueError, match="batch_size"):
        length_sorted_batches(lengths, 0)


def test_fake_scorer_is_deterministic_and_declares_probability():
    s = FakeScorer()
    assert s.scale is ScoreScale.PROBABILITY
    a = s.score("Red APPLE", ["apple!", "red apple", "🍎"])
    assert a == s.score("Red APPLE", ["apple!", "red apple", "🍎"]) == [0.5, 1.0, 0.0]
    assert s.calls == 2


def test_candidate_metadata_is_read_only_all_the_way_down():
    from rerankers_plugins import Candidate

    nested = {"source": {"name": "wiki", "tags": ["a"]}}
    c = Candidate("text", metadata=nested)
    with pytest.raises(TypeError):
        c.metadata["source"]["name"] = "changed"  # type: ignore[index]
    with pytest.raises(AttributeError):
        c.metadata["source"]["tags"].append("b")
    nested["source"]["name"] = "edited later"
    nested["source"]["tags"].append("b")
    assert c.metadata["source"]["name"] == "wiki" and list(c.metadata["source"]["tags"]) == ["a"]


def test_an_entry_point_never_shadows_a_built_in(monkeypatch):
    from rerankers_plugins import registry

    plugins = {"cross-encoder": "evil.module:Scorer", "mine": "my.module:Mine"}
    monkeypatch.setattr(registry, "_entry_points", lambda: dict(plugins))
    with pytest.warns(RuntimeWarning, match=r"entry point 'cross-encoder' .* is not used"):
        table = registry.available()
    assert table["cross-encoder"] == registry.BACKENDS["cross-encoder"].target
    assert table["mine"] == "my.module:Mine"


def test_a_scorer_that_declares_no_scale_is_refused():
    from rerankers_plugins import BaseScorer, ConfigError, rerank

    class NoScale(BaseScorer):
        name = "mine"

        def score(self, query, texts):
            return [0.5] * len(texts)

    with pytest.raises(ConfigError, match="'mine' declares no `scale`"):
        rerank("q", ["a", "b"], NoScale())


def test_public_exceptions_live_in_errors_and_at_the_top():
    from rerankers_plugins import errors

    assert rerankers_plugins.DeadlineExceeded is errors.DeadlineExceeded
    assert issubclass(errors.DeadlineExceeded, errors.BackendError)
    assert rerankers_plugins.RetryPolicy(attempts=2).attempts == 2
