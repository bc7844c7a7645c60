"""Texture baking pieces: decimation budgets, atlas tangent frames, gutter fill, unseen texels,
and tangent-space normal maps that carry a detailed mesh's shape onto a coarse LOD."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from models.export.bake import (
    bake_base_colour,
    bake_normal_map,
    push_pull,
    texels,
    to_tangent_space,
    unwrap,
)
from models.export.params import ExportParams, ExportParamsError
from models.geometry.decimate import FACE_TOLERANCE, decimate
from models.reconstruct.texture import project_colours
from models.render.views import render_bundle


def bumpy_ball(subdivisions: int = 5) -> trimesh.Trimesh:
    """A sphere with radial bumps: detail a coarse LOD cannot hold in its geometry."""
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.8)
    v = mesh.vertices / 0.8
    bumps = 1.0 + 0.06 * np.sin(9 * v[:, 0]) * np.sin(9 * v[:, 1]) * np.sin(9 * v[:, 2])
    return trimesh.Trimesh(mesh.vertices * bumps[:, None], mesh.faces, process=False)


# --------------------------------------------------------------------------- decimation


@pytest.mark.parametrize("target", [5000, 1250, 333])
def test_decimation_lands_within_two_percent_of_the_face_target(target):
    mesh = bumpy_ball()
    _, faces = decimate(mesh.vertices, mesh.faces, target)
    assert abs(len(faces) - target) <= FACE_TOLERANCE * target


def test_a_mesh_under_its_budget_is_kept_as_it_is():
    mesh = trimesh.creation.icosphere(subdivisions=2)
    vertices, faces = decimate(mesh.vertices, mesh.faces, 10000)
    assert np.array_equal(faces, mesh.faces) and np.allclose(vertices, mesh.vertices)


# --------------------------------------------------------------------------- parameters


def test_an_unknown_export_param_names_the_nearest_valid_one():
    with pytest.raises(ExportParamsError, match="did you mean 'faces'"):
        ExportParams.from_mapping({"face": 8000})


def test_default_texture_side_follows_the_bundle_tile():
    params = ExportParams()
    assert (params.texture_side(512), params.texture_side(256)) == (2048, 1024)
    assert ExportParams(texture_size=512).texture_side(512) == 512


def test_lods_must_start_at_full_size_and_shrink():
    with pytest.raises(ExportParamsError, match="export_lods must start at 1.0"):
        ExportParams.from_mapping({"lods": [1.0, 0.5, 0.6]})


def test_manifest_lists_become_tuples():
    params = ExportParams.from_mapping({"lods": [1.0, 0.5], "formats": ["glb", "obj"]})
    assert params.lods == (1.0, 0.5) and params.formats == ("glb", "obj")


# --------------------------------------------------------------------------- atlas and fill


def test_tangent_frames_are_unit_orthogonal_to_the_normals_with_unit_handedness():
    mesh = bumpy_ball(3)
    uvm = unwrap(mesh.vertices, mesh.faces, 256)
    t, w = uvm.tangents[:, :3], uvm.tangents[:, 3]
    assert np.allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-6)
    assert np.abs(np.einsum("ij,ij->i", t, uvm.normals)).max() < 1e-6
    assert set(np.unique(w)) <= {-1.0, 1.0}


def test_tangent_space_maps_back_to_the_world_normals_it_came_from():
    mesh = bumpy_ball(3)
    uvm = unwrap(mesh.vertices, mesh.faces, 128)
    cover = texels(uvm, 128)
    rng = np.random.default_rng(0)
    world = cover.normals + 0.3 * rng.normal(size=cover.normals.shape)
    world /= np.linalg.norm(world, axis=1, keepdims=True)
    world[np.einsum("ij,ij->i", world, cover.normals) < 0.1] = cover.normals[
        np.einsum("ij,ij->i", world, cover.normals) < 0.1
    ]
    local = to_tangent_space(uvm, cover, world)
    # rebuild as a glTF viewer does: interpolated normal and tangent, B = w * cross(N, T)
    corners = uvm.faces[cover.face]
    b = cover.bary
    t = sum(b[:, k : k + 1] * uvm.tangents[corners[:, k], :3] for k in range(3))
    n = cover.normals
    t = t - n * np.einsum("ij,ij->i", n, t)[:, None]
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    w = np.sign(sum(b[:, k] * uvm.tangents[corners[:, k], 3] for k in range(3)))
    bt = np.cross(n, t) * w[:, None]
    rebuilt = local[:, :1] * t + local[:, 1:2] * bt + local[:, 2:] * n
    assert np.allclose(rebuilt, world, atol=1e-6)


def test_push_pull_keeps_filled_texels_and_fills_holes_from_their_neighbours():
    image = np.zeros((32, 32, 3))
    filled = np.zeros((32, 32), dtype=bool)
    image[:, :16] = (1.0, 0.0, 0.0)
    image[:, 16:] = (0.0, 0.0, 1.0)
    filled[4:28, 2:8] = True  # a red chart on the left
    filled[4:28, 24:30] = True  # a blue chart on the right
    out = push_pull(image * filled[..., None], filled)
    assert np.array_equal(out[filled], (image * filled[..., None])[filled])
    assert out[16, 0, 0] > 0.9 and out[16, 31, 2] > 0.9  # gutters continue their chart
    assert np.isfinite(out).all()


def test_texels_no_view_sees_take_surface_colours_not_grey():
    """Only the front view paints: the back of a red-fronted ball is unseen, and its texels
    take the colours propagated over the surface (red), never the flat grey of old."""
    ball = trimesh.creation.icosphere(subdivisions=4, radius=0.8)
    ball.visual.vertex_colors = np.tile([200, 30, 30, 255], (len(ball.vertices), 1))
    bundle = render_bundle(ball, tile=64)
    geometry = trimesh.Trimesh(ball.vertices * 0.9 / 0.8, ball.faces, process=False)
    weights = (1.0, 0.0, 0.0, 0.0)
    coloured = project_colours(bundle, geometry, view_weights=weights)
    colours = coloured.visual.vertex_colors[:, :3] / 255.0
    uvm = unwrap(geometry.vertices, geometry.faces, 128)
    cover = texels(uvm, 128)
    image = bake_base_colour(uvm, cover, bundle, vertex_colours=colours, view_weights=weights)
    inside = image.reshape(-1, 3)[cover.index].astype(int)
    back = cover.points[:, 2] < -0.5
    assert back.any()
    assert (inside[back, 0] > 150).all() and (inside[back, 1] < 80).all()


# --------------------------------------------------------------------------- normal maps


def _mapped_normal_error_deg(uvm, cover, normal_map, reference) -> tuple[float, float]:
    """Mean angle (degrees) to ``reference`` normals of the LOD's own normals and of the
    normals its map rebuilds."""
    local = normal_map.reshape(-1, 3)[cover.index] / 255.0 * 2.0 - 1.0
    corners = uvm.faces[cover.face]
    t = sum(cover.bary[:, k : k + 1] * uvm.tangents[corners[:, k], :3] for k in range(3))
    n = cover.normals
    t = t - n * np.einsum("ij,ij->i", n, t)[:, None]
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    w = np.sign(sum(cover.bary[:, k] * uvm.tangents[corners[:, k], 3] for k in range(3)))
    mapped = local[:, :1] * t + local[:, 1:2] * (np.cross(n, t) * w[:, None]) + local[:, 2:] * n
    mapped /= np.linalg.norm(mapped, axis=1, keepdims=True)

    def angle(a):
        return float(
            np.degrees(np.arccos(np.clip(np.einsum("ij,ij->i", a, reference), -1, 1))).mean()
        )

    return angle(n), angle(mapped)


def test_a_normal_map_from_the_detailed_mesh_restores_its_normals_on_a_coarse_lod():
    from models.export.bake import _closest_normals

    detail = bumpy_ball()
    v, f = decimate(detail.vertices, detail.faces, 800)
    uvm = unwrap(v, f, 256)
    cover = texels(uvm, 256)
    normal_map = bake_normal_map(uvm, cover, detail=(detail.vertices, detail.faces))
    reference = _closest_normals(cover.points, detail.vertices, detail.faces)
    plain, mapped = _mapped_normal_error_deg(uvm, cover, normal_map, reference)
    assert mapped < 0.5 * plain, (plain, mapped)


def test_a_mesh_baked_from_itself_has_a_flat_normal_map():
    mesh = bumpy_ball(3)
    uvm = unwrap(mesh.vertices, mesh.faces, 128)
    cover = texels(uvm, 128)
    normal_map = bake_normal_map(uvm, cover, detail=(mesh.vertices, mesh.faces))
    local = normal_map.reshape(-1, 3)[cover.index].astype(float)
    assert np.median(local[:, 2]) >= 250 and np.median(np.abs(local[:, :2] - 127.5)) < 4


def test_an_open_cone_with_a_needle_tip_still_reaches_its_face_target():
    """Generated surfaces (open rims, rings of sliver triangles at a tip) stall one quadric
    pass short of the target; the decimator goes on until it is met."""
    xyz, faces = _open_needle_cone()
    for target in (20000, 5000):
        _, out = decimate(xyz, faces, target)
        assert abs(len(out) - target) <= FACE_TOLERANCE * target


def _open_needle_cone() -> tuple[np.ndarray, np.ndarray]:
    """An open cone (no base) whose tip is a ring of 200 slivers, as parametric generators
    make them: 32,000 faces."""
    nu, nv = 200, 80
    u, v = np.meshgrid(np.linspace(0, 1, nu + 1), np.linspace(0, 1, nv + 1), indexing="ij")
    radius = 0.6 * (1 - v.ravel()) + 1e-3
    angle = 2 * np.pi * u.ravel()
    xyz = np.stack([radius * np.sin(angle), 1.4 * v.ravel(), radius * np.cos(angle)], 1)
    idx = np.arange(len(xyz)).reshape(nu + 1, nv + 1)
    a, b = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel()
    c, d = idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    mesh = trimesh.Trimesh(xyz, faces, process=True)  # welds the seam
    return np.asarray(mesh.vertices), np.asarray(mesh.faces)


def test_a_lod_keeps_every_vertex_of_an_open_rim_at_a_quarter_of_the_faces():
    """fast-simplification puts no cost on moving an open border: a plain quarter-face pass
    leaves the cone's 200-vertex base as a triangle. LODs keep it, and meet their target."""
    from models.export.lod import decimate_lod

    vertices, faces = _open_needle_cone()
    v, f = decimate_lod(vertices, faces, 5000)
    assert abs(len(f) - 5000) <= FACE_TOLERANCE * 5000
    on_base = np.abs(v[:, 1]) < 1e-9
    assert on_base.sum() == 200
    # and they are the original rim's positions, so the silhouette is kept exactly
    rim = vertices[np.abs(vertices[:, 1]) < 1e-9]
    assert np.allclose(np.sort(v[on_base], axis=0), np.sort(rim, axis=0))


