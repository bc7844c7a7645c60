"""The captioned mesh library: library.jsonl parsing, indexing, and retrieval by text or image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh

from models.embed.text import get_text_embedder
from models.generate.base import GenerationRequest, GeneratorInputError
from models.generate.library import MATCH_THRESHOLDS, retrieve_and_render
from models.library.format import (
    LibraryEntry,
    LibraryError,
    read_library_jsonl,
    write_library_jsonl,
)
from models.library.index import LibraryIndex, build_library_index

TILE = 64  # renders are described coarsely; a tiny tile keeps the tests fast


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _tiny_library(folder: Path) -> Path:
    """A ball, a long bar and a squat cylinder, saved as mesh files beside library.jsonl."""
    (folder / "meshes").mkdir(parents=True)
    trimesh.creation.icosphere(subdivisions=2, radius=0.5).export(folder / "meshes/ball.ply")
    trimesh.creation.box(extents=(1.6, 0.25, 0.25)).export(folder / "meshes/bar.stl")
    trimesh.creation.cylinder(radius=0.5, height=0.4, sections=24).export(
        folder / "meshes/puck.obj"
    )
    _write_jsonl(
        folder / "library.jsonl",
        [
            {"id": "ball", "path": "meshes/ball.ply", "caption": "a round ball", "tags": ["toy"]},
            {"id": "bar", "path": "meshes/bar.stl", "caption": "a long metal bar"},
            {"id": "puck", "path": "meshes/puck.obj", "caption": "a hockey puck", "up": "y",
             "licence": "CC0"},
        ],
    )
    return folder


@pytest.fixture(scope="module")
def embedder():
    return get_text_embedder()


@pytest.fixture(scope="module")
def built(tmp_path_factory, embedder) -> LibraryIndex:
    folder = _tiny_library(tmp_path_factory.mktemp("library"))
    return build_library_index(folder, embedder=embedder, tile=TILE)


def _drawn(kind: str, size: int = 128) -> np.ndarray:
    """A hand-drawn query: a filled grey disc or a horizontal grey bar on white."""
    image = np.full((size, size, 3), 255, np.uint8)
    yy, xx = np.mgrid[:size, :size]
    if kind == "disc":
        image[(xx - 60) ** 2 + (yy - 66) ** 2 <= 30**2] = 150
    else:
        image[58:72, 14:114] = 150
    return image


# ------------------------------------------------------------------------- library.jsonl


def test_library_jsonl_entries_are_read_in_order_with_defaults(tmp_path):
    path = _write_jsonl(
        tmp_path / "library.jsonl",
        [{"id": "a", "path": "a.stl", "caption": "an apple"}, "",
         {"id": "b", "path": "/abs/b.glb", "caption": "a box", "tags": ["x"], "up": "z",
          "licence": "CC BY 4.0"}],
    )
    a, b = read_library_jsonl(path)
    assert a == LibraryEntry(id="a", path="a.stl", caption="an apple", tags=(), up="y", licence="")
    assert (b.id, b.tags, b.up, b.licence) == ("b", ("x",), "z", "CC BY 4.0")


def test_a_malformed_line_fails_with_its_line_number_and_reason(tmp_path):
    path = _write_jsonl(
        tmp_path / "library.jsonl",
        [
            {"id": "a", "path": "a.stl", "caption": "an apple"},
            '{"id": "b", "path": "b.stl", ',
            {"id": "c", "path": "c.stl"},
            {"id": "d", "path": "d.stl", "caption": "a die", "up": "w"},
            {"id": "a", "path": "e.stl", "caption": "again"},
            {"id": "f", "path": "f.stl", "caption": "x", "captoin": "typo"},
        ],
    )
    with pytest.raises(LibraryError) as info:
        read_library_jsonl(path)
    message = str(info.value)
    assert "line 2: not valid JSON" in message
    assert 'line 3: missing "caption"' in message
    assert 'line 4: "up" must be one of' in message
    assert "line 5: duplicate id 'a' (first on line 1)" in message
    assert "line 6: unknown field(s) captoin" in message
    assert "line 1:" not in message


def test_writing_entries_round_trips_and_reports_no_change_the_second_time(tmp_path):
    entries = [LibraryEntry("m", "m.stl", "a mug", ("kitchen",), "z", "CC0")]
    path = tmp_path / "library.jsonl"
    assert write_library_jsonl(path, entries) is True
    assert write_library_jsonl(path, entries) is False
    assert read_library_jsonl(path) == entries


# ------------------------------------------------------------------------- index and queries


def test_the_index_holds_unit_caption_embeddings_and_view_descriptors(built):
    n = len(built)
    assert n == 3
    assert built.caption_embeddings.shape == (n, 384)
    assert built.descriptors.shape[:2] == (n, 4)
    assert built.has_views.all()
    np.testing.assert_allclose(np.linalg.norm(built.caption_embeddings, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(built.descriptors, axis=2), 1, atol=1e-5)
    assert (built.folder / "index.npz").is_file() and (built.folder / "index.json").is_file()


def test_a_text_query_returns_the_entry_with_the_nearest_caption(built, embedder):
    matches = built.query_text(embedder.embed_text("a metal rod"), k=3)
    assert [m.entry.id for m in matches][0] == "bar"
    assert matches[0].similarity > matches[1].similarity >= matches[2].similarity
    assert 0.0 < matches[0].similarity <= 1.0
    assert matches[0].mesh_path == built.folder / "meshes/bar.stl"
    assert built.query_text(embedder.embed_text("a round ball"), k=1)[0].similarity == (
        pytest.approx(1.0, abs=1e-5)
    )


def test_an_image_query_returns_the_mesh_whose_render_looks_alike(built):
    from models.embed.image import image_descriptor

    disc = built.query_image(image_descriptor(_drawn("disc")), k=3)
    bar = built.query_image(image_descriptor(_drawn("bar")), k=3)
    assert disc[0].entry.id == "ball"
    assert bar[0].entry.id == "bar"
    assert bar[0].view in (0, 2)  # the bar is seen long from the front and the back
    assert disc[0].similarity > disc[1].similarity


def test_a_saved_index_loads_with_the_same_answers(built, embedder):
    loaded = LibraryIndex.load(built.folder)
    assert [e.id for e in loaded.entries] == [e.id for e in built.entries]
    np.testing.assert_array_equal(loaded.descriptors, built.descriptors)
    query = embedder.embed_text("a hockey puck")
    assert loaded.query_text(query)[0].entry == built.query_text(query)[0].entry
    assert loaded.stale is False
    assert LibraryIndex.cached(built.folder) is LibraryIndex.cached(built.folder)


def test_a_rebuild_skips_unchanged_entries_and_redoes_changed_ones(tmp_path, embedder):
    folder = _tiny_library(tmp_path)
    first = build_library_index(folder, embedder=embedder, tile=TILE).report
    assert (first.embedded, first.rendered, first.unchanged) == (3, 3, 0)

    again = build_library_index(folder, embedder=embedder, tile=TILE).report
    assert (again.embedded, again.rendered, again.unchanged) == (0, 0, 3)

    rows = [json.loads(line) for line in (folder / "library.jsonl").read_text().splitlines()]
    rows[1]["caption"] = "a long steel beam"
    _write_jsonl(folder / "library.jsonl", rows)
    assert LibraryIndex.load(folder).stale is True
    trimesh.creation.icosphere(subdivisions=1, radius=0.4).export(folder / "meshes/ball.ply")
    changed = build_library_index(folder, embedder=embedder, tile=TILE).report
    assert (changed.embedded, changed.rendered, changed.unchanged) == (1, 1, 1)


def test_an_index_built_without_renders_answers_text_but_refuses_images(tmp_path, embedder):
    folder = _tiny_library(tmp_path)
    index = build_library_index(folder, embedder=embedder, render=False)
    assert index.report.rendered == 0 and not index.has_views.any()
    assert index.query_text(embedder.embed_text("ball"))[0].entry.id == "ball"
    with pytest.raises(LibraryError, match="no rendered views"):
        index.query_image(np.ones(index.descriptors.shape[2], np.float32))


def test_a_missing_mesh_file_fails_the_build_naming_the_entry(tmp_path, embedder):
    folder = _tiny_library(tmp_path)
    (folder / "meshes/bar.stl").unlink()
    with pytest.raises(LibraryError, match="entry 'bar': mesh file not found"):
        build_library_index(folder, embedder=embedder, render=False)


def test_loading_a_folder_without_an_index_says_how_to_build_one(tmp_path):
    with pytest.raises(LibraryError, match="foundry3d library build"):
        LibraryIndex.load(tmp_path)


def test_the_library_generator_renders_the_retrieved_mesh_and_records_the_match(built):
    generated = retrieve_and_render(
        built, GenerationRequest(kind="text", prompt="a metal rod", tile=TILE)
    )
    assert generated.match["id"] == "bar" and generated.match["by"] == "text"
    assert generated.metrics["library_similarity"] == pytest.approx(generated.match["similarity"])
    assert generated.bundle.tile == TILE
    extra = generated.bundle.spec.extra
    assert (extra["library_mesh"], extra["source_up"], extra["library_id"]) == (
        "meshes/bar.stl", "y", "bar"
    )
    assert generated.bundle.masks()[0].any()


def test_the_library_generator_refuses_a_request_with_nothing_to_match(built):
    with pytest.raises(GeneratorInputError, match="needs a prompt, an image or an entry id"):
        retrieve_and_render(built, GenerationRequest(kind="text", tile=TILE))


def test_a_prompt_the_library_holds_nothing_like_is_refused_naming_the_best_match(built):
    with pytest.raises(GeneratorInputError, match=r"no library mesh matches 'a red sports car' "
                       r"\(best: '.+' 0\.\d\d < 0\.55\)"):
        retrieve_and_render(
            built, GenerationRequest(kind="text", prompt="a red sports car", tile=TILE)
        )


def test_a_close_prompt_is_a_confident_match_and_a_loose_one_is_weak(built):
    close = retrieve_and_render(
        built, GenerationRequest(kind="text", prompt="a round ball", tile=TILE)
    )
    assert close.match["weak"] is False and close.metrics["library_match_weak"] == 0.0
    loose = retrieve_and_render(
        built, GenerationRequest(kind="text", prompt="a spherical object", tile=TILE)
    )
    assert MATCH_THRESHOLDS["reject"] <= loose.match["similarity"] < MATCH_THRESHOLDS["weak"]
    assert loose.match["weak"] is True and loose.metrics["library_match_weak"] == 1.0
