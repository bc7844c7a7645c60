"""The stage parameter registry: a manifest row's flat ``params`` -> typed objects per stage,
and the one-line errors for keys no stage reads or values a stage cannot use."""

from __future__ import annotations

import pytest

from models.param_fields import plain_values
from models.parameters import (
    STAGE_PARAMS,
    ParameterError,
    check_parameter,
    parameter_class,
    parse_stage_params,
)

LIBRARY_SPHERE = {"generator": "library", "init": "sphere"}

# flat key, value, where it lands (attribute of AssetParameters), field name
ROUND_TRIPS = [
    ("tile", 256, "bundle", "tile"),
    ("library_id", "crate", "generator", "library_id"),
    ("sphere_radius", 0.5, "init", "sphere_radius"),
    ("refine_fine_steps", 10, "refine", "fine_steps"),
    ("refine_fine_flat", False, "refine", "fine_flat"),
    ("texture_erosion_px", 2, "texture", "erosion_px"),
    ("evaluate_samples", 2000, "evaluate", "samples"),
]


@pytest.mark.parametrize("key, value, where, name", ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS])
def test_a_flat_key_lands_in_its_stages_typed_parameters(key, value, where, name):
    params = parse_stage_params({key: value}, **LIBRARY_SPHERE)
    assert getattr(getattr(params, where), name) == value


@pytest.mark.parametrize("stage", sorted(STAGE_PARAMS))
def test_each_stages_parameters_round_trip_through_plain_values(stage):
    cls = parameter_class(stage)
    fixed = STAGE_PARAMS[stage].fixed
    default = cls()
    values = {k: v for k, v in plain_values(default).items() if k not in fixed and v is not None}
    params = parse_stage_params(
        {("tile" if stage == "bundle" else k if stage == "init" else f"{stage}_{k}"): v
         for k, v in values.items() if stage != "init" or k == "sphere_radius"},
        **LIBRARY_SPHERE,
    )
    assert getattr(params, stage) == default


def test_a_misspelt_key_names_its_stage_and_the_nearest_valid_name():
    with pytest.raises(ParameterError) as caught:
        parse_stage_params({"refine_fine_stpes": 3}, **LIBRARY_SPHERE)
    assert str(caught.value) == "unknown refine parameter 'fine_stpes' (did you mean 'fine_steps'?)"


def test_a_stage_key_without_its_prefix_is_pointed_to_the_prefixed_name():
    with pytest.raises(ParameterError, match="did you mean 'refine_coarse_steps'"):
        parse_stage_params({"coarse_steps": 300}, **LIBRARY_SPHERE)


def test_a_generator_parameter_on_a_row_of_another_generator_is_rejected():
    with pytest.raises(ParameterError, match="'steps' is read by generator 'kiss3dgen' only"):
        parse_stage_params({"steps": 8}, **LIBRARY_SPHERE)


def test_an_init_parameter_the_rows_init_does_not_read_is_rejected():
    with pytest.raises(ParameterError, match="'lrm_path' is read by init 'lrm' only"):
        parse_stage_params({"lrm_path": "lrm.ckpt"}, **LIBRARY_SPHERE)


def test_an_ill_typed_value_is_named():
    with pytest.raises(ParameterError) as caught:
        parse_stage_params({"refine_coarse_steps": "many"}, **LIBRARY_SPHERE)
    assert "'coarse_steps' must be an integer, got 'many' (str)" in str(caught.value)


def test_a_boolean_is_not_an_integer():
    with pytest.raises(ParameterError, match="must be an integer, got True"):
        parse_stage_params({"evaluate_samples": True}, **LIBRARY_SPHERE)


def test_an_integer_is_accepted_for_a_number():
    assert parse_stage_params({"sphere_radius": 1}, **LIBRARY_SPHERE).init.sphere_radius == 1.0


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("tile", 4096, "'tile' must be within 32..2048"),
        ("tile", 65, "'tile' must be even"),
        ("refine_resolution", 8192, "'resolution' must be within 16..2048"),
        ("refine_coarse_steps", 50_000, "'coarse_steps' must be within 0..5000"),
        ("refine_fine_ramp", 1.5, "'fine_ramp' must be within 0"),
        ("refine_diverged_ratio", -1.0, "'diverged_ratio' must be within 0"),
        ("refine_depth_scale", 0.0, "'depth_scale' must be within 0.0001"),
        ("evaluate_samples", 10_000_000, "'samples' must be within 1000..1000000"),
        ("texture_erosion_px", -1, "'erosion_px' must be within 0..64"),
    ],
)
def test_out_of_range_and_memory_impossible_values_are_rejected(key, value, message):
    with pytest.raises(ParameterError, match=message):
        parse_stage_params({key: value}, **LIBRARY_SPHERE)


def test_a_field_the_pipeline_supplies_cannot_be_set_in_a_manifest():
    with pytest.raises(ParameterError, match="'seed' cannot be set in a manifest"):
        parse_stage_params({"refine_seed": 4}, **LIBRARY_SPHERE)


def test_an_export_parameter_is_typed_and_a_misspelt_one_names_the_nearest():
    params = parse_stage_params({"export_faces": 8000}, **LIBRARY_SPHERE)
    assert params.export.faces == 8000
    with pytest.raises(ParameterError, match="did you mean 'faces'"):
        parse_stage_params({"export_facs": 1000}, **LIBRARY_SPHERE)


def test_defaults_sit_beneath_the_manifest_and_may_name_unread_fields():
    params = parse_stage_params(
        {"tile": 128}, **LIBRARY_SPHERE, defaults={"tile": 512, "lrm_path": "x.ckpt"}
    )
    assert params.bundle.tile == 128
    assert params.read_by("init") == {"sphere_radius": 0.85}


def test_kiss3dgen_parameters_follow_the_tile_and_keep_their_own_checks():
    params = parse_stage_params({"tile": 64, "steps": 2}, generator="kiss3dgen", init="sphere")
    kiss = params.generator
    assert (kiss.steps, kiss.height, kiss.width) == (2, 128, 256)
    assert params.generator_given == {"steps": 2}
    with pytest.raises(ParameterError, match="height must be half of width"):
        parse_stage_params({"height": 512, "width": 512}, generator="kiss3dgen", init="sphere")


def test_a_generator_without_parameters_rejects_unprefixed_keys():
    with pytest.raises(ParameterError, match="unknown file parameter 'colour'"):
        parse_stage_params({"colour": "red"}, generator="file", init="sphere")


def test_a_single_parameter_is_checked_without_a_row():
    check_parameter("refine_fine_steps", 200)
    check_parameter("steps", 4)
    with pytest.raises(ParameterError, match="unknown refine parameter 'stpes'"):
        check_parameter("refine_stpes", 200)
    with pytest.raises(ParameterError, match="unknown parameter 'colour'"):
        check_parameter("colour", "red")
    with pytest.raises(ParameterError, match="within 0..5000"):
        check_parameter("refine_fine_steps", 10**6)
