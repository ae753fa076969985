"""Cross-encoders and causal-LM rerankers, each in its Hub layout, against its reference.

Reference = sentence-transformers' ``CrossEncoder.predict`` on the same directory where it loads the
layout (every sequence-classification model, chat templates and prompts, the >= 5.4 LogitScore
layout); for causal LMs published as a plain ``*ForCausalLM`` the model card's own scoring code,
rewritten here line for line and cited. Tolerance 1e-4 in float32 (measured: <= 3e-6).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hub_layouts import (
    build_gemma_causal,
    build_modernbert_cross_encoder,
    build_qwen2_causal,
    build_qwen3_causal,
    build_qwen3_seq_cls,
    build_st_logit_score,
    build_xlmr_cross_encoder,
)
from tiny import build_cross_encoder

from rerankers_plugins import CrossEncoderScorer
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.types import ScoreScale

TOL = 1e-4
QUERY = "what is the capital city of france"
DOCS = [
    "Paris is the capital city of France.",
    "The cat sat on the mat.",
    "Berlin is the capital of Germany and about 3.7 million people live there.",
    "green apple tree in the day",
    "a",
    "Cancer risk in patients: a study of vitamin and blood, and of the heart and the brain.",
]
WEB = "Given a web search query, retrieve relevant passages that answer the query"


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub")
    return {
        "bert": build_cross_encoder(root / "ms-marco-MiniLM-L-6-v2"),
        "xlmr": build_xlmr_cross_encoder(root / "bge-reranker-v2-m3"),
        "xlmr2": build_xlmr_cross_encoder(root / "xlmr-2-label", num_labels=2, seed=3),
        "modernbert": build_modernbert_cross_encoder(root / "gte-reranker-modernbert-base"),
        "qwen3-seq-cls": build_qwen3_seq_cls(root / "Qwen3-Reranker-0.6B-seq-cls"),
        "qwen3-seq-cls-st6": build_qwen3_seq_cls(
            root / "Qwen3-Reranker-0.6B-seq-cls-STv6", chat_template=True
        ),
        "prompts": build_qwen3_seq_cls(
            root / "ce-with-default-prompt",
            prompts={"web": WEB + ": ", "short": "query: "},
            default_prompt_name="web",
            seed=5,
        ),
        "st-logit-score": build_st_logit_score(root / "Qwen3-Reranker-0.6B-STv54"),
        "qwen3": build_qwen3_causal(root / "Qwen3-Reranker-0.6B"),
        "mxbai": build_qwen2_causal(root / "mxbai-rerank-base-v2"),
        "gemma": build_gemma_causal(root / "bge-reranker-v2-gemma"),
    }


def _predict(directory: Path, activation: Any, **kw: Any) -> np.ndarray:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(directory))
    return np.asarray(model.predict([(QUERY, d) for d in DOCS], activation_fn=activation, **kw))


@pytest.mark.parametrize(
    "family",
    ["bert", "xlmr", "modernbert", "qwen3-seq-cls-st6", "prompts", "st-logit-score"],
)
def test_sentence_transformers_layouts_score_as_predict(layouts: dict[str, Path], family: str) -> None:
    directory = layouts[family]
    ours = CrossEncoderScorer(str(directory), dtype="float32", batch_size=4)
    raw = CrossEncoderScorer(str(directory), dtype="float32", batch_size=4, activation=None)
    assert ours.scale is ScoreScale.PROBABILITY and raw.scale is ScoreScale.LOGIT
    ref_logits = _predict(directory, torch.nn.Identity())
    assert np.ptp(ref_logits) > 0.1  # the random weights separate the candidates
    np.testing.assert_allclose(raw.score(QUERY, DOCS), ref_logits, atol=TOL, rtol=0)
    np.testing.assert_allclose(
        ours.score(QUERY, DOCS), _predict(directory, torch.nn.Sigmoid()), atol=TOL, rtol=0
    )


def test_two_label_head_is_the_relevant_class_probability(layouts: dict[str, Path]) -> None:
    ours = CrossEncoderScorer(str(layouts["xlmr2"]), dtype="float32")
    ref = _predict(layouts["xlmr2"], torch.nn.Identity(), apply_softmax=True)[:, 1]
    np.testing.assert_allclose(ours.score(QUERY, DOCS), ref, atol=TOL, rtol=0)


def test_chat_template_and_default_prompt_change_the_scores(layouts: dict[str, Path]) -> None:
    """What main did before: the pair tokenized bare. The template / default prompt must matter."""
    from sentence_transformers import CrossEncoder

    for family in ("qwen3-seq-cls-st6", "prompts"):
        model = CrossEncoder(str(layouts[family]))
        features = model.tokenizer([QUERY] * len(DOCS), DOCS, padding=True, return_tensors="pt")
        with torch.inference_mode():
            bare = model.model(**features).logits[:, 0].numpy()
        ours = CrossEncoderScorer(str(layouts[family]), dtype="float32", activation=None).score(QUERY, DOCS)
        assert np.abs(np.asarray(ours) - bare).max() > 0.05, family


def test_instruction_replaces_the_default_prompt(layouts: dict[str, Path]) -> None:
    directory = layouts["qwen3-seq-cls-st6"]
    task = "Given a question, retrieve passages about cities"
    ours = CrossEncoderScorer(str(directory), dtype="float32", activation=None, instruction=task)
    ref = _predict(directory, torch.nn.Identity(), prompt=task)
    np.testing.assert_allclose(ours.score(QUERY, DOCS), ref, atol=TOL, rtol=0)
    assert np.abs(ref - _predict(directory, torch.nn.Identity())).max() > 1e-3


# -- a sequence-classification conversion of a causal reranker ---------------------------------------

QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def qwen3_seq_cls_reference(
    directory: Path, query: str, docs: list[str], instruction: str = WEB
) -> np.ndarray:
    """tomaarsen/Qwen3-Reranker-0.6B-seq-cls model card: ``format_queries(query, instruction)`` and
    ``format_document(doc)`` make the pair, which ``CrossEncoder.predict`` scores as the tokenizer's
    plain pair through the one-label head; here in plain transformers (logits, no activation)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    queries = [f"{QWEN3_PREFIX}<Instruct>: {instruction}\n<Query>: {query}\n"] * len(docs)
    documents = [f"<Document>: {doc}{QWEN3_SUFFIX}" for doc in docs]
    inputs = tokenizer(queries, documents, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**inputs).logits[:, 0].float().numpy()


