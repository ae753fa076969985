"""RemoteScorer against a real rerank server: Infinity (``infinity-emb``) serving the test
cross-encoder from a local directory, on CPU, as a separate process from its own environment.

``.ci/run`` installs Infinity into its own virtual environment (it pins older transformers than
ours) and points ``INFINITY_EMB`` at its command. Outside CI, a missing Infinity skips these tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rerankers_plugins import BackendError, Candidate, CrossEncoderScorer, RemoteScorer, arerank, rerank
from rerankers_plugins.scorers.retry import RetryPolicy

pytestmark = pytest.mark.slow

DOCS = [
    "The cat sat on the mat.",
    "Paris is the capital city of France.",
    "Berlin is the capital of Germany.",
    "Interest rate and loan money at the bank.",
    "Green apple tree in the day.",
    "Cancer risk in patients: a study of vitamin and blood.",
    "The capital of Italy is Rome.",
]
QUERY = "capital of France"


def _command() -> str:
    found = os.environ.get("INFINITY_EMB") or shutil.which("infinity_emb")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("INFINITY_EMB is not set: .ci/run installs Infinity and sets it")
        pytest.skip("Infinity is not installed (see .ci/run for the install command)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(model_dir: Path, tmp: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    log = (tmp / f"infinity-{port}.log").open("wb")
    proc = subprocess.Popen(
        [_command(), "v2", "--model-id", str(model_dir), "--engine", "torch", "--device", "cpu",
         "--host", "127.0.0.1", "--port", str(port), "--batch-size", "4"],
        cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"Infinity exited with {proc.returncode}: {(tmp / log.name).read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                    break
            time.sleep(0.5)
        else:
            pytest.fail("Infinity did not come up within 240 s")
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def infinity(tiny_ce_dir, tmp_path_factory) -> Iterator[str]:
    with serve(tiny_ce_dir, tmp_path_factory.mktemp("infinity")) as (url, _):
        yield url


def infinity_scorer(url: str, **kw) -> RemoteScorer:
    kw.setdefault("retry", RetryPolicy(attempts=2, initial=0.05))
    return RemoteScorer(url, protocol="v1", path="/rerank", batch_size=3, max_concurrency=2, **kw)


def test_scores_match_the_same_weights_in_process(infinity, tiny_ce_dir):
    local = CrossEncoderScorer(str(tiny_ce_dir), dtype="float32").score(QUERY, DOCS)
    remote = infinity_scorer(infinity)
    sync = remote.score(QUERY, DOCS)  # 7 documents in batches of 3: three requests
    asy = asyncio.run(remote.ascore(QUERY, DOCS))
    assert sync == pytest.approx(local, abs=1e-4)
    assert asy == pytest.approx(sync, abs=1e-6)
    ranked = rerank(QUERY, DOCS, remote, top_n=3)
    assert [s.text for s in ranked] == [DOCS[i] for i in sorted(range(7), key=lambda i: -local[i])[:3]]


def test_a_server_killed_mid_run_loses_nothing(tiny_ce_dir, tmp_path):
    docs = [f"{DOCS[i % len(DOCS)]} ({i})" for i in range(300)]
    cands = [Candidate(d, id=str(i)) for i, d in enumerate(docs)]
    with serve(tiny_ce_dir, tmp_path) as (url, proc):
        scorer = RemoteScorer(
            url, protocol="v1", path="/rerank", batch_size=1, max_concurrency=1,
            deadline=30.0, retry=RetryPolicy(attempts=2, initial=0.05), on_error="keep_order",
        )  # fmt: skip

        async def run_and_kill():
            task = asyncio.create_task(arerank(QUERY, cands, scorer))
            await asyncio.sleep(0.5)  # some batches answered, most still to go
            proc.kill()
            return await task

        out = asyncio.run(run_and_kill())
    assert [s.id for s in out] == [c.id for c in cands]  # the fallback: every document, in order
    assert all(s.details["fallback"] == "keep_order" for s in out)
    with pytest.raises(BackendError, match=r"(?i)connect"):
        RemoteScorer(url, protocol="v1", path="/rerank", retry=RetryPolicy(attempts=1)).score(QUERY, DOCS)
