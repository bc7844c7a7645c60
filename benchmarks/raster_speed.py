"""Time the CPU rasteriser: rasterise + interpolate + antialias, forward and backward.

Usage: ``python benchmarks/raster_speed.py [--res 256] [--subdiv 5] [--views 4] [--coverage numba]``
Prints milliseconds per call (median of the repeats) for each stage.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import trimesh

from models.bundle.cameras import BundleCameras
from models.bundle.spec import BundleSpec
from models.raster import get_rasteriser


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--res", type=int, default=256, help="pixels per side")
    parser.add_argument(
        "--subdiv", type=int, default=5, help="icosphere subdivisions (5: 20k faces)"
    )
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--backend", default="cpu", help="rasteriser name (cpu, nvdiffrast, auto)")
    parser.add_argument("--coverage", default="numba", help="cpu coverage: numba or egl")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    mesh = trimesh.creation.icosphere(subdivisions=args.subdiv, radius=0.8)
    # a bumpy sphere so that silhouettes and interior folds are not trivial
    rng = np.random.default_rng(0)
    verts = mesh.vertices * (1.0 + 0.05 * rng.standard_normal((len(mesh.vertices), 1)))
    kwargs = {"coverage": args.coverage} if args.backend == "cpu" else {}
    rast = get_rasteriser(args.backend, **kwargs)
    device = torch.device("cuda" if rast.name == "nvdiffrast" else "cpu")
    cams = BundleCameras.from_spec(BundleSpec(tile=args.res))
    mvp = torch.tensor(cams.mvp[: args.views], dtype=torch.float32, device=device)
    faces = torch.tensor(
        mesh.faces, dtype=torch.int32 if device.type == "cuda" else torch.int64, device=device
    )
    v = torch.tensor(verts, dtype=torch.float32, device=device, requires_grad=True)
    normals = torch.tensor(mesh.vertex_normals, dtype=torch.float32, device=device)
    print(
        f"backend {rast.name} ({args.coverage if rast.name == 'cpu' else ''}), "
        f"{len(mesh.faces)} faces, {args.views} views x {args.res}^2, "
        f"torch threads {torch.get_num_threads()}"
    )

    times: dict[str, list[float]] = {
        k: [] for k in ("rasterise", "interpolate", "antialias", "backward", "total")
    }
    for it in range(args.repeats + 2):
        t0 = time.perf_counter()
        vh = torch.cat([v, torch.ones_like(v[:, :1])], 1)
        clip = torch.einsum("bij,vj->bvi", mvp, vh)
        r = rast.rasterise(clip, faces, (args.res, args.res))
        t1 = time.perf_counter()
        img = rast.interpolate(torch.cat([normals + v * 0, torch.ones_like(v[:, :1])], 1), r)
        t2 = time.perf_counter()
        img = rast.antialias(img, r)
        t3 = time.perf_counter()
        loss = (img - 0.5).square().mean()
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t4 = time.perf_counter()
        v.grad = None
        if it >= 2:  # first calls compile / warm up
            for k, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), strict=True):
                times[k].append(dt * 1000)
    for k, vals in times.items():
        print(f"{k:12s} {statistics.median(vals):8.1f} ms")


if __name__ == "__main__":
    main()
