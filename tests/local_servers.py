"""HTTP servers on 127.0.0.1 speaking real protocols, with scripted faults, for the API backends.

* :class:`RerankServer`: ``POST /rerank`` (Text Embeddings Inference), ``POST /v1/rerank`` (vLLM /
  Infinity / Jina) and ``POST /v2/rerank`` (Cohere). Scores are token overlap between query and
  document, so tests can predict them; results come back sorted by score (out of input order), as
  real servers answer.
* :class:`ChatServer`: ``POST /v1/chat/completions`` (OpenAI) answering listwise, pointwise and
  pairwise rerank prompts by the same overlap rule, with first-token log-probabilities on request.

``server.faults`` is a queue of actions, one consumed per request: ``("status", code, headers)``,
``("hang", seconds)``, ``("malformed",)``, ``("drop_index_key",)``, ``("duplicate",)``,
``("top", k)`` (answer only the best k), ``("text", answer)`` (chat: answer this instead),
``("trickle", seconds)`` (send the answer one byte every ``seconds``; ``("trickle", seconds, for_s)``:
for ``for_s`` seconds, then the rest at once, so that a client which stopped waiting is soon done
reading), ``("score", value)`` (every
result's score is ``value``: ``7.5``, ``"0.5"``, ``float("inf")``...), ``("empty",)`` (no results).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_WORD = re.compile(r"\w+")


def overlap(query: str, doc: str) -> float:
    q = {w.casefold() for w in _WORD.findall(query)}
    d = {w.casefold() for w in _WORD.findall(doc)}
    return round(len(q & d) / len(q), 6) if q else 0.0


class LocalJSONServer:
    """Threaded JSON-over-HTTP server; subclasses implement :meth:`answer`."""

    def __init__(self, delay: float = 0.0) -> None:
        self.faults: deque[tuple[Any, ...]] = deque()
        self.requests: list[dict[str, Any]] = []
        self.delay = delay
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                self.query_string = self.path.partition("?")[2]
                self.path = self.path.partition("?")[0]  # route on the path, as real servers do
                with server._lock:
                    server.requests.append(
                        {
                            "path": self.path,
                            "query": self.query_string,
                            "headers": dict(self.headers),
                            "body": body,
                        }
                    )
                    fault = server.faults.popleft() if server.faults else None
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    server._respond(self, body, fault)
                finally:
                    with server._lock:
                        server.in_flight -= 1

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler, status: int, payload: bytes, headers: dict[str, str] | None = None
    ) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(payload)

    def _respond(
        self, h: BaseHTTPRequestHandler, body: dict[str, Any], fault: tuple[Any, ...] | None
    ) -> None:
        if self.delay:
            time.sleep(self.delay)
        kind = fault[0] if fault else None
        if kind == "status":
            payload = json.dumps({"error": {"message": f"scripted {fault[1]}"}}).encode()
            self._send(h, fault[1], payload, fault[2] if len(fault) > 2 else None)
            return
        if kind == "hang":
            time.sleep(fault[1])
        if kind == "malformed":
            self._send(h, 200, b'{"results": [{"index": 0, "relevance_sc')
            return
        result = self.answer(h.path, body, fault)
        if result is None:
            self._send(h, 404, b'{"error": "not found"}')
            return
        payload = json.dumps(result).encode()
        if kind != "trickle":
            self._send(h, 200, payload)
            return
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        stop = time.monotonic() + (fault[2] if len(fault) > 2 else math.inf)
        try:
            for i in range(len(payload)):
                if time.monotonic() >= stop:
                    h.wfile.write(payload[i:])
                    h.wfile.flush()
                    break
                h.wfile.write(payload[i : i + 1])
                h.wfile.flush()
                time.sleep(fault[1])
        except (BrokenPipeError, ConnectionResetError):  # the client gave up: what a deadline does
            pass

    def answer(self, path: str, body: dict[str, Any], fault: tuple[Any, ...] | None) -> Any:
        raise NotImplementedError


class RerankServer(LocalJSONServer):
    def answer(self, path: str, body: dict[str, Any], fault: tuple[Any, ...] | None) -> Any:
        kind = fault[0] if fault else None
        docs = body.get("texts") if path == "/rerank" else body.get("documents")
        query = body.get("query", "")
        ranked = sorted(
            ((overlap(query, d), i) for i, d in enumerate(docs or [])), key=lambda x: (-x[0], x[1])
        )
        if path != "/rerank" and body.get("top_n"):
            ranked = ranked[: body["top_n"]]
        if kind == "top":
            ranked = ranked[: fault[1]]
        if kind == "duplicate" and ranked:
            ranked = [*ranked, ranked[0]]
        score_key = "score" if path == "/rerank" else "relevance_score"
        results = [{"index": i, score_key: fault[1] if kind == "score" else s} for s, i in ranked]
        if kind == "empty":
            results = []
        if kind == "drop_index_key" and results:
            del results[0]["index"]
        if path == "/rerank":
            return results
        if path == "/v1/rerank":
            return {
                "id": "rerank-1",
                "model": body.get("model"),
                "results": results,
                "usage": {"total_tokens": 1},
            }
        if path == "/v2/rerank":
            meta = {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}
            return {"id": "c0ffee", "results": results, "meta": meta}
        return None


_PASSAGE = re.compile(r"^\[(\d+)\] (.*)$", re.MULTILINE)


def rule_answer(prompt: str) -> tuple[str, float | None]:
    """The deterministic 'model': answer a rerank prompt by token overlap. Returns (text, P(yes))."""
    query_m = re.search(r"(?:Search Query|Query): (.*)", prompt)
    query = query_m.group(1) if query_m else ""
    if "Passage A:" in prompt:
        a = re.search(r"Passage A: (.*)", prompt).group(1)
        b = re.search(r"Passage B: (.*)", prompt).group(1)
        return ("A" if overlap(query, a) >= overlap(query, b) else "B"), None
    passages = _PASSAGE.findall(prompt)
    if passages:
        ranked = sorted(passages, key=lambda p: (-overlap(query, p[1]), int(p[0])))
        return " > ".join(f"[{i}]" for i, _ in ranked), None
    passage = re.search(r"Passage: (.*)", prompt).group(1)
    if "from 0" in prompt:
        return str(round(10 * overlap(query, passage))), None
    p_yes = min(max(overlap(query, passage), 0.01), 0.99)
    return ("Yes" if p_yes >= 0.5 else "No"), p_yes


class ChatServer(LocalJSONServer):
    def answer(self, path: str, body: dict[str, Any], fault: tuple[Any, ...] | None) -> Any:
        if path != "/v1/chat/completions":
            return None
        prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        text, p_yes = rule_answer(prompt)
        if fault and fault[0] == "text":
            text, p_yes = fault[1], None
        logprobs = None
        if body.get("logprobs") and p_yes is not None:
            tops = [
                {"token": "Yes", "logprob": math.log(p_yes), "bytes": None},
                {"token": "No", "logprob": math.log(1 - p_yes), "bytes": None},
            ]
            first = next(t for t in tops if t["token"] == text)
            logprobs = {"content": [{**first, "top_logprobs": tops}]}
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "local"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                    "logprobs": logprobs,
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
