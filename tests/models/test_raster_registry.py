"""The rasteriser registry: names, automatic choice, and a smoke test of every backend."""

from __future__ import annotations

import pytest
import torch

from models.raster import (
    RASTERISERS,
    CpuRasteriser,
    RasteriserUnavailable,
    get_rasteriser,
)
from models.raster.nvdiffrast_backend import nvdiffrast_available


def test_registry_names_both_backends():
    assert set(RASTERISERS) == {"cpu", "nvdiffrast"}


def test_auto_picks_the_cpu_backend_without_cuda():
    if torch.cuda.is_available() and nvdiffrast_available():
        pytest.skip("CUDA and nvdiffrast are present: auto picks nvdiffrast here")
    assert isinstance(get_rasteriser("auto"), CpuRasteriser)
    assert isinstance(get_rasteriser("auto", device="cpu"), CpuRasteriser)


def test_nvdiffrast_without_cuda_says_what_to_install():
    if torch.cuda.is_available() and nvdiffrast_available():
        pytest.skip("nvdiffrast is usable here")
    with pytest.raises(RasteriserUnavailable, match="diffrp-nvdiffrast"):
        get_rasteriser("nvdiffrast")


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="unknown rasteriser"):
        get_rasteriser("vulkan")


def test_importing_the_nvdiffrast_backend_never_fails():
    import importlib

    import models.raster.nvdiffrast_backend as mod

    assert importlib.reload(mod).NvdiffrastRasteriser.name == "nvdiffrast"


def _backend(name: str):
    """The named rasteriser and the torch device its inputs live on; skips where it can't run."""
    try:
        rast = get_rasteriser(name)
    except RasteriserUnavailable as exc:
        pytest.skip(f"{name} unavailable here: {exc}")
    return rast, ("cuda" if name == "nvdiffrast" else "cpu")


@pytest.mark.parametrize("name", sorted(RASTERISERS))
def test_every_backend_renders_a_triangle_at_toy_size(name):
    rast, device = _backend(name)
    clip = torch.tensor(
        [[-0.8, -0.8, 0.0, 1.0], [0.8, -0.8, 0.0, 1.0], [0.0, 0.8, 0.0, 1.0]],
        device=device,
        requires_grad=True,
    )
    faces = torch.tensor([[0, 1, 2]], dtype=torch.int32, device=device)
    r = rast.rasterise(clip, faces, (16, 16))
    assert r.tri_id.shape == (1, 16, 16)
    # apex at the top: the top row is narrower than the bottom row
    assert 0 < r.mask[0, 3].sum() < r.mask[0, -4].sum()
    colours = torch.eye(3, device=device)
    interp = rast.interpolate(colours, r)
    assert torch.allclose(interp.sum(-1)[r.mask], torch.ones((), device=device), atol=1e-4)
    img = rast.antialias(interp, r)
    assert img.shape == (1, 16, 16, 3)
    assert ((img >= -1e-6) & (img <= 1 + 1e-6)).all()
    img.sum().backward()
    assert clip.grad is not None and torch.isfinite(clip.grad).all()


def test_cpu_and_nvdiffrast_agree_on_the_same_scene():
    if not (torch.cuda.is_available() and nvdiffrast_available()):
        pytest.skip("needs CUDA and nvdiffrast")
    import numpy as np
    import trimesh

    from models.bundle.cameras import BundleCameras
    from models.bundle.spec import BundleSpec

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.8)
    mvp = torch.tensor(BundleCameras.from_spec(BundleSpec(tile=128)).mvp, dtype=torch.float32)
    v = torch.tensor(sphere.vertices, dtype=torch.float32)
    faces = torch.tensor(sphere.faces, dtype=torch.int32)
    colours = torch.tensor(np.abs(sphere.vertex_normals), dtype=torch.float32)
    results = {}
    for name, device in (("cpu", "cpu"), ("nvdiffrast", "cuda")):
        rast = get_rasteriser(name)
        vv = v.detach().clone().to(device).requires_grad_(True)  # a leaf per backend
        clip = torch.einsum(
            "bij,vj->bvi", mvp.to(device), torch.cat([vv, torch.ones_like(vv[:, :1])], 1)
        )
        r = rast.rasterise(clip, faces.to(device), (128, 128))
        img = rast.antialias(rast.interpolate(colours.to(device), r), r)
        img.square().sum().backward()
        results[name] = (r.tri_id.cpu(), img.detach().cpu(), vv.grad.cpu())
    (tri_c, img_c, grad_c), (tri_g, img_g, grad_g) = results["cpu"], results["nvdiffrast"]
    assert (tri_c == tri_g).float().mean() > 0.99
    assert (img_c - img_g).abs().mean() < 0.01
    cosine = torch.nn.functional.cosine_similarity(grad_c.reshape(-1), grad_g.reshape(-1), dim=0)
    assert cosine > 0.9