def test_sliver_welding_joins_only_edge_connected_vertices():
    """Two sheets closer than the welding size stay apart: only edges weld."""
    from models.export.lod import weld_slivers

    x, y = np.meshgrid(np.linspace(0, 1, 11), np.linspace(0, 1, 11), indexing="ij")
    sheet = np.stack([x.ravel(), y.ravel(), np.zeros(121)], 1)
    idx = np.arange(121).reshape(11, 11)
    a, b = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel()
    c, d = idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    quads = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    # two sheets 1e-4 apart: every vertex has a twin far closer than any edge (0.1)
    vertices = np.concatenate([sheet, sheet + [0.0, 0.0, 1e-4]])
    faces = np.concatenate([quads, quads + 121])
    v, f = weld_slivers(vertices, faces)
    assert len(v) == 242 and len(f) == 400


# --------------------------------------------------------------------------- texels


def test_texels_lie_in_their_faces_at_their_texel_centres():
    mesh = bumpy_ball(3)
    uvm = unwrap(mesh.vertices, mesh.faces, 256)
    cover = texels(uvm, 256)
    assert (cover.bary >= -1e-9).all() and np.allclose(cover.bary.sum(1), 1.0)
    corners = uvm.faces[cover.face]
    uv = sum(cover.bary[:, k : k + 1] * uvm.uv[corners[:, k]] for k in range(3))
    row, col = np.divmod(cover.index, 256)
    assert np.allclose(uv * 256, np.stack([col + 0.5, row + 0.5], 1), atol=1e-6)
    points = sum(cover.bary[:, k : k + 1] * uvm.vertices[corners[:, k]] for k in range(3))
    assert np.allclose(cover.points, points)


