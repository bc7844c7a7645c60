"""Exact depth for the reconstruction benchmark (``benchmarks/reconstruct.py --depth-oracle``).

Refinement's depth term and the hull's depth carving read each view's normal map integrated to
log depth (:func:`models.reconstruct.hull.bundle_integrals`). Where the views hide a step (a
cup's lip over its wall, its body over its foot: the step's face looks down, away from every
view), the integration joins the two sides and puts one of them off by the step. The oracle
replaces each view's integrated log depth by the reference mesh's own, rendered at the
integration's resolution, and keeps the integration's masks, normals and pieces, so that every
other part of the pipeline runs as in use. Its rows are a ceiling for better normal
integration, not a reconstruction: the reference does not exist in use.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import trimesh

from models.bundle.cameras import BundleCameras
from models.bundle.spec import Bundle
from models.raster.base import Rasteriser
from models.reconstruct.depth import DepthCarveParams, ViewIntegral, carve_factor
from models.reconstruct.depth_target import INTEGRATE_RESOLUTION
from models.reconstruct.hull import bundle_integrals, keep_bundle_integrals


def reference_log_depth(
    bundle: Bundle, reference: trimesh.Trimesh, size: int, rasteriser: Rasteriser
) -> np.ndarray:
    """``(N, size, size)`` float64: log of the reference's depth along ``-z_cam`` in each of the
    bundle's views (``reference`` in the bundle frame, as the benchmark normalises it; row 0 at
    the top), NaN where it covers no pixel centre."""
    cams = BundleCameras.from_spec(bundle.spec)
    vertices = torch.as_tensor(np.asarray(reference.vertices), dtype=torch.float32)
    faces = torch.as_tensor(np.asarray(reference.faces), dtype=torch.int64)
    homogeneous = torch.cat([vertices, torch.ones_like(vertices[:, :1])], dim=1)
    mvp = torch.as_tensor(cams.mvp, dtype=torch.float32)
    clip = torch.einsum("bij,vj->bvi", mvp, homogeneous)
    raster = rasteriser.rasterise(clip, faces, (size, size))
    depth = rasteriser.interpolate(clip[..., 3:], raster)[..., 0]
    out = np.full(depth.shape, np.nan)
    covered = raster.mask.cpu().numpy()
    out[covered] = np.log(np.maximum(depth.detach().cpu().numpy()[covered], 1e-6))
    return out


def exact_integral(integral: ViewIntegral, true_log_depth: np.ndarray) -> ViewIntegral:
    """``integral`` with its log depth replaced by ``true_log_depth`` ``(L, L)`` wherever that
    is known. Each piece's true depth is shifted by the median difference to its integrated
    depth over those pixels, so that the pixels the reference misses (a silhouette's edge)
    keep their integrated depth in the same piece's frame; the pipeline re-reads every
    piece's constant anyway."""
    log_depth = integral.log_depth.copy()
    known = integral.mask & np.isfinite(true_log_depth)
    for piece in np.unique(integral.pieces[known]):
        members = known & (integral.pieces == piece)
        shift = np.median(true_log_depth[members] - log_depth[members])
        log_depth[members] = true_log_depth[members] - shift
    return dataclasses.replace(integral, log_depth=log_depth)


def use_reference_depth(
    bundle: Bundle, reference: trimesh.Trimesh, rasteriser: Rasteriser
) -> None:
    """From now on (for this ``bundle`` object), the depth term and the hull's depth carving
    integrate ``reference``'s exact depth instead of the normal maps, at every block size they
    ask for (:func:`exact_integral`)."""
    factors = {max(1, bundle.tile // INTEGRATE_RESOLUTION),
               carve_factor(bundle.tile, DepthCarveParams())}
    for factor in sorted(factors):
        integrals = bundle_integrals(bundle, factor)
        size = integrals[0].log_depth.shape[0]
        true = reference_log_depth(bundle, reference, size, rasteriser)
        keep_bundle_integrals(bundle, factor, [
            exact_integral(integral, true[view]) for view, integral in enumerate(integrals)
        ])
