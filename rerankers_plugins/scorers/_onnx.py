"""Run a cross-encoder through ONNX Runtime: float32, or int8 by dynamic quantisation.

sentence-transformers' own ``backend="onnx"`` needs optimum-onnx, which pins transformers < 4.58, so
this drives ONNX Runtime directly, with the same three steps optimum takes:

1. export the transformers model (eager attention, so ONNX Runtime can fuse it) with
   ``torch.onnx.export``;
2. fuse it with ONNX Runtime's transformer optimizer (embedding + layer norm, multi-head attention,
   skip layer norm, GELU);
3. for ``"onnx-int8"``, quantise the weights to int8 per output channel and the activations per
   tensor at run time (``quantize_dynamic``), which ONNX Runtime runs with the CPU's integer
   dot-product instructions (AVX-VNNI / AVX512-VNNI / AMX-INT8 where present, AVX2 elsewhere).

The result is cached on disk, keyed by the model's files and every setting that changes the graph,
so the export (seconds to tens of seconds) is paid once per machine, not once per process.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError

__all__ = ["BACKENDS", "BackendName", "OnnxCrossEncoder", "onnx_cache_dir"]

logger = logging.getLogger(__name__)

BackendName = Literal["torch", "onnx", "onnx-int8"]
BACKENDS: tuple[str, ...] = ("torch", "onnx", "onnx-int8")

#: bumped whenever the export recipe changes, so stale cached graphs are never reused
_RECIPE = 1


def onnx_cache_dir() -> Path:
    """Where exported graphs live: ``$RERANKERS_CACHE/onnx`` (default ``~/.cache/rerankers-plugins/onnx``).
    An entry is keyed by the weights' digest, the config, the inputs, int8 or not, and the ONNX
    Runtime and transformers versions."""
    root = os.environ.get("RERANKERS_CACHE") or os.path.join(Path.home(), ".cache", "rerankers-plugins")
    return Path(root).expanduser() / "onnx"


def _weights_digest(hf_model: Any) -> str:
    """sha256 over every tensor's name, shape and bytes: the cache key follows the weights
    themselves, whether they came from a Hub id, a directory, or were changed in memory (about a
    second for a 100M-parameter model, paid at load by the ONNX backends only)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(hf_model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _export(hf_model: Any, inputs: tuple[str, ...], path: Path) -> None:
    torch = require("torch", "cross-encoder")

    model = copy.deepcopy(hf_model).float().cpu().eval()
    # SDPA exports as a generic subgraph that ONNX Runtime cannot fuse into its Attention kernel.
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    else:  # pragma: no cover - transformers < 4.48
        model.config._attn_implementation = "eager"

    class Logits(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: Any) -> Any:
            return self.model(**dict(zip(inputs, args, strict=True))).logits

    example = tuple(torch.ones(2, 8, dtype=torch.long) for _ in inputs)
    axes = {name: {0: "batch", 1: "sequence"} for name in inputs}
    axes["logits"] = {0: "batch"}
    # The TorchScript exporter (deprecated since torch 2.9, still shipped) is used on purpose: the
    # torch.export-based one emits attention that ONNX Runtime's optimizer does not fuse, which
    # loses most of the speed this backend exists for. Its deprecation and tracer warnings are
    # about that choice, not about the user's model.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # transformers' mask code indexes with non-negative tensors only; the tests compare the
        # exported graph's scores with torch's
        warnings.filterwarnings("ignore", "Exporting aten::index operator", UserWarning)
        torch.onnx.export(
            Logits(),
            example,
            str(path),
            input_names=list(inputs),
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def _optimize(src: Path, dst: Path, config: Any) -> None:
    optimizer = require("onnxruntime.transformers.optimizer", "onnx")
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    fused = optimizer.optimize_model(
        str(src), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=1, use_gpu=False
    )
    fused.save_model_to_file(str(dst))
    logger.debug("ONNX fusion of %s: %s", src.name, fused.get_fused_operator_statistics())


def _quantize(src: Path, dst: Path) -> None:
    quantization = require("onnxruntime.quantization", "onnx")
    onnx = require("onnx", "onnx")
    quantization.quantize_dynamic(
        str(src),
        str(dst),
        weight_type=quantization.QuantType.QInt8,
        per_channel=True,
        # fused operators (com.microsoft domain) have no ONNX shape inference: their outputs are float
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


class OnnxCrossEncoder:
    """An ONNX Runtime session over a cross-encoder's transformers model: ``logits(features)``.

    ``features`` maps input names (``input_ids``, ``attention_mask``, ``token_type_ids`` as the
    tokenizer produces them) to int64 arrays ``[batch, sequence]``; the result is float32 logits
    ``[batch, num_labels]``. ``threads`` sets ONNX Runtime's intra-op thread count.
    """

    def __init__(
        self,
        hf_model: Any,
        *,
        source: str,
        inputs: tuple[str, ...],
        quantize: bool,
        threads: int,
    ) -> None:
        ort = require("onnxruntime", "onnx")
        require("onnx", "onnx")
        config = hf_model.config
        if not str(getattr(config, "architectures", [""])[0] or "").endswith(
            "ForSequenceClassification"
        ) and (not type(hf_model).__name__.endswith("ForSequenceClassification")):
            raise ConfigError(
                f"backend='onnx' needs a transformers *ForSequenceClassification model; {source!r} is a "
                f"{type(hf_model).__name__}"
            )
        transformers = require("transformers", "cross-encoder")
        identity = {
            "recipe": _RECIPE,
            "weights": _weights_digest(hf_model),
            "config": {
                k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "name_or_path")
            },
            "inputs": list(inputs),
            "quantize": quantize,
            "onnxruntime": ort.__version__,
            "transformers": transformers.__version__,
        }
        key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:20]
        directory = onnx_cache_dir() / key
        final = directory / ("model.int8.onnx" if quantize else "model.onnx")
        self.path = final
        if not final.is_file():
            self._build(hf_model, inputs, directory, quantize)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(final), options, providers=["CPUExecutionProvider"])
        self.inputs = inputs
        self.threads = threads

    @staticmethod
    def _build(hf_model: Any, inputs: tuple[str, ...], directory: Path, quantize: bool) -> None:
        t0 = time.perf_counter()
        directory.mkdir(parents=True, exist_ok=True)
        # Build under temporary names and rename at the end: a concurrent or interrupted build never
        # leaves a half-written graph under the final name.
        tag = f"{os.getpid()}-{time.monotonic_ns()}"
        raw, fused = directory / f"raw-{tag}.onnx", directory / f"fused-{tag}.onnx"
        try:
            _export(hf_model, inputs, raw)
            _optimize(raw, fused, hf_model.config)
            if quantize:
                qtmp = directory / f"int8-{tag}.onnx"
                _quantize(fused, qtmp)
                os.replace(qtmp, directory / "model.int8.onnx")
            else:
                os.replace(fused, directory / "model.onnx")
        finally:
            for leftover in directory.glob(f"*-{tag}.onnx*"):
                leftover.unlink(missing_ok=True)
        logger.info(
            "exported %s ONNX graph to %s in %.1f s (cached for later loads)",
            "an int8" if quantize else "a float32",
            directory,
            time.perf_counter() - t0,
        )

    def logits(self, features: Mapping[str, Any]) -> Any:
        np = require("numpy", "cross-encoder")
        feed = {name: np.ascontiguousarray(features[name], dtype=np.int64) for name in self.inputs}
        return self.session.run(["logits"], feed)[0]
