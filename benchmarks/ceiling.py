"""How close a cross-encoder rerank call comes to what this CPU's matrix units can do, per dtype.

The workload: one SciFact query, 100 fresh abstracts per call (repetition i reranks corpus slice
i), top 10, the MiniLM-L6 cross-encoder (the compute of cross-encoder/ms-marco-MiniLM-L-6-v2). For
1 and 2 threads (each in its own process) and for float32 and bfloat16, it prints:

- the ceiling it measures itself: GFLOP/s of an FFN-shaped matrix product (4096x384 @ 384x1536,
  ``torch.nn.functional.linear``, median of 9) in that dtype on those threads;
- the achieved GFLOP/s of a call: the call's FLOPs (2 x the non-embedding weights per real token,
  plus 4 x L^2 x hidden per layer for attention, L the pair's real tokens after truncation; padding
  not counted) over its median time, eager (``compile=False``) and with compiled blocks
  (``compile=True``), and its share of the ceiling;
- the ratio to LangChain's ``CrossEncoderReranker`` (``HuggingFaceCrossEncoder``, float32, its
  defaults) on the same weights and slices;
- top-10 agreement with our float32 eager path;
- with ``--profile``: where one call's time goes, by operator, per dtype (torch profiler), eager and compiled.

    python benchmarks/ceiling.py [--threads 1,2] [--repeats 3] [--profile]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import _common

TOP_N = 10
CEILING_SHAPE = (4096, 384, 1536)  # tokens x hidden @ hidden x intermediate: the FFN's first product


def matmul_ceiling(torch: Any, dtype: Any, repeats: int = 9) -> float:
    """GFLOP/s of the FFN-shaped product in ``dtype`` on the current threads (median)."""
    m, k, n = CEILING_SHAPE
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=gen).to(dtype)
    w = torch.randn(n, k, generator=gen).to(dtype)
    times = []
    with torch.inference_mode():
        for _ in range(2):
            torch.nn.functional.linear(x, w)
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.nn.functional.linear(x, w)
            times.append(time.perf_counter() - t0)
    return 2 * m * k * n / statistics.median(times) / 1e9


def call_flops(config: Any, lengths: Sequence[int]) -> float:
    """FLOPs of one forward over pairs of these real lengths: 2 x non-embedding weights per token
    (attention projections 4h^2, feed-forward 2hI, per layer) plus attention's two products
    (4 L^2 h per layer)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    weights = layers * (4 * h * h + 2 * h * i)
    return float(sum(2 * weights * n + layers * 4 * n * n * h for n in lengths))


def top(ids: list[str]) -> set[str]:
    return set(ids[:TOP_N])


