"""TrainSettings and the run directory, without training anything."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest

from rerankers_plugins import ConfigError
from rerankers_plugins.train import TrainSettings, fine_tune
from rerankers_plugins.train.run_dir import RUN_FORMAT, WORK, RunDir


def test_fine_tune_takes_exactly_the_settings_with_their_defaults():
    params = inspect.signature(fine_tune).parameters
    fields = {f.name: f for f in dataclasses.fields(TrainSettings)}
    assert list(params) == list(fields)
    for name, param in params.items():
        default = fields[name].default
        assert param.default == (inspect.Parameter.empty if default is dataclasses.MISSING else default), name
        assert param.annotation == fields[name].type, name  # codes: int where the settings say int | None


def test_the_train_command_sets_every_setting_and_its_defaults_are_the_settings():
    from rerankers_plugins.cli import build_parser
    from rerankers_plugins.cli.train import _settings_fields

    parser = build_parser()
    args = parser.parse_args(["train", "--demo", "--base", "b", "--out", "o"])
    walked = _settings_fields()
    assert {f.name for f in walked} == {f.name for f in dataclasses.fields(TrainSettings)} - {
        "data_dir",
        "callbacks",
    }
    for f in walked:
        if f.default is not dataclasses.MISSING:
            assert getattr(args, f.name) == f.default, f.name
    # each setting reaches the settings under its own name (warmup_ratio could not be set before)
    changed = parser.parse_args(
        [
            "train",
            "x",
            "--base",
            "b",
            "--out",
            "o",
            "--warmup-ratio",
            "0.3",
            "--lr",
            "1e-4",
            "--no-progress",
            "--overwrite",
            "--codes",
            "4",
            "--arch",
            "poly-encoder",
            "--max-steps",
            "7",
            "--dev-split",
            "dev",
        ]
    )
    settings = TrainSettings(changed.data_dir, **{f.name: getattr(changed, f.name) for f in walked})
    assert (settings.warmup_ratio, settings.learning_rate, settings.progress, settings.overwrite) == (
        0.3,
        1e-4,
        False,
        True,
    )
    assert (settings.codes, settings.arch, settings.max_steps, settings.dev_split) == (
        4,
        "poly-encoder",
        7,
        "dev",
    )


def test_the_identity_is_the_fields_less_those_that_do_not_change_the_model(tmp_path):
    settings = TrainSettings(tmp_path, "minilm", tmp_path / "out", progress=False, callbacks=[object()])
    identity = settings.identity()
    assert set(identity) == {
        f.name for f in dataclasses.fields(TrainSettings) if f.metadata.get("identity", True)
    }
    assert not {"out", "progress", "callbacks", "device", "overwrite", "dev_depth"} & set(identity)
    assert identity["data_dir"] == str(tmp_path.resolve())
    assert identity["codes"] is None  # a cross-encoder has no codes
    assert TrainSettings(tmp_path, "minilm", "x", arch="poly-encoder", codes=4).identity()["codes"] == 4
    json.dumps(identity)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.loss = "listwise"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"arch": "bi-encoder"}, "arch must be one of"),
        ({"arch": "poly-encoder", "codes": 0}, "codes must be >= 1"),
        ({"loss": "hinge"}, "loss must be one of"),
        ({"loss": "margin-mse"}, "margin-mse.*teacher"),
        ({"unlabeled": "u.jsonl"}, "unlabeled queries have no labels"),
        ({"per_query": True}, "per_query must be an int"),
        ({"per_query": 4, "depth": 3}, "depth must be >= 4"),
        ({"max_length": 4}, "max_length must be >= 8"),
        ({"learning_rate": 0}, "learning_rate must be a positive"),
        ({"dev_fraction": 1.0}, r"dev_fraction must be in \[0, 1\)"),
    ],
)
def test_bad_settings_are_refused_once_with_the_name(tmp_path, change, match):
    with pytest.raises(ConfigError, match=match):
        TrainSettings(tmp_path, "minilm", tmp_path / "out", **change)


def test_an_interrupted_run_of_an_older_format_is_refused_clearly(tmp_path):
    (tmp_path / WORK).mkdir()
    (tmp_path / WORK / "run.json").write_text(
        json.dumps({"format": "rerankers-plugins training 1", "data": "x"})
    )
    identity = TrainSettings(tmp_path, "minilm", tmp_path).identity()
    with pytest.raises(ConfigError, match=r"older version.*cannot be resumed.*overwrite"):
        RunDir.open(tmp_path, identity, overwrite=False)
    assert RunDir.open(tmp_path, identity, overwrite=True).resume is None
    assert not (tmp_path / WORK).exists()


def test_an_interrupted_run_is_resumed_only_with_the_same_identity(tmp_path):
    identity = TrainSettings(tmp_path, "minilm", tmp_path).identity()
    RunDir.open(tmp_path, identity, overwrite=False).start()
    assert json.loads((tmp_path / WORK / "run.json").read_text())["format"] == RUN_FORMAT
    (tmp_path / WORK / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (tmp_path / WORK / "checkpoints" / "checkpoint-10").mkdir()
    assert RunDir.open(tmp_path, identity, overwrite=False).resume.endswith("checkpoint-10")
    other = TrainSettings(tmp_path, "minilm", tmp_path, seed=1, progress=False).identity()
    with pytest.raises(ConfigError, match=r"other settings or data \(seed differ\)"):
        RunDir.open(tmp_path, other, overwrite=False)
