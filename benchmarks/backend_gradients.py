"""Compare two rasteriser backends on refinement's loss terms: values and vertex gradients.

Refinement should not depend on the backend that renders it. For every mesh this renders the
ground-truth bundle once (first backend), takes two meshes (its visual hull, where refinement
starts, and the ground truth itself, where it should end), remeshes each to the coarse and to the
fine edge length, and for each phase (coarse: smooth normals at the coarse
resolution; fine: flat normals at the fine resolution, with the depth term) evaluates the normal,
silhouette and depth terms with both backends on the same mesh. It prints, per term, both
values, the ratio of the gradient norms (``B / A``) and the cosine between the two ``(V, 3)``
gradients. Identical backends print ratio 1 and cosine 1; the silhouette term differs most,
since its gradient comes only from each backend's anti-aliasing.

    PYTHONPATH=. python benchmarks/backend_gradients.py mug.stl --up z            # GPU machine
    PYTHONPATH=. python benchmarks/backend_gradients.py mug.stl --up z --b cpu    # checks itself
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

from models.bundle.cameras import BundleCameras
from models.geometry import remesh as rm
from models.geometry.decimate import decimate_to_edge
from models.geometry.mesh import load_mesh, normalise_mesh
from models.raster import get_rasteriser
from models.reconstruct.depth_target import depth_loss, depth_targets
from models.reconstruct.hull import HullParams, visual_hull
from models.reconstruct.pipeline import schedule_for
from models.reconstruct.refine import _TARGETS, MASK_SCALE, _normal_loss, _render
from models.render.views import render_bundle


def term_gradients(rasteriser, device, bundle, vertices, faces, resolution, flat, params):
    """``{term: (value, (V, 3) gradient)}`` of the normal, silhouette (weighted as in the
    phase) and depth terms for one backend, on ``device``."""
    mvp = torch.from_numpy(BundleCameras.from_spec(bundle.spec).mvp.astype(np.float32))
    mvp = mvp.to(device)
    targets = _TARGETS.get(bundle, resolution, device)
    out = {}
    for term in ("normal", "mask", "depth"):
        v = torch.from_numpy(vertices).to(device).requires_grad_(True)
        f = torch.from_numpy(faces).to(device)
        normals, mask, raster = _render(rasteriser, v, f, mvp, resolution, flat)
        if term == "normal":
            loss = _normal_loss(normals, raster, targets).mean()
        elif term == "mask":
            weight = params.fine_mask_weight if flat else params.mask_weight
            loss = weight * MASK_SCALE * (mask - targets.masks).square().mean()
        else:
            target = depth_targets(bundle, resolution, device)
            loss = params.fine_depth_weight * depth_loss(
                raster.clip, f, raster.tri_id, raster.bary, target, params.depth_scale)
        loss.backward()
        out[term] = (float(loss.detach()), v.grad.detach().cpu().numpy().astype(np.float64))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("meshes", nargs="+", type=Path)
    parser.add_argument("--up", choices=("y", "z"), default="y")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--a", default="cpu", help="first backend (default cpu)")
    parser.add_argument("--b", default="nvdiffrast", help="second backend (default nvdiffrast)")
    args = parser.parse_args(argv)

    backends = []
    for name in (args.a, args.b):
        device = "cuda" if name == "nvdiffrast" else "cpu"
        backends.append((name, get_rasteriser(name, device=device), device))
    params = schedule_for("hull")
    phases = (("coarse", params.coarse_edge, params.coarse_resolution, params.coarse_flat),
              ("fine", params.fine_edge, params.resolution, params.fine_flat))
    print(f"{'mesh':24s} {'start':5s} {'phase':6s} {'term':6s} {args.a:>10s} {args.b:>10s} "
          f"{'|g| b/a':>8s} {'cos':>6s}")
    for path in args.meshes:
        source = load_mesh(path)
        bundle = render_bundle(source, tile=args.tile, up=args.up, rasteriser=backends[0][1])
        meshes = {"hull": visual_hull(bundle, HullParams()),
                  "truth": normalise_mesh(source, up=args.up)[0]}
        for (start, mesh), (phase, edge, resolution, flat) in itertools.product(
                meshes.items(), phases):
            v, f = decimate_to_edge(np.asarray(mesh.vertices), np.asarray(mesh.faces), edge)
            v, f = rm.remesh_to(v, f, edge, iterations=5)
            v, f = v.astype(np.float32), f.astype(np.int64)
            results = [term_gradients(r, d, bundle, v, f, resolution, flat, params)
                       for _, r, d in backends]
            for term in results[0]:
                (va, ga), (vb, gb) = results[0][term], results[1][term]
                na, nb = np.linalg.norm(ga), np.linalg.norm(gb)
                cos = float((ga * gb).sum() / max(na * nb, 1e-30))
                print(f"{path.stem[:24]:24s} {start:5s} {phase:6s} {term:6s} {va:10.5f} {vb:10.5f} "
                      f"{nb / max(na, 1e-30):8.3f} {cos:6.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
