"""Continuous remeshing: edge operations keep meshes manifold and move edge lengths to target."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from models.geometry import remesh as rm
from models.reconstruct.optimise import OptimiserConfig, VertexOptimiser, smooth_update


def _sphere(subdivisions: int = 2) -> tuple[np.ndarray, np.ndarray]:
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.8)
    return np.asarray(mesh.vertices), np.asarray(mesh.faces, dtype=np.int64)


def _is_closed_manifold(vertices: np.ndarray, faces: np.ndarray) -> bool:
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    return bool(mesh.is_watertight and mesh.is_winding_consistent and mesh.is_volume)


def _mean_edge(vertices: np.ndarray, faces: np.ndarray) -> float:
    edges, _ = rm.edges_unique(faces, len(vertices))
    return float(rm.edge_lengths(vertices, edges).mean())


def test_split_edges_shortens_long_edges_and_keeps_a_closed_manifold():
    v, f = _sphere(1)
    before = _mean_edge(v, f)
    v2, f2, _ = rm.split_edges(v, f, 0.5 * before)
    assert len(f2) > len(f)
    assert _mean_edge(v2, f2) < 0.75 * before
    assert _is_closed_manifold(v2, f2)


def test_split_edges_handles_one_two_and_three_split_edges_per_face():
    # A single triangle with edges of different lengths: each threshold splits 1, 2 or 3 edges.
    v = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    f = np.array([[0, 1, 2]])
    for threshold, n_faces in ((4.5, 2), (3.5, 3), (2.0, 4)):
        v2, f2, _ = rm.split_edges(v, f, threshold)
        area = trimesh.Trimesh(v2, f2, process=False).area
        assert len(f2) == n_faces
        assert area == pytest.approx(6.0)
        normals = rm.face_normals(v2, f2)
        assert np.allclose(normals, [0.0, 0.0, 1.0])


def test_collapse_edges_lengthens_short_edges_and_keeps_a_closed_manifold():
    v, f = _sphere(4)
    before = _mean_edge(v, f)
    v2, f2, _ = rm.collapse_edges(v, f, 2.0 * before)
    assert len(f2) < len(f)
    assert _mean_edge(v2, f2) > before
    assert _is_closed_manifold(v2, f2)


def test_flip_edges_moves_valences_toward_six():
    v, f = _sphere(2)
    # Irregular connectivity: stretch along x and split only the stretched edges, which leaves
    # many vertices of valence 4 and 8.
    stretched = v * np.array([2.0, 1.0, 1.0])
    edges, _ = rm.edges_unique(f, len(v))
    threshold = float(np.median(rm.edge_lengths(stretched, edges)))
    v, f, _ = rm.split_edges(stretched, f, threshold)
    v = 0.8 * v / np.linalg.norm(v, axis=1, keepdims=True)

    def valence_error(faces: np.ndarray) -> float:
        edges, _ = rm.edges_unique(faces, len(v))
        return float(((np.bincount(edges.ravel()) - 6) ** 2).sum())

    f2 = rm.flip_edges(v, f)
    assert valence_error(f2) < valence_error(f)
    assert _is_closed_manifold(v, f2)


def test_remesh_drives_mean_edge_length_to_target():
    v, f = _sphere(2)
    for target in (0.1, 0.3):
        v2, f2 = rm.remesh_to(v, f, target, iterations=8)
        assert _is_closed_manifold(v2, f2)
        assert _mean_edge(v2, f2) == pytest.approx(target, rel=0.2)


def test_remesh_does_not_modify_its_inputs():
    v, f = _sphere(2)
    attrs = np.random.default_rng(0).normal(size=(len(v), 4))
    copies = v.copy(), f.copy(), attrs.copy()
    v2, f2, a2 = rm.remesh(v, f, 0.1, attrs)
    assert a2 is not None and a2.shape == (len(v2), 4)
    for original, copy in zip((v, f, attrs), copies, strict=True):
        assert np.array_equal(original, copy)


def test_remesh_carries_constant_attributes_unchanged():
    v, f = _sphere(2)
    attrs = np.tile([[1.0, -2.0, 0.5]], (len(v), 1))
    v2, _, a2 = rm.remesh(v, f, 0.08, attrs)
    assert len(v2) != len(v)
    assert np.allclose(a2, attrs[0])


def test_remesh_tolerates_an_open_non_manifold_mesh():
    # Two boxes glued along one edge, one with a face missing: open and non-manifold.
    a = trimesh.creation.box((1, 1, 1))
    b = trimesh.creation.box((1, 1, 1))
    b.apply_translation([1.0, 1.0, 0.0])
    mesh = trimesh.util.concatenate([a, b])
    mesh.merge_vertices()
    faces = np.asarray(mesh.faces)[1:]
    v2, f2 = rm.remesh_to(np.asarray(mesh.vertices), faces, 0.3, iterations=3)
    assert len(f2) > len(faces)
    assert np.isfinite(v2).all()
    assert f2.min() >= 0 and f2.max() < len(v2)


def test_tangential_smoothing_keeps_a_sphere_on_its_surface():
    v, f = _sphere(3)
    noisy = v + 0.01 * np.random.default_rng(1).normal(size=v.shape)
    noisy *= (0.8 / np.linalg.norm(noisy, axis=1))[:, None]
    smoothed = rm.tangential_smooth(noisy, f, 0.5)
    radius = np.linalg.norm(smoothed, axis=1)
    assert np.abs(radius - 0.8).max() < 0.01


def test_update_smoothing_preserves_a_constant_update():
    v, f = _sphere(2)
    edges = torch.from_numpy(rm.edges_unique(f, len(v))[0])
    update = torch.ones(len(v), 3)
    assert torch.allclose(smooth_update(update, edges, 2.0, 5), update, atol=1e-6)


def test_vertex_optimiser_minimises_distance_to_a_target_sphere_while_remeshing():
    v, f = _sphere(2)
    opt = VertexOptimiser(v, f, 0.12, OptimiserConfig(lr=0.3))
    for _ in range(60):
        radius = opt.vertices.norm(dim=1)
        loss = (radius - 0.5).square().sum()
        loss.backward()
        opt.step()
    v2, f2 = opt.mesh()
    assert np.abs(np.linalg.norm(v2, axis=1) - 0.5).mean() < 0.02
    assert opt.m1.shape == opt.vertices.shape
    assert _is_closed_manifold(v2, f2)


def test_edges_unique_matches_a_sort_of_the_packed_edge_keys_on_open_and_non_manifold_faces():
    v, f = _sphere()
    # an open patch, a face repeated with the other winding and a fin: irregular edges
    faces = np.concatenate([f[:60], f[:3, ::-1], [[0, 1, len(v) - 1]]]).astype(np.int64)
    edges, face_edges = rm.edges_unique(faces, len(v))
    directed = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    key = directed.min(1) * len(v) + directed.max(1)
    expected, inverse = np.unique(key, return_inverse=True)
    assert np.array_equal(edges[:, 0] * len(v) + edges[:, 1], expected)
    assert np.array_equal(face_edges, inverse.reshape(-1, 3))
