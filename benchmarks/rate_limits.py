"""Rate limits: one Cohere key shared by 8 threads x 3 event loops, against the loopback server.

    python benchmarks/rate_limits.py [--rpm 10] [--threads 8] [--loops 3] [--per-loop 2]

Every thread builds its own ``CohereScorer`` with the same key and URL (so only the process-wide
limiter ties them together) and, ``--loops`` times, makes one sync call then runs an event loop
of ``--per-loop`` concurrent async calls. Time is the test suite's stepped fake clock
(``tests/fake_clock.py``): it moves only when every caller waits on it, so the server stamps each
arrival with the exact time the limiter granted it, and minutes of limits take seconds. Scenarios:
no limiter; ``--rpm`` with a deadline no wait reaches; the same with a 120 s deadline (calls that
could not start in time are refused unsent); and a 429 with ``Retry-After: 30`` on the first
request. Printed per scenario: calls, requests sent, the most requests in any 60 s window against
the limit, calls refused by the deadline, fake-clock minutes, real seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import _common
from fake_clock import SteppedClock, most_in_any_window
from local_servers import RerankServer

from rerankers_plugins import CohereScorer, DeadlineExceeded, RateLimit
from rerankers_plugins.scorers.retry import RetryPolicy

KEY = "sk-benchmark-rate-limits"
QUERY = "red apple"
DOCS = [f"document {i} about red apples" if i % 3 == 0 else f"document {i} about pears" for i in range(20)]


class StampedServer(RerankServer):
    def __init__(self, clock: SteppedClock) -> None:
        super().__init__()
        self.clock = clock
        self.stamps: list[float] = []

    def _respond(self, h: Any, body: dict[str, Any], fault: tuple[Any, ...] | None) -> None:
        with self._lock:
            self.stamps.append(self.clock.monotonic())
        super()._respond(h, body, fault)


def scenario(args: argparse.Namespace, *, limited: bool, deadline: float, fault: bool) -> dict[str, Any]:
    clock = SteppedClock()
    limit = RateLimit(requests_per_minute=args.rpm, clock=clock) if limited else None
    refused = failed = calls = 0
    lock = threading.Lock()
    with StampedServer(clock) as server:
        if fault:
            server.faults.append(("status", 429, {"Retry-After": "30"}))

        def count(exc: BaseException | None) -> None:
            nonlocal refused, failed, calls
            with lock:
                calls += 1
                refused += isinstance(exc, DeadlineExceeded)
                failed += exc is not None and not isinstance(exc, DeadlineExceeded)

        def worker() -> None:
            scorer = CohereScorer(
                api_key=KEY,
                base_url=server.url,
                rate_limit=limit,
                deadline=deadline,
                retry=RetryPolicy(initial=0.01, max_wait=0.05),
            )

            async def one() -> None:
                with clock.participant():
                    try:
                        await scorer.ascore(QUERY, DOCS)
                    except Exception as exc:
                        count(exc)
                    else:
                        count(None)

            async def loop() -> None:
                await asyncio.gather(*(one() for _ in range(args.per_loop)))

            for _ in range(args.loops):
                with clock.participant():
                    try:
                        scorer.score(QUERY, DOCS)
                    except Exception as exc:
                        count(exc)
                    else:
                        count(None)
                asyncio.run(loop())

        start = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    return {
        "calls": calls,
        "sent": len(server.stamps),
        "most": most_in_any_window(server.stamps),
        "refused": refused,
        "failed": failed,
        "minutes": clock.elapsed / 60,
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rpm", type=int, default=10, help="requests per minute (a Cohere trial key: 10)")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--loops", type=int, default=3, help="event loops per thread, one after another")
    parser.add_argument("--per-loop", type=int, default=2, help="concurrent async calls per event loop")
    args = parser.parse_args()
    print(_common.cpu_description())
    print(
        f"{args.threads} threads x {args.loops} loops: per loop 1 sync call + {args.per_loop} async calls, "
        f"one Cohere key, {len(DOCS)} documents per call (1 request)"
    )
    print()
    print(
        "| scenario | calls | requests sent | most in any 60 s | limit | refused (deadline) | other errors | fake minutes | real s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [
        ("no limiter", False, 3600.0, False),
        (f"{args.rpm}/min, deadline 1 h", True, 3600.0, False),
        (f"{args.rpm}/min, deadline 120 s", True, 120.0, False),
        (f"{args.rpm}/min, 429 Retry-After: 30 first", True, 3600.0, True),
    ]
    for name, limited, deadline, fault in rows:
        r = scenario(args, limited=limited, deadline=deadline, fault=fault)
        limit = str(args.rpm) if limited else "-"
        print(
            f"| {name} | {r['calls']} | {r['sent']} | {r['most']} | {limit} | {r['refused']} | {r['failed']} "
            f"| {r['minutes']:.1f} | {r['wall']:.1f} |"
        )


if __name__ == "__main__":
    main()
