"""The CPU rasteriser splits its per-view kernels over two threads without changing a result."""

from __future__ import annotations

import threading

import numpy as np
import torch
import trimesh

from models.bundle.cameras import BundleCameras
from models.bundle.spec import BundleSpec
from models.raster import CpuRasteriser
from models.raster import cpu as raster_cpu


def _render(views_threads: int, monkeypatch) -> dict[str, np.ndarray]:
    """Coverage, barycentrics, depth, anti-aliased normals and the clip gradient of a bumpy
    sphere's 4 bundle views at 96 px, with the views split over ``views_threads`` threads."""
    monkeypatch.setattr(raster_cpu, "VIEW_THREADS", views_threads)
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.8)
    rng = np.random.default_rng(5)
    verts = mesh.vertices * (1.0 + 0.05 * rng.standard_normal((len(mesh.vertices), 1)))
    mvp = BundleCameras.from_spec(BundleSpec(tile=96)).mvp
    homogeneous = np.concatenate([verts, np.ones((len(verts), 1))], 1)
    clip = torch.tensor(np.einsum("bij,vj->bvi", mvp, homogeneous), dtype=torch.float32,
                        requires_grad=True)
    faces = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.int64)
    rasteriser = CpuRasteriser()
    raster = rasteriser.rasterise(clip, faces, (96, 96))
    normals = torch.tensor(mesh.vertex_normals, dtype=torch.float32)[None]
    image = rasteriser.antialias(rasteriser.interpolate(normals, raster), raster)
    (image.square().sum() + raster.depth.sum()).backward()
    return {"tri_id": raster.tri_id.numpy(), "bary": raster.bary.detach().numpy(),
            "depth": raster.depth.detach().numpy(), "image": image.detach().numpy(),
            "grad": clip.grad.numpy()}


def test_views_split_over_two_threads_give_the_same_rasterisation_and_gradients(monkeypatch):
    one = _render(1, monkeypatch)
    two = _render(2, monkeypatch)
    for key in one:
        np.testing.assert_array_equal(two[key], one[key], err_msg=key)


def test_the_second_half_of_the_views_runs_on_another_thread(monkeypatch):
    monkeypatch.setattr(raster_cpu, "VIEW_THREADS", 2)
    seen: dict[tuple[int, int], str] = {}

    def run(lo: int, hi: int) -> None:
        seen[(lo, hi)] = threading.current_thread().name

    raster_cpu.over_views(run, 4)
    assert set(seen) == {(0, 2), (2, 4)}
    assert seen[(0, 2)] == threading.current_thread().name
    assert seen[(2, 4)] != seen[(0, 2)]


def test_a_forked_child_splits_views_on_a_pool_of_its_own(monkeypatch):
    import os
    import signal

    monkeypatch.setattr(raster_cpu, "VIEW_THREADS", 2)
    raster_cpu.over_views(lambda lo, hi: None, 4)  # the parent's pool exists
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        signal.alarm(20)  # a child waiting on its parent's thread would hang: end it instead
        halves = []
        raster_cpu.over_views(lambda lo, hi: halves.append((lo, hi)), 4)
        os.write(write, b"ok" if sorted(halves) == [(0, 2), (2, 4)] else b"no")
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 2) == b"ok"
    assert status == 0
