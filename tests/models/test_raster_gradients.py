"""Gradients through the rasteriser agree with central finite differences.

A small bumpy icosphere (320 faces) is rendered into 4 views of 64 pixels; a rendered-normal
loss and a silhouette (mask) loss are differentiated with respect to vertex positions and
compared with central differences on the vertices with the largest gradients. Coverage is
not differentiable, but anti-aliasing makes the images continuous in the vertex positions,
so finite differences with a step far below a pixel are meaningful.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from models.bundle.cameras import BundleCameras
from models.bundle.spec import BundleSpec
from models.raster import get_rasteriser

RES = 64
STEP = 1e-3  # world units; about 1/40 of a pixel at this resolution
#: gradient vectors must point the same way and have similar length
MIN_COSINE = 0.98
MAX_NORM_RATIO_ERROR = 0.1


def _mesh(seed: int, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.7 * scale)
    rng = np.random.default_rng(seed)
    verts = mesh.vertices * (1.0 + 0.06 * rng.standard_normal((len(mesh.vertices), 1)))
    return torch.tensor(verts, dtype=torch.float64), torch.tensor(mesh.faces)


def _vertex_normals(v: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    tri = v[faces]
    fn = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    vn = torch.zeros_like(v).index_add(0, faces.reshape(-1), fn.repeat_interleave(3, 0))
    return vn / vn.norm(dim=1, keepdim=True)


class Renderer:
    def __init__(self) -> None:
        self.rast = get_rasteriser("cpu")
        cams = BundleCameras.from_spec(BundleSpec(tile=RES))
        self.mvp = torch.tensor(cams.mvp, dtype=torch.float64)
        self.rot = torch.tensor(cams.rotations, dtype=torch.float32)

    def __call__(self, v: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Anti-aliased camera-space normal images and masks ``(4, RES, RES, 3)``, ``(4, ...)``."""
        vh = torch.cat([v, torch.ones_like(v[:, :1])], 1)
        clip = torch.einsum("bij,vj->bvi", self.mvp, vh).float()
        r = self.rast.rasterise(clip, faces, (RES, RES))
        n_world = _vertex_normals(v, faces).float()
        n_cam = torch.einsum("bij,vj->bvi", self.rot, n_world)
        normals = self.rast.antialias(self.rast.interpolate(n_cam, r), r)
        mask = self.rast.antialias(r.mask[..., None].float(), r)[..., 0]
        return normals, mask


@pytest.fixture(scope="module")
def scene():
    render = Renderer()
    faces = _mesh(0)[1]
    with torch.no_grad():
        target_normals, target_mask = render(_mesh(1, scale=1.05)[0], faces)
    return render, faces, target_normals, target_mask


def _normal_loss(render, faces, target_normals, target_mask, v):
    normals, _ = render(v, faces)
    return ((normals - target_normals) ** 2).sum(-1).mean()


def _mask_loss(render, faces, target_normals, target_mask, v):
    _, mask = render(v, faces)
    return ((mask - target_mask) ** 2).mean()


def _check_against_finite_differences(loss_fn, scene, n_vertices: int = 8) -> None:
    v0 = _mesh(0)[0]
    v = v0.clone().requires_grad_(True)
    loss_fn(*scene, v).backward()
    grad = v.grad.detach()
    picked = torch.argsort(grad.norm(dim=1), descending=True)[:n_vertices]
    numeric = torch.zeros(len(picked), 3, dtype=torch.float64)
    with torch.no_grad():
        for a, vid in enumerate(picked):
            for c in range(3):
                plus, minus = v0.clone(), v0.clone()
                plus[vid, c] += STEP
                minus[vid, c] -= STEP
                numeric[a, c] = (loss_fn(*scene, plus) - loss_fn(*scene, minus)) / (2 * STEP)
    analytic = grad[picked].reshape(-1)
    numeric = numeric.reshape(-1)
    cosine = torch.dot(analytic, numeric) / (analytic.norm() * numeric.norm())
    ratio = analytic.norm() / numeric.norm()
    assert analytic.norm() > 0
    assert cosine > MIN_COSINE, f"cosine {cosine:.3f}"
    assert abs(ratio - 1) < MAX_NORM_RATIO_ERROR, f"norm ratio {ratio:.3f}"


def test_normal_loss_gradient_matches_finite_differences(scene):
    _check_against_finite_differences(_normal_loss, scene)


def test_mask_loss_gradient_matches_finite_differences(scene):
    _check_against_finite_differences(_mask_loss, scene)


def test_mask_loss_gradient_pushes_the_silhouette_outward_toward_a_larger_target(scene):
    render, faces = scene[:2]
    v0 = _mesh(0)[0]
    with torch.no_grad():
        target_mask = render(v0 * 1.1, faces)[1]
    v = v0.clone().requires_grad_(True)
    _mask_loss(render, faces, None, target_mask, v).backward()
    # descending the loss moves vertices along -grad; toward the bigger target is outward
    outward = (-v.grad * v.detach()).sum(1)
    moving = v.grad.norm(dim=1) > 0
    assert moving.sum() > 10
    assert (outward[moving] > 0).all()
