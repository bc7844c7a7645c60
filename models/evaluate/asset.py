"""Everything the ``evaluate`` stage measures about a finished asset, as one flat dict.

Re-render against the bundle (mask IoU, normal angle error, colour PSNR/SSIM), mesh health, and
Chamfer / F-score against a reference mesh when the bundle names one (the library generator's
retrieved mesh).
"""

from __future__ import annotations

import math
from pathlib import Path

import trimesh

from models.bundle.spec import Bundle
from models.evaluate.metrics import (
    DEFAULT_SAMPLES,
    chamfer_fscore,
    mesh_health,
    normal_consistency,
    render_metrics,
)
from models.reconstruct.init import InitContext, InitInputError, init_from_library


def reference_mesh(bundle: Bundle, library_path: Path | None) -> trimesh.Trimesh | None:
    """The bundle's source mesh in the bundle frame, when its sidecar names a library mesh."""
    if not bundle.spec.extra.get("library_mesh"):
        return None
    try:
        return init_from_library(bundle, InitContext(library_path=library_path))
    except InitInputError:
        return None


def evaluate_asset(
    bundle: Bundle,
    mesh: trimesh.Trimesh,
    *,
    library_path: Path | None = None,
    samples: int = DEFAULT_SAMPLES,
) -> dict[str, float]:
    """Flat metrics of ``mesh`` (bundle frame) against ``bundle``; NaNs are left out.

    ``samples``: surface samples per mesh for the reference comparisons.

    Keys: ``mask_iou``, ``normal_angle_deg``, ``colour_psnr``, ``colour_psnr_fg``, ``colour_ssim``,
    ``mesh_<health key>`` and, with a reference, ``chamfer``, ``fscore@0.05``, ``fscore@0.1``,
    ``normal_consistency``. A mesh that carries no colour gets no colour figures.
    """
    metrics: dict[str, float] = {}
    rendered = render_metrics(bundle, mesh)
    for key in ("mask_iou", "normal_angle_deg", "colour_psnr", "colour_psnr_fg", "colour_ssim"):
        metrics[key] = float(rendered[key])
    for key, value in mesh_health(mesh).items():
        metrics[f"mesh_{key}"] = float(value)
    reference = reference_mesh(bundle, library_path)
    if reference is not None:
        scores = chamfer_fscore(mesh, reference, samples=samples)
        for key in ("chamfer", "fscore@0.05", "fscore@0.1"):
            metrics[key] = float(scores[key])
        metrics["normal_consistency"] = float(normal_consistency(mesh, reference, samples=samples))
    return {k: v for k, v in metrics.items() if not math.isnan(v)}
