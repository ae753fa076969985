"""The same cross-encoder weights through our adapters and through peer libraries, in one run.

For each of a few SciFact test queries, BM25 top-100 candidates are reranked to a top 10 by every
contender, on the same MiniLM-L6 cross-encoder weights (the compute of ms-marco-MiniLM-L-6-v2).
Prints median latency (round-robin over repetitions), the ratio to our LangChain adapter, and how
far each top 10 agrees with ours in float32.

    python benchmarks/peers.py [--queries 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics

import _common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
    from langchain_community.cross_encoders import HuggingFaceCrossEncoder
    from langchain_core.documents import Document
    from llama_index.core.postprocessor import SentenceTransformerRerank
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from rerankers import Reranker

    from rerankers_plugins import CrossEncoderScorer, rerank
    from rerankers_plugins.eval.beir import load_beir
    from rerankers_plugins.eval.first_stage import BM25Retriever
    from rerankers_plugins.integrations.langchain import RerankCompressor
    from rerankers_plugins.integrations.llama_index import RerankPostprocessor

    path = _common.minilm_cross_encoder_dir()
    data = load_beir(_common.DATA)
    qids = sorted(data.queries)[: args.queries]
    retriever = BM25Retriever(data.corpus)
    top = 10
    ours = CrossEncoderScorer(path, dtype="auto")
    ours32 = CrossEncoderScorer(path, dtype="float32")
    lc_ours = RerankCompressor(scorer=ours, top_n=top)
    li_ours = RerankPostprocessor(scorer=ours, top_n=top)
    lc_peer = CrossEncoderReranker(model=HuggingFaceCrossEncoder(model_name=path), top_n=top)
    li_peer = SentenceTransformerRerank(model=path, top_n=top, device="cpu")
    rr = Reranker(path, model_type="cross-encoder", verbose=0, dtype="float32", device="cpu")

    names = [
        "rerankers-plugins LangChain RerankCompressor (dtype=auto)",
        "rerankers-plugins LlamaIndex RerankPostprocessor (dtype=auto)",
        "rerankers-plugins rerank(), CrossEncoderScorer dtype=float32",
        "LangChain CrossEncoderReranker (HuggingFaceCrossEncoder)",
        "LlamaIndex SentenceTransformerRerank",
        "rerankers (AnswerDotAI) TransformerRanker, float32",
    ]
    times: dict[str, list[float]] = {n: [] for n in names}
    overlap: dict[str, list[float]] = {n: [] for n in names}
    top1: dict[str, list[bool]] = {n: [] for n in names}

    def contenders(query: str, cands: list) -> list:
        """The six calls for one query (a function, so each closure binds this query's inputs)."""
        texts = [c.text for c in cands]
        ids = [str(c.id) for c in cands]
        docs = [Document(page_content=t, id=i) for t, i in zip(texts, ids, strict=True)]
        nodes = [
            NodeWithScore(node=TextNode(text=t, id_=i), score=0.0) for t, i in zip(texts, ids, strict=True)
        ]
        bundle = QueryBundle(query)
        every = list(range(len(texts)))
        return [
            lambda: [d.id for d in lc_ours.compress_documents(docs, query)],
            lambda: [n.node.node_id for n in li_ours.postprocess_nodes(nodes, bundle)],
            lambda: [str(s.id) for s in rerank(query, cands, ours32, top_n=top)],
            lambda: [d.id for d in lc_peer.compress_documents(docs, query)],
            lambda: [n.node.node_id for n in li_peer.postprocess_nodes(nodes, bundle)],
            lambda: [ids[r.doc_id] for r in rr.rank(query=query, docs=texts, doc_ids=every).top_k(top)],
        ]

    for qid in qids:
        query = data.queries[qid]
        fns = contenders(query, retriever.retrieve(query, k=100))
        reference = fns[2]()
        for name, fn in zip(names, fns, strict=True):
            got = fn()
            overlap[name].append(len(set(got) & set(reference)) / top)
            top1[name].append(got[0] == reference[0])
        medians = _common.interleaved_medians(fns, args.repeats)
        for name, ms in zip(names, medians, strict=True):
            times[name].append(ms)

    base = statistics.mean(times[names[0]])
    print(
        f"{len(qids)} SciFact queries x 100 BM25 candidates -> top {top}; median of {args.repeats} per query, "
        "round-robin; agreement with our float32 top 10\n"
    )
    print("| pipeline | ms / query | time vs our LangChain adapter | top-10 overlap | same top-1 |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        ms = statistics.mean(times[name])
        print(
            f"| {name} | {ms:.0f} | {ms / base:.2f}x | {statistics.mean(overlap[name]):.2f} | "
            f"{sum(top1[name])}/{len(top1[name])} |"
        )
    print(
        "| FlashRank | - | - | - | - |\n\nFlashRank is not in the table: it downloads its own ONNX "
        "weights from the Hugging Face Hub at first use (no offline path), so it cannot run here, "
        "and it would not run these weights."
    )


if __name__ == "__main__":
    main()
