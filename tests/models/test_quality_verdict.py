"""The quality verdict: which metrics send an asset to review, and what it says about them."""

from __future__ import annotations

import pytest

from models.evaluate.params import EvaluateParams
from models.evaluate.verdict import QualityReason, judge_quality
from models.param_fields import ParameterError

# The drill of the main job (examples/catalog.yaml, sphere init, 256-px tiles), as recorded.
GOOD = {
    "mask_iou": 0.9832,
    "normal_angle_deg": 11.09,
    "colour_psnr": 38.1,
    "mesh_faces": 8370.0,
    "mesh_non_manifold_edges": 0.0,
    "mesh_degenerate_faces": 0.0,
    "mesh_watertight": 1.0,
}


def test_a_good_asset_of_the_main_job_passes_the_default_thresholds():
    verdict = judge_quality(GOOD, EvaluateParams())
    assert verdict.passed
    assert verdict.reasons == ()


def test_a_mask_iou_below_its_minimum_is_a_reason_with_value_and_threshold():
    verdict = judge_quality({**GOOD, "mask_iou": 0.41}, EvaluateParams(min_mask_iou=0.9))
    assert not verdict.passed
    assert verdict.reasons == (QualityReason("mask_iou", 0.41, 0.9, "min"),)
    assert verdict.text() == "needs review: mask_iou 0.41 < min 0.9"


def test_a_normal_error_above_its_maximum_is_a_reason():
    verdict = judge_quality({**GOOD, "normal_angle_deg": 31.5}, EvaluateParams())
    assert [r.metric for r in verdict.reasons] == ["normal_angle_deg"]
    assert verdict.reasons[0].text() == "normal_angle_deg 31.5 > max 20"


def test_non_manifold_edges_are_judged_per_face():
    # 30 non-manifold edges on 14,100 faces (the main job's can) pass; 300 on 1,000 do not.
    assert judge_quality({**GOOD, "mesh_non_manifold_edges": 30.0, "mesh_faces": 14100.0},
                         EvaluateParams()).passed
    verdict = judge_quality({**GOOD, "mesh_non_manifold_edges": 300.0, "mesh_faces": 1000.0},
                            EvaluateParams())
    assert verdict.reasons == (
        QualityReason("mesh_non_manifold_edges/mesh_faces", 0.3, 0.01, "max"),
    )


def test_degenerate_faces_are_judged_per_face():
    verdict = judge_quality({**GOOD, "mesh_degenerate_faces": 837.0}, EvaluateParams())
    assert [r.metric for r in verdict.reasons] == ["mesh_degenerate_faces/mesh_faces"]


def test_an_empty_mesh_needs_review_for_its_face_count_alone():
    empty = {"mesh_faces": 0.0, "mesh_non_manifold_edges": 0.0, "mesh_degenerate_faces": 0.0,
             "mask_iou": 0.0}
    verdict = judge_quality(empty, EvaluateParams(min_mask_iou=0.0, max_normal_angle_deg=180.0))
    assert verdict.reasons == (QualityReason("mesh_faces", 0.0, 1.0, "min"),)


def test_a_metric_that_was_not_measured_misses_its_threshold():
    metrics = {k: v for k, v in GOOD.items() if k != "normal_angle_deg"}
    verdict = judge_quality(metrics, EvaluateParams())
    assert [r.metric for r in verdict.reasons] == ["normal_angle_deg"]
    assert verdict.reasons[0].text() == "normal_angle_deg not measured (max 20)"


def test_every_missed_threshold_is_listed_in_field_order():
    bad = {**GOOD, "mask_iou": 0.5, "normal_angle_deg": 40.0, "mesh_degenerate_faces": 8370.0}
    verdict = judge_quality(bad, EvaluateParams())
    assert [r.metric for r in verdict.reasons] == [
        "mask_iou", "normal_angle_deg", "mesh_degenerate_faces/mesh_faces"]


def test_a_threshold_at_the_end_of_its_range_turns_its_check_off():
    off = EvaluateParams(min_mask_iou=0.0, max_normal_angle_deg=180.0,
                         max_non_manifold_per_face=1.0, max_degenerate_per_face=1.0, min_faces=0)
    assert judge_quality({}, off).passed


def test_the_thresholds_are_manifest_parameters_checked_against_their_ranges():
    params = EvaluateParams.from_mapping({"min_mask_iou": 0.95, "max_normal_angle_deg": 12})
    assert (params.min_mask_iou, params.max_normal_angle_deg) == (0.95, 12.0)
    with pytest.raises(ParameterError, match=r"'min_mask_iou' must be within 0\.\.1"):
        EvaluateParams.from_mapping({"min_mask_iou": 1.5})
    with pytest.raises(ParameterError, match="did you mean 'max_normal_angle_deg'"):
        EvaluateParams.from_mapping({"max_normal_angle": 12})
