"""The output directory of a training run.

While a run is going, its working files live in ``<out>/.training``: ``run.json`` (the run
identity: the settings' identity fields and a digest of the data read), the training rows and the
trainer's checkpoints. A finished run leaves the model, its card and ``training.json`` (the result
and the list of files it wrote) and removes ``.training``.

:func:`RunDir.open` decides what an existing directory means: a finished run of ours (refused
unless ``overwrite``, which deletes only the files that run wrote), an interrupted run of ours with
the same identity (resumed from its last checkpoint), or empty. Anything else, including a directory
holding files no run of ours wrote, is refused and left untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rerankers_plugins.errors import ConfigError

__all__ = ["DONE", "RunDir"]

DONE = "training.json"
#: the format of ``training.json`` (a finished run)
MANIFEST_FORMAT = "rerankers-plugins training 1"
#: the format of ``.training/run.json`` (an interrupted run's identity); 2: keys are the settings' fields
RUN_FORMAT = "rerankers-plugins training 2"
_RUN_FORMATS = "rerankers-plugins training "
WORK = ".training"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _manifest(out: Path) -> list[str] | None:
    """The files a finished run wrote, from its ``training.json``; None if that is not ours."""
    info = _read_json(out / DONE)
    if (
        not isinstance(info, dict)
        or info.get("format") != MANIFEST_FORMAT
        or not isinstance(info.get("files"), list)
    ):
        return None
    return [str(f) for f in info["files"]]


def _run_identity(out: Path) -> dict[str, Any] | None:
    """The identity an interrupted run of ours recorded (any format version); None if none."""
    info = _read_json(out / WORK / "run.json")
    if isinstance(info, dict) and str(info.get("format", "")).startswith(_RUN_FORMATS):
        return info
    return None


def _remove(out: Path, names: Iterable[str]) -> None:
    for name in names:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _ours(out: Path) -> tuple[list[str] | None, dict[str, Any] | None]:
    """The files of the finished run in ``out`` and the identity of the interrupted one there (one of
    them at least); ConfigError when ``out`` holds anything else."""
    finished = _manifest(out)
    recorded = _run_identity(out)
    foreign = sorted(
        {p.name for p in out.iterdir()} - ({*finished, DONE, WORK} if finished is not None else {WORK})
    )
    if foreign or (finished is None and recorded is None):
        raise ConfigError(
            f"output directory {out} holds files no training run wrote "
            f"({', '.join(foreign[:5]) or 'unreadable state'}); choose a new or empty directory"
        )
    return finished, recorded


def _replace_finished(out: Path, files: Sequence[str], overwrite: bool) -> None:
    """Delete the files of the finished run in ``out`` (and nothing else); refused unless ``overwrite``."""
    if not overwrite:
        raise ConfigError(
            f"output directory {out} already holds a trained model; pass overwrite=True (--overwrite)"
        )
    _remove(out, [*files, DONE, WORK])


def _last_checkpoint(work: Path) -> str | None:
    checkpoints = sorted(
        (p for p in (work / "checkpoints").glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    return str(checkpoints[-1]) if checkpoints else None


def _check_resumable(out: Path, identity: Mapping[str, Any], recorded: Mapping[str, Any]) -> None:
    if recorded.get("format") != RUN_FORMAT:
        raise ConfigError(
            f"{out} holds an interrupted run of an older version of rerankers-plugins "
            f"({recorded.get('format')!r}), which cannot be resumed: pass overwrite=True (--overwrite) "
            "to start over"
        )
    mine = {"format": RUN_FORMAT, **identity}
    changed = sorted(k for k in set(mine) | set(recorded) if mine.get(k) != recorded.get(k))
    if changed:
        raise ConfigError(
            f"{out} holds an interrupted run with other settings or data ({', '.join(changed)} differ): "
            "rerun with the same settings to resume it, or pass overwrite=True (--overwrite) to start over"
        )


@dataclass(frozen=True)
class RunDir:
    """An output directory checked for a run: ``resume`` is the checkpoint to resume from."""

    path: Path
    identity: Mapping[str, Any]
    resume: str | None = None

    @property
    def work(self) -> Path:
        return self.path / WORK

    @classmethod
    def open(cls, out: str | os.PathLike[str], identity: Mapping[str, Any], *, overwrite: bool) -> RunDir:
        """Check ``out`` for a run of ``identity`` (see the module docstring); nothing is written
        before :meth:`start`."""
        path = Path(out)
        return cls(path, dict(identity), cls._prepare(path, identity, overwrite))

    def start(self) -> None:
        """Record the run's identity in its working directory."""
        self.work.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"format": RUN_FORMAT, **self.identity}, indent=2) + "\n"
        (self.work / "run.json").write_text(text, encoding="utf-8")

    @staticmethod
    def _prepare(out: Path, identity: Mapping[str, Any], overwrite: bool) -> str | None:
        if not out.exists():
            return None
        if not out.is_dir():
            raise ConfigError(f"output {out} exists and is not a directory")
        if not any(out.iterdir()):
            return None
        finished, recorded = _ours(out)
        if finished is not None:
            _replace_finished(out, finished, overwrite)
            return None
        if overwrite:
            shutil.rmtree(out / WORK)
            return None
        _check_resumable(out, identity, recorded or {})
        return _last_checkpoint(out / WORK)

    def rows(self, loss: str, write: Callable[[IO[str]], int]) -> tuple[Path, int]:
        """The training rows file for ``loss`` and its row count; ``write(file)`` writes it (and
        returns the count) unless an earlier, interrupted run of the same identity finished it."""
        rows_file, done = self.work / f"rows-{loss}.jsonl", self.work / f"rows-{loss}.done"
        if not done.is_file():
            with rows_file.open("w", encoding="utf-8") as f:
                n = write(f)
            done.write_text(str(n))
        return rows_file, int(done.read_text())

    def finish(self, info: Mapping[str, Any]) -> None:
        """Write ``training.json`` (``info``, the format and the files the run wrote) and remove the
        working files."""
        files = sorted(p.name for p in self.path.iterdir() if p.name not in (DONE, WORK))
        manifest = {"format": MANIFEST_FORMAT, **info, "files": files}
        (self.path / DONE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        with contextlib.suppress(OSError):
            shutil.rmtree(self.work)
