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
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from rerankers_plugins._optional import require
from rerankers_plugins.errors import BackendError, ConfigError

__all__ = ["RUNTIMES", "OnnxCrossEncoder", "RuntimeName", "onnx_cache_dir"]

logger = logging.getLogger(__name__)

RuntimeName = Literal["torch", "onnx", "onnx-int8"]
RUNTIMES: tuple[str, ...] = ("torch", "onnx", "onnx-int8")

#: bumped whenever the export recipe changes, so stale cached graphs are never reused
_RECIPE = 1


def onnx_cache_dir() -> Path:
    """Where exported graphs live: ``$RERANKERS_CACHE/onnx`` (default ``~/.cache/rerankers-plugins/onnx``).
    An entry is keyed by the checkpoint's :func:`~rerankers_plugins.scorers._hf.checkpoint_digest`, the config, the inputs, int8 or not, and the ONNX
    Runtime and transformers versions."""
    root = os.environ.get("RERANKERS_CACHE") or os.path.join(Path.home(), ".cache", "rerankers-plugins")
    return Path(root).expanduser() / "onnx"


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
    # loses most of the speed this runtime exists for. Its deprecation and tracer warnings are
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


def _optimize(src: Path, dst: Path, config: Any, external: bool) -> None:
    optimizer = require("onnxruntime.transformers.optimizer", "onnx")
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    fused = optimizer.optimize_model(
        str(src), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=1, use_gpu=False
    )
    fused.save_model_to_file(str(dst), use_external_data_format=external, all_tensors_to_one_file=True)
    logger.debug("ONNX fusion of %s: %s", src.name, fused.get_fused_operator_statistics())


def _quantize(src: Path, dst: Path, external: bool) -> None:
    quantization = require("onnxruntime.quantization", "onnx")
    onnx = require("onnx", "onnx")
    quantization.quantize_dynamic(
        str(src),
        str(dst),
        weight_type=quantization.QuantType.QInt8,
        per_channel=True,
        use_external_data_format=external,
        # fused operators (com.microsoft domain) have no ONNX shape inference: their outputs are float
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _check_against_torch(path: Path, hf_model: Any, inputs: tuple[str, ...]) -> None:
    """The float32 graph must give torch's logits on a padded batch (two rows, one padded), or the
    export is refused: a fusion that does not fit an architecture fails here, not in a ranking."""
    torch = require("torch", "cross-encoder")
    ort = require("onnxruntime", "onnx")
    gen = torch.Generator().manual_seed(0)
    vocab = int(getattr(hf_model.config, "vocab_size", 1000) or 1000)
    ids = torch.randint(min(5, vocab - 1), vocab, (2, 12), generator=gen)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 7:] = 0
    types = torch.zeros(2, 12, dtype=torch.long)
    types[:, 6:] = 1
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    with torch.inference_mode():
        expected = hf_model.float()(**{n: feed[n] for n in inputs}).logits.numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {n: feed[n].numpy() for n in inputs})[0]
    diff = float(abs(got - expected).max())
    if not diff <= 1e-3 * max(1.0, float(abs(expected).max())):
        raise BackendError(
            f"the ONNX export of this model disagrees with torch (max logit difference {diff:.3g}); "
            "its architecture is not supported by runtime='onnx': use runtime='torch'"
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
        digest: str,
        inputs: tuple[str, ...],
        quantize: bool,
        threads: int,
    ) -> None:
        ort = require("onnxruntime", "onnx")
        require("onnx", "onnx")
        config = hf_model.config
        if not type(hf_model).__name__.endswith("ForSequenceClassification"):
            raise ConfigError(
                f"runtime='onnx' needs a transformers *ForSequenceClassification model; {source!r} is a "
                f"{type(hf_model).__name__}"
            )
        transformers = require("transformers", "cross-encoder")
        identity = {
            "recipe": _RECIPE,
            # the files' names, sizes and times: a copy (which keeps them) reuses the export, new
            # weights written in place do not
            "checkpoint": digest,
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
        """Export, fuse, check against torch, quantise; all in a scratch directory that is renamed
        into place at the end, so a concurrent or interrupted build never leaves a half-written
        graph (or half its external weights) under the final name."""
        t0 = time.perf_counter()
        directory.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{directory.name}.build-", dir=directory.parent))
        # protobuf caps one file at 2 GB: larger models keep their weights in a file beside the graph
        size = sum(p.numel() * 4 for p in hf_model.parameters())
        external = size > 1_500_000_000
        try:
            (work / "raw").mkdir()
            _export(hf_model, inputs, work / "raw" / "model.onnx")
            fused = work / ("fused.onnx" if quantize else "model.onnx")
            _optimize(work / "raw" / "model.onnx", fused, hf_model.config, external)
            shutil.rmtree(work / "raw")
            _check_against_torch(fused, hf_model, inputs)
            if quantize:
                _quantize(fused, work / "model.int8.onnx", external)
                for leftover in work.glob("fused.onnx*"):
                    leftover.unlink()
            try:
                os.rename(work, directory)
            except OSError:
                if not directory.is_dir():  # not another process's finished build: a real failure
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
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
