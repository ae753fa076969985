"""Cross-encoder reranking: sequence-classification cross-encoders and causal-LM (yes/no) rerankers.

Four ways a checkpoint is read, chosen from its files (never from its name):

``pairs``       a plain sentence-transformers / transformers cross-encoder (BERT, XLM-R, ModernBERT,
                Qwen3 seq-cls without a template): loaded by sentence-transformers and run by us; each
                call tokenizes its pairs once, sorts them by *token* length before batching, runs the
                weights in the chosen dtype or through ONNX Runtime (``backend="onnx"`` /
                ``"onnx-int8"``).
``preprocess``  a cross-encoder whose sentence-transformers config gives it a chat template (query /
                document roles), prompts or a default prompt, or processing options: every batch goes
                through sentence-transformers' own ``preprocess`` with the prompt ``predict()`` would
                use, so the template's instruction and roles are applied exactly.
``st-causal``   a causal LM saved by sentence-transformers >= 5.4 with a ``LogitScore`` module
                (Qwen3-Reranker-STv54, zerank-2): tokenized by sentence-transformers, scored as
                ``logit[true] - logit[false]`` at the last position, as that module does.
``causal``      a causal LM published as a plain ``*ForCausalLM`` (Qwen3-Reranker, mxbai-rerank-v2,
                bge-reranker-v2-gemma): the model card's prompt, token for token
                (:data:`~rerankers_plugins.scorers._causal.PROMPT_FORMATS`), named by ``prompt_format=``
                or known from the exact Hub id.

In both causal modes the prompt's common prefix (system text, instruction, query) runs once per call
and its key/value cache is shared by every candidate (``reuse_prefix``). Logits are upcast to float32
before the activation so scores on a declared scale come out.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Unpack

from rerankers_plugins._checks import as_int
from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.ops.batching import length_sorted_batches, restore_order
from rerankers_plugins.scorers._causal import (
    KNOWN_CAUSAL_RERANKERS,
    PROMPT_FORMATS,
    CausalLogits,
    PromptFormat,
)
from rerankers_plugins.scorers._hf import (
    Checkpoint,
    DTypeName,
    LoadKwargs,
    TruncationReport,
    load_options,
    resolve_dtype,
)
from rerankers_plugins.scorers._onnx import BACKENDS, BackendName, OnnxCrossEncoder
from rerankers_plugins.scorers.base import BaseScorer
from rerankers_plugins.types import ScoreScale

__all__ = ["CrossEncoderScorer"]

logger = logging.getLogger(__name__)

_ACTIVATIONS = ("sigmoid", None)


def _architectures(model: Any) -> list[str]:
    """``architectures`` of a local directory's config.json (``model`` a path) or of a loaded
    CrossEncoder; empty when unknown."""
    if isinstance(model, str):
        try:
            config_json = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []  # no readable config: the loader reports what is wrong
        return [str(a) for a in config_json.get("architectures") or []]
    config = getattr(getattr(model, "model", None), "config", None)
    return [str(a) for a in getattr(config, "architectures", None) or []]


def _st_logit_score(directory: str) -> bool:
    """Whether a local directory is a sentence-transformers causal reranker (a LogitScore module)."""
    try:
        entries = json.loads((Path(directory) / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any(str(e.get("type", "")).endswith("LogitScore") for e in entries)


_FORMATS_HINT = ", ".join(f"{name!r} ({f.source})" for name, f in PROMPT_FORMATS.items())


def _refusal(model_id: str, architectures: Sequence[str]) -> str | None:
    """Why a checkpoint with these architectures cannot be scored as a cross-encoder, naming what can;
    None when it can (a sequence-classification head)."""
    if not architectures or any(a.endswith("ForSequenceClassification") for a in architectures):
        return None
    archs = ", ".join(architectures)
    if any(a.endswith("ForCausalLM") for a in architectures):
        return (
            f"{model_id!r} is a causal language model ({archs}) without sentence-transformers' LogitScore "
            "module, so how its prompt is written is not in its files. If it is a yes/no reranker, name "
            f"its published prompt: CrossEncoderScorer({model_id!r}, prompt_format=...), one of {_FORMATS_HINT}. "
            "A general chat model reranks through LLMPointwiseScorer or LLMListwiseScorer."
        )
    if any(a.endswith("ForConditionalGeneration") for a in architectures):
        return (
            f"{model_id!r} is an encoder-decoder model ({archs}): score MonoT5 / RankT5 rerankers with "
            f"Seq2SeqScorer({model_id!r})."
        )
    if any(a.endswith(("Model", "ForMaskedLM", "ForPreTraining")) or "ColBERT" in a for a in architectures):
        return (
            f"{model_id!r} has no classification head (its architectures: {archs}): it is an encoder or "
            "embedding model, so a cross-encoder on it would score with random weights. "
            f"Use BiEncoderScorer({model_id!r}) or ColBERTScorer({model_id!r}) for an embedding model, "
            "or fine-tune a cross-encoder from it (`rerankers-plugins train`)."
        )
    return (
        f"{model_id!r} ({archs}) is neither a sequence-classification cross-encoder nor a causal-LM "
        "reranker, so CrossEncoderScorer cannot score it as its authors do. A listwise or remote-code "
        "reranker can be wrapped as a Ranker (a `rank(query, texts) -> list[int]` object) or called from "
        "a function given to LLMListwiseScorer."
    )


def _check_options(
    activation: str | None,
    batch_size: int,
    max_length: int | None,
    backend: str,
    prompt_format: str | None,
    instruction: str | None,
) -> None:
    if activation not in _ACTIVATIONS:
        raise ConfigError(f"activation must be 'sigmoid' or None, got {activation!r}")
    as_int(batch_size, "batch_size", minimum=1)
    as_int(max_length, "max_length", minimum=8, allow_none=True)
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if prompt_format is not None and prompt_format not in PROMPT_FORMATS:
        raise ConfigError(
            f"prompt_format must be one of {sorted(PROMPT_FORMATS)} or None, got {prompt_format!r}"
        )
    if instruction is not None and not isinstance(instruction, str):
        raise ConfigError(f"instruction must be a string or None, got {instruction!r}")


def _logit_score_module(model: Any) -> Any | None:
    """The LogitScore module of a sentence-transformers causal reranker, or None."""
    for module in model:
        if type(module).__name__ == "LogitScore":
            return module
    return None


def _require_reranker_head(model: Any, model_id: str) -> None:
    """Refuse a checkpoint without a trained relevance head (an embedding model loaded as a
    cross-encoder gets a randomly initialised head: every score about the same, silently)."""
    why = _refusal(model_id, _architectures(model))
    if why is not None:
        raise ConfigError(why)


class CrossEncoderScorer(BaseScorer):
    """Score (query, text) pairs jointly with a cross-encoder or a causal-LM reranker.

    Args:
        model: a Hugging Face Hub id (``"cross-encoder/ms-marco-MiniLM-L-6-v2"``,
            ``"Qwen/Qwen3-Reranker-0.6B"``) or a local directory.
        device: ``None`` picks CUDA when present, else CPU; or any torch device string.
        max_length: token window for query + text; longer pairs are truncated (warned once).
            ``None`` uses the model's own limit (a causal prompt format's: its model card's).
        batch_size: pairs per forward pass.
        dtype: ``"auto"`` (bfloat16 on CUDA with bf16, on CPUs with AMX-BF16, and on CPUs with
            AVX512-BF16 where a one-off probe finds it faster; else float32), ``"float32"``, ``"bfloat16"`` or ``"float16"`` (CUDA only).
        activation: ``"sigmoid"`` (default) maps a one-label model's logit to 0..1, scale
            PROBABILITY; for a two-label model it is the softmax probability of label 1; for a
            causal reranker it is sigmoid(logit[yes] - logit[no]) = P(yes) against "no" (or
            sigmoid(logit[yes]) where the model reads one answer token). ``None`` returns raw logits
            (two-label: logit difference), scale LOGIT.
        max_batch_tokens: cap on padded tokens per forward pass (items x longest item). ``"auto"``
            chooses by device and thread count (:func:`resolve_max_batch_tokens`): on CPU 1024
            tokens per thread (at most 8192), no cap on accelerators. ``None``: only ``batch_size``
            applies.
        backend: ``"torch"`` (default), or ONNX Runtime on CPU: ``"onnx"`` (float32) or
            ``"onnx-int8"`` (weights int8 per channel, activations quantised per call; faster on
            CPUs with integer dot-product instructions, scores within about 0.01 of float32 but not
            equal: measure agreement on your data). The graph is exported once and cached under
            ``~/.cache/rerankers-plugins/onnx`` (``RERANKERS_CACHE``), keyed by the weights; needs the
            ``onnx`` extra. Sequence-classification models without prompts only.
        warmup: run one short pair at load, so the first call does not pay one-off set-up work.
        prompt_format: for a causal LM published without sentence-transformers files, the prompt its
            authors publish: ``"qwen3"`` (Qwen3-Reranker), ``"mxbai-v2"`` (mxbai-rerank-v2),
            ``"bge-gemma"`` (bge-reranker-v2-gemma). Known from the exact Hub id for those models.
        instruction: the task instruction of an instruction-following reranker (Qwen3-Reranker's
            ``<Instruct>``, mxbai-v2's ``instruction:``, bge-gemma's closing prompt, or the system
            message / prompt of a sentence-transformers checkpoint). ``None`` keeps the model's
            default (its ``default_prompt_name`` prompt, or the model card's instruction).
        reuse_prefix: in causal rerankers, run the tokens every prompt of a call starts with once
            and share their key/value cache across the candidates (same scores, less compute).
        **load: how the checkpoint is fetched and built, as sentence-transformers takes it
            (``revision``, ``trust_remote_code``, ``local_files_only``, ``hub_cache_dir``,
            ``model_kwargs``, ``tokenizer_kwargs``, ``config_kwargs``: :class:`~rerankers_plugins.scorers._hf.LoadOptions`).
    """

    rebuild_on_copy = True  # a copy reloads the model from its files

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
        dtype: DTypeName = "auto",
        activation: str | None = "sigmoid",
        max_batch_tokens: int | Literal["auto"] | None = "auto",
        backend: BackendName = "torch",
        warmup: bool = True,
        prompt_format: str | None = None,
        instruction: str | None = None,
        reuse_prefix: bool = True,
        **load: Unpack[LoadKwargs],
    ) -> None:
        _check_options(activation, batch_size, max_length, backend, prompt_format, instruction)
        self._torch = require("torch", "cross-encoder")
        self.backend = backend
        self.checkpoint = Checkpoint.open(
            model,
            device=device,
            dtype=dtype,
            max_batch_tokens=max_batch_tokens,
            options=load_options(type(self).__name__, load),
            precision=self._resolve_precision,
        )
        self.device, self.dtype = self.checkpoint.device, self.checkpoint.dtype
        self.max_batch_tokens = self.checkpoint.max_batch_tokens
        self.batch_size = batch_size
        self.activation = activation
        self.name = model
        self.model_id = model
        self.instruction = instruction
        self.reuse_prefix = bool(reuse_prefix)
        self.prompt_format = prompt_format or KNOWN_CAUSAL_RERANKERS.get(model)
        self._format: PromptFormat | None = None
        self._causal: CausalLogits | None = None
        self._onnx: OnnxCrossEncoder | None = None
        self._tokenizer_lock = self.checkpoint.tokenizer_lock
        local = self.checkpoint.local
        if self.prompt_format is not None:
            self._load_prompted_causal(max_length)
        else:
            if local is not None and not _st_logit_score(local):
                _require_reranker_head(local, self.model_id)
            self._load_sentence_transformers(max_length)
        self.scale = ScoreScale.PROBABILITY if activation == "sigmoid" else ScoreScale.LOGIT
        self._truncation = TruncationReport(f"CrossEncoderScorer({model!r})")
        logger.debug(
            "loaded cross-encoder %s (%s) on %s as %s, backend %s (max_length=%d, max_batch_tokens=%s)",
            model,
            self.mode,
            self.device,
            self.dtype,
            backend,
            self.max_length,
            self.max_batch_tokens,
        )
        if warmup:
            # One short pair through the whole path: the first user call then pays none of the
            # one-off costs (kernel selection, thread pool start-up, the tokenizer's first call).
            self.score("warm up", ["warm up"])

    def _resolve_precision(self, dtype: str, device: str) -> Any:
        if self.backend == "torch":
            return resolve_dtype(dtype, device)
        require("onnxruntime", "onnx")
        if device != "cpu":
            raise ConfigError(f"backend={self.backend!r} runs on CPU; use backend='torch' on {device!r}")
        if dtype not in ("auto", "float32"):
            raise ConfigError(
                f"backend={self.backend!r} sets its own precision; leave dtype='auto', got {dtype!r}"
            )
        return self._torch.float32

    def _load_prompted_causal(self, max_length: int | None) -> None:
        """A plain ``*ForCausalLM`` scored with its authors' prompt (``mode == "causal"``)."""
        transformers = require("transformers", "cross-encoder")
        fmt = PROMPT_FORMATS.get(str(self.prompt_format))
        if fmt is None:
            raise ConfigError(
                f"prompt_format must be one of {sorted(PROMPT_FORMATS)}, got {self.prompt_format!r}"
            )
        if self.backend != "torch":
            raise ConfigError(
                f"backend={self.backend!r} runs sequence-classification models; use backend='torch'"
            )
        ckpt = self.checkpoint
        if ckpt.local is not None:
            archs = _architectures(ckpt.local)
            if archs and not any(a.endswith("ForCausalLM") for a in archs):
                raise ConfigError(
                    f"prompt_format={fmt.name!r} is for causal-LM rerankers, but {self.model_id!r} is "
                    f"{', '.join(archs)}; leave prompt_format unset for a cross-encoder"
                )

        def load() -> tuple[Any, Any]:
            config = transformers.AutoConfig.from_pretrained(ckpt.path, **ckpt.options.config())
            tok = transformers.AutoTokenizer.from_pretrained(ckpt.path, **ckpt.options.tokenizer())
            net = transformers.AutoModelForCausalLM.from_pretrained(
                ckpt.path, config=config, **ckpt.options.model()
            )
            return tok, net

        self._tokenizer, net = ckpt.load("causal-LM reranker", load, cls="CrossEncoderScorer")
        net = net.to(self.device)
        if self.dtype != self._torch.float32:
            net = net.to(self.dtype)
        net.eval()
        self._format = fmt
        self.mode = "causal"
        self.max_length = int(max_length or fmt.default_max_length)
        if self.instruction is None:
            self.instruction = fmt.default_instruction
        true_id, false_id = fmt.answer_ids(self._tokenizer)
        self._causal = self._logits(net, true_id, false_id, self._tokenizer)
        self.num_labels = 1
        self._model: Any = None
        self._prompt: str | None = None

    def _logits(self, net: Any, true_id: int, false_id: int | None, tokenizer: Any) -> CausalLogits:
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        return CausalLogits(
            net,
            true_id=int(true_id),
            false_id=None if false_id is None else int(false_id),
            pad_id=int(pad),
            device=self.device,
            batch_size=self.batch_size,
            max_batch_tokens=self.max_batch_tokens,
            reuse_prefix=self.reuse_prefix,
        )

    def _load_sentence_transformers(self, max_length: int | None) -> None:
        """Anything sentence-transformers loads as a CrossEncoder (modes pairs / preprocess / st-causal)."""
        st = require("sentence_transformers", "cross-encoder")
        ckpt = self.checkpoint
        options = ckpt.options.sentence_transformers(st.CrossEncoder)
        self._model = ckpt.load(
            "cross-encoder",
            lambda: st.CrossEncoder(ckpt.path, device=self.device, max_length=max_length, **options),
            cls="CrossEncoderScorer",
        )
        logit_score = _logit_score_module(self._model)
        if logit_score is None:
            _require_reranker_head(self._model, self.model_id)
        self.num_labels = int(self._model.num_labels)
        if self.num_labels not in (1, 2):
            raise ConfigError(
                f"{self.model_id!r} has {self.num_labels} output labels; a relevance cross-encoder has 1 "
                "(a score) or 2 (not relevant / relevant). A 3-label head is an NLI or classification "
                "model: fine-tune a relevance cross-encoder from it (`rerankers-plugins train`)."
            )
        if self.dtype != self._torch.float32:
            self._model.to(self.dtype)
        self._model.eval()
        self.max_length = int(self._model.max_seq_length or 512)
        self._tokenizer = self._model.tokenizer
        first = self._model[0] if len(self._model) else None
        # the prompt predict() applies when it is given none (the default prompt), or the instruction
        self._prompt = (
            self.instruction if self.instruction is not None else self._model._resolve_prompt(None, None)
        )
        modalities = getattr(first, "modality_config", None) or {}
        if logit_score is not None:
            self.mode = "st-causal"
            self._causal = self._logits(
                self._model.model, logit_score.true_token_id, logit_score.false_token_id, self._tokenizer
            )
        elif (
            self._prompt
            or "message" in modalities
            or getattr(first, "processing_kwargs", None)
            or len(self._model) > 1
        ):
            # a chat template (query / document roles), a prompt or processing options:
            # sentence-transformers' own preprocess per batch, as predict() runs it
            self.mode = "preprocess"
        else:
            self.mode = "pairs"
        self._setup_pairs()

    def _setup_pairs(self) -> None:
        self._n_special = int(self._tokenizer.num_special_tokens_to_add(pair=True))
        names = tuple(getattr(self._tokenizer, "model_input_names", ()) or ())
        hf = self._model.model
        accepted = set(inspect.signature(hf.forward).parameters) if hf is not None else set(names)
        # what the tokenizer makes *and* the model takes (a DistilBERT behind a BERT tokenizer has
        # no token_type_ids), as sentence-transformers filters them
        self._inputs = tuple(
            n for n in ("input_ids", "token_type_ids", "attention_mask") if n in names and n in accepted
        ) or ("input_ids", "attention_mask")
        self._pad_id = int(self._tokenizer.pad_token_id or 0)
        self._pad_left = getattr(self._tokenizer, "padding_side", "right") == "left"
        if self.backend != "torch":
            if self.mode != "pairs" or self._model.model is None:
                raise ConfigError(
                    f"backend={self.backend!r} needs a checkpoint whose relevance head is part of its "
                    f"transformers model; {self.model_id!r} has extra sentence-transformers modules, "
                    "a chat template, prompts or processing options: use backend='torch'"
                )
            self._onnx = OnnxCrossEncoder(
                self._model.model,
                source=self.checkpoint.path,
                digest=self.checkpoint.digest,
                inputs=self._inputs,
                quantize=self.backend == "onnx-int8",
                threads=self._torch.get_num_threads(),
            )

    def __repr__(self) -> str:
        backend = "" if self.backend == "torch" else f", backend={self.backend!r}"
        return (
            f"CrossEncoderScorer({self.model_id!r}, device={self.device!r}, "
            f"dtype={str(self.dtype).removeprefix('torch.')!r}{backend}, scale={self.scale.value})"
        )

    def _encode(self, query: str, texts: Sequence[str]) -> tuple[list[dict[str, list[int]]], int]:
        """Tokenize every (query, text) pair once, truncated to the window the way
        sentence-transformers does it (``longest_first``): the token ids per pair, and how many
        pairs were cut."""
        with self._tokenizer_lock:
            enc = self._tokenizer(
                [query] * len(texts),
                list(texts),
                truncation="longest_first",
                max_length=self.max_length,
                return_attention_mask=False,
            )
        names = [n for n in self._inputs if n != "attention_mask" and n in enc]
        rows = [{n: enc[n][i] for n in names} for i in range(len(texts))]
        encodings = getattr(enc, "encodings", None)
        if encodings:  # fast tokenizers keep what truncation cut
            over = sum(1 for e in encodings if e.overflowing)
        else:  # a slow tokenizer: count the full pair lengths instead
            over = sum(f > self.max_length for f in self._full_pair_lengths(query, texts))
        return rows, over

    def _full_pair_lengths(self, query: str, texts: Sequence[str]) -> list[int]:
        """Token length of each pair before truncation (capped one past the window per text)."""
        with self._tokenizer_lock:
            lengths = self._truncation.lengths(self._tokenizer, [query, *texts], self.max_length)
        return [lengths[0] + d + self._n_special for d in lengths[1:]]

    def pair_lengths(self, query: str, texts: Sequence[str]) -> list[int]:
        """Token length of each (query, text) pair as the model sees it, after truncation."""
        if not texts:
            return []
        if self._format is not None:
            return [len(r) for r in self._prompt_rows(query, texts)]
        rows, over = self._encode(query, texts)
        self._truncation.check(over, len(rows), self.max_length)
        return [len(r["input_ids"]) for r in rows]

    def fingerprint(self) -> Mapping[str, Any]:
        settings = {
            "model": self.name,
            "activation": self.activation,
            "max_length": self.max_length,
            "dtype": str(self.dtype),
        }
        # the checkpoint's files (module folders included) and revision: a model retrained in
        # place is another model
        settings.update(self.checkpoint.fingerprint())
        if self.backend != "torch":  # int8 scores differ from float32: never share cache entries
            settings["backend"] = self.backend
        if self.prompt_format is not None:
            settings["prompt_format"] = self.prompt_format
        instruction = self.instruction if self._format is not None else self._prompt
        if instruction is not None:
            settings["instruction"] = instruction
        return settings

    def _collate(self, rows: Sequence[dict[str, list[int]]], batch: Sequence[int]) -> dict[str, Any]:
        """Pad one batch of token rows into int64 arrays ``[len(batch), longest]`` (padding on the
        tokenizer's side, attention mask 0 there), as ``tokenizer.pad`` would."""
        np = require("numpy", "cross-encoder")
        width = max(len(rows[i]["input_ids"]) for i in batch)
        arrays = {
            name: np.full((len(batch), width), self._pad_id if name == "input_ids" else 0, dtype=np.int64)
            for name in self._inputs
        }
        for r, i in enumerate(batch):
            n = len(rows[i]["input_ids"])
            cols = slice(width - n, width) if self._pad_left else slice(0, n)
            for name, array in arrays.items():
                array[r, cols] = 1 if name == "attention_mask" else rows[i][name]
        return arrays

    def _forward(self, rows: Sequence[dict[str, list[int]]], batch: Sequence[int]) -> list[float]:
        """Scores of one batch, on this scorer's scale."""
        torch = self._torch
        arrays = self._collate(rows, batch)
        if self._onnx is not None:
            logits = torch.from_numpy(self._onnx.logits(arrays)).float()
        else:
            features: dict[str, Any] = {k: torch.from_numpy(v).to(self.device) for k, v in arrays.items()}
            features["modality"] = "text"
            with torch.inference_mode():
                logits = self._model(features)["scores"].float()
        return [float(x) for x in self._activate(logits).tolist()]

    def _batches(self, query: str, texts: Sequence[str]) -> list[list[int]]:
        """Length-sorted batches of the pairs by their bare token length (modes that tokenize per batch)."""
        full = self._full_pair_lengths(query, texts)
        self._truncation.check(sum(f > self.max_length for f in full), len(full), self.max_length)
        return length_sorted_batches(
            [min(f, self.max_length) for f in full], self.batch_size, self.max_batch_tokens
        )

    def _score_with_preprocess(self, query: str, texts: Sequence[str]) -> list[float]:
        """sentence-transformers' own preprocess per batch, with the prompt predict() uses."""
        torch = self._torch
        batches = self._batches(query, texts)
        out: list[float] = []
        with torch.inference_mode():
            for batch in batches:
                with self._tokenizer_lock:
                    features = self._model.preprocess([(query, texts[i]) for i in batch], prompt=self._prompt)
                features = {
                    k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()
                }
                out.extend(float(x) for x in self._activate(self._model(features)["scores"].float()).tolist())
        return restore_order(batches, out)

    def _st_rows(self, query: str, texts: Sequence[str]) -> list[list[int]]:
        """Token rows of a sentence-transformers causal reranker, as its preprocess makes them
        (chat template, prompt, truncation), without their padding."""
        self._batches(query, texts)  # the truncation warning
        with self._tokenizer_lock:
            features = self._model.preprocess([(query, t) for t in texts], prompt=self._prompt)
        ids, mask = features["input_ids"], features["attention_mask"]
        return [
            [int(t) for t, m in zip(row, keep, strict=True) if m]
            for row, keep in zip(ids.tolist(), mask.tolist(), strict=True)
        ]

    def _prompt_rows(self, query: str, texts: Sequence[str]) -> list[list[int]]:
        """Token rows in the model card's prompt format; warns once when a pair is cut."""
        fmt = self._format
        assert fmt is not None
        with self._tokenizer_lock:
            rows = fmt.build(self._tokenizer, query, texts, self.instruction, self.max_length)
            if not self._truncation.warned:
                whole = fmt.build(self._tokenizer, query, texts, self.instruction, 1 << 30)
                over = sum(len(w) > len(r) for w, r in zip(whole, rows, strict=True))
                self._truncation.check(over, len(rows), self.max_length)
        return rows

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        if self._causal is not None:
            causal_rows = (
                self._prompt_rows(query, texts) if self._format is not None else self._st_rows(query, texts)
            )
            raw = self._torch.tensor(self._causal.score(causal_rows), dtype=self._torch.float32)
            scores = self._torch.sigmoid(raw) if self.activation == "sigmoid" else raw
            return [float(x) for x in scores.tolist()]
        if self.mode == "preprocess":
            return self._score_with_preprocess(query, texts)
        rows, over = self._encode(query, texts)
        self._truncation.check(over, len(rows), self.max_length)
        batches = length_sorted_batches(
            [len(r["input_ids"]) for r in rows], self.batch_size, self.max_batch_tokens
        )
        out: list[float] = []
        for batch in batches:
            out.extend(self._forward(rows, batch))
        return restore_order(batches, out)

    def _activate(self, logits: Any) -> Any:
        torch = self._torch
        if logits.ndim == 1:
            logits = logits.unsqueeze(-1)
        if self.num_labels == 2:
            if self.activation == "sigmoid":
                return torch.softmax(logits, dim=-1)[:, 1]
            return logits[:, 1] - logits[:, 0]
        logits = logits[:, 0]
        return torch.sigmoid(logits) if self.activation == "sigmoid" else logits
