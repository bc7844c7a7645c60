"""The idempotency core: what each stage's parameter hash covers.

A stage is skipped when its hash is unchanged, so the hash must change exactly when something
the stage (or a stage before it) reads changes.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from models.parameters import ParameterError
from tasks.assets import AssetSnapshot, plan_stages
from tasks.config import PipelineConfig
from tasks.stage import STAGES

CONFIG = PipelineConfig(database_url="sqlite://", store_url="file:///tmp/x", library_path="lib")
ASSET = AssetSnapshot(
    id="a1", kind="prompt", prompt="a red mug", image_ref=None, image_sha256=None,
    bundle_ref=None, seed=3, variant=0, generator="library", init="sphere",
    params={"tile": 64, "refine_coarse_steps": 8}, tags=["kitchen"],
)


def _changed_stages(before: AssetSnapshot, after: AssetSnapshot, config=CONFIG, after_config=None):
    old = plan_stages(before, config).hashes
    new = plan_stages(after, after_config or config).hashes
    return [stage for stage in STAGES if old[stage] != new[stage]]


def _with_params(**changes) -> AssetSnapshot:
    return replace(ASSET, params={**ASSET.params, **changes})


def test_the_same_asset_planned_twice_has_the_same_hashes():
    assert plan_stages(ASSET, CONFIG).hashes == plan_stages(replace(ASSET), CONFIG).hashes


def test_every_stage_has_its_own_hash():
    hashes = plan_stages(ASSET, CONFIG).hashes
    assert list(hashes) == list(STAGES)
    assert len(set(hashes.values())) == len(STAGES)


@pytest.mark.parametrize(
    "key, value, first_changed",
    [
        ("tile", 128, "bundle"),
        ("library_id", "crate", "bundle"),
        ("sphere_radius", 0.6, "init"),
        ("refine_fine_steps", 7, "refine"),
        ("texture_erosion_px", 3, "texture"),
        ("evaluate_samples", 2000, "evaluate"),
    ],
)
def test_a_changed_parameter_changes_its_stage_and_every_later_one_only(key, value, first_changed):
    changed = _changed_stages(ASSET, _with_params(**{key: value}))
    assert changed == list(STAGES[STAGES.index(first_changed):])


def test_a_new_seed_changes_every_stage():
    assert _changed_stages(ASSET, replace(ASSET, seed=4)) == list(STAGES)


def test_new_tags_change_only_publish():
    assert _changed_stages(ASSET, replace(ASSET, tags=["kitchen", "red"])) == ["publish"]


def test_writing_a_default_value_explicitly_changes_no_hash():
    from models.evaluate.params import EvaluateParams

    default = EvaluateParams().samples
    assert _changed_stages(ASSET, _with_params(evaluate_samples=default)) == []


def test_settings_a_stage_does_not_read_change_no_hash():
    # The sphere init reads no LRM checkpoint, and the worker's device is not a parameter.
    other = CONFIG.model_copy(update={"lrm_path": "/weights/lrm.ckpt", "device": "cuda"})
    assert _changed_stages(ASSET, ASSET, after_config=other) == []


def test_the_lrm_checkpoint_setting_changes_init_when_the_init_reads_it():
    lrm = replace(ASSET, init="lrm")
    other = CONFIG.model_copy(update={"lrm_path": "/weights/lrm.ckpt"})
    assert _changed_stages(lrm, lrm, after_config=other) == list(STAGES[1:])


def test_the_tile_of_a_supplied_bundle_is_not_read():
    supplied = replace(ASSET, kind="bundle", prompt=None, generator="file", bundle_ref="b.png")
    assert _changed_stages(supplied, replace(supplied, params={**ASSET.params, "tile": 128})) == []


def test_the_default_tile_setting_is_what_the_bundle_reads_when_the_manifest_sets_none():
    untiled = replace(ASSET, params={})
    other = CONFIG.model_copy(update={"tile": 256})
    assert _changed_stages(untiled, untiled, after_config=other) == list(STAGES)
    assert plan_stages(untiled, other).params.bundle.tile == 256


def test_a_key_no_stage_reads_cannot_be_planned():
    with pytest.raises(ParameterError, match="unknown refine parameter 'stpes'"):
        plan_stages(_with_params(refine_stpes=300), CONFIG)


def test_the_refine_seed_is_the_assets_seed():
    assert plan_stages(ASSET, CONFIG).params.refine.seed == ASSET.seed