def test_converted_qwen3_seq_cls_scores_as_its_model_card(layouts: dict[str, Path]) -> None:
    # the conversion keeps Qwen3's own chat template, which sentence-transformers 6 applies to every
    # pair and cannot (its roles are system / user / assistant): scored instead as the card does
    directory = layouts["qwen3-seq-cls"]
    assert "chat_template" in json.loads((directory / "tokenizer_config.json").read_text())
    raw = CrossEncoderScorer(str(directory), prompt_format="qwen3", dtype="float32", activation=None)
    ref = qwen3_seq_cls_reference(directory, QUERY, DOCS)
    assert np.ptp(ref) > 0.05
    assert raw.mode == "formatted"
    np.testing.assert_allclose(raw.score(QUERY, DOCS), ref, atol=TOL, rtol=0)
    ours = CrossEncoderScorer(str(directory), prompt_format="qwen3", dtype="float32")
    np.testing.assert_allclose(ours.score(QUERY, DOCS), 1 / (1 + np.exp(-ref)), atol=TOL, rtol=0)
    task = "Given a claim, retrieve passages that support it"
    custom = CrossEncoderScorer(
        str(directory), prompt_format="qwen3", dtype="float32", activation=None, instruction=task
    )
    np.testing.assert_allclose(
        custom.score(QUERY, DOCS), qwen3_seq_cls_reference(directory, QUERY, DOCS, task), atol=TOL, rtol=0
    )


def test_a_chat_template_that_cannot_carry_a_pair_is_refused_with_what_to_pass(
    layouts: dict[str, Path],
) -> None:
    with pytest.raises(ConfigError, match=r"prompt_format.*\['qwen3'\].*chat_template"):
        CrossEncoderScorer(str(layouts["qwen3-seq-cls"]), dtype="float32")
    with pytest.raises(ConfigError, match="prompt_format='mxbai-v2' is for causal-LM rerankers"):
        CrossEncoderScorer(str(layouts["qwen3-seq-cls"]), prompt_format="mxbai-v2", dtype="float32")


