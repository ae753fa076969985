"""How :class:`~rerankers_plugins.scorers.cross_encoder.CrossEncoderScorer` loads each layout
(the modes its module docstring lists): the precision rule of each runtime, the prompted causal LM,
everything sentence-transformers loads as a CrossEncoder, the model card's formatted pair of a
sequence-classification conversion, and the pair-tokenization settings of the ``pairs`` modes
(ONNX included). Scoring stays in the scorer's module.
"""

from __future__ import annotations

import inspect
from typing import Any, NoReturn

from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.scorers._causal import PROMPT_FORMATS, CausalLogits, PromptFormat
from rerankers_plugins.scorers._ce_layouts import architectures, logit_score_module, require_reranker_head
from rerankers_plugins.scorers._device import resolve_dtype
from rerankers_plugins.scorers._local import LocalScorer
from rerankers_plugins.scorers._onnx import OnnxCrossEncoder

__all__ = ["CrossEncoderLoading"]


class CrossEncoderLoading(LocalScorer):
    """The load paths of the cross-encoder scorer (its base class, holding no state of its own: what
    each path sets is declared here, or by :class:`LocalScorer`, and read by the scoring methods)."""

    _torch: Any
    runtime: str
    batch_size: int
    activation: str | None
    instruction: str | None
    prompt_format: str | None
    reuse_prefix: bool
    mode: str
    num_labels: int
    _model: Any
    _tokenizer_lock: Any
    _prompt: str | None
    _format: PromptFormat | None
    _pair_format: PromptFormat | None
    _causal: CausalLogits | None
    _onnx: OnnxCrossEncoder | None
    _n_special: int
    _inputs: tuple[str, ...]
    _pad_id: int
    _pad_left: bool

    def _resolve_precision(self, dtype: str, device: str) -> Any:
        if self.runtime == "torch":
            return resolve_dtype(dtype, device)
        require("onnxruntime", "onnx")
        if device != "cpu":
            raise ConfigError(f"runtime={self.runtime!r} runs on CPU; use runtime='torch' on {device!r}")
        if dtype not in ("auto", "float32"):
            raise ConfigError(
                f"runtime={self.runtime!r} sets its own precision; leave dtype='auto', got {dtype!r}"
            )
        return self._torch.float32

    def _architectures(self) -> list[str]:
        """The architectures the checkpoint's config declares (the config fetched alone for a Hub
        id); empty where it declares none."""
        ckpt = self.checkpoint
        if ckpt.local is not None:
            return architectures(ckpt.local)
        transformers = require("transformers", "cross-encoder")
        config = ckpt.load(
            "cross-encoder",
            lambda: transformers.AutoConfig.from_pretrained(ckpt.path, **ckpt.options.config()),
            cls="CrossEncoderScorer",
        )
        return [str(a) for a in getattr(config, "architectures", None) or []]

    def _load_prompted_causal(self, max_length: int | None, archs: list[str]) -> None:
        """A plain ``*ForCausalLM`` scored with its authors' prompt (``mode == "causal"``);
        ``archs``: :meth:`_architectures`."""
        transformers = require("transformers", "cross-encoder")
        fmt = PROMPT_FORMATS.get(str(self.prompt_format))
        if fmt is None:
            raise ConfigError(
                f"prompt_format must be one of {sorted(PROMPT_FORMATS)}, got {self.prompt_format!r}"
            )
        if self.runtime != "torch":
            raise ConfigError(
                f"runtime={self.runtime!r} runs sequence-classification models; use runtime='torch'"
            )
        ckpt = self.checkpoint
        if ckpt.local is not None and archs and not any(a.endswith("ForCausalLM") for a in archs):
            raise ConfigError(
                f"prompt_format={fmt.name!r} is for causal-LM rerankers, but {self.model!r} is "
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
        logit_score = logit_score_module(self._model)
        if logit_score is None:
            require_reranker_head(self._model, self.model)
        self.num_labels = int(self._model.num_labels)
        if self.num_labels not in (1, 2):
            raise ConfigError(
                f"{self.model!r} has {self.num_labels} output labels; a relevance cross-encoder has 1 "
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
        if self.prompt_format is not None:
            self._use_pair_format()
        elif logit_score is not None:
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
            if "message" in modalities:
                self._check_chat_template()
        else:
            self.mode = "pairs"
        self._setup_pairs()

    def _use_pair_format(self) -> None:
        """A sequence-classification conversion of a causal reranker (its yes/no head folded into
        one label), with ``prompt_format``: the model card's formatted (query, document) pair,
        tokenized as a plain pair (its chat template, if any, is not what the card uses)."""
        fmt = PROMPT_FORMATS.get(str(self.prompt_format))
        if fmt is None:
            raise ConfigError(
                f"prompt_format must be one of {sorted(PROMPT_FORMATS)}, got {self.prompt_format!r}"
            )
        archs = architectures(self._model)
        if fmt.pair is None or not set(archs) & set(fmt.pair_architectures):
            usable = {n: f.pair_architectures for n, f in PROMPT_FORMATS.items() if f.pair is not None}
            raise ConfigError(
                f"prompt_format={fmt.name!r} is for causal-LM rerankers (and the sequence-classification "
                f"conversions named here: {usable}), but {self.model!r} is {', '.join(archs)}; leave "
                "prompt_format unset for a cross-encoder"
            )
        self._pair_format = fmt
        self.mode = "formatted"
        self._prompt = None
        if self.instruction is None:
            self.instruction = fmt.default_instruction

    def _check_chat_template(self) -> None:
        """Refuse, at load, a chat template that does not carry a (query, document) pair into the
        model's input (a converted reranker that kept its base model's system / user / assistant
        template): probe pairs must change the tokens, as sentence-transformers 6 checks it (older
        releases render such a pair to an empty prompt and fail deep in the model)."""
        probes = [
            ("alpha query", "bravo document"),
            ("charlie query", "bravo document"),
            ("alpha query", "delta document"),
        ]
        try:
            with self._tokenizer_lock:
                rows = [
                    self._model.preprocess([p], prompt=self._prompt)["input_ids"].tolist() for p in probes
                ]
        except Exception as exc:
            self._refuse_template(f"{type(exc).__name__}: {str(exc).splitlines()[0]}", exc)
        dropped = [role for role, row in zip(("query", "document"), rows[1:], strict=True) if row == rows[0]]
        if dropped:
            self._refuse_template(
                f"the {' and '.join(dropped)} content does not reach the model's input", None
            )

    def _refuse_template(self, why: str, cause: BaseException | None) -> NoReturn:
        formats = sorted(n for n, f in PROMPT_FORMATS.items() if f.pair is not None)
        raise ConfigError(
            f"{self.model!r} cannot be scored as it is: its chat template does not render a "
            f"(query, document) pair ({why}). If it is a sequence-classification conversion of a causal "
            "reranker (e.g. tomaarsen/Qwen3-Reranker-0.6B-seq-cls), pass its family's prompt_format (one "
            f"of {formats}) to score the formatted pair its model card uses; otherwise give it a chat "
            "template with 'query' and 'document' roles: tokenizer_kwargs={'chat_template': ...}."
        ) from cause

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
        if self.runtime != "torch":
            if self.mode not in ("pairs", "formatted") or self._model.model is None:
                raise ConfigError(
                    f"runtime={self.runtime!r} needs a checkpoint whose relevance head is part of its "
                    f"transformers model; {self.model!r} has extra sentence-transformers modules, "
                    "a chat template, prompts or processing options: use runtime='torch'"
                )
            self._onnx = OnnxCrossEncoder(
                self._model.model,
                source=self.checkpoint.path,
                digest=self.checkpoint.digest,
                inputs=self._inputs,
                quantize=self.runtime == "onnx-int8",
                threads=self._torch.get_num_threads(),
            )
