"""The ``ray`` engine on a real local Ray cluster (2 CPUs; nothing of Ray is mocked): the same rows
as the local engine, bit for bit; a worker process killed mid-job; a finished job re-run and an
interrupted one (its driver killed) resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from batch_helpers import demo_rows, output_of, write_jsonl

from rerankers_plugins.batch import rerank_dataset

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def minilm_ce(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cross-encoder with the compute of ms-marco-MiniLM-L-6-v2 (the MiniLM-L6 encoder, a seeded
    untrained head): a job long enough to kill a worker in the middle of."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    target = tmp_path_factory.mktemp("minilm-ce")
    BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=1).save_pretrained(target)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def job_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(
        tmp_path_factory.mktemp("in") / "in.jsonl", [*demo_rows(k=40), {"query_id": "q01", "query": "x"}]
    )


def _spec(model: Path) -> dict:
    return {
        "cascade": [
            {"stage": {"scorer": "cross-encoder", "model": str(model), "max_length": 128}, "keep": 20},
            {"stage": {"scorer": "fake"}},
        ]
    }


OPTIONS = {"shard_queries": 2, "block_queries": 2, "progress": False}


@pytest.fixture(scope="module")
def ray_reference(
    cluster: str, minilm_ce: Path, job_input: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """An uninterrupted job on two one-CPU workers: what the interrupted ones must end up writing."""
    out = tmp_path_factory.mktemp("reference") / "job"
    rerank_dataset(_spec(minilm_ce), job_input, out, engine="ray", num_cpus=1, **OPTIONS)
    return out


def test_ray_and_local_engines_write_the_same_rows(
    cluster: str, minilm_ce: Path, job_input: Path, tmp_path: Path
) -> None:
    """Bit for bit, given the same threads per worker (another thread count changes the float
    summation order inside torch's kernels, by 1e-7: in neither engine's control)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        local = rerank_dataset(_spec(minilm_ce), job_input, tmp_path / "local", **OPTIONS)
    finally:
        torch.set_num_threads(threads)
    on_ray = rerank_dataset(
        _spec(minilm_ce), job_input, tmp_path / "ray", engine="ray", actors=1, num_cpus=2, **OPTIONS
    )
    assert output_of(tmp_path / "local") == output_of(tmp_path / "ray")  # every column, scores exactly
    assert (tmp_path / "local" / "run.trec").read_text() == (tmp_path / "ray" / "run.trec").read_text()
    assert (
        (local.rows, local.pairs, local.errors)
        == (on_ray.rows, on_ray.pairs, on_ray.errors)
        == (local.rows, local.rows - 1, 1)
    )
    assert len(on_ray.workers) == 1 and all(v > 0 for v in on_ray.workers.values())