def test_the_converted_hub_id_is_scored_with_its_card_format(
    layouts: dict[str, Path], tmp_path: Path
) -> None:
    # the exact Hub id names its format (as the causal Qwen3-Reranker ids do); a local Hub cache
    # holds the checkpoint, as `hf download` leaves it
    import shutil

    commit = "c" * 40
    folder = tmp_path / "hub" / "models--tomaarsen--Qwen3-Reranker-0.6B-seq-cls"
    shutil.copytree(layouts["qwen3-seq-cls"], folder / "snapshots" / commit)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    hub = CrossEncoderScorer(
        "tomaarsen/Qwen3-Reranker-0.6B-seq-cls",
        hub_cache_dir=str(tmp_path / "hub"),
        local_files_only=True,
        dtype="float32",
        activation=None,
    )
    assert hub.prompt_format == "qwen3" and hub.mode == "formatted"
    ref = qwen3_seq_cls_reference(layouts["qwen3-seq-cls"], QUERY, DOCS)
    np.testing.assert_allclose(hub.score(QUERY, DOCS), ref, atol=TOL, rtol=0)


# -- causal LMs published as plain *ForCausalLM: references from each model card ------------------


def _load(directory: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, padding_side="left")
    return tokenizer, AutoModelForCausalLM.from_pretrained(directory).eval()


