"""Manifest rows for the kiss3dgen-mesh and kiss3dgen-image generators: mesh inputs checked
like images, each problem on its row's line, meshes counted by content in the asset id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trimesh
from PIL import Image

from intake.parse import AcceptedRow, ManifestRows, parse_manifest
from intake.requests import Rejection
from storage.identity import asset_identity


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    trimesh.creation.box(extents=(1.0, 0.5, 0.8)).export(tmp_path / "box.glb")
    trimesh.creation.icosphere(subdivisions=1).export(tmp_path / "ball.obj")
    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "photo.png")
    return tmp_path


def _jsonl(folder: Path, rows: list[dict | str]) -> Path:
    path = folder / "m.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _reasons(parsed) -> dict[int, str]:
    return {r.line: r.reason for r in parsed.rejected}


def test_a_mesh_row_becomes_a_kiss3dgen_mesh_request_starting_from_the_mesh(folder):
    parsed = parse_manifest(_jsonl(folder, [
        {"mesh": "box.glb", "prompt": "a wooden crate", "params": {"mode": "edit"}},
    ]))
    assert parsed.ok, parsed.rejected
    (request,) = parsed.requests
    assert (request.kind, request.generator, request.init) == ("mesh", "kiss3dgen-mesh", "mesh")
    assert Path(request.mesh_ref) == (folder / "box.glb").resolve()
    assert len(request.mesh_sha256) == 64


def test_mesh_rows_are_rejected_on_their_own_lines_with_the_reason(folder):
    (folder / "notes.txt").write_text("not a mesh")
    (folder / "empty.stl").write_bytes(b"")
    (folder / "broken.ply").write_bytes(b"ply\nformat nonsense\n")
    parsed = parse_manifest(_jsonl(folder, [
        {"mesh": "box.glb", "prompt": "fine"},
        {"mesh": "box.glb", "params": {"mode": "edit"}},  # only an enhance may be captioned
        {"mesh": "notes.txt", "prompt": "a crate"},
        {"mesh": "missing.glb", "prompt": "a crate"},
        {"mesh": "../outside.glb", "prompt": "a crate"},
        {"mesh": "empty.stl", "prompt": "a crate"},
        {"mesh": "broken.ply", "prompt": "a crate"},
        {"mesh": "box.glb", "prompt": "a crate", "generator": "library"},
        {"mesh": "box.glb", "prompt": "a crate", "params": {"mode": "recolour"}},
        {"mesh": "box.glb", "prompt": "a crate", "params": {"strenght": 0.5}},
    ]))
    reasons = _reasons(parsed)
    assert sorted(reasons) == list(range(2, 11))
    assert "needs a 'prompt'" in reasons[2]
    assert "'.txt' is not accepted" in reasons[3]
    assert "not found" in reasons[4]
    assert "outside the manifest folder" in reasons[5]
    assert "empty" in reasons[6]
    assert "cannot be read as .ply" in reasons[7]
    assert "uses the 'kiss3dgen-mesh' generator" in reasons[8]
    assert "'recolour'" in reasons[9]
    assert "did you mean 'strength'" in reasons[10]
    assert len(parsed.requests) == 1


def test_a_gltf_with_an_external_buffer_is_refused_naming_the_file(folder):
    (folder / "part.gltf").write_text(json.dumps({"asset": {"version": "2.0"},
                                                  "buffers": [{"uri": "part.bin"}]}))
    parsed = parse_manifest(_jsonl(folder, [{"mesh": "part.gltf", "prompt": "a part"}]))
    assert "external file 'part.bin'" in parsed.rejected[0].reason


def test_init_mesh_and_the_mesh_generator_need_a_mesh_row(folder):
    parsed = parse_manifest(_jsonl(folder, [
        {"prompt": "a crate", "init": "mesh"},
        {"prompt": "a crate", "generator": "kiss3dgen-mesh"},
    ]))
    reasons = _reasons(parsed)
    assert "init 'mesh'" in reasons[1] and "needs a 'mesh' item" in reasons[1]
    assert "generator 'kiss3dgen-mesh' needs a 'mesh' item" in reasons[2]


def test_a_retexture_must_start_from_the_mesh_and_cannot_refine(folder):
    parsed = parse_manifest(_jsonl(folder, [
        {"mesh": "box.glb", "prompt": "blue", "init": "sphere", "params": {"mode": "retexture"}},
        {"mesh": "box.glb", "prompt": "blue",
         "params": {"mode": "retexture", "refine_fine_steps": 10}},
        {"mesh": "box.glb", "prompt": "blue", "init": "sphere", "params": {"mode": "enhance"}},
    ]))
    reasons = _reasons(parsed)
    assert "init must be 'mesh', got 'sphere'" in reasons[1]
    assert "'refine_fine_steps' cannot be set with mode 'retexture'" in reasons[2]
    assert 3 not in reasons  # enhance may start elsewhere


def test_an_image_row_may_use_kiss3dgen_image_with_a_caption(folder):
    parsed = parse_manifest(_jsonl(folder, [
        {"image": "photo.png", "generator": "kiss3dgen-image", "prompt": "a red cube",
         "params": {"use_redux": False, "strength": 0.8}},
        {"image": "photo.png", "prompt": "a red cube"},
        {"prompt": "a red cube", "generator": "kiss3dgen-image"},
    ]))
    reasons = _reasons(parsed)
    (request,) = parsed.requests
    assert (request.kind, request.generator, request.prompt) == ("image", "kiss3dgen-image",
                                                                 "a red cube")
    assert "both 'prompt' and 'image'" in reasons[2]
    assert "needs an 'image' item" in reasons[3]


def test_the_mesh_content_is_part_of_the_asset_id_and_other_ids_do_not_change(folder):
    first = parse_manifest(_jsonl(folder, [{"mesh": "box.glb", "prompt": "a crate"},
                                           {"prompt": "a crate"}])).requests
    trimesh.creation.box(extents=(2.0, 0.5, 0.8)).export(folder / "box.glb")
    second = parse_manifest(_jsonl(folder, [{"mesh": "box.glb", "prompt": "a crate"},
                                            {"prompt": "a crate"}])).requests
    ids = [[asset_identity(r.canonical(), r.generator) for r in rs] for rs in (first, second)]
    assert ids[0][0] != ids[1][0]  # same path, new content: a new asset
    assert ids[0][1] == ids[1][1]
    assert "mesh" not in first[1].canonical()  # prompt ids as before mesh rows existed


def test_manifest_rows_yield_each_outcome_in_file_order(folder):
    rows = ManifestRows(_jsonl(folder, [
        {"prompt": "a"}, {"prompt": ""}, "", {"prompt": "b", "variants": 2}, "{bad",
    ]))
    outcomes = [(type(o).__name__, o.line) for o in rows]
    assert outcomes == [("AcceptedRow", 1), ("Rejection", 2), ("AcceptedRow", 4),
                        ("Rejection", 5)]
    assert rows.rows == 4 and len(rows.sha256) == 64


def test_a_streamed_jsonl_reads_crlf_and_lone_cr_line_ends_like_a_whole_file(folder):
    path = folder / "m.jsonl"
    path.write_bytes(b'{"prompt": "a"}\r\n{"prompt": "b"}\r{"prompt": ""}\n')
    streamed = [(type(o), o.line) for o in ManifestRows(path)]
    assert streamed == [(AcceptedRow, 1), (AcceptedRow, 2), (Rejection, 3)]


def test_streaming_past_the_run_limit_needs_the_caller_to_ask(folder):
    path = _jsonl(folder, [{"prompt": f"thing {i}"} for i in range(50)])
    small = list(ManifestRows(path, max_stream_bytes=100))
    assert isinstance(small[0], Rejection) and "more than the limit of 100" in small[0].reason
    assert sum(isinstance(o, AcceptedRow) for o in ManifestRows(path)) == 50
