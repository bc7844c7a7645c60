"""The CPU rasteriser: coverage, barycentrics, interpolation and silhouette anti-aliasing.

The numba kernels' values and hand-written gradients are checked against the pure-torch
reference (:mod:`models.raster.reference`) differentiated by torch autograd.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from models.bundle.cameras import BundleCameras
from models.bundle.spec import BundleSpec
from models.raster import CpuRasteriser, RasteriserUnavailable
from models.raster._kernels import MAX_WALK
from models.raster.cpu import coverage_egl, coverage_numba, face_neighbours
from models.raster.reference import reference_antialias, reference_bary, reference_interpolate

RES = 64


def _clip(vertices: np.ndarray, tile: int = RES) -> torch.Tensor:
    mvp = BundleCameras.from_spec(BundleSpec(tile=tile)).mvp
    vh = np.concatenate([vertices, np.ones((len(vertices), 1))], 1)
    return torch.tensor(np.einsum("bij,vj->bvi", mvp, vh), dtype=torch.float32)


@pytest.fixture(scope="module")
def bumpy():
    """A small irregular closed mesh (so silhouettes and folds are not trivial)."""
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.8)
    rng = np.random.default_rng(3)
    verts = mesh.vertices * (1.0 + 0.08 * rng.standard_normal((len(mesh.vertices), 1)))
    return verts, np.asarray(mesh.faces)


def test_row_zero_is_the_top_of_the_image():
    # one triangle in the upper half of NDC, w = 1
    clip = torch.tensor([[-0.5, 0.2, 0.0, 1.0], [0.5, 0.2, 0.0, 1.0], [0.0, 0.9, 0.0, 1.0]])
    r = CpuRasteriser().rasterise(clip, torch.tensor([[0, 1, 2]]), (RES, RES))
    rows = torch.nonzero(r.mask[0])[:, 0]
    assert rows.max() < RES // 2
    cols = torch.nonzero(r.mask[0])[:, 1]
    assert abs(cols.float().mean().item() - (RES - 1) / 2) < 1.0


def test_coverage_is_the_same_from_numba_and_egl(bumpy):
    verts, faces = bumpy
    clip = _clip(verts).numpy()
    a = coverage_numba(clip, faces, (RES, RES))
    try:
        b = coverage_egl(clip, faces, (RES, RES))
    except RasteriserUnavailable as exc:
        pytest.skip(f"no EGL here: {exc}")
    assert (a >= 0).sum() > 1000
    # only pixel centres lying on an edge may go to either triangle
    assert (a != b).mean() < 0.01
    assert ((a >= 0) != (b >= 0)).sum() <= 0.005 * (a >= 0).sum()


def test_barycentrics_reproduce_the_pixel_centre(bumpy):
    verts, faces = bumpy
    clip = _clip(verts)
    r = CpuRasteriser().rasterise(clip, torch.tensor(faces), (RES, RES))
    assert torch.allclose(r.bary.sum(-1)[r.mask], torch.ones(()), atol=1e-5)
    xyw = CpuRasteriser().interpolate(clip[..., [0, 1, 3]], r)
    ndc = xyw[..., :2] / xyw[..., 2:].clamp(min=1e-6)
    j, i = torch.meshgrid(torch.arange(RES), torch.arange(RES), indexing="ij")
    centre = torch.stack([(2 * i + 1) / RES - 1, 1 - (2 * j + 1) / RES], -1).float()
    err = (ndc - centre[None]).abs()[r.mask]
    assert err.max() < 1e-4


def test_depth_is_the_nearest_surface():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.9)
    clip = _clip(sphere.vertices, tile=32)
    r = CpuRasteriser().rasterise(clip, torch.tensor(sphere.faces), (32, 32))
    spec = BundleSpec()
    cams = BundleCameras.from_spec(spec)
    # the sphere's point nearest to camera 0 is 0.9 along its axis: camera depth d - 0.9
    zc = -(spec.distance - 0.9)
    p = cams.projection
    expected = (p[2, 2] * zc + p[2, 3]) / -zc
    centre = r.depth[:, 15:17, 15:17]
    assert torch.allclose(centre, torch.full_like(centre, expected), atol=2e-4)
    assert (r.depth[~r.mask] == 1).all()


def test_face_neighbours_pair_up_shared_edges():
    mesh = trimesh.creation.icosphere(subdivisions=1)
    neigh = face_neighbours(mesh.faces)
    for f in range(len(mesh.faces)):
        for k in range(3):
            g = neigh[f, k]
            edge = {mesh.faces[f][(k + 1) % 3], mesh.faces[f][(k + 2) % 3]}
            assert edge <= set(mesh.faces[g])
    # an open strip: the outer edges are boundaries
    strip = face_neighbours(np.array([[0, 1, 2], [2, 1, 3]]))
    assert sorted(strip.ravel().tolist()) == [-1, -1, -1, -1, 0, 1]



def test_face_neighbours_leave_edges_of_three_faces_unpaired():
    # a fin: faces 0, 1 and 2 share the edge (0, 1); faces 2 and 3 share (1, 3) only
    faces = np.array([[0, 1, 2], [1, 0, 3], [0, 1, 4], [1, 4, 5]])
    sides: dict[frozenset, list[tuple[int, int]]] = {}
    for f, face in enumerate(faces.tolist()):
        for k in range(3):
            sides.setdefault(frozenset((face[(k + 1) % 3], face[(k + 2) % 3])), []).append((f, k))
    expected = np.full((4, 3), -1)
    for pair in sides.values():
        if len(pair) == 2:
            (f, k), (g, j) = pair
            expected[f, k], expected[g, j] = g, f
    assert np.array_equal(face_neighbours(faces), expected)
    assert face_neighbours(faces)[0].tolist() == [-1, -1, -1]

def _grads(fn, *inputs):
    for x in inputs:
        x.grad = None
    fn().backward()
    return [x.grad.clone() for x in inputs]


def test_barycentric_and_depth_gradients_match_torch_autograd(bumpy):
    verts, faces = bumpy
    clip = _clip(verts).requires_grad_(True)
    f = torch.tensor(faces)
    rast = CpuRasteriser()
    weights = torch.randn(4, RES, RES, 3, generator=torch.Generator().manual_seed(0))

    def fast():
        r = rast.rasterise(clip, f, (RES, RES))
        return (r.bary * weights).sum() + (r.depth * weights[..., 0]).sum()

    def ref():
        r = rast.rasterise(clip, f, (RES, RES))
        bary, depth = reference_bary(clip, f, r.tri_id)
        return (bary * weights).sum() + (depth * weights[..., 0]).sum()

    (g_fast,) = _grads(fast, clip)
    (g_ref,) = _grads(ref, clip)
    assert torch.allclose(g_fast, g_ref, rtol=1e-3, atol=1e-3 * g_ref.abs().max().item())


def test_interpolation_gradients_match_torch_autograd(bumpy):
    verts, faces = bumpy
    clip = _clip(verts).requires_grad_(True)
    attr = torch.tensor(verts, dtype=torch.float32).requires_grad_(True)
    f = torch.tensor(faces)
    rast = CpuRasteriser()
    weights = torch.randn(4, RES, RES, 3, generator=torch.Generator().manual_seed(1))

    def run(interp):
        r = rast.rasterise(clip, f, (RES, RES))
        return lambda: (interp(attr, r) * weights).sum()

    g_fast = _grads(run(rast.interpolate), clip, attr)
    g_ref = _grads(run(reference_interpolate), clip, attr)
    for a, b in zip(g_fast, g_ref, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-3 * b.abs().max().item())


def test_antialias_matches_torch_reference_in_value_and_gradient(bumpy):
    verts, faces = bumpy
    clip = _clip(verts).requires_grad_(True)
    f = torch.tensor(faces)
    rast = CpuRasteriser()
    colours = torch.rand(len(verts), 3, generator=torch.Generator().manual_seed(2))
    weights = torch.randn(4, RES, RES, 3, generator=torch.Generator().manual_seed(3))
    neigh = torch.from_numpy(face_neighbours(faces))
    out = {}

    def run(aa):
        def loss():
            r = rast.rasterise(clip, f, (RES, RES))
            img = aa(rast.interpolate(colours, r), r)
            out[aa] = img.detach()
            return (img * weights).sum()

        return loss

    g_fast = _grads(run(rast.antialias), clip)[0]
    g_ref = _grads(run(lambda img, r: reference_antialias(img, r, neigh, max_walk=MAX_WALK)), clip)[
        0
    ]
    img_fast, img_ref = out.values()
    # the reference runs in float32, the kernels in float64: t differs in the 5th digit
    assert torch.allclose(img_fast, img_ref, atol=2e-4)
    assert torch.allclose(g_fast, g_ref, rtol=1e-3, atol=1e-3 * g_ref.abs().max().item())


def test_antialias_blends_only_silhouette_pixels():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.9)
    clip = _clip(sphere.vertices)
    rast = CpuRasteriser()
    r = rast.rasterise(clip, torch.tensor(sphere.faces), (RES, RES))
    mask = r.mask[..., None].float()
    aa = rast.antialias(mask, r)
    changed = (aa - mask).abs()[..., 0] > 1e-6
    assert changed.any()
    # every changed pixel touches the silhouette (a 4-neighbour with the other coverage)
    m = r.mask
    edge = torch.zeros_like(m)
    edge[:, :, :-1] |= m[:, :, :-1] != m[:, :, 1:]
    edge[:, :, 1:] |= m[:, :, :-1] != m[:, :, 1:]
    edge[:, :-1] |= m[:, :-1] != m[:, 1:]
    edge[:, 1:] |= m[:, :-1] != m[:, 1:]
    assert not (changed & ~edge).any()
    # the anti-aliased area is close to the true projected area (8x8 supersampled coverage),
    # closer than the aliased mask's
    fine = rast.rasterise(
        _clip(sphere.vertices, RES * 8), torch.tensor(sphere.faces), (RES * 8,) * 2
    )
    true_area = fine.mask[0].sum().item() / 64
    aa_error = abs(aa[0, ..., 0].sum().item() - true_area)
    assert aa_error < 0.002 * true_area
    assert aa_error < abs(r.mask[0].sum().item() - true_area)


def test_antialias_leaves_interior_edges_alone():
    # two coplanar triangles forming a square: the shared diagonal is not a silhouette
    clip = torch.tensor(
        [[-0.5, -0.5, 0, 1], [0.5, -0.5, 0, 1], [0.5, 0.5, 0, 1], [-0.5, 0.5, 0, 1]],
        dtype=torch.float32,
    )
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    rast = CpuRasteriser()
    r = rast.rasterise(clip, faces, (RES, RES))
    img = (r.tri_id[..., None] == 0).float()  # a colour jump across the diagonal
    aa = rast.antialias(img, r)
    inside = r.mask[0].clone()
    inside[[0, -1]] = False
    changed = (aa - img).abs()[0, ..., 0] > 1e-6
    rows, cols = torch.nonzero(changed, as_tuple=True)
    # only the square's outline moved; the diagonal did not
    on_outline = (
        (cols <= RES // 4 + 1)
        | (cols >= 3 * RES // 4 - 2)
        | (rows <= RES // 4 + 1)
        | (rows >= 3 * RES // 4 - 2)
    )
    assert on_outline.all()
