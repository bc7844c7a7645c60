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


@pytest.mark.parametrize("name", sorted(RASTERISERS))
def test_every_backend_renders_a_triangle_at_toy_size(name):
    try:
        rast = get_rasteriser(name)
    except RasteriserUnavailable as exc:
        pytest.skip(f"{name} unavailable here: {exc}")
    device = "cuda" if name == "nvdiffrast" else "cpu"
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
        vv = v.to(device).requires_grad_(True)
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
