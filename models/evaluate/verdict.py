"""The quality verdict of a finished asset: do its evaluation metrics clear the thresholds?

An asset whose metrics miss a threshold of its :class:`models.evaluate.params.EvaluateParams`
ends ``needs_review`` instead of ``succeeded``; the verdict says which metric, its value and the
threshold it missed. Pure: it reads the flat metrics the evaluate stage records
(:func:`models.evaluate.asset.evaluate_asset`), nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from models.evaluate.params import EvaluateParams


@dataclass(frozen=True)
class QualityReason:
    """One threshold an asset missed."""

    metric: str
    """The judged quantity: a metric name (``mask_iou``) or a ratio of two
    (``mesh_non_manifold_edges/mesh_faces``)."""
    value: float
    """What the asset scored; NaN when the metric was not measured."""
    threshold: float
    """The limit it missed."""
    bound: str
    """``min`` (the value must be at least the threshold) or ``max`` (at most)."""

    def text(self) -> str:
        """``mask_iou 0.412 < min 0.9``, or ``mask_iou not measured (min 0.9)``."""
        if math.isnan(self.value):
            return f"{self.metric} not measured ({self.bound} {_number(self.threshold)})"
        sign = "<" if self.bound == "min" else ">"
        return f"{self.metric} {_number(self.value)} {sign} {self.bound} {_number(self.threshold)}"


@dataclass(frozen=True)
class QualityVerdict:
    """Whether an asset passes, and every threshold it missed (empty when it passes)."""

    reasons: tuple[QualityReason, ...]
    """The missed thresholds, in the order of the parameters' fields."""

    @property
    def passed(self) -> bool:
        """True when no threshold was missed."""
        return not self.reasons

    def text(self) -> str:
        """The reasons as one line: ``needs review: mask_iou 0.412 < min 0.9; ...``."""
        if self.passed:
            return "passed"
        return "needs review: " + "; ".join(r.text() for r in self.reasons)


def judge_quality(metrics: Mapping[str, float], params: EvaluateParams) -> QualityVerdict:
    """The verdict on an asset's ``metrics`` (the evaluate stage's flat dict) under ``params``.

    Judged: ``mask_iou`` (at least ``min_mask_iou``), ``normal_angle_deg`` (at most
    ``max_normal_angle_deg``, degrees), non-manifold edges and degenerate faces per face of
    the exported mesh (at most ``max_non_manifold_per_face`` / ``max_degenerate_per_face``)
    and ``mesh_faces`` (at least ``min_faces``). A judged metric that is missing (the evaluate
    stage leaves out NaNs: nothing rendered, no pixel both masks share) misses its threshold,
    unless that check is turned off (its threshold at the end of its range). The per-face
    ratios are not judged for a mesh without faces; ``min_faces`` covers that case.
    """
    reasons: list[QualityReason] = []

    def check(metric: str, value: float, threshold: float, bound: str, off: float) -> None:
        if threshold == off:
            return
        missed = math.isnan(value) or (value < threshold if bound == "min" else value > threshold)
        if missed:
            reasons.append(QualityReason(metric, value, threshold, bound))

    nan = float("nan")
    check("mask_iou", metrics.get("mask_iou", nan), params.min_mask_iou, "min", 0.0)
    check("normal_angle_deg", metrics.get("normal_angle_deg", nan), params.max_normal_angle_deg,
          "max", 180.0)
    faces = metrics.get("mesh_faces", nan)
    if not math.isnan(faces) and faces > 0:
        for name, threshold in (
            ("mesh_non_manifold_edges", params.max_non_manifold_per_face),
            ("mesh_degenerate_faces", params.max_degenerate_per_face),
        ):
            check(f"{name}/mesh_faces", metrics.get(name, nan) / faces, threshold, "max", 1.0)
    check("mesh_faces", faces, float(params.min_faces), "min", 0.0)
    return QualityVerdict(tuple(reasons))


def _number(x: float) -> str:
    """Up to 4 significant digits, no trailing zeros (``0.9``, ``0.4123``, ``14.8``)."""
    return f"{x:.4g}"