def _map_workers() -> list[int]:
    """The pids of Ray Data's map actors (their process title names the actor class)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"MapWorker" in title and b"ShardWorker" in title:
                pids.append(int(entry.name))
    return pids


def _wait_for_shard(directory: Path, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not (directory / "rows").is_dir() or not list((directory / "rows").glob("shard-*")):
        assert time.monotonic() < end, "no shard was written"
        time.sleep(0.05)


def test_a_worker_killed_mid_job_loses_and_duplicates_nothing(
    cluster: str, minilm_ce: Path, job_input: Path, ray_reference: Path, tmp_path: Path
) -> None:
    result: dict = {}

    def job() -> None:
        try:
            result["summary"] = rerank_dataset(
                _spec(minilm_ce), job_input, tmp_path / "ray", engine="ray", num_cpus=1, **OPTIONS
            )
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=job)
    thread.start()
    _wait_for_shard(tmp_path / "ray")
    workers = _map_workers()
    assert workers, "no Ray Data worker process found"
    os.kill(workers[0], signal.SIGKILL)
    done_at_kill = len(list((tmp_path / "ray" / "rows").glob("shard-*")))
    thread.join(timeout=600)
    assert "error" not in result, result.get("error")
    summary = result["summary"]
    assert done_at_kill < summary.shards  # the kill landed before the job's end
    rows, errors = output_of(tmp_path / "ray")
    assert (rows, errors) == output_of(ray_reference)
    keys = [(r["query_id"], r["doc_id"]) for r in rows]
    assert len(keys) == len(set(keys)) == summary.pairs == summary.rows - 1


def test_a_finished_job_is_skipped_and_an_interrupted_one_resumed(
    cluster: str, minilm_ce: Path, job_input: Path, ray_reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ray"
    # a driver of its own, on the same cluster, killed once it has written a shard
    code = (
        "import sys, json; from rerankers_plugins.batch import rerank_dataset\n"
        "import ray; ray.init(address=sys.argv[1], log_to_driver=False)\n"
        "rerank_dataset(json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], engine='ray', num_cpus=1, "
        "shard_queries=2, block_queries=2, progress=False)\n"
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", code, cluster, json.dumps(_spec(minilm_ce)), str(job_input), str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_shard(out)
    finally:
        driver.kill()
        driver.wait()
    written = len(list((out / "rows").glob("shard-*")))
    assert not (out / "run.trec").exists() and written >= 1
    resumed = rerank_dataset(_spec(minilm_ce), job_input, out, engine="ray", num_cpus=1, **OPTIONS)
    assert resumed.skipped_shards == written < resumed.shards
    assert output_of(out) == output_of(ray_reference)
    assert (out / "run.trec").read_text() == (ray_reference / "run.trec").read_text()
    again = rerank_dataset(_spec(minilm_ce), job_input, out, engine="ray", num_cpus=1, **OPTIONS)
    assert (again.skipped_shards, again.pairs) == (again.shards, 0)
    assert output_of(out) == output_of(ray_reference)


def test_bad_rows_max_errors_and_refusals_are_the_same_on_ray(cluster: str, tmp_path: Path) -> None:
    """The local engine's contract holds on Ray: bad rows quarantined with the same reasons, every row
    once, max_errors stopping the job with complete shards kept (and resumed), another pipeline refused."""
    from batch_helpers import demo_rows

    from rerankers_plugins.batch import TooManyErrors
    from rerankers_plugins.errors import ConfigError

    good = demo_rows(k=3, queries=6)
    bad = [
        {**good[0], "doc_id": "x1", "text": ""},
        dict(good[1]),
        {**good[4], "doc_id": "x2", "query": "another question"},
        "{not json",
    ]
    src = write_jsonl(tmp_path / "in.jsonl", [*good, *bad])
    options = {"shard_queries": 2, "block_queries": 2, "progress": False}
    rerank_dataset({"scorer": "fake"}, src, tmp_path / "local", **options)
    on_ray = rerank_dataset({"scorer": "fake"}, src, tmp_path / "ray", engine="ray", num_cpus=1, **options)
    assert output_of(tmp_path / "ray") == output_of(tmp_path / "local")
    assert on_ray.errors == len(bad) and on_ray.rows == len(good) + len(bad)
    with pytest.raises(ConfigError, match="a different pipeline"):
        rerank_dataset({"scorer": "bm25"}, src, tmp_path / "ray", engine="ray", num_cpus=1, **options)
    with pytest.raises(TooManyErrors):
        rerank_dataset(
            {"scorer": "fake"}, src, tmp_path / "stopped", engine="ray", num_cpus=1, max_errors=1, **options
        )
    kept = len(list((tmp_path / "stopped" / "rows").glob("shard-*")))
    assert kept >= 1 and not (tmp_path / "stopped" / "run.trec").exists()  # stopped before the end
    resumed = rerank_dataset(
        {"scorer": "fake"}, src, tmp_path / "stopped", engine="ray", num_cpus=1, **options
    )
    assert resumed.skipped_shards == kept and output_of(tmp_path / "stopped") == output_of(tmp_path / "local")
