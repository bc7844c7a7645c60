"""FlexiCubes and the marching-tetrahedra fallback recover analytic surfaces, closed and close."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from models.reconstruct.lrm import flexicubes as fc

RES = 24
SCALE = 2.0
VOXEL = SCALE / RES
RADIUS = 0.63
HALF = torch.tensor([0.5, 0.3, 0.7], dtype=torch.float64)

# Error bounds as fractions of the voxel size. A smooth surface is recovered to well under a
# tenth of a voxel; a box's sharp edges are cut (dual vertices average linear crossings, no
# feature-preserving fit), which costs up to about three quarters of a voxel near corners.
BOUNDS = {
    "sphere": {"vertex": 0.1, "surface": 0.15, "volume": 0.03},
    "box": {"vertex": 0.5, "surface": 1.0, "volume": 0.06},
}


def sphere_sdf(p: torch.Tensor) -> torch.Tensor:
    return p.norm(dim=1) - RADIUS


def box_sdf(p: torch.Tensor) -> torch.Tensor:
    q = p.abs() - HALF
    return q.clamp_min(0).norm(dim=1) + q.max(dim=1).values.clamp_max(0)


SHAPES = {
    "sphere": (sphere_sdf, 4.0 / 3.0 * np.pi * RADIUS**3),
    "box": (box_sdf, float(8 * HALF.prod())),
}


def surface_samples(shape: str) -> np.ndarray:
    if shape == "sphere":
        g = np.random.default_rng(0).normal(size=(2000, 3))
        return g / np.linalg.norm(g, axis=1, keepdims=True) * RADIUS
    return trimesh.creation.box(extents=(2 * HALF).numpy()).sample(2000, seed=0)


def extract(extractor: str, sdf: torch.Tensor, **kwargs) -> trimesh.Trimesh:
    grid = fc.grid_vertices(RES, SCALE).double()
    verts, faces = fc.EXTRACTORS[extractor](grid, sdf, RES, **kwargs)
    return trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False)


@pytest.mark.parametrize("extractor", sorted(fc.EXTRACTORS))
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_extraction_is_watertight_and_within_bounds_of_the_analytic_surface(extractor, shape):
    sdf_fn, volume = SHAPES[shape]
    grid = fc.grid_vertices(RES, SCALE).double()
    mesh = extract(extractor, sdf_fn(grid))
    bounds = BOUNDS[shape]

    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0, "faces must point outwards"
    vertex_error = sdf_fn(torch.from_numpy(mesh.vertices)).abs().max().item()
    assert vertex_error < bounds["vertex"] * VOXEL
    _, surface_to_mesh, _ = trimesh.proximity.closest_point(mesh, surface_samples(shape))
    assert surface_to_mesh.max() < bounds["surface"] * VOXEL
    assert abs(mesh.volume / volume - 1.0) < bounds["volume"]


def test_flexicubes_with_random_weights_stays_watertight():
    grid = fc.grid_vertices(RES, SCALE).double()
    sdf = sphere_sdf(grid)
    cubes = fc.surface_cubes(fc.prepare_sdf(sdf, RES), RES)
    gen = torch.Generator().manual_seed(0)
    raw = torch.randn(len(cubes), 21, generator=gen, dtype=torch.float64) * 3.0
    beta, alpha, gamma = fc.normalise_weights(raw)
    mesh = extract("flexicubes", sdf, cube_ids=cubes, beta=beta, alpha=alpha, gamma=gamma)
    plain = extract("flexicubes", sdf)

    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    assert not np.allclose(mesh.vertices, plain.vertices), "weights must move the dual vertices"
    assert sphere_sdf(torch.from_numpy(mesh.vertices)).abs().max() < VOXEL


def test_weights_are_normalised_into_the_flexicubes_ranges():
    raw = torch.linspace(-50, 50, 21 * 5).reshape(5, 21)
    beta, alpha, gamma = fc.normalise_weights(raw, weight_scale=0.5)
    assert beta.shape == (5, 12) and alpha.shape == (5, 8) and gamma.shape == (5,)
    assert beta.min() >= 0.5 and beta.max() <= 1.5 and alpha.min() >= 0.5 and alpha.max() <= 1.5
    assert gamma.min() >= 0.25 and gamma.max() <= 0.75


@pytest.mark.parametrize("extractor", sorted(fc.EXTRACTORS))
def test_a_surface_touching_the_grid_walls_is_closed_at_the_walls(extractor):
    grid = fc.grid_vertices(RES, SCALE).double()
    mesh = extract(extractor, grid.norm(dim=1) - 1.2)  # a sphere bigger than the grid
    assert mesh.is_watertight and mesh.volume > 0
    assert mesh.bounds.max() <= SCALE / 2 + 1e-9


@pytest.mark.parametrize("extractor", sorted(fc.EXTRACTORS))
def test_no_surface_gives_an_empty_mesh(extractor):
    grid = fc.grid_vertices(8, SCALE)
    verts, faces = fc.EXTRACTORS[extractor](grid, torch.ones(len(grid)), 8)
    assert verts.shape == (0, 3) and faces.shape == (0, 3)


def test_grid_layout_is_x_major_with_flexicubes_corner_order():
    res = 3
    grid = fc.grid_vertices(res, 1.0)
    cubes = fc.grid_cubes(res)
    # vertex index ix*(R+1)^2 + iy*(R+1) + iz
    assert torch.allclose(grid[1 * 16 + 2 * 4 + 3], torch.tensor([-0.5 + 1 / 3, -0.5 + 2 / 3, 0.5]))
    # corner k of a cube is offset (k & 1, k >> 1 & 1, k >> 2 & 1) grid steps from corner 0
    offsets = grid[cubes[5]] - grid[cubes[5, 0]]
    expected = torch.tensor([[k & 1, k >> 1 & 1, k >> 2 & 1] for k in range(8)]) / res
    assert torch.allclose(offsets, expected.float(), atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_flexicubes_is_watertight_on_noisy_sdfs_with_ambiguous_faces(seed):
    res = 12
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 1, res + 1, res + 1, res + 1, generator=gen)
    sdf = torch.nn.functional.avg_pool3d(noise, 3, 1, 1).reshape(-1)
    verts, faces = fc.flexicubes(fc.grid_vertices(res, SCALE), sdf, res)
    mesh = trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False)
    assert len(mesh.faces) > 0
    assert mesh.is_watertight and mesh.is_winding_consistent