def profile_call(torch: Any, fn: Callable[[], object], rows: int = 14) -> str:
    """One call under the torch profiler: self CPU time by operator (the largest ``rows``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    by_op: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        by_op[event.key] += event.self_cpu_time_total / 1000
    total = sum(by_op.values())
    lines = ["| operator | ms | share |", "|---|---:|---:|"]
    for name, ms in sorted(by_op.items(), key=lambda kv: -kv[1])[:rows]:
        lines.append(f"| `{name}` | {ms:.0f} | {100 * ms / total:.1f} % |")
    lines.append(f"| all | {total:.0f} | 100 % |")
    return "\n".join(lines)


def child(threads: int, repeats: int, profile: bool) -> None:
    import torch

    torch.set_num_threads(threads)
    from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
    from langchain_community.cross_encoders import HuggingFaceCrossEncoder
    from langchain_core.documents import Document
    from transformers import AutoConfig

    from rerankers_plugins import Candidate, CrossEncoderScorer, rerank
    from rerankers_plugins.eval.beir import load_beir

    path = _common.minilm_cross_encoder_dir()
    config = AutoConfig.from_pretrained(path)
    data = load_beir(_common.DATA)
    query = data.queries[sorted(data.queries)[0]]

    def slice_(i: int) -> list[Candidate]:
        return data.corpus[100 * i : 100 * i + 100]

    systems: dict[str, CrossEncoderScorer] = {}
    compile_s: dict[str, float] = {}
    for dtype in ("float32", "bfloat16"):
        systems[f"{dtype} eager"] = CrossEncoderScorer(path, dtype=dtype, compile=False)
        t0 = time.perf_counter()
        systems[f"{dtype} compiled"] = CrossEncoderScorer(path, dtype=dtype, compile=True)
        compile_s[dtype] = time.perf_counter() - t0
    lc = CrossEncoderReranker(model=HuggingFaceCrossEncoder(model_name=path), top_n=TOP_N)

    def ours(scorer: CrossEncoderScorer) -> Callable[[list[Candidate]], list[str]]:
        return lambda cands: [str(s.candidate.id) for s in rerank(query, cands, scorer, top_n=TOP_N)]

    def langchain(cands: list[Candidate]) -> list[str]:
        docs = [Document(page_content=c.text, id=str(c.id)) for c in cands]
        return [str(d.id) for d in lc.compress_documents(docs, query)]

    runs: list[tuple[str, Callable[[list[Candidate]], list[str]]]] = [("LangChain", langchain)]
    runs += [(name, ours(s)) for name, s in systems.items()]
    for i, (_, fn) in enumerate(runs):  # warm-up on slices no repetition uses
        fn(slice_(40 + i))
    times: dict[str, list[float]] = defaultdict(list)
    flops: dict[str, list[float]] = defaultdict(list)
    tops: dict[str, list[set[str]]] = defaultdict(list)
    scorer = systems["float32 eager"]
    for rep in range(repeats):
        cands = slice_(rep)
        work = call_flops(config, scorer.pair_lengths(query, [c.text for c in cands]))
        for k in range(len(runs)):
            name, fn = runs[(k + rep) % len(runs)]
            t0 = time.perf_counter()
            tops[name].append(top(fn(cands)))
            times[name].append(time.perf_counter() - t0)
            flops[name].append(work)
    ceilings = {dtype: matmul_ceiling(torch, getattr(torch, dtype)) for dtype in ("float32", "bfloat16")}
    ref = tops["float32 eager"]
    lc_s = statistics.median(times["LangChain"])
    print(
        f"\n### {threads} thread{'s' if threads > 1 else ''}: 100 fresh abstracts per call, median of {repeats}; "
        f"call FLOPs {statistics.mean(flops['LangChain']) / 1e12:.3f} TFLOP (mean)\n"
    )
    print(
        "| system | ceiling GFLOP/s (FFN-shaped matmul) | median s | achieved GFLOP/s | share of ceiling "
        "| vs LangChain | top-10 agreement with float32 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, _ in runs:
        med = statistics.median(times[name])
        achieved = statistics.median(f / t for f, t in zip(flops[name], times[name], strict=True)) / 1e9
        agree = statistics.mean(len(a & b) / TOP_N for a, b in zip(tops[name], ref, strict=True))
        if name == "LangChain":
            label, ceiling = "LangChain CrossEncoderReranker (float32)", ceilings["float32"]
        else:
            label, ceiling = f"ours, {name}", ceilings[name.split()[0]]
        print(
            f"| {label} | {ceiling:.0f} | {med:.2f} | {achieved:.0f} | {100 * achieved / ceiling:.0f} % "
            f"| {lc_s / med:.2f}x | {agree:.2f} |"
        )
    print(
        "\ncompile at load (constructor with compile=True, warm-up batches included): "
        + ", ".join(f"{d} {s:.1f} s" for d, s in compile_s.items())
        + f" (inductor cache: {os.environ.get('TORCHINDUCTOR_CACHE_DIR', 'default directory')})"
    )
    if profile:
        texts = [c.text for c in slice_(47)]
        for name, s in systems.items():
            print(f"\n#### where one call's time goes: {name}, {threads} thread(s)\n")
            # in this thread (the scheduler's worker runs on another, which the profiler does not see)
            print(profile_call(torch, lambda s=s: s._score_here(query, texts)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also profile one call per system")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.repeats, args.profile)
        return
    import torch

    print(_common.cpu_description())
    print(f"torch {torch.__version__}, python {platform.python_version()}")
    extra = ["--profile"] if args.profile else []
    _common.run_per_thread_count(__file__, args.threads, ["--repeats", str(args.repeats), *extra])


if __name__ == "__main__":
    main()
