"""Speed of one rerank call: 100 SciFact candidates, one query, top 10.

Everything runs in one process on the same weights (a MiniLM-L6 cross-encoder with the compute of
ms-marco-MiniLM-L-6-v2), so the ratios are comparable even on a noisy machine. Prints a markdown
table of median latency and the ratio to raw ``CrossEncoder.predict``.

    python benchmarks/speed.py [--repeats 7] [--query-index 0]
"""

from __future__ import annotations

import argparse
import platform

import _common
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--query-index", type=int, default=0)
    parser.add_argument("--candidates", type=int, default=100)
    args = parser.parse_args()

    from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
    from langchain_community.cross_encoders import HuggingFaceCrossEncoder
    from langchain_core.documents import Document
    from llama_index.core.postprocessor import SentenceTransformerRerank
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from sentence_transformers import CrossEncoder

    from rerankers_plugins import CrossEncoderScorer, rerank
    from rerankers_plugins.eval.beir import load_beir
    from rerankers_plugins.eval.first_stage import BM25Retriever
    from rerankers_plugins.integrations.langchain import RerankCompressor
    from rerankers_plugins.integrations.llama_index import RerankPostprocessor

    data = load_beir(_common.DATA)
    qid = sorted(data.queries)[args.query_index]
    query = data.queries[qid]
    cands = BM25Retriever(data.corpus).retrieve(query, k=args.candidates)
    texts = [c.text for c in cands]
    path = _common.minilm_cross_encoder_dir()
    top_n = 10

    raw = CrossEncoder(path)
    ours32 = CrossEncoderScorer(path, dtype="float32")
    ours = CrossEncoderScorer(path, dtype="auto")
    docs = [Document(page_content=t, id=c.id) for t, c in zip(texts, cands, strict=True)]
    nodes = [
        NodeWithScore(node=TextNode(text=t, id_=str(c.id)), score=c.retrieval_score)
        for t, c in zip(texts, cands, strict=True)
    ]
    lc_ours = RerankCompressor(scorer=ours, top_n=top_n)
    li_ours = RerankPostprocessor(scorer=ours, top_n=top_n)
    lc_peer = CrossEncoderReranker(model=HuggingFaceCrossEncoder(model_name=path), top_n=top_n)
    li_peer = SentenceTransformerRerank(model=path, top_n=top_n, device="cpu")
    bundle = QueryBundle(query)

    def raw_predict() -> object:
        scores = raw.predict([(query, t) for t in texts], batch_size=32)
        return sorted(range(len(texts)), key=lambda i: -scores[i])[:top_n]

    rows = [
        ("sentence-transformers CrossEncoder.predict (fp32), sort", raw_predict),
        (
            "rerankers-plugins CrossEncoderScorer dtype=float32",
            lambda: rerank(query, cands, ours32, top_n=top_n),
        ),
        (
            f"rerankers-plugins CrossEncoderScorer dtype=auto ({str(ours.dtype)[6:]})",
            lambda: rerank(query, cands, ours, top_n=top_n),
        ),
        (
            "rerankers-plugins LangChain RerankCompressor (auto)",
            lambda: lc_ours.compress_documents(docs, query),
        ),
        (
            "rerankers-plugins LlamaIndex RerankPostprocessor (auto)",
            lambda: li_ours.postprocess_nodes(nodes, bundle),
        ),
        (
            "LangChain CrossEncoderReranker (HuggingFaceCrossEncoder)",
            lambda: lc_peer.compress_documents(docs, query),
        ),
        ("LlamaIndex SentenceTransformerRerank", lambda: li_peer.postprocess_nodes(nodes, bundle)),
    ]
    medians = _common.interleaved_medians([fn for _, fn in rows], args.repeats)
    results = [(name, ms) for (name, _), ms in zip(rows, medians, strict=True)]
    base = results[0][1]
    lengths = ours.pair_lengths(query, texts)
    print(
        f"query {qid!r}: {len(texts)} candidates, pair length median {sorted(lengths)[len(lengths) // 2]} tokens "
        f"(max {max(lengths)}), top {top_n}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}; median of {args.repeats}, round-robin\n"
    )
    print("| pipeline | median ms | speed-up vs CrossEncoder.predict |")
    print("|---|---:|---:|")
    for name, ms in results:
        print(f"| {name} | {ms:.0f} | {base / ms:.2f}x |")

    # Late interaction on the same 100 candidates, same-size encoder (MiniLM-L6 token embeddings).
    from rerankers_plugins import ColBERTScorer

    cached = ColBERTScorer(_common.minilm_dir())
    cached.index(texts)
    uncached = ColBERTScorer(_common.minilm_dir(), cache_bytes=0)  # keeps one document: re-encodes
    late = [
        (
            "ColBERTScorer MaxSim, 100 documents cached (one query encoding + MaxSim)",
            lambda: rerank(query, cands, cached, top_n=top_n),
        ),
        (
            "ColBERTScorer MaxSim, documents encoded on the fly (cache_bytes=0)",
            lambda: rerank(query, cands, uncached, top_n=top_n),
        ),
        ("CrossEncoderScorer dtype=auto (same candidates)", lambda: rerank(query, cands, ours, top_n=top_n)),
    ]
    late_ms = _common.interleaved_medians([fn for _, fn in late], args.repeats)
    ce_ms = late_ms[-1]
    print("\n| late interaction vs cross-encoder | median ms | speed-up vs cross-encoder |")
    print("|---|---:|---:|")
    for (name, _), ms in zip(late, late_ms, strict=True):
        print(f"| {name} | {ms:.1f} | {ce_ms / ms:.1f}x |")


if __name__ == "__main__":
    main()
