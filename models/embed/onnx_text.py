"""One-query sentence embeddings with ONNX Runtime: the vectors of :class:`TextEmbedder`, faster.

A search server embeds one short query per request. ONNX Runtime runs the all-MiniLM-L6-v2
encoder, the masked mean pooling and the L2 normalisation as one fused graph on one thread in
about 4 ms of CPU for a short query, against about 10 ms for the traced TorchScript model
(``benchmarks/api.py`` prints the ``embed`` part of a request); the vectors agree to ~1e-6.

The graph is written once per process from the loaded transformers model with
``torch.onnx.export`` into a private temporary file, then read into an inference session; the
file is removed when the session holds it. Without ``onnxruntime``/``onnx``, or if the export
fails, :func:`onnx_query_encoder` returns None and the caller keeps the traced model.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np

log = logging.getLogger("foundry3d.embed")

#: Operator set of the exported graph (ONNX Runtime 1.20+ runs it; the encoder needs <= 14).
OPSET = 17


class OnnxQueryEncoder:
    """Token ids ``(1, L)`` and mask ``(1, L)`` int64 -> ``(384,)`` float32 unit embedding."""

    def __init__(self, graph: Path, threads: int = 1) -> None:
        """``graph``: an ONNX file from :func:`export_pooled_encoder`; ``threads``: intra-op
        threads (1: one short query gains nothing from a second core's wake-up)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle threads must not spin: the server's other work shares the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(graph), options,
                                             providers=["CPUExecutionProvider"])

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        inputs = {"input_ids": np.ascontiguousarray(ids, dtype=np.int64),
                  "attention_mask": np.ascontiguousarray(mask, dtype=np.int64)}
        (pooled,) = self._session.run(None, inputs)
        return np.ascontiguousarray(pooled[0], dtype=np.float32)


def export_pooled_encoder(model, sample_ids, sample_mask, path: Path) -> None:  # noqa: ANN001
    """Write ``model`` (a transformers BERT encoder, eval mode) with mean pooling over the mask
    and L2 normalisation as an ONNX graph at ``path``; ``sample_*``: ``(1, L)`` int64 torch
    tensors to trace with (batch and length stay dynamic)."""
    import torch

    class PooledEncoder(torch.nn.Module):
        def __init__(self, encoder) -> None:  # noqa: ANN001
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):  # noqa: ANN001, ANN202
            states = self.encoder(input_ids=input_ids,
                                  attention_mask=attention_mask).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    dynamic = {0: "batch", 1: "tokens"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings of the exporter
        torch.onnx.export(PooledEncoder(model).eval(), (sample_ids, sample_mask), str(path),
                          input_names=["input_ids", "attention_mask"], output_names=["pooled"],
                          dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic},
                          opset_version=OPSET, dynamo=False)


def onnx_query_encoder(model, sample_ids, sample_mask) -> OnnxQueryEncoder | None:  # noqa: ANN001
    """``model`` as an :class:`OnnxQueryEncoder`, or None (logged) when ONNX Runtime or the
    export is unavailable here."""
    try:
        import onnx  # noqa: F401 - torch.onnx.export writes the graph with it
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        log.info("query embeddings with TorchScript (ONNX Runtime unavailable: %s)", exc)
        return None
    with tempfile.TemporaryDirectory(prefix="foundry3d-onnx-") as folder:
        graph = Path(folder) / "pooled_encoder.onnx"
        try:
            export_pooled_encoder(model, sample_ids, sample_mask, graph)
            return OnnxQueryEncoder(graph)
        except Exception as exc:  # noqa: BLE001 - any export failure: keep the traced model
            log.warning("query embeddings with TorchScript (ONNX export failed: %s)", exc)
            return None
