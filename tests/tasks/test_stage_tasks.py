"""The seven stage tasks called through ``.fn()``: each reads its typed parameters from the plan,
publishes its artefacts, and is skipped when run again with the same plan."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
from PIL import Image
from sqlalchemy.orm import Session

from storage import queries
from storage.objects import open_store
from tasks.assets import plan_stages
from tasks.resources import engine_for
from tasks.stages import (
    bundle_task,
    evaluate_task,
    export_task,
    init_task,
    publish_task,
    refine_task,
    texture_task,
)
from tests.tasks.conftest import add_asset

ARTEFACTS = {
    "bundle": ("bundle.png", "bundle.json"),
    "init": ("coarse.glb",),
    "refine": ("refined.glb",),
    "texture": ("textured.glb",),
    "export": ("asset.glb", "preview.png"),
    "evaluate": ("metrics.json",),
    "publish": (),
}


def _run_all(asset, plan, config) -> dict[str, dict[str, str]]:
    """Every stage task in order, as the asset flow calls them; stage -> its output keys."""
    out = {"bundle": bundle_task.fn(asset, plan, config)}
    keys = dict(out["bundle"])
    for stage, task in (("init", init_task), ("refine", refine_task), ("texture", texture_task),
                        ("export", export_task), ("evaluate", evaluate_task),
                        ("publish", publish_task)):
        out[stage] = task.fn(asset, plan, keys, config)
        keys.update(out[stage])
    return out


def _succeeded_runs(config, asset_id) -> Counter:
    with Session(engine_for(config.database_url)) as session:
        runs = queries.stage_runs(session, asset_id)
    return Counter(r.stage for r in runs if r.status == "succeeded")


def test_each_stage_task_publishes_its_artefacts_and_records_one_run(config):
    asset = add_asset(config)
    outputs = _run_all(asset, plan_stages(asset, config), config)
    store = open_store(config.store_url)
    for stage, artefacts in ARTEFACTS.items():
        assert set(artefacts) <= set(outputs[stage]), stage
        assert all(store.exists(outputs[stage][a]) for a in artefacts), stage
    assert _succeeded_runs(config, asset.id) == Counter({stage: 1 for stage in ARTEFACTS})


def test_the_tasks_read_their_stage_parameters_from_the_plan(config, tmp_path):
    from models.geometry.glb import load_glb

    asset = add_asset(config, {"tile": 96, "sphere_radius": 0.5})
    plan = plan_stages(asset, config)
    store = open_store(config.store_url)
    bundle_keys = bundle_task.fn(asset, plan, config)
    store.get_file(bundle_keys["bundle.png"], tmp_path / "bundle.png")
    with Image.open(tmp_path / "bundle.png") as image:
        assert image.size == (4 * 96, 2 * 96)
    init_keys = init_task.fn(asset, plan, bundle_keys, config)
    store.get_file(init_keys["coarse.glb"], tmp_path / "coarse.glb")
    radii = np.linalg.norm(np.asarray(load_glb(tmp_path / "coarse.glb").vertices), axis=1)
    assert np.allclose(radii, 0.5, atol=1e-3)


def test_the_same_plan_again_runs_no_stage(config):
    asset = add_asset(config)
    plan = plan_stages(asset, config)
    first = _run_all(asset, plan, config)
    second = _run_all(asset, plan_stages(asset, config), config)
    assert second == first
    assert set(_succeeded_runs(config, asset.id).values()) == {1}


def test_a_changed_evaluate_parameter_reruns_evaluate_and_publish_only(config):
    asset = add_asset(config)
    _run_all(asset, plan_stages(asset, config), config)
    changed = replace(asset, params={**asset.params, "evaluate_samples": 2000})
    _run_all(changed, plan_stages(changed, config), config)
    assert _succeeded_runs(config, asset.id) == Counter(
        bundle=1, init=1, refine=1, texture=1, export=1, evaluate=2, publish=2
    )


def test_a_changed_refine_parameter_reruns_refine_and_the_stages_after_it(config):
    asset = add_asset(config)
    _run_all(asset, plan_stages(asset, config), config)
    changed = replace(asset, params={**asset.params, "refine_fine_steps": 3})
    _run_all(changed, plan_stages(changed, config), config)
    assert _succeeded_runs(config, asset.id) == Counter(
        bundle=1, init=1, refine=2, texture=2, export=2, evaluate=2, publish=2
    )
