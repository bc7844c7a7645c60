"""Parameters across retries: reseeding keeps its bookkeeping out of the generator's params,
``retry --set`` changes checked parameters and re-runs from the stage that reads them, and an
asset whose stored params no stage reads fails permanently before any stage runs."""

from __future__ import annotations

import subprocess

import pytest
from sqlalchemy.orm import Session

from storage import queries
from tasks.resources import engine_for
from tests.flows.conftest import FAST_PARAMS, NO_VERDICT, cli_env, foundry3d_cmd

pytestmark = [
    pytest.mark.usefixtures("prefect_harness"),
    pytest.mark.parametrize("pipeline_config", ["local"], indirect=True),
]


def _add(config, asset_id: str, **fields) -> None:
    values = dict(kind="prompt", prompt="a soda can", image_ref=None, image_sha256=None,
                  bundle_ref=None, seed=0, variant=0, generator="library", init="sphere",
                  params=dict(FAST_PARAMS), tags=[])
    values.update(fields)
    with Session(engine_for(config.database_url)) as session:
        queries.insert_asset_if_new(session, asset_id=asset_id, **values)
        session.commit()


def _asset(config, asset_id: str):
    with Session(engine_for(config.database_url)) as session:
        asset = queries.get_asset(session, asset_id)
        runs = [(r.stage, r.status) for r in queries.stage_runs(session, asset_id)]
        session.expunge_all()
        return asset, runs


def _fail_once(config, asset_id: str) -> None:
    from flows.asset import AssetFailed, asset_flow

    with pytest.raises(AssetFailed):
        asset_flow(asset_id, config)


def test_a_reseeded_kiss3dgen_asset_keeps_valid_generator_params(pipeline_config, tmp_path):
    from flows.retry import retry_flow

    params = {**FAST_PARAMS, "flux_path": str(tmp_path / "no-such-flux"), "steps": 2}
    _add(pipeline_config, "kiss00000001", generator="kiss3dgen", params=params)
    _fail_once(pipeline_config, "kiss00000001")

    assert retry_flow(pipeline_config, reseed=True) == {"kiss00000001": "failed"}
    asset, _ = _asset(pipeline_config, "kiss00000001")
    assert asset.params == params
    assert asset.previous_seeds == [0] and asset.seed != 0
    # It failed for its real reason again (missing weights), not for a parameter it never had.
    assert asset.last_error_class == "permanent:WeightsMissingError"


def test_retry_set_reruns_a_failed_asset_from_the_stage_that_reads_the_change(
    pipeline_config, tmp_path
):
    import torch

    from flows.retry import retry_flow
    from models.reconstruct.lrm import LRM, get_config, save_checkpoint

    missing = {**FAST_PARAMS, "lrm_path": str(tmp_path / "missing.ckpt"), "lrm_variant": "tiny",
               **NO_VERDICT}  # random LRM weights: the verdict is not what this checks
    _add(pipeline_config, "lrm000000001", init="lrm", params=missing)
    _fail_once(pipeline_config, "lrm000000001")
    torch.manual_seed(0)
    checkpoint = save_checkpoint(LRM(get_config("tiny")).eval(), tmp_path / "tiny_lrm.ckpt")

    outcomes = retry_flow(pipeline_config, overrides={"lrm_path": str(checkpoint)})

    assert outcomes == {"lrm000000001": "succeeded"}
    asset, runs = _asset(pipeline_config, "lrm000000001")
    assert asset.params["lrm_path"] == str(checkpoint)
    assert [status for stage, status in runs if stage == "bundle"] == ["succeeded"]  # skipped
    assert [status for stage, status in runs if stage == "init"] == ["failed", "succeeded"]


def test_an_override_the_assets_stages_do_not_read_changes_nothing(pipeline_config):
    from flows.retry import retry_flow
    from models.parameters import ParameterError

    _add(pipeline_config, "lib000000001", params={**FAST_PARAMS, "library_id": "no-such-id"})
    _fail_once(pipeline_config, "lib000000001")
    with pytest.raises(ParameterError, match="'steps' is read by generator 'kiss3dgen' only"):
        retry_flow(pipeline_config, overrides={"steps": 4})
    asset, _ = _asset(pipeline_config, "lib000000001")
    assert asset.state == "failed"
    assert "steps" not in asset.params


def test_stored_params_that_no_stage_reads_fail_the_asset_before_any_stage(pipeline_config):
    _add(pipeline_config, "old000000001", params={**FAST_PARAMS, "refine_steps": 300})
    _fail_once(pipeline_config, "old000000001")
    asset, runs = _asset(pipeline_config, "old000000001")
    assert asset.last_error_class == "permanent:ParameterError"
    assert "unknown refine parameter 'steps'" in asset.last_error_message
    assert runs == []


@pytest.mark.parametrize(
    "pair, message",
    [
        ("refine_stpes=300", "unknown refine parameter 'stpes' (did you mean 'fine_steps'?)"),
        ("refine_fine_steps=many", "'fine_steps' must be an integer, got 'many'"),
        ("refine_fine_steps", "expected KEY=VALUE"),
    ],
)
def test_retry_set_with_a_bad_parameter_is_one_line_and_exit_code_2(
    pipeline_config, tmp_path, pair, message
):
    result = subprocess.run(
        foundry3d_cmd("retry", "--set", pair), env=cli_env(pipeline_config, tmp_path),
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr + result.stdout
