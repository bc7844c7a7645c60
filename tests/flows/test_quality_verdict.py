"""The quality verdict in the pipeline: an asset whose metrics miss a threshold ends
``needs_review`` with its reasons, is counted apart, found by state, and retried."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from sqlalchemy.orm import Session

from storage import queries
from tasks.resources import engine_for
from tests.flows.conftest import FAST_PARAMS, cli_env, foundry3d_cmd, write_manifest

STRICT = {"id": "ball", "prompt": "a round rubber ball", "init": "sphere",
          "params": {**FAST_PARAMS, "evaluate_max_normal_angle_deg": 1.0}}
"""A good asset (several degrees of normal error, refined from a sphere at 64-px tiles) judged
by a 1-degree limit. Not the library init: the library's own mesh, which drew the bundle,
matches it exactly and is kept."""


def _asset(config, asset_id: str):
    with Session(engine_for(config.database_url)) as session:
        asset = queries.get_asset(session, asset_id)
        runs = [(r.stage, r.status) for r in queries.stage_runs(session, asset_id)]
        session.expunge_all()
        return asset, runs


def test_an_asset_whose_normal_error_misses_its_threshold_ends_needs_review_with_the_reason(
    pipeline_config, tmp_path
):
    from flows.catalog import catalog_flow

    manifest = write_manifest(tmp_path, [STRICT])
    summary = catalog_flow(str(manifest), pipeline_config)
    asset, runs = _asset(pipeline_config, summary.assets[0]["asset_id"])
    assert asset.state == "needs_review"
    assert asset.last_error_class == "review:QualityVerdict"
    assert asset.last_error_message.startswith("needs review: normal_angle_deg ")
    assert asset.last_error_message.endswith(" > max 1")
    assert (summary.produced, summary.needs_review, summary.failed) == (0, 1, 0)
    assert ("publish", "succeeded") in runs  # its files are kept and indexed


@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)
def test_good_assets_of_the_default_thresholds_still_succeed(pipeline_config, tmp_path):
    from flows.catalog import catalog_flow

    # FAST_PARAMS without its lenient mask threshold: the verdict's defaults judge these.
    fast = {k: v for k, v in FAST_PARAMS.items() if not k.startswith("evaluate_")}
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"defaults": {"params": fast}, "items": [
        {"id": "ball", "prompt": "a round rubber ball", "init": "library"},
        {"id": "ball-sphere", "prompt": "a blue ball to play with", "init": "sphere"},
    ]}))
    summary = catalog_flow(str(manifest), pipeline_config)
    assert [row["state"] for row in summary.assets] == ["succeeded", "succeeded"]
    assert summary.needs_review == 0


@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)
def test_the_summary_artifact_counts_the_asset_that_needs_review(pipeline_config, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from flows.catalog import catalog_flow

    manifest = write_manifest(tmp_path, [STRICT])
    catalog_flow(str(manifest), pipeline_config)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["catalog-summary"])),
            sort=ArtifactSort.CREATED_DESC, limit=50, offset=0,
        )
    ours = [a for a in artifacts if str(manifest) in (a.description or "")]
    assert len(ours) == 1
    assert "0 produced, 0 skipped (already done), 0 failed, 1 needs review" in ours[0].description
    assert "needs review" in str(ours[0].data)


@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)
def test_a_rerun_counts_the_asset_as_needing_review_not_as_already_done(
    pipeline_config, tmp_path
):
    from flows.catalog import catalog_flow

    manifest = write_manifest(tmp_path, [STRICT])
    catalog_flow(str(manifest), pipeline_config)
    again = catalog_flow(str(manifest), pipeline_config)
    assert (again.skipped, again.needs_review, again.needs_review_earlier) == (0, 0, 1)
    assert again.assets[0]["outcome"] == "needs review (earlier run; foundry3d retry)"


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)
def test_retry_with_a_looser_threshold_re_judges_the_asset_and_it_succeeds(
    pipeline_config, tmp_path
):
    from flows.catalog import catalog_flow
    from flows.retry import retry_flow

    manifest = write_manifest(tmp_path, [STRICT])
    asset_id = catalog_flow(str(manifest), pipeline_config).assets[0]["asset_id"]
    outcomes = retry_flow(pipeline_config, overrides={"evaluate_max_normal_angle_deg": 20.0})
    asset, runs = _asset(pipeline_config, asset_id)
    assert outcomes == {asset_id: "succeeded"}
    assert (asset.state, asset.last_error_message) == ("succeeded", None)
    # Only the stages that read the changed threshold ran again.
    assert [stage for stage, status in runs if status == "succeeded"].count("evaluate") == 2
    assert [stage for stage, status in runs if status == "succeeded"].count("refine") == 1


def _judged(config, asset_id: str, state: str, prompt: str = "a round rubber ball") -> None:
    """A recorded asset that a worker left in ``state``, as the pipeline leaves it."""
    with Session(engine_for(config.database_url)) as session:
        queries.insert_asset_if_new(session, asset_id=asset_id, kind="prompt", prompt=prompt,
                                    seed=1, generator="library", init="library",
                                    params=dict(FAST_PARAMS))
        queries.claim_asset(session, asset_id, "w", 60)
        queries.release_asset(session, asset_id, "w", state, "review:QualityVerdict",
                              "needs review: mask_iou 0.5 < min 0.9")
        session.commit()


@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)
def test_retry_selects_needs_review_assets_with_the_failed_ones(pipeline_config):
    from flows.retry import select_retryable

    _judged(pipeline_config, "review01", "needs_review")
    _judged(pipeline_config, "failed01", "failed")
    _judged(pipeline_config, "done0001", "succeeded")
    assert sorted(select_retryable(pipeline_config)) == ["failed01", "review01"]


@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)
def test_retry_by_state_selects_only_that_state(pipeline_config):
    from flows.retry import select_retryable

    _judged(pipeline_config, "review01", "needs_review")
    _judged(pipeline_config, "failed01", "failed")
    assert select_retryable(pipeline_config, states=("needs_review",)) == ["review01"]
    assert select_retryable(pipeline_config, states=("failed",)) == ["failed01"]


@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)
def test_search_by_state_needs_review_finds_the_asset_and_its_state(pipeline_config, tmp_path):
    _judged(pipeline_config, "review01", "needs_review")
    _judged(pipeline_config, "done0001", "succeeded", prompt="a round rubber ball, done")
    result = subprocess.run(
        foundry3d_cmd("search", "rubber ball", "--state", "needs_review"),
        env=cli_env(pipeline_config, tmp_path), cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "review01" in result.stdout
    assert "done0001" not in result.stdout
