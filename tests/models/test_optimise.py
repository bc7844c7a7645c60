"""The vertex optimiser's update smoothing: the compiled CPU path is the torch formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from models.geometry import remesh as rm
from models.reconstruct.optimise import VertexOptimiser, smooth_update


def _jacobi_in_torch(update, edges, lam, iterations):
    """``(I + lam L)^-1 update`` by Jacobi iterations, written with torch operations."""
    deg = torch.zeros(update.shape[0]).index_add_(0, edges.reshape(-1), torch.ones(edges.numel()))
    u = update
    for _ in range(iterations):
        nsum = torch.zeros_like(update)
        nsum.index_add_(0, edges[:, 0], u[edges[:, 1]]).index_add_(0, edges[:, 1], u[edges[:, 0]])
        u = (update + lam * nsum) / (1.0 + lam * deg)[:, None]
    return u


@pytest.mark.parametrize("lam, iterations", [(2.0, 4), (0.7, 1), (5.0, 9)])
def test_update_smoothing_equals_the_torch_jacobi_iterations_to_the_bit(lam, iterations):
    mesh = trimesh.creation.icosphere(subdivisions=3)
    edges = torch.from_numpy(rm.edges_unique(np.asarray(mesh.faces), len(mesh.vertices))[0])
    update = torch.from_numpy(
        np.random.default_rng(0).normal(size=(len(mesh.vertices), 3)).astype(np.float32)
    )
    expected = _jacobi_in_torch(update, edges, lam, iterations)
    assert torch.equal(smooth_update(update, edges, lam, iterations), expected)


def test_update_smoothing_keeps_gradients_flowing():
    mesh = trimesh.creation.icosphere(subdivisions=1)
    edges = torch.from_numpy(rm.edges_unique(np.asarray(mesh.faces), len(mesh.vertices))[0])
    update = torch.ones(len(mesh.vertices), 3, requires_grad=True)
    smooth_update(update, edges, 2.0, 3).sum().backward()
    assert update.grad is not None and torch.isfinite(update.grad).all()


def test_restarting_takes_the_given_mesh_with_fresh_moments():
    mesh = trimesh.creation.icosphere(subdivisions=2)
    opt = VertexOptimiser(mesh.vertices, mesh.faces, 0.2)
    for _ in range(3):
        opt.vertices.square().sum().backward()
        opt.step()
    earlier = torch.from_numpy(np.asarray(mesh.vertices, dtype=np.float32))
    faces = torch.from_numpy(np.asarray(mesh.faces, dtype=np.int64))
    opt.restart(earlier, faces)
    assert torch.equal(opt.vertices.detach(), earlier) and torch.equal(opt.faces, faces)
    assert opt.steps == 0 and not opt.m1.any() and not opt.m2.any()
    opt.vertices.square().sum().backward()
    opt.step()
    assert opt.steps == 1
