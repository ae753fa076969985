"""What reusing the shared prompt prefix saves a causal-LM reranker: 100 SciFact candidates per call.

A Qwen3-Reranker-shaped model (Qwen3ForCausalLM, random weights, the size set below: the real 0.6B
does not fit a 2-core timing loop) and a byte-level BPE tokenizer trained on the SciFact corpus (so
token counts are realistic) are scored through ``CrossEncoderScorer(prompt_format="qwen3")`` with
``reuse_prefix=True`` and ``False``: same scores (checked), time per call as the median over
repetitions, each repetition with a fresh query and 100 fresh documents, the two settings measured
round-robin. Prints the CPU model and its matrix-kernel flags with the table.

    python benchmarks/causal_prefix.py [--hidden 256 --layers 4 --reps 5 --candidates 100]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA


def cpu_line() -> str:
    from rerankers_plugins.scorers._device import cpu_flags

    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx", "avx2", "avx_vnni")))
    return f"{model}; {' '.join(flags) or 'no AVX2/AVX512/AMX flags'}"


def build(directory: Path, texts: list[str], hidden: int, layers: int) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=16000, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([*texts, "yes\nno\n"] * 1, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.padding_side = "left"
    cfg = Qwen3Config(
        vocab_size=len(fast),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(2, hidden // 64),
        num_key_value_heads=max(1, hidden // 128),
        head_dim=64,
        intermediate_size=3 * hidden,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        pad_token_id=fast.pad_token_id,
    )
    torch.manual_seed(0)
    Qwen3ForCausalLM(cfg).save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--candidates", type=int, default=100)
    args = parser.parse_args()

    import numpy as np
    import torch

    from rerankers_plugins import CrossEncoderScorer

    corpus = [json.loads(line) for line in (DATA / "corpus.jsonl").open(encoding="utf-8")]
    queries = [json.loads(line)["text"] for line in (DATA / "queries.jsonl").open(encoding="utf-8")]
    texts = [f"{d.get('title', '')} {d['text']}".strip() for d in corpus]
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        directory = build(Path(tmp) / "qwen3-shaped", texts, args.hidden, args.layers)
        on = CrossEncoderScorer(str(directory), prompt_format="qwen3", dtype="float32", reuse_prefix=True)
        off = CrossEncoderScorer(str(directory), prompt_format="qwen3", dtype="float32", reuse_prefix=False)
        q0, d0 = rng.choice(queries), rng.sample(texts, args.candidates)
        diff = float(np.abs(np.asarray(on.score(q0, d0)) - np.asarray(off.score(q0, d0))).max())
        times: dict[str, list[float]] = {"reuse": [], "whole": []}
        shares: list[float] = []
        for _ in range(args.reps):
            query, docs = rng.choice(queries), rng.sample(texts, args.candidates)
            rows = on._prompt_rows(query, docs)
            from rerankers_plugins.scorers._causal import common_prefix_length

            shares.append(common_prefix_length(rows) / statistics.mean(len(r) for r in rows))
            for name, scorer in (("reuse", on), ("whole", off)):
                t0 = time.perf_counter()
                scorer.score(query, docs)
                times[name].append(time.perf_counter() - t0)
    print(f"CPU: {cpu_line()}; torch threads {torch.get_num_threads()}")
    print(
        f"model: Qwen3ForCausalLM hidden {args.hidden}, {args.layers} layers, float32; "
        f"{args.candidates} SciFact candidates per call, {args.reps} fresh calls per setting"
    )
    print(f"shared prefix: {statistics.median(shares):.0%} of a prompt's tokens (median)")
    print(f"max |score difference| reuse vs whole: {diff:.2e}")
    print("| setting | ms per call (median) |\n|---|---:|")
    for name in ("whole", "reuse"):
        print(f"| {name} | {statistics.median(times[name]) * 1000:.0f} |")
    ratio = statistics.median(times["whole"]) / statistics.median(times["reuse"])
    print(f"reuse is {ratio:.2f}x the speed of running each prompt whole")


if __name__ == "__main__":
    main()
