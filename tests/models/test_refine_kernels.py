"""Refinement's compiled hidden-vertex kernels return the torch formulas' values to the bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from models.bundle.cameras import BundleCameras
from models.bundle.spec import BundleSpec
from models.geometry import remesh as rm
from models.raster import get_rasteriser
from models.reconstruct.refine import hidden_vertices, relax_hidden


def _noisy_sphere(subdivisions: int = 3, seed: int = 0):
    """A bumpy icosphere: float32 vertices ``(V, 3)`` and int64 edges ``(E, 2)``."""
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.7)
    rng = np.random.default_rng(seed)
    vertices = mesh.vertices * (1.0 + 0.15 * rng.normal(size=(len(mesh.vertices), 1)))
    edges = rm.edges_unique(np.asarray(mesh.faces), len(mesh.vertices))[0]
    return (torch.from_numpy(vertices.astype(np.float32)),
            torch.from_numpy(np.asarray(mesh.faces, dtype=np.int64)),
            torch.from_numpy(edges))


def _hidden_in_torch(vertices, mvp, depth, tol):
    """The torch formula of :func:`hidden_vertices`."""
    res = depth.shape[-1]
    homo = torch.cat([vertices, torch.ones_like(vertices[:, :1])], dim=1)
    clip = torch.einsum("bij,vj->bvi", mvp, homo)
    ndc = clip[..., :3] / clip[..., 3:4]
    px = ((ndc[..., 0] + 1) * res / 2 - 0.5).round().long().clamp(0, res - 1)
    py = ((1 - ndc[..., 1]) * res / 2 - 0.5).round().long().clamp(0, res - 1)
    b = torch.arange(depth.shape[0])[:, None]
    return ~(ndc[..., 2] <= depth[b, py, px] + tol).any(dim=0)


def _relax_in_torch(vertices, edges, hidden, iterations):
    """The torch formula of :func:`relax_hidden` (Jacobi steps of the uniform Laplacian)."""
    deg = torch.bincount(edges.reshape(-1), minlength=vertices.shape[0]).clamp_min(1)
    v = vertices
    for _ in range(iterations):
        acc = torch.zeros_like(v)
        acc = acc.index_add(0, edges[:, 0], v[edges[:, 1]])
        acc = acc.index_add(0, edges[:, 1], v[edges[:, 0]])
        mean = v - (v - acc / deg[:, None].to(v.dtype))
        v = torch.where(hidden[:, None], mean, v)
    return v


@pytest.mark.parametrize("resolution, tol", [(64, 3e-4), (128, 3e-4), (97, 2e-3)])
def test_hidden_vertices_equal_the_torch_formula_against_a_rendered_depth(resolution, tol):
    vertices, faces, _ = _noisy_sphere()
    mvp = torch.from_numpy(BundleCameras.from_spec(BundleSpec()).mvp.astype(np.float32))
    homo = torch.cat([vertices, torch.ones_like(vertices[:, :1])], dim=1)
    clip = torch.einsum("bij,vj->bvi", mvp, homo)
    # The depth of the mesh itself: every vertex is a near-tie of the depth test.
    depth = get_rasteriser("cpu").rasterise(clip, faces, (resolution, resolution)).depth
    # Move the vertices a little so that some fall behind the rendered surface.
    moved = vertices * 0.98
    expected = _hidden_in_torch(moved, mvp, depth, tol)
    assert 0 < int(expected.sum()) < len(vertices)
    assert torch.equal(hidden_vertices(moved, mvp, depth, tol), expected)


def test_vertices_projected_outside_the_image_read_its_border_pixels():
    vertices = torch.tensor([[5.0, 0.0, 0.0], [0.0, -5.0, 0.0], [0.0, 0.0, 0.0]])
    mvp = torch.from_numpy(BundleCameras.from_spec(BundleSpec()).mvp.astype(np.float32))
    depth = torch.full((4, 16, 16), -1.0)
    depth[:, :, 0] = depth[:, :, -1] = depth[:, -1, :] = 1.0  # only the borders are far
    expected = _hidden_in_torch(vertices, mvp, depth, 3e-4)
    assert expected.tolist() == [False, False, True]
    assert torch.equal(hidden_vertices(vertices, mvp, depth), expected)


@pytest.mark.parametrize("iterations", [1, 3, 7])
def test_relaxing_hidden_vertices_equals_the_torch_jacobi_iterations_to_the_bit(iterations):
    vertices, _, edges = _noisy_sphere(seed=iterations)
    hidden = vertices[:, 1] > 0.2
    expected = _relax_in_torch(vertices, edges, hidden, iterations)
    result = relax_hidden(vertices, edges, hidden, iterations)
    assert torch.equal(result, expected)
    assert not torch.equal(result, vertices)


def test_relaxing_moves_only_the_hidden_vertices():
    vertices, _, edges = _noisy_sphere()
    hidden = vertices[:, 0] < -0.3
    result = relax_hidden(vertices, edges, hidden, 3)
    assert torch.equal(result[~hidden], vertices[~hidden])
    assert bool((result[hidden] != vertices[hidden]).any(dim=1).all())


@pytest.fixture(scope="module")
def flat_render():
    """A bumpy sphere's flat render at 64 px and the targets of a box's bundle at 64 px."""
    from models.reconstruct.refine import _downsample_targets, _render
    from models.render.views import render_bundle

    bundle = render_bundle(trimesh.creation.box((1.0, 0.6, 0.8)), tile=128)
    targets = _downsample_targets(bundle, 64, torch.device("cpu"))
    vertices, faces, _ = _noisy_sphere(seed=5)
    mvp = torch.from_numpy(BundleCameras.from_spec(bundle.spec).mvp.astype(np.float32))
    normals, _, raster = _render(get_rasteriser("cpu"), vertices, faces, mvp, 64, True)
    return normals, raster, targets


def test_flat_normal_loss_from_compiled_sums_equals_the_torch_scatter_to_the_bit(flat_render):
    from models.reconstruct.refine import _compiled_sums, _face_normal_loss, _normal_loss

    normals, raster, targets = flat_render
    assert _compiled_sums(normals, raster.tri_id, targets)
    tri = raster.tri_id.reshape(-1)[targets.full_index]
    keep = (tri >= 0).nonzero(as_tuple=True)[0]
    assert 0 < len(keep) < len(tri)
    leaf = normals.detach().clone().requires_grad_(True)
    expected = _face_normal_loss(leaf, tri[keep], targets.full_view[keep],
                                 targets.full_world[keep], 4)
    expected.sum().backward()
    compiled_leaf = normals.detach().clone().requires_grad_(True)
    result = _normal_loss(compiled_leaf, raster, targets)
    result.sum().backward()
    assert torch.equal(result, expected)
    assert torch.equal(compiled_leaf.grad, leaf.grad)