def qwen3_reference(
    directory: Path, query: str, docs: list[str], instruction: str | None, max_length: int
) -> np.ndarray:
    """Qwen/Qwen3-Reranker-0.6B model card, "Transformers Usage" (format_instruction, process_inputs,
    compute_logits), with the card's default instruction."""
    tokenizer, model = _load(directory)
    token_false_id = tokenizer.convert_tokens_to_ids("no")
    token_true_id = tokenizer.convert_tokens_to_ids("yes")
    prefix = (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
        'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    )
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    prefix_tokens = tokenizer.encode(prefix, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(suffix, add_special_tokens=False)
    if instruction is None:
        instruction = WEB
    pairs = [f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}" for doc in docs]
    inputs = tokenizer(
        pairs,
        padding=False,
        truncation="longest_first",
        return_attention_mask=False,
        max_length=max_length - len(prefix_tokens) - len(suffix_tokens),
    )
    for i, ele in enumerate(inputs["input_ids"]):
        inputs["input_ids"][i] = prefix_tokens + ele + suffix_tokens
    with warnings.catch_warnings():  # the card passes max_length, which pad(padding=True) ignores
        warnings.simplefilter("ignore", UserWarning)
        inputs = tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)
    with torch.inference_mode():
        batch_scores = model(**inputs).logits[:, -1, :]
    true_vector = batch_scores[:, token_true_id]
    false_vector = batch_scores[:, token_false_id]
    batch_scores = torch.stack([false_vector, true_vector], dim=1)
    batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
    return batch_scores[:, 1].exp().numpy()


def mxbai_v2_reference(
    directory: Path, query: str, docs: list[str], instruction: str | None, max_length: int
) -> np.ndarray:
    """mixedbread-ai/mxbai-rerank, mxbai_rerank/mxbai_rerank_v2.py: prepare_predefined_inputs,
    prepare_inputs, forward (``logits`` = yes - no). ``tokenizer.prepare_for_model(q, sep + d,
    truncation="only_second", max_length)`` (gone from transformers 5) is written out: the second
    sequence cut from its end."""
    tokenizer, model = _load(directory)

    def ids(x: str, **kw: Any) -> list[int]:
        return tokenizer(x, return_tensors=None, add_special_tokens=False, **kw)["input_ids"]

    yes_loc, no_loc = ids("1")[0], ids("0")[0]
    task = ids(
        "You are a search relevance expert who evaluates how well documents match search queries. For each "
        "query-document pair, carefully analyze the semantic relationship between them, then provide your "
        "binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
    )
    sep = ids("\n")
    prefix = ids(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n"
    )
    suffix = ids("<|im_end|>\n<|im_start|>assistant\n")
    model_max_length = min(tokenizer.model_max_length, 10**9)
    predefined = len(prefix) + len(task) + len(suffix) + len(sep)
    if max_length + predefined > model_max_length:
        max_length = model_max_length - predefined
    rows = []
    for doc in docs:
        query_prompt = f"query: {query}"
        if instruction:
            query_prompt = f"instruction: {instruction}\n{query_prompt}"
        q = ids(query_prompt, max_length=max_length * 3 // 4, truncation=True)
        d = ids(f"document: {doc}", max_length=min(model_max_length - len(q), max_length), truncation=True)
        item = q + (sep + d)[: max_length - len(q)]
        rows.append({"input_ids": prefix + item + sep + task + suffix})
    for r in rows:
        r["attention_mask"] = [1] * len(r["input_ids"])
    inputs = tokenizer.pad(rows, padding="longest", pad_to_multiple_of=8, return_tensors="pt")
    with torch.inference_mode():
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    return (logits[:, -1, yes_loc] - logits[:, -1, no_loc]).float().numpy()


def bge_gemma_reference(
    directory: Path, query: str, docs: list[str], instruction: str | None, max_length: int
) -> np.ndarray:
    """BAAI/bge-reranker-v2-gemma model card, "Using Huggingface transformers" (get_inputs, then
    ``logits[:, -1, yes_loc]``); ``prepare_for_model`` written out as in :func:`mxbai_v2_reference`."""
    tokenizer, model = _load(directory)
    prompt = instruction or (
        "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
        "providing a prediction of either 'Yes' or 'No'."
    )
    sep = "\n"
    prompt_inputs = tokenizer(prompt, return_tensors=None, add_special_tokens=False)["input_ids"]
    sep_inputs = tokenizer(sep, return_tensors=None, add_special_tokens=False)["input_ids"]
    inputs = []
    for doc in docs:
        query_inputs = tokenizer(
            f"A: {query}",
            return_tensors=None,
            add_special_tokens=False,
            max_length=max_length * 3 // 4,
            truncation=True,
        )
        passage_inputs = tokenizer(
            f"B: {doc}", return_tensors=None, add_special_tokens=False, max_length=max_length, truncation=True
        )
        first = [tokenizer.bos_token_id, *query_inputs["input_ids"]]
        item = first + (sep_inputs + passage_inputs["input_ids"])[: max_length - len(first)]
        ids = item + sep_inputs + prompt_inputs
        inputs.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    batch = tokenizer.pad(inputs, padding=True, pad_to_multiple_of=8, return_tensors="pt")
    yes_loc = tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    with torch.inference_mode():
        return model(**batch, return_dict=True).logits[:, -1, yes_loc].view(-1).float().numpy()


CAUSAL = {
    "qwen3": ("qwen3", qwen3_reference, True),  # the reference returns P(yes)
    "mxbai": ("mxbai-v2", mxbai_v2_reference, False),  # raw yes - no logit
    "gemma": ("bge-gemma", bge_gemma_reference, False),  # raw "Yes" logit
}


@pytest.mark.parametrize("family", sorted(CAUSAL))
@pytest.mark.parametrize("max_length", [None, "short"])
@pytest.mark.parametrize("reuse_prefix", [True, False])
def test_causal_rerankers_score_as_their_model_cards(
    layouts: dict[str, Path], family: str, max_length: int | str | None, reuse_prefix: bool
) -> None:
    """``"short"`` cuts most documents: Qwen3's window counts its template, the others' do not."""
    prompt_format, reference, probability = CAUSAL[family]
    if max_length == "short":
        max_length = 172 if family == "qwen3" else 30
    ours = CrossEncoderScorer(
        str(layouts[family]),
        prompt_format=prompt_format,
        dtype="float32",
        batch_size=4,
        activation="sigmoid" if probability else None,
        max_length=max_length,
        reuse_prefix=reuse_prefix,
    )
    got = ours.score(QUERY, DOCS)
    if max_length is not None:  # the window cuts some documents (warned once) and not others
        assert ours._truncation.warned and len(set(ours.pair_lengths(QUERY, DOCS))) > 1
    ref = reference(layouts[family], QUERY, DOCS, None, max_length or ours.max_length)
    assert np.ptp(ref) > (0.01 if probability else 0.1)
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("family", sorted(CAUSAL))
def test_causal_instruction_option(layouts: dict[str, Path], family: str) -> None:
    prompt_format, reference, probability = CAUSAL[family]
    task = "Given a question about cities, retrieve passages that name its capital"
    ours = CrossEncoderScorer(
        str(layouts[family]),
        prompt_format=prompt_format,
        instruction=task,
        dtype="float32",
        activation="sigmoid" if probability else None,
    )
    ref = reference(layouts[family], QUERY, DOCS, task, ours.max_length)
    np.testing.assert_allclose(ours.score(QUERY, DOCS), ref, atol=TOL, rtol=0)
    assert np.abs(ref - reference(layouts[family], QUERY, DOCS, None, ours.max_length)).max() > 1e-4


def test_a_window_smaller_than_the_template_is_refused(layouts: dict[str, Path]) -> None:
    ours = CrossEncoderScorer(
        str(layouts["qwen3"]), prompt_format="qwen3", dtype="float32", max_length=16, warmup=False
    )
    with pytest.raises(ConfigError, match="max_length=16 leaves no room"):
        ours.score(QUERY, DOCS)


def test_causal_scale_is_probability_of_yes(layouts: dict[str, Path]) -> None:
    prob = CrossEncoderScorer(str(layouts["mxbai"]), prompt_format="mxbai-v2", dtype="float32")
    logit = CrossEncoderScorer(
        str(layouts["mxbai"]), prompt_format="mxbai-v2", dtype="float32", activation=None
    )
    assert prob.scale is ScoreScale.PROBABILITY and logit.scale is ScoreScale.LOGIT
    np.testing.assert_allclose(
        prob.score(QUERY, DOCS), 1 / (1 + np.exp(-np.asarray(logit.score(QUERY, DOCS)))), atol=1e-6
    )


def test_prefix_is_run_once_per_call(layouts: dict[str, Path]) -> None:
    """With reuse_prefix the tokens every prompt starts with go through the model once; the
    candidates' own tokens are all the batches hold."""
    ours = CrossEncoderScorer(str(layouts["qwen3"]), prompt_format="qwen3", dtype="float32", batch_size=8)
    assert ours._causal is not None
    seen: list[tuple[int, int]] = []
    net = ours._causal.model
    original = net.forward

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(tuple(kwargs["input_ids"].shape))
        return original(*args, **kwargs)

    net.forward = recording
    rows = ours._prompt_rows(QUERY, DOCS)
    ours.score(QUERY, DOCS)
    shared = ours._causal.model is net and min(len(r) for r in rows)
    assert seen[0][0] == 1 and seen[0][1] >= 40  # the prefix, once: system text, instruction, query
    assert all(shape[0] > 1 or len(DOCS) == 1 for shape in seen[1:])
    assert sum(b * w for b, w in seen) < sum(len(r) for r in rows)  # fewer tokens than running each row whole
    assert shared


def test_st_logit_score_layout_is_read_from_its_modules(layouts: dict[str, Path]) -> None:
    ours = CrossEncoderScorer(str(layouts["st-logit-score"]), dtype="float32")
    assert ours.mode == "st-causal"
    modules = json.loads((layouts["st-logit-score"] / "modules.json").read_text())
    assert any(m["type"].endswith("LogitScore") for m in modules)


# -- refusals that name what can score the checkpoint ------------------------------------------


def test_plain_causal_lm_without_a_format_is_refused(layouts: dict[str, Path]) -> None:
    with pytest.raises(
        ConfigError, match=r"causal language model.*prompt_format=.*'qwen3'.*LLMPointwiseScorer"
    ):
        CrossEncoderScorer(str(layouts["qwen3"]))


def test_format_on_a_cross_encoder_is_refused(layouts: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="prompt_format='qwen3' is for causal-LM rerankers"):
        CrossEncoderScorer(str(layouts["xlmr"]), prompt_format="qwen3")
    with pytest.raises(ConfigError, match="prompt_format must be one of"):
        CrossEncoderScorer(str(layouts["qwen3"]), prompt_format="llama")


def test_three_label_head_is_refused(tmp_path: Path) -> None:
    directory = build_xlmr_cross_encoder(tmp_path / "nli", num_labels=3)
    with pytest.raises(ConfigError, match=r"3 output labels.*NLI"):
        CrossEncoderScorer(str(directory))


def test_encoder_decoder_is_sent_to_seq2seq(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["T5ForConditionalGeneration"], "model_type": "t5"})
    )
    with pytest.raises(ConfigError, match=r"Seq2SeqScorer"):
        CrossEncoderScorer(str(tmp_path))


def test_listwise_remote_code_model_is_refused(tmp_path: Path) -> None:
    """jina-reranker-v3 style: a listwise model whose class lives in its own remote code."""
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["JinaForRanking"],
                "model_type": "qwen3",
                "auto_map": {"AutoModel": "modeling.JinaForRanking"},
            }
        )
    )
    with pytest.raises(
        ConfigError, match=r"neither a sequence-classification cross-encoder nor a causal-LM reranker.*Ranker"
    ):
        CrossEncoderScorer(str(tmp_path))
