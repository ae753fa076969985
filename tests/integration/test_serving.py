"""The FastAPI app of docs/serving.md ("Many users, one model"), run as printed through an in-process
ASGI client: concurrent requests share the scorer's worker and each gets exactly its own documents;
a full queue answers 503 with ``Retry-After``."""

from __future__ import annotations

import asyncio
import re
import threading
import types
from pathlib import Path
from typing import Any

import pytest

from rerankers_plugins.scorers._scheduler import SchedulerOptions
from tests.deps import dev

httpx = dev("httpx")
dev("fastapi")

PAGE = Path(__file__).resolve().parents[2] / "docs" / "serving.md"


def _app_module() -> types.ModuleType:
    """The page's FastAPI block, executed as a module (as ``uvicorn app:app`` would import it)."""
    section = PAGE.read_text().split("## Many users, one model", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None and "FastAPI()" in code[1]
    module = types.ModuleType("app")
    exec(compile(code[1], str(PAGE), "exec"), module.__dict__)
    return module


@pytest.fixture(scope="module")
def app_module() -> types.ModuleType:
    return _app_module()


def _documents(i: int) -> list[str]:
    return [f"request {i} document {j} about {'apples' if j % 2 else 'rivers'}" for j in range(6)]


async def _post(client: Any, i: int, top_n: int = 6) -> Any:
    return await client.post(
        "/rerank", json={"query": f"apples {i}", "documents": _documents(i), "top_n": top_n}
    )


def test_concurrent_requests_each_get_their_own_documents(app_module: types.ModuleType) -> None:
    scorer = app_module.scorer

    async def main() -> list[Any]:
        transport = httpx.ASGITransport(app=app_module.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return list(await asyncio.gather(*(_post(client, i) for i in range(16))))

    before = scorer.queue_stats().units
    responses = asyncio.run(main())
    for i, response in enumerate(responses):
        assert response.status_code == 200
        body = response.json()
        assert sorted(item["index"] for item in body) == list(range(6))
        expected = scorer.score(f"apples {i}", _documents(i))  # alone, after the burst
        for item in body:
            assert item["score"] == pytest.approx(expected[item["index"]], abs=1e-5)
    # every request's query and 6 documents went through the one worker
    assert scorer.queue_stats().units - before >= 16 * 7


def test_a_full_queue_answers_503_with_retry_after() -> None:
    import torch

    module = _app_module()  # a scorer of its own, with a queue limit this test can reach
    # room for the held request's documents and one more request, not two (a request's tokens: its
    # query's and documents')
    need = sum(u.tokens for u in module.scorer._plan("apples 1", _documents(1)).units)
    module.scorer.scheduler_options = SchedulerOptions(max_queue_tokens=2 * need + need // 4, streams=1)
    embedding = next(m for m in module.scorer._model.modules() if isinstance(m, torch.nn.Embedding))
    entered, gate = threading.Event(), threading.Event()

    def hold(*_: Any) -> None:
        entered.set()
        gate.wait(30)

    handle = embedding.register_forward_pre_hook(hold)

    async def main() -> tuple[Any, Any, Any]:
        transport = httpx.ASGITransport(app=module.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            first = asyncio.create_task(_post(client, 0))  # holds the model
            await asyncio.to_thread(entered.wait, 30)
            second = asyncio.create_task(_post(client, 1))  # waits in the queue
            for _ in range(2000):
                if module.scorer.queue_stats().waiting_requests >= 2:
                    break
                await asyncio.sleep(0.005)
            third = await _post(client, 2)  # beyond the limit: refused at once
            gate.set()
            return await first, await second, third

    try:
        first, second, third = asyncio.run(main())
    finally:
        gate.set()
        handle.remove()
    assert first.status_code == 200 and second.status_code == 200
    assert third.status_code == 503
    assert int(third.headers["Retry-After"]) >= 1
