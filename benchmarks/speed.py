"""Speed of one rerank call against LangChain's and LlamaIndex's built-in cross-encoder rerankers.

One SciFact query, 100 candidates, top 10, every system on the same weights (a MiniLM-L6
cross-encoder with the compute of ms-marco-MiniLM-L-6-v2). Repetition i reranks corpus slice i
(documents 100*i .. 100*i+99), so no repetition reuses a shape any system has seen; within a
repetition every system gets the same slice, in rotated order. Each thread count runs in its own
process (``torch.set_num_threads`` and ONNX Runtime's intra-op threads). Printed: the CPU model and
the flags that choose kernels, then per thread count a table of median seconds, the ratio to
LangChain's ``CrossEncoderReranker`` and to LlamaIndex's ``SentenceTransformerRerank``, and the
top-10 agreement with our float32 path; then the first-call cost of the demo (13 passages).

    python benchmarks/speed.py [--threads 1,2] [--repeats 3] [--late-interaction]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import _common

TOP_N = 10
DEMO_PASSAGES = 13


def top(scores: Sequence[float] | Sequence[str], n: int = TOP_N) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: -float(scores[i]))[:n]


def child(threads: int, repeats: int, late: bool) -> None:
    import torch

    torch.set_num_threads(threads)
    from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
    from langchain_community.cross_encoders import HuggingFaceCrossEncoder
    from langchain_core.documents import Document
    from llama_index.core.postprocessor import SentenceTransformerRerank
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from rerankers_plugins import Candidate, CrossEncoderScorer, rerank
    from rerankers_plugins.eval.beir import load_beir
    from rerankers_plugins.integrations.langchain import RerankCompressor
    from rerankers_plugins.integrations.llama_index import RerankPostprocessor

    path = _common.minilm_cross_encoder_dir()

    data = load_beir(_common.DATA)
    query = data.queries[sorted(data.queries)[0]]

    def slice_(i: int) -> list[Candidate]:
        return data.corpus[100 * i : 100 * i + 100]

    ours = CrossEncoderScorer(path)
    ours32 = CrossEncoderScorer(path, dtype="float32")
    t0 = time.perf_counter()
    onnx32 = CrossEncoderScorer(path, runtime="onnx")
    onnx8 = CrossEncoderScorer(path, runtime="onnx-int8")
    t_onnx = time.perf_counter() - t0
    lc_ours = RerankCompressor(scorer=ours, top_n=TOP_N)
    li_ours = RerankPostprocessor(scorer=ours, top_n=TOP_N)
    lc_peer = CrossEncoderReranker(model=HuggingFaceCrossEncoder(model_name=path), top_n=TOP_N)
    li_peer = SentenceTransformerRerank(model=path, top_n=TOP_N, device="cpu")

    def core(scorer: CrossEncoderScorer) -> Callable[[list[Candidate]], list[str]]:
        return lambda cands: [str(s.candidate.id) for s in rerank(query, cands, scorer, top_n=TOP_N)]

    def lc(compressor: object) -> Callable[[list[Candidate]], list[str]]:
        def run(cands: list[Candidate]) -> list[str]:
            docs = [Document(page_content=c.text, id=str(c.id)) for c in cands]
            return [str(d.id) for d in compressor.compress_documents(docs, query)]  # type: ignore[attr-defined]

        return run

    def li(post: object) -> Callable[[list[Candidate]], list[str]]:
        def run(cands: list[Candidate]) -> list[str]:
            nodes = [NodeWithScore(node=TextNode(text=c.text, id_=str(c.id)), score=0.0) for c in cands]
            out = post.postprocess_nodes(nodes, QueryBundle(query))  # type: ignore[attr-defined]
            return [n.node.node_id for n in out]

        return run

    dt = str(ours.dtype).removeprefix("torch.")
    systems: list[tuple[str, Callable[[list[Candidate]], list[str]]]] = [
        ("LangChain CrossEncoderReranker (HuggingFaceCrossEncoder)", lc(lc_peer)),
        ("LlamaIndex SentenceTransformerRerank", li(li_peer)),
        (f"ours, default: CrossEncoderScorer (dtype=auto -> {dt})", core(ours)),
        ("ours, dtype=float32", core(ours32)),
        ("ours, runtime='onnx' (ONNX Runtime float32)", core(onnx32)),
        ("ours, runtime='onnx-int8' (ONNX Runtime int8)", core(onnx8)),
        ("ours, default, through LangChain RerankCompressor", lc(lc_ours)),
        ("ours, default, through LlamaIndex RerankPostprocessor", li(li_ours)),
    ]
    times: list[list[float]] = [[] for _ in systems]
    tops: list[list[list[str]]] = [[] for _ in systems]
    for fn_i, (_, fn) in enumerate(systems):  # warm-up on a slice no repetition uses
        fn(slice_(50 + fn_i))
    for rep in range(repeats):
        cands = slice_(rep)
        n = len(systems)
        for k in range(n):
            i = (k + rep) % n
            t0 = time.perf_counter()
            tops[i].append(systems[i][1](cands))
            times[i].append(time.perf_counter() - t0)
    ref = tops[3]  # our float32 path

    def agreement(i: int) -> float:
        return statistics.mean(len(set(a) & set(b)) / TOP_N for a, b in zip(tops[i], ref, strict=True))

    med = [statistics.median(t) for t in times]
    lc_s, li_s = med[0], med[1]
    print(
        f"\n### {threads} thread{'s' if threads > 1 else ''}: 100 candidates, top {TOP_N}, median of {repeats} "
        f"fresh slices; torch {torch.__version__}; max_batch_tokens auto = {ours.max_batch_tokens}\n"
    )
    print("| system | median s | vs LangChain | vs LlamaIndex | top-10 agreement with our float32 |")
    print("|---|---:|---:|---:|---:|")
    for i, (name, _) in enumerate(systems):
        print(f"| {name} | {med[i]:.2f} | {lc_s / med[i]:.2f}x | {li_s / med[i]:.2f}x | {agreement(i):.2f} |")
    lc_ms, li_ms = adapter_overhead_ms(query, slice_(0))
    print(
        f"\nadapter overhead (the adapters' own work for 100 documents, timed over a zero-cost scorer, "
        f"median of 200): LangChain {lc_ms:.2f} ms = {100 * lc_ms / 1000 / med[2]:.3f} % of the default "
        f"call, LlamaIndex {li_ms:.2f} ms = {100 * li_ms / 1000 / med[2]:.3f} %. "
        f"ONNX graphs ready in {t_onnx:.1f} s (exported the first time on a machine, then read from the cache)"
    )
    for warm in (True, False):
        out = (
            subprocess.run(
                [sys.executable, __file__, "--first-call", "warm" if warm else "cold"],
                capture_output=True,
                text=True,
                check=True,
                env=os.environ,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        print(out)
    if late:
        late_interaction(query, slice_(0), ours, repeats)


def adapter_overhead_ms(query: str, cands: list) -> tuple[float, float]:
    """Milliseconds the LangChain / LlamaIndex adapters add over ``rerank`` for the same documents,
    with a scorer that costs nothing (so model time does not drown the difference)."""
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from rerankers_plugins import BaseScorer, ScoreScale, rerank
    from rerankers_plugins.integrations.langchain import RerankCompressor
    from rerankers_plugins.integrations.llama_index import RerankPostprocessor

    class Constant(BaseScorer):
        name = "constant"
        scale = ScoreScale.PROBABILITY

        def score(self, query: str, texts: Sequence[str]) -> list[float]:
            return [0.5] * len(texts)

    zero = Constant()
    docs = [Document(page_content=c.text, id=str(c.id)) for c in cands]
    nodes = [NodeWithScore(node=TextNode(text=c.text, id_=str(c.id)), score=0.0) for c in cands]
    lc_c, li_c = RerankCompressor(scorer=zero, top_n=TOP_N), RerankPostprocessor(scorer=zero, top_n=TOP_N)
    bundle = QueryBundle(query)
    core_ms, lc_ms, li_ms = _common.interleaved_medians(
        [
            lambda: rerank(query, cands, zero, top_n=TOP_N),
            lambda: lc_c.compress_documents(docs, query),
            lambda: li_c.postprocess_nodes(nodes, bundle),
        ],
        200,
    )
    return lc_ms - core_ms, li_ms - core_ms


def first_call(warm: bool) -> None:
    """In a fresh process: import, constructor, first and second rerank of the demo's passages."""
    t0 = time.perf_counter()
    import sentence_transformers  # noqa: F401  (the constructor's heaviest import, timed apart)

    from rerankers_plugins import CrossEncoderScorer, rerank
    from rerankers_plugins.cli.demo import DEFAULT_QUERY
    from rerankers_plugins.data import load_demo_corpus

    t_import = time.perf_counter() - t0
    demo = load_demo_corpus()[:DEMO_PASSAGES]
    t1 = time.perf_counter()
    scorer = CrossEncoderScorer(_common.minilm_cross_encoder_dir(), warmup=warm)
    t_load = time.perf_counter() - t1
    t2 = time.perf_counter()
    rerank(DEFAULT_QUERY, demo, scorer, top_n=5)
    t_first = time.perf_counter() - t2
    t3 = time.perf_counter()
    rerank(DEFAULT_QUERY, demo, scorer, top_n=5)
    t_second = time.perf_counter() - t3
    print(
        f"first call, fresh process, {DEMO_PASSAGES} demo passages, warmup={warm}: imports {t_import:.2f} s, "
        f"constructor {t_load:.2f} s, first rerank {1000 * t_first:.0f} ms, second {1000 * t_second:.0f} ms; "
        f"constructor to first result {t_load + t_first:.2f} s"
    )