def test_texels_cover_the_atlas_area_of_the_charts():
    mesh = bumpy_ball(3)
    uvm = unwrap(mesh.vertices, mesh.faces, 512)
    cover = texels(uvm, 512)
    tuv = uvm.uv[uvm.faces]
    e1, e2 = tuv[:, 1] - tuv[:, 0], tuv[:, 2] - tuv[:, 0]
    area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).sum()
    assert len(np.unique(cover.index)) == len(cover.index)
    assert len(cover.index) / 512**2 == pytest.approx(area, rel=0.02)


def test_gutter_fill_encodes_the_push_pull_image():
    from models.export.bake import Texels, fill_gutters

    rng = np.random.default_rng(1)
    index = np.flatnonzero(rng.random(64 * 64) < 0.3)
    values = rng.random((len(index), 3))
    cover = Texels(64, index, index * 0, np.zeros((len(index), 3)), None, None)
    image = np.zeros((64 * 64, 3))
    image[index] = values
    filled = np.zeros(64 * 64, dtype=bool)
    filled[index] = True
    expected = push_pull(image.reshape(64, 64, 3), filled.reshape(64, 64))
    got = fill_gutters(cover, values).astype(float)
    assert np.abs(got - np.round(expected * 255)).max() <= 1.0
    assert np.array_equal(got.reshape(-1, 3)[index], np.round(values * 255))


def test_a_normal_map_from_the_bundle_restores_the_detailed_normals_on_a_coarse_lod():
    from models.export.bake import _closest_normals
    from models.geometry.mesh import normalise_mesh

    detail = normalise_mesh(bumpy_ball())[0]
    bundle = render_bundle(detail, tile=256, normalise=False)
    v, f = decimate(detail.vertices, detail.faces, 800)
    uvm = unwrap(v, f, 256)
    cover = texels(uvm, 256)
    normal_map = bake_normal_map(uvm, cover, bundle=bundle)
    reference = _closest_normals(cover.points, detail.vertices, detail.faces)
    plain, mapped = _mapped_normal_error_deg(uvm, cover, normal_map, reference)
    assert mapped < 0.7 * plain, (plain, mapped)
