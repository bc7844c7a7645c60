"""Face and vertex normals: numpy and torch agree, follow the right-hand rule, weight by area."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from models.geometry.normals import (
    face_cross,
    face_normals,
    face_normals_and_areas,
    vertex_normals,
)

torch = pytest.importorskip("torch")

from models.geometry.normals_torch import (  # noqa: E402 - after the torch skip
    face_normals_t,
    vertex_normals_t,
)


def test_counter_clockwise_faces_point_out_of_a_closed_mesh():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    normals = face_normals(sphere.vertices, sphere.faces)
    centroids = sphere.triangles_center
    assert np.all(np.einsum("ij,ij->i", normals, centroids) > 0)
    assert np.allclose(normals, sphere.face_normals)


def test_areas_and_cross_lengths_match_the_triangle_areas():
    box = trimesh.creation.box(extents=(1.0, 2.0, 3.0))
    _, areas = face_normals_and_areas(box.vertices, box.faces)
    assert np.allclose(areas, box.area_faces)
    assert np.allclose(np.linalg.norm(face_cross(box.vertices, box.faces), axis=1), 2 * areas)


def test_a_zero_area_face_gets_a_zero_normal_not_nan():
    vertices = np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0]])
    normals, areas = face_normals_and_areas(vertices, np.array([[0, 1, 2], [0, 1, 3]]))
    assert np.array_equal(normals[0], [0.0, 0.0, 0.0]) and areas[0] == 0.0
    assert np.allclose(normals[1], [0.0, 0.0, 1.0])


def test_vertex_normals_weight_faces_by_area():
    # A big face along +Z and a small one along +X share the vertex 0.
    vertices = np.array([[0.0, 0, 0], [4, 0, 0], [0, 4, 0], [0, 0, -1], [0, 1, 0]])
    faces = np.array([[0, 1, 2], [0, 3, 4]])
    n = vertex_normals(vertices, faces)[0]
    big, small = face_normals_and_areas(vertices, faces)[1]
    expected = np.array([small, 0.0, big]) / np.hypot(small, big)
    assert np.allclose(n, expected)
    assert np.allclose(np.linalg.norm(vertex_normals(vertices, faces), axis=1), 1.0)


def test_unused_vertices_get_a_zero_vertex_normal():
    vertices = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 5, 5]])
    assert np.array_equal(vertex_normals(vertices, np.array([[0, 1, 2]]))[3], [0.0, 0.0, 0.0])


def test_torch_normals_match_numpy_and_carry_gradients():
    sphere = trimesh.creation.icosphere(subdivisions=1)
    v = torch.tensor(sphere.vertices, dtype=torch.float64, requires_grad=True)
    f = torch.tensor(sphere.faces, dtype=torch.int64)
    fn, vn = face_normals_t(v, f), vertex_normals_t(v, f)
    assert np.allclose(fn.detach().numpy(), face_normals(sphere.vertices, sphere.faces))
    assert np.allclose(vn.detach().numpy(), vertex_normals(sphere.vertices, sphere.faces))
    (fn[:, 1].sum() + vn[:, 0].sum()).backward()
    assert v.grad is not None and torch.count_nonzero(v.grad) > 0