def late_interaction(query: str, cands: list, ours: object, repeats: int) -> None:
    from rerankers_plugins import ColBERTScorer, rerank

    texts = [c.text for c in cands]
    cached = ColBERTScorer(_common.minilm_dir())
    cached.index(texts)
    uncached = ColBERTScorer(_common.minilm_dir(), cache_bytes=0)  # keeps one document: re-encodes
    late = [
        ("ColBERTScorer MaxSim, 100 documents cached (one query encoding + MaxSim)", cached),
        ("ColBERTScorer MaxSim, documents encoded on the fly (cache_bytes=0)", uncached),
        ("CrossEncoderScorer default (same candidates)", ours),
    ]
    fns = [lambda s=s: rerank(query, cands, s, top_n=TOP_N) for _, s in late]
    ms = _common.interleaved_medians(fns, repeats)
    print("\n| late interaction vs cross-encoder | median ms | speed-up vs cross-encoder |")
    print("|---|---:|---:|")
    for (name, _), m in zip(late, ms, strict=True):
        print(f"| {name} | {m:.1f} | {ms[-1] / m:.1f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--late-interaction", action="store_true", help="also time MaxSim vs cross-encoder")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--first-call", choices=["warm", "cold"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.first_call:
        first_call(args.first_call == "warm")
        return
    if args.child:
        child(args.child, args.repeats, args.late_interaction)
        return
    import onnxruntime
    import torch

    print(_common.cpu_description())
    print(
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, python {platform.python_version()}"
    )
    extra = ["--late-interaction"] if args.late_interaction else []
    _common.run_per_thread_count(__file__, args.threads, ["--repeats", str(args.repeats), *extra])


if __name__ == "__main__":
    main()
