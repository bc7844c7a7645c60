"""The numpy MiniLM encoder gives the torch embedder's vectors (it serves cold CLI searches)."""

from __future__ import annotations

import numpy as np

from models.embed.numpy_text import get_numpy_text_embedder
from models.embed.text import get_text_embedder

TEXTS = ["a wooden crate box", "Red MUG!", "a " + "very " * 400 + "long prompt", "ü ñ 漢字"]


def test_the_numpy_encoder_matches_the_torch_embedder():
    fast = get_numpy_text_embedder().embed_texts(TEXTS)
    reference = get_text_embedder().embed_texts(TEXTS)
    assert fast.shape == reference.shape == (len(TEXTS), 384)
    assert fast.dtype == np.float32
    np.testing.assert_allclose(fast, reference, atol=1e-5)


def test_numpy_embeddings_are_unit_vectors():
    norms = np.linalg.norm(get_numpy_text_embedder().embed_texts(TEXTS), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
