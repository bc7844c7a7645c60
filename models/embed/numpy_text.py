"""all-MiniLM-L6-v2 sentence embeddings in numpy: the same vectors as :mod:`models.embed.text`
without importing torch or transformers, for short-lived processes (``foundry3d search``).

A cold CLI process spends seconds importing torch and transformers before it can embed one
query; this reads the same packaged files (``tokenizer.json`` with the Rust ``tokenizers``
library, ``model.safetensors`` as numpy arrays) and runs the 6-layer BERT encoder, mean pooling
and L2 normalisation in float32. One text at a time, so no padding or attention mask is needed.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np

from models.embed.text import EMBEDDING_DIM, MAX_TOKENS, packaged_model_path

WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to 1.5e-7 (Abramowitz & Stegun 7.1.26), below float32 resolution of the result;
    scipy's exact one would cost a cold process a second of imports."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                       + t * 1.061405429))))
    return (sign * (1.0 - poly * np.exp(-a * a))).astype(x.dtype)


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, as BERT's ``hidden_act: gelu``."""
    return 0.5 * x * (1.0 + _erf(x / np.sqrt(np.float32(2.0))))


class NumpyTextEmbedder:
    """Texts -> ``(N, 384)`` float32 unit vectors, equal to :class:`TextEmbedder`'s to ~1e-5."""

    def __init__(self, model_path: str | Path | None = None) -> None:
        from safetensors import safe_open
        from tokenizers import Tokenizer

        path = Path(model_path) if model_path is not None else packaged_model_path()
        config = json.loads((path / "config.json").read_text())
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config["layer_norm_eps"])
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.no_padding()
        # Every tensor but the 30,522-row word embedding table (half the file): a query reads
        # only its own tokens' rows of that, so a cold process skips reading 47 MB.
        self._file = safe_open(str(path / "model.safetensors"), framework="numpy")
        self._words = self._file.get_slice(WORD_EMBEDDINGS)
        self.w = {name: self._file.get_tensor(name) for name in self._file.keys()
                  if name != WORD_EMBEDDINGS}
        self._lock = threading.Lock()  # the tokenizer's truncation state is shared

    def _encode(self, ids: np.ndarray) -> np.ndarray:
        """Token ids ``(L,)`` -> last hidden states ``(L, 384)``."""
        w = self.w
        x = (np.stack([self._words[int(i) : int(i) + 1][0] for i in ids])
             + w["embeddings.position_embeddings.weight"][: len(ids)]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"],
                        self.eps)
        length, width = x.shape
        head = width // self.heads
        for n in range(self.layers):
            p = f"encoder.layer.{n}."

            def dense(h: np.ndarray, name: str, p: str = p) -> np.ndarray:
                return h @ w[p + name + ".weight"].T + w[p + name + ".bias"]

            q, k, v = (dense(x, f"attention.self.{m}").reshape(length, self.heads, head)
                       .transpose(1, 0, 2) for m in ("query", "key", "value"))
            scores = q @ k.transpose(0, 2, 1) / np.sqrt(np.float32(head))
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(1, 0, 2).reshape(length, width)
            x = _layer_norm(x + dense(context, "attention.output.dense"),
                            w[p + "attention.output.LayerNorm.weight"],
                            w[p + "attention.output.LayerNorm.bias"], self.eps)
            hidden = _gelu(dense(x, "intermediate.dense"))
            x = _layer_norm(x + dense(hidden, "output.dense"), w[p + "output.LayerNorm.weight"],
                            w[p + "output.LayerNorm.bias"], self.eps)
        return x

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` -> ``(N, 384)`` float32, each row unit length."""
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a list of texts, got a single str")
        rows = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
        with _one_blas_thread():
            for i, text in enumerate(texts):
                with self._lock:
                    ids = np.asarray(self.tokenizer.encode(str(text)).ids, dtype=np.int64)
                pooled = self._encode(ids).mean(0)
                rows[i] = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        return rows


def _one_blas_thread():  # noqa: ANN202 - a context manager
    """One BLAS thread for the encoder's small matrices: on a busy machine, waking the other
    BLAS threads costs more than they save (about 200 ms -> 30 ms per query, measured with the
    machine's 2 cores loaded). Without threadpoolctl, BLAS keeps its own setting."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


@cache
def get_numpy_text_embedder() -> NumpyTextEmbedder:
    """The process-wide numpy embedder of the packaged model (weights read once)."""
    return NumpyTextEmbedder()
