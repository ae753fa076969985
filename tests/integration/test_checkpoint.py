"""One way to load a checkpoint (scorers/_hf.Checkpoint, LoadOptions) for the five local scorers:
one digest that covers module folders, and the Hub load options (revision, cache, offline) reaching
every load."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rerankers_plugins import (
    BackendError,
    BiEncoderScorer,
    ColBERTScorer,
    ConfigError,
    CrossEncoderScorer,
    PolyEncoderScorer,
    Seq2SeqScorer,
)
from rerankers_plugins.scorers._hf import LoadOptions
from rerankers_plugins.scorers.poly_encoder import build_poly_encoder
from tests.tiny import build_bi_encoder, build_colbert, build_cross_encoder, build_encoder, build_t5


def _poly(directory: Path, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    build_poly_encoder(
        str(build_encoder(directory / "base", seed=seed)), codes=4, max_length=64
    ).save_pretrained(directory / "poly")
    return directory / "poly"


BUILDERS: dict[str, tuple[Callable[..., Any], Callable[[Path, int], Path]]] = {
    "cross-encoder": (CrossEncoderScorer, lambda d, seed: build_cross_encoder(d, seed=seed)),
    "bi-encoder": (BiEncoderScorer, lambda d, seed: build_bi_encoder(d, seed=seed)),
    "colbert": (ColBERTScorer, lambda d, seed: build_colbert(d, seed=seed)),
    "poly-encoder": (PolyEncoderScorer, _poly),
    "seq2seq": (Seq2SeqScorer, lambda d, seed: build_t5(d, seed=seed)),
}
TEXTS = ["the red apple falls", "a bank by the river", "apples and pears"]


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    kind = request.param
    return kind, BUILDERS[kind][1](tmp_path_factory.mktemp(kind.replace("-", "_")), 0)


def _scorer(kind: str, model: str, **options: Any) -> Any:
    return BUILDERS[kind][0](model, device="cpu", dtype="float32", **options)


def test_new_weights_in_a_module_folder_change_every_scorers_fingerprint(
    built: tuple[str, Path], tmp_path: Path
) -> None:
    # a retrained 1_Dense/ (or any weights file in a module folder) is another model: score caches
    # keyed by the fingerprint must not serve the old model's scores for it
    kind, source = built
    model = tmp_path / "model"
    shutil.copytree(source, model)
    dense = model / "1_Dense"
    dense.mkdir(exist_ok=True)
    (dense / "model.safetensors").write_bytes(b"old weights")
    before = dict(_scorer(kind, str(model)).fingerprint())
    assert dict(_scorer(kind, str(model)).fingerprint()) == before  # the same files: the same model
    (dense / "model.safetensors").write_bytes(b"retrained weights")
    after = dict(_scorer(kind, str(model)).fingerprint())
    assert after != before, kind
    assert after["files"] != before["files"]


def test_a_retrained_dense_module_changes_the_bi_encoders_fingerprint(tmp_path: Path) -> None:
    # the module is one sentence-transformers loads and runs: new weights change the scores too
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules

    path = build_bi_encoder(tmp_path / "bi")
    st = SentenceTransformer(str(path), device="cpu")
    dense = modules.Dense(st.get_embedding_dimension(), 8, activation_function=torch.nn.Identity())
    SentenceTransformer(modules=[*st, dense]).save(str(tmp_path / "with_dense"))
    first = BiEncoderScorer(str(tmp_path / "with_dense"), device="cpu", dtype="float32")
    with torch.no_grad():
        dense.linear.weight.mul_(-1.0)
    SentenceTransformer(modules=[*st, dense]).save(str(tmp_path / "with_dense"))
    second = BiEncoderScorer(str(tmp_path / "with_dense"), device="cpu", dtype="float32")
    assert first.fingerprint()["files"] != second.fingerprint()["files"]


def _hub_cache(root: Path, repo: str, snapshots: dict[str, Path], refs: dict[str, str]) -> Path:
    """A Hugging Face Hub cache holding ``repo`` at the given commits (``refs``: branch/tag ->
    commit), in the layout huggingface_hub writes (``models--org--name/snapshots/<commit>/``)."""
    folder = root / ("models--" + repo.replace("/", "--"))
    for commit, files in snapshots.items():
        shutil.copytree(files, folder / "snapshots" / commit)
    (folder / "refs").mkdir(parents=True)
    for ref, commit in refs.items():
        (folder / "refs" / ref).write_text(commit)
    return root


def test_revision_pins_the_hub_snapshot_for_every_scorer(built: tuple[str, Path], tmp_path: Path) -> None:
    # two commits of one Hub repo in a local Hub cache: `revision` picks which one is scored, for
    # every load the scorer makes (config, tokenizer, weights, module folders)
    kind, old_files = built
    new_files = BUILDERS[kind][1](tmp_path / "new", 1)
    old, new = "a" * 40, "b" * 40
    cache = _hub_cache(
        tmp_path / "hub", "org/tiny", {old: old_files, new: new_files}, {"main": new, "v1": old}
    )
    hub = {"hub_cache_dir": str(cache), "local_files_only": True}
    pinned = _scorer(kind, "org/tiny", revision="v1", **hub)
    latest = _scorer(kind, "org/tiny", **hub)
    assert pinned.score("red apple", TEXTS) == _scorer(kind, str(old_files)).score("red apple", TEXTS)
    assert latest.score("red apple", TEXTS) == _scorer(kind, str(new_files)).score("red apple", TEXTS)
    assert pinned.fingerprint()["revision"] == "v1"
    assert pinned.fingerprint()["files"] != latest.fingerprint()["files"]
    with pytest.raises(BackendError, match="not in the local cache at revision 'v9'"):
        _scorer(kind, "org/tiny", revision="v9", **hub)


def test_load_options_are_checked_and_reach_the_adapters(tiny_ce_dir: Path) -> None:
    from rerankers_plugins.integrations.langchain import CrossEncoderRerank

    with pytest.raises(ConfigError, match="revision must be"):
        LoadOptions(revision="")
    with pytest.raises(ConfigError, match="model_kwargs must be a dict"):
        CrossEncoderScorer(str(tiny_ce_dir), model_kwargs=["x"])  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match="CrossEncoderScorer\\(\\) got an unexpected keyword argument 'revison'"
    ):
        CrossEncoderScorer(str(tiny_ce_dir), revison="v1")  # type: ignore[call-arg]
    rerank = CrossEncoderRerank(str(tiny_ce_dir), revision="main", config_kwargs={"classifier_dropout": 0.0})
    assert rerank.scorer.checkpoint.options == LoadOptions(
        revision="main", config_kwargs={"classifier_dropout": 0.0}
    )


def test_every_load_option_is_reachable_from_a_pipeline_file(built: tuple[str, Path], tmp_path: Path) -> None:
    # the command line takes scorers as pipeline files (eval --config, tune, batch): the load
    # options, dicts included, reach the scorer from TOML as from Python
    from rerankers_plugins.spec import load_pipeline, parse_pipeline_arg

    kind, source = built
    toml = tmp_path / "pipeline.toml"
    toml.write_text(
        f'[pipelines.p]\nscorer = "{kind}"\nmodel = "{source}"\ndevice = "cpu"\ndtype = "float32"\n'
        'revision = "main"\nlocal_files_only = true\ntrust_remote_code = false\n'
        f'hub_cache_dir = "{tmp_path / "hub"}"\n'
        "config_kwargs = { output_hidden_states = false }\ntokenizer_kwargs = { use_fast = true }\n",
        encoding="utf-8",
    )
    scorer = load_pipeline(str(toml))
    assert scorer.checkpoint.options == LoadOptions(
        revision="main",
        local_files_only=True,
        hub_cache_dir=str(tmp_path / "hub"),
        config_kwargs={"output_hidden_states": False},
        tokenizer_kwargs={"use_fast": True},
    )
    _, spec = parse_pipeline_arg(f"p={kind}:model={source},revision=v1,local_files_only=true")
    assert spec["revision"] == "v1" and spec["local_files_only"] is True
