"""Parameters of the ``evaluate`` stage: what :func:`models.evaluate.asset.evaluate_asset`
measures with, and the thresholds of the quality verdict
(:func:`models.evaluate.verdict.judge_quality`). Manifest keys: ``evaluate_<field>``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from models.evaluate.metrics import DEFAULT_SAMPLES
from models.param_fields import Range, checked_params


@dataclass(frozen=True)
class EvaluateParams:
    """How the finished asset is measured, and what it must score to end ``succeeded``.

    The verdict's defaults sit outside what good assets score and inside what poor ones do
    (README, "Quality verdict"): the main job's five assets (256-px tiles) measure mask IoU
    0.977-0.996, normal error 3.3-14.8 degrees, at most 0.0022 non-manifold edges per face and
    no degenerate face; the test suite's 64-px assets 0.944-0.971 and 4.0-4.5 degrees; a mug
    refined for 5 steps only 0.819 and 19.4 degrees, unrefined spheres 0.19-0.33 and 42.
    """

    samples: int = DEFAULT_SAMPLES
    """Surface samples per mesh for Chamfer distance, F-score and normal consistency against a
    reference mesh; 1,000..1,000,000 (two KD-trees over a million points is the memory cap)."""

    min_mask_iou: float = 0.9
    """Lowest accepted ``mask_iou``: intersection over union of the asset's silhouettes and the
    bundle's masks, all 4 views pooled; 0..1 (0 turns the check off)."""

    max_normal_angle_deg: float = 20.0
    """Highest accepted ``normal_angle_deg``: mean angle in degrees between the asset's rendered
    normals and the bundle's normal maps where both show the object; 0..180 (180 turns the
    check off)."""

    max_non_manifold_per_face: float = 0.01
    """Highest accepted ``mesh_non_manifold_edges / mesh_faces``: edges shared by more than two
    faces, per face of the exported mesh; 0..1 (1 turns the check off)."""

    max_degenerate_per_face: float = 0.01
    """Highest accepted ``mesh_degenerate_faces / mesh_faces``: the share of faces with no
    area (collapsed or below ``models.evaluate.metrics.DEGENERATE_AREA``); 0..1 (1 turns the
    check off)."""

    min_faces: int = 1
    """Fewest faces the exported mesh may have (``mesh_faces``); 0..10,000,000 (0 turns the
    check off; the default 1 sends an empty mesh to review)."""

    RANGES: ClassVar[dict[str, Range]] = {
        "samples": Range(1_000, 1_000_000),
        "min_mask_iou": Range(0.0, 1.0),
        "max_normal_angle_deg": Range(0.0, 180.0),
        "max_non_manifold_per_face": Range(0.0, 1.0),
        "max_degenerate_per_face": Range(0.0, 1.0),
        "min_faces": Range(0, 10_000_000),
    }

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, **defaults: Any) -> EvaluateParams:
        """Params from a mapping over ``defaults``; unknown keys, wrong types and out-of-range
        values raise :class:`models.param_fields.ParameterError`."""
        return checked_params(cls, data, what="evaluate", ranges=cls.RANGES, defaults=defaults)