@pytest.mark.parametrize("name", sorted(RASTERISERS))
def test_every_backend_weighs_barycentrics_in_face_vertex_order(name):
    """``bary[..., k]`` weighs vertex ``faces[tri_id, k]``: interpolating by hand with it
    gives what the backend's own ``interpolate`` gives (nvdiffrast's ``(u, v)`` weigh the
    first two vertices, its third weight is ``1 - u - v``)."""
    rast, device = _backend(name)
    clip = torch.tensor(
        [[-0.9, -0.7, 0.2, 1.0], [0.8, -0.9, 0.4, 1.3], [0.1, 0.9, -0.1, 0.8]], device=device
    )
    faces = torch.tensor([[0, 1, 2]], dtype=torch.int32, device=device)
    r = rast.rasterise(clip, faces, (32, 32))
    attributes = torch.tensor(
        [[1.0, 0.0, 0.0, 5.0], [0.0, 1.0, 0.0, -2.0], [0.0, 0.0, 1.0, 0.5]], device=device
    )
    by_backend = rast.interpolate(attributes, r)
    corners = faces.long()[r.tri_id.clamp(min=0)]  # (B, H, W, 3) vertex indices
    by_hand = (r.bary[..., None] * attributes[corners]).sum(-2)
    assert r.mask.sum() > 100
    assert torch.allclose(by_backend[r.mask], by_hand[r.mask], atol=1e-4)


@pytest.mark.parametrize("name", sorted(RASTERISERS))
def test_every_backend_reports_ndc_depth_and_keeps_the_nearer_triangle(name):
    """``depth`` is NDC ``z / w`` (a triangle at constant ``z / w`` reads that value at
    every pixel whatever its ``w``), 1 where empty, and the nearer of two overlapping
    triangles is the one recorded."""
    rast, device = _backend(name)
    far, near = 0.6, -0.2
    rows = []
    for depth, ws in ((far, (1.0, 2.0, 1.5)), (near, (1.2, 0.9, 1.0))):
        for (x, y), w in zip(((-0.8, -0.8), (0.8, -0.8), (0.0, 0.8)), ws, strict=True):
            rows.append([x * w, y * w, depth * w, w])
    clip = torch.tensor(rows, device=device)
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32, device=device)
    r = rast.rasterise(clip, faces, (32, 32))
    covered = r.mask[0]
    assert covered.sum() > 100
    assert (r.tri_id[0][covered] == 1).all()
    assert torch.allclose(r.depth[0][covered], torch.tensor(near, device=device), atol=1e-4)
    assert (r.depth[0][~covered] == 1).all()


def test_a_built_nvdiffrast_plugin_that_torch_did_not_register_is_imported_from_its_folder(
    monkeypatch,
):
    """torch 2.11's extension loader builds nvdiffrast's plugin but leaves its name unimportable
    (seen on an H200); the context is made again with torch's build folder importable."""
    import sys

    from torch.utils.cpp_extension import _get_build_directory

    from models.raster.nvdiffrast_backend import _cuda_context

    name = "nvdiffrast_plugin_0_0_0_test"
    folder = _get_build_directory(name, verbose=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != folder])
    calls = []

    class FakeNvdiffrast:
        @staticmethod
        def RasterizeCudaContext(device):  # noqa: N802 (nvdiffrast's name)
            calls.append(folder in sys.path)
            if not calls[-1]:
                raise ModuleNotFoundError(f"No module named '{name}'", name=name)
            return "context"

    assert _cuda_context(FakeNvdiffrast, torch.device("cuda")) == "context"
    assert calls == [False, True]


def test_other_missing_modules_are_not_mistaken_for_the_nvdiffrast_plugin():
    from models.raster.nvdiffrast_backend import _cuda_context

    class Broken:
        @staticmethod
        def RasterizeCudaContext(device):  # noqa: N802 (nvdiffrast's name)
            raise ModuleNotFoundError("No module named 'ninja'", name="ninja")

    with pytest.raises(ModuleNotFoundError, match="ninja"):
        _cuda_context(Broken, torch.device("cuda"))


def test_an_unknown_silhouette_search_is_a_value_error_naming_the_choices():
    from models.raster import NvdiffrastRasteriser

    with pytest.raises(ValueError, match="walk.*native"):
        NvdiffrastRasteriser(silhouettes="sobel")


def test_nvdiffrasts_own_silhouettes_still_blend_and_reach_clip():
    if not (torch.cuda.is_available() and nvdiffrast_available()):
        pytest.skip("needs CUDA and nvdiffrast")
    rast = get_rasteriser("nvdiffrast", silhouettes="native")
    clip = torch.tensor(
        [[-0.8, -0.7, 0.0, 1.0], [0.8, -0.8, 0.0, 1.0], [0.1, 0.8, 0.0, 1.0]],
        device="cuda", requires_grad=True,
    )
    faces = torch.tensor([[0, 1, 2]], dtype=torch.int32, device="cuda")
    r = rast.rasterise(clip, faces, (32, 32))
    image = rast.antialias(r.mask.float()[..., None], r)
    image.sum().backward()
    assert ((image > 0) & (image < 1)).any()
    assert clip.grad.abs().sum() > 0
