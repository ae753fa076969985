"""Cross-encoder reranking: sequence-classification cross-encoders and causal-LM (yes/no) rerankers.

Five ways a checkpoint is read, chosen from its files (never from its name):

``pairs``       a plain sentence-transformers / transformers cross-encoder (BERT, XLM-R, ModernBERT,
                Qwen3 seq-cls without a template): loaded by sentence-transformers and run by us; each
                call tokenizes its pairs once, sorts them by *token* length before batching, runs the
                weights in the chosen dtype or through ONNX Runtime (``runtime="onnx"`` /
                ``"onnx-int8"``).
``preprocess``  a cross-encoder whose sentence-transformers config gives it a chat template (query /
                document roles), prompts or a default prompt, or processing options: every batch goes
                through sentence-transformers' own ``preprocess`` with the prompt ``predict()`` would
                use, so the template's instruction and roles are applied exactly.
``formatted``   a sequence-classification conversion of a causal reranker (tomaarsen/Qwen3-Reranker-
                0.6B-seq-cls) with ``prompt_format=`` (known from the exact Hub id): the model card's
                formatted (query, document) pair, tokenized as a plain pair and run as ``pairs``; the
                base model's chat template it kept is not what the card uses. Such a checkpoint
                without a format is refused at load, saying what to pass.
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

import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Unpack

from rerankers_plugins._deprecation import renamed_attribute
from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.scorers._causal import (
    KNOWN_CAUSAL_RERANKERS,
    CausalLogits,
    PromptFormat,
)
from rerankers_plugins.scorers._ce_layouts import (
    check_options,
    require_reranker_head,
    st_logit_score,
)
from rerankers_plugins.scorers._ce_loading import CrossEncoderLoading
from rerankers_plugins.scorers._compile import CompileSetting
from rerankers_plugins.scorers._device import DTypeName
from rerankers_plugins.scorers._hf import LoadKwargs
from rerankers_plugins.scorers._http import OnError
from rerankers_plugins.scorers._onnx import OnnxCrossEncoder, RuntimeName
from rerankers_plugins.scorers._scheduler import Plan, Unit, indices_by
from rerankers_plugins.scorers._tokens import TruncationReport
from rerankers_plugins.templates import TemplateLike, as_template
from rerankers_plugins.types import ScoreScale

__all__ = ["CrossEncoderScorer"]

logger = logging.getLogger(__name__)


class CrossEncoderScorer(CrossEncoderLoading):
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
        runtime: ``"torch"`` (default), or ONNX Runtime on CPU: ``"onnx"`` (float32) or
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
        deadline: seconds a call may take, queueing for the model included; past it the call raises
            ``DeadlineExceeded`` and its pairs are never computed. ``None``: no limit.
        on_error: ``"raise"``, or ``"keep_order"``: in a pipeline, a call that fails (its deadline,
            a full queue, a model error) passes its candidates on in their order, marked.
        document_template: what the model reads of each candidate (None: its text): a format
            string such as ``"{title}: {text}"`` (``{text}``, ``{id}``, metadata keys), a list of
            field names (the structured YAML form), or a function of the candidate; see
            :class:`~rerankers_plugins.DocumentTemplate`.
        scheduler: how concurrent calls share the model. ``True`` (default): one worker computes
            every caller's pairs, packed into the same batches, first come first served (earliest
            deadline first), with a queue limit (``Overloaded``); a mapping sets its knobs
            (``window``, ``fair_share``, ``max_queue_tokens``, ``threads``:
            :class:`~rerankers_plugins.scorers._scheduler.SchedulerOptions`). ``False``: each call
            computes in its own thread.
        compile: compile the model's transformer blocks at load (inductor: the element-wise work
            between matrix products fused): ``"auto"`` (default) on CPUs computing in bfloat16
            because they are fast at it, kept only where a full batch measures faster at load;
            ``True`` everywhere (seconds at load, cached on disk across processes); ``False``
            never. See :mod:`~rerankers_plugins.scorers._compile`.
        **load: how the checkpoint is fetched and built, as sentence-transformers takes it
            (``revision``, ``trust_remote_code``, ``local_files_only``, ``hub_cache_dir``,
            ``model_kwargs``, ``tokenizer_kwargs``, ``config_kwargs``: :class:`~rerankers_plugins.scorers._hf.LoadOptions`).
    """

    #: "backend" names a registry entry everywhere else; the ONNX switch is the runtime
    renamed: ClassVar[Mapping[str, str]] = {"backend": "runtime"}
    backend = renamed_attribute("backend", "runtime")

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
        runtime: RuntimeName = "torch",
        warmup: bool = True,
        prompt_format: str | None = None,
        instruction: str | None = None,
        reuse_prefix: bool = True,
        deadline: float | None = None,
        on_error: OnError = "raise",
        document_template: TemplateLike | None = None,
        scheduler: bool | Mapping[str, Any] = True,
        compile: CompileSetting = "auto",
        **load: Unpack[LoadKwargs],
    ) -> None:
        check_options(activation, batch_size, max_length, runtime, prompt_format, instruction)
        self._serve(deadline, on_error, scheduler, compile)
        if compile is True and runtime != "torch":
            raise ConfigError(f"compile=True compiles the torch model; runtime={runtime!r} runs ONNX Runtime")
        self.document_template = as_template(document_template)
        self._torch = require("torch", "cross-encoder")
        self.runtime = runtime
        self._open(model, device, dtype, max_batch_tokens, load, precision=self._resolve_precision)
        self.batch_size = batch_size
        self.activation = activation
        self.instruction = instruction
        self.reuse_prefix = bool(reuse_prefix)
        self.prompt_format = prompt_format or KNOWN_CAUSAL_RERANKERS.get(model)
        self._format: PromptFormat | None = None
        self._causal: CausalLogits | None = None
        self._onnx: OnnxCrossEncoder | None = None
        self._tokenizer_lock = self.checkpoint.tokenizer_lock
        self._pair_format: PromptFormat | None = None  # a seq-cls conversion scored with its card's pair
        local = self.checkpoint.local
        archs = self._architectures() if self.prompt_format is not None else []
        if self.prompt_format is not None and not any(a.endswith("ForSequenceClassification") for a in archs):
            self._load_prompted_causal(max_length, archs)
        else:
            if local is not None and not st_logit_score(local):
                require_reranker_head(local, self.model)
            self._load_sentence_transformers(max_length)
        self.scale = ScoreScale.PROBABILITY if activation == "sigmoid" else ScoreScale.LOGIT
        self._truncation = TruncationReport(f"CrossEncoderScorer({model!r})")
        logger.debug(
            "loaded cross-encoder %s (%s) on %s as %s, runtime %s (max_length=%d, max_batch_tokens=%s)",
            model,
            self.mode,
            self.device,
            self.dtype,
            runtime,
            self.max_length,
            self.max_batch_tokens,
        )
        if runtime == "torch":
            self._accelerate(self._causal.model if self._causal is not None else self._model)
        if warmup:
            # One short pair through the whole path: the first user call then pays none of the
            # one-off costs (kernel selection, thread pool start-up, the tokenizer's first call).
            self._score_here("warm up", ["warm up"])

    @property
    def onnx_path(self) -> Path | None:
        """Where the exported ONNX graph this scorer runs is cached (``runtime="onnx"`` /
        ``"onnx-int8"``); None under torch."""
        return None if self._onnx is None else self._onnx.path

    def __repr__(self) -> str:
        runtime = "" if self.runtime == "torch" else f", runtime={self.runtime!r}"
        return (
            f"CrossEncoderScorer({self.model!r}, device={self.device!r}, "
            f"dtype={str(self.dtype).removeprefix('torch.')!r}{runtime}, scale={self.scale.value})"
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

    def _checked_pair_lengths(self, query: str, texts: Sequence[str]) -> list[int]:
        """Token length of each pair within the window (modes that tokenize per batch); warns once
        when a pair is cut."""
        full = self._full_pair_lengths(query, texts)
        self._truncation.check(sum(f > self.max_length for f in full), len(full), self.max_length)
        return [min(f, self.max_length) for f in full]

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
        query, texts = self._formatted(query, texts)
        rows, over = self._encode(query, texts)
        self._truncation.check(over, len(rows), self.max_length)
        return [len(r["input_ids"]) for r in rows]

    def score_settings(self) -> Mapping[str, Any]:
        settings: dict[str, Any] = {"activation": self.activation}
        if self.runtime != "torch":  # int8 scores differ from float32: never share cache entries
            settings["runtime"] = self.runtime
        if self.prompt_format is not None:
            settings["prompt_format"] = self.prompt_format
        formatted = self._format is not None or self._pair_format is not None
        instruction = self.instruction if formatted else self._prompt
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

    def _st_rows(self, query: str, texts: Sequence[str]) -> list[list[int]]:
        """Token rows of a sentence-transformers causal reranker, as its preprocess makes them
        (chat template, prompt, truncation), without their padding."""
        self._checked_pair_lengths(query, texts)  # the truncation warning
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

    def _plan(self, query: str, texts: Sequence[str]) -> Plan:
        """Each pair as one unit: its prompt's token row (causal modes), the (query, text) pair that
        sentence-transformers' preprocess reads (``preprocess``), or its token ids (``pairs``)."""
        if self._causal is not None:
            causal_rows = (
                self._prompt_rows(query, texts) if self._format is not None else self._st_rows(query, texts)
            )
            units = [Unit(row, len(row)) for row in causal_rows]
        elif self.mode == "preprocess":
            lengths = self._checked_pair_lengths(query, texts)
            units = [Unit((query, t), n) for t, n in zip(texts, lengths, strict=True)]
        else:
            query, texts = self._formatted(query, texts)
            rows, over = self._encode(query, texts)
            self._truncation.check(over, len(rows), self.max_length)
            units = [Unit(r, len(r["input_ids"])) for r in rows]
        return Plan(units)

    def _run_batch(self, kind: str, data: list[Any], owners: list[Hashable]) -> list[Any]:
        torch = self._torch
        if self._causal is not None:
            # the rows of one call share their prompt's prefix: run it once per call in the batch
            raw = [0.0] * len(data)
            for mine in indices_by(owners).values():
                for i, v in zip(mine, self._causal.score([data[i] for i in mine]), strict=True):
                    raw[i] = v
            logits = torch.tensor(raw, dtype=torch.float32)
            scores = torch.sigmoid(logits) if self.activation == "sigmoid" else logits
            return [float(x) for x in scores.tolist()]
        if self.mode == "preprocess":
            with torch.inference_mode():
                with self._tokenizer_lock:
                    features = self._model.preprocess(data, prompt=self._prompt)
                features = {
                    k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()
                }
                logits = self._model(features)["scores"].float()
            return [float(x) for x in self._activate(logits).tolist()]
        return self._forward(data, range(len(data)))

    def _formatted(self, query: str, texts: Sequence[str]) -> tuple[str, Sequence[str]]:
        """The pair as the model card writes it (mode ``formatted``); unchanged otherwise."""
        fmt = self._pair_format
        if fmt is None or fmt.pair is None:
            return query, texts
        instruction = str(self.instruction)
        return fmt.pair(query, "", instruction)[0], [fmt.pair(query, t, instruction)[1] for t in texts]

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
