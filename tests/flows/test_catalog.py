"""The catalog and asset flows, end to end on real meshes, databases and stores."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage import queries
from storage.objects import open_store
from storage.schema import Batch
from tasks.resources import engine_for
from tests.flows.conftest import FAST_PARAMS, NO_VERDICT, write_manifest

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _detail(config, asset_id):
    with Session(engine_for(config.database_url)) as session:
        detail = queries.get_asset_detail(session, asset_id)
        return detail.asset.state, detail.asset.output_keys, detail.metrics, detail.stage_runs


def test_catalog_produces_glb_preview_and_metrics_for_each_asset(pipeline_config, tmp_path):
    from flows.catalog import catalog_flow

    manifest = write_manifest(tmp_path, [
        {"id": "can", "prompt": "a red soda can", "init": "library"},
        {"id": "ball", "prompt": "a blue ball to play with", "init": "sphere"},
    ])
    summary = catalog_flow(str(manifest), pipeline_config, concurrency=2)
    assert (summary.produced, summary.failed, summary.rejected) == (2, 0, 0)
    store = open_store(pipeline_config.store_url)
    for row in summary.assets:
        state, keys, metrics, _ = _detail(pipeline_config, row["asset_id"])
        assert state == "succeeded"
        for artefact in ("bundle.png", "coarse.glb", "refined.glb", "asset.glb", "preview.png",
                         "metrics.json"):
            assert store.exists(keys[artefact]), artefact
        assert 0.0 <= metrics["mask_iou"] <= 1.0
        assert metrics["library_similarity"] > 0.3


def test_running_the_same_manifest_again_produces_nothing_new(pipeline_config, tmp_path):
    from flows.catalog import catalog_flow

    manifest = write_manifest(tmp_path, [{"prompt": "a wooden crate", "init": "library"}])
    first = catalog_flow(str(manifest), pipeline_config)
    second = catalog_flow(str(manifest), pipeline_config)
    assert first.produced == 1
    assert (second.produced, second.skipped) == (0, 1)
    assert second.nothing_new
    _, _, _, runs = _detail(pipeline_config, first.assets[0]["asset_id"])
    assert len(runs) == 7  # one run per stage: the second catalog ran none


@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)  # Prefect, not storage
def test_asset_flow_runs_carry_the_tag_of_their_batch(pipeline_config, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    from flows.catalog import batch_tag, catalog_flow

    manifest = write_manifest(tmp_path, [{"prompt": "a round ball", "init": "library"}])
    summary = catalog_flow(str(manifest), pipeline_config)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[batch_tag(summary.batch_id)])
            ),
            sort=FlowRunSort.START_TIME_ASC,  # explicit: this server rejects null paging
            limit=10,
        )
    assert [run.name for run in runs] == [f"asset-{summary.assets[0]['asset_id']}"]


def test_rejected_rows_are_recorded_with_their_line_and_valid_rows_go_on(
    pipeline_config, tmp_path
):
    from flows.catalog import catalog_flow

    manifest = write_manifest(tmp_path, [
        {"prompt": "a metal can", "init": "library"},
        {"prompt": "a ball", "seed": -3},
    ])
    summary = catalog_flow(str(manifest), pipeline_config)
    assert (summary.produced, summary.rejected) == (1, 1)
    assert "seed" in summary.rejections[0]["reason"]
    assert summary.rejections[0]["line"] > 0


@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)  # Prefect, not storage
def test_a_batch_ends_finished_with_its_assets_per_state_and_rejected_rows(
    pipeline_config, tmp_path
):
    from flows.catalog import catalog_flow

    manifest = write_manifest(tmp_path, [
        {"prompt": "a metal can", "init": "library"},
        {"prompt": "a ball", "seed": -3},
    ])
    summary = catalog_flow(str(manifest), pipeline_config)
    with Session(engine_for(pipeline_config.database_url)) as session:
        batch = session.get(Batch, summary.batch_id)
        assert batch.status == "finished" and batch.finished_at is not None
        assert batch.summary["states"] == {
            "pending": 0, "running": 0, "succeeded": 1, "failed": 0, "needs_review": 0,
            "rejected": 1,
        }
        assert (batch.summary["produced"], batch.summary["rejected"]) == (1, 1)


@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)  # Prefect, not storage
def test_a_batch_whose_run_raises_ends_failed_with_the_error_and_its_counts(
    pipeline_config, tmp_path
):
    from prefect.exceptions import ObjectNotFound

    from flows.catalog import catalog_flow

    manifest = write_manifest(tmp_path, [{"prompt": "a metal can", "init": "library"}])
    with pytest.raises(ObjectNotFound):
        catalog_flow(str(manifest), pipeline_config, deployment="no-such-flow/no-such-deployment")
    with Session(engine_for(pipeline_config.database_url)) as session:
        (batch,) = session.scalars(
            select(Batch).where(Batch.manifest_path == str(manifest))
        ).all()
        assert batch.status == "failed" and batch.finished_at is not None
        assert batch.summary["error"].startswith("ObjectNotFound")
        assert batch.summary["states"]["pending"] == 1


def test_a_permanent_error_fails_only_that_asset(pipeline_config, tmp_path):
    from flows.catalog import catalog_flow

    manifest = write_manifest(tmp_path, [
        {"id": "no-weights", "prompt": "a soda can", "init": "lrm"},
        {"id": "fine", "prompt": "a rubber ball", "init": "library"},
    ])
    summary = catalog_flow(str(manifest), pipeline_config)
    assert (summary.produced, summary.failed) == (1, 1)
    failed = next(r for r in summary.assets if r["outcome"] == "failed")
    with Session(engine_for(pipeline_config.database_url)) as session:
        asset = queries.get_asset(session, failed["asset_id"])
        assert asset.last_error_class.startswith("permanent:")
        assert "FOUNDRY_LRM_PATH" in asset.last_error_message
        runs = [r for r in queries.stage_runs(session, asset.id) if r.stage == "init"]
    assert len(runs) == 1  # permanent: not retried


class _FlakyGenerator:
    """Fails with a retryable error the first ``failures`` times, then serves the library."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self, request, context):
        from models.generate.registry import generate_from_library

        self.calls += 1
        if self.calls <= self.failures:
            raise TimeoutError("the generator timed out (simulated transient failure)")
        return generate_from_library(request, context)


def test_a_retryable_stage_error_is_retried_and_the_asset_succeeds(pipeline_config):
    from flows.asset import asset_flow
    from models.generate.registry import GENERATORS

    flaky = _FlakyGenerator(failures=1)
    GENERATORS["flaky-test"] = flaky
    try:
        with Session(engine_for(pipeline_config.database_url)) as session:
            queries.insert_asset_if_new(
                session, asset_id="flaky0000001", kind="prompt", prompt="a soda can",
                image_ref=None, image_sha256=None, bundle_ref=None, seed=0, variant=0,
                generator="flaky-test", init="sphere",
                params={"tile": 64, "refine_coarse_steps": 4, "refine_fine_steps": 2,
                        "refine_coarse_resolution": 48, "refine_resolution": 48,
                        **NO_VERDICT},  # 6 steps from a sphere: fast, not good
                tags=[],
            )
            session.commit()
        assert asset_flow("flaky0000001", pipeline_config) == "succeeded"
    finally:
        del GENERATORS["flaky-test"]
    assert flaky.calls == 2
    state, _, _, runs = _detail(pipeline_config, "flaky0000001")
    bundle_runs = [r for r in runs if r.stage == "bundle"]
    assert state == "succeeded"
    assert [r.status for r in bundle_runs] == ["failed", "succeeded"]
    assert bundle_runs[0].error_class == "retryable:TimeoutError"


def test_search_finds_a_produced_asset_by_prompt(pipeline_config, tmp_path):
    from flows.catalog import catalog_flow
    from models.embed.text import embed_texts
    from storage.search import hybrid_search

    manifest = write_manifest(tmp_path, [
        {"prompt": "a red soda can", "init": "library"},
        {"prompt": "a wooden crate", "init": "library"},
    ])
    summary = catalog_flow(str(manifest), pipeline_config)
    assert summary.produced == 2
    crate = next(r["asset_id"] for r in summary.assets if "crate" in r["prompt"])
    with Session(engine_for(pipeline_config.database_url)) as session:
        hits = hybrid_search(session, "wooden box", embed_texts(["wooden box"])[0], limit=2)
    assert hits[0].asset_id == crate


def test_an_image_request_and_a_bundle_file_request_are_produced(pipeline_config, tmp_path):
    from flows.catalog import catalog_flow
    from models.render.views import render_bundle
    from tests.flows.conftest import LIBRARY

    ball = LIBRARY[2][2]
    bundle = render_bundle(ball, tile=64)
    bundle.save(tmp_path / "ball_bundle.png")
    from PIL import Image

    Image.fromarray(bundle.colour_tiles()[0]).save(tmp_path / "photo.png")
    manifest = write_manifest(tmp_path, [
        {"image": "photo.png", "init": "library"},
        {"bundle": "ball_bundle.png", "generator": "file", "init": "sphere"},
    ])
    summary = catalog_flow(str(manifest), pipeline_config)
    assert (summary.produced, summary.failed, summary.rejected) == (2, 0, 0), summary.assets


def test_a_hull_start_is_also_the_refine_stages_prior(pipeline_config, tmp_path):
    from flows.catalog import catalog_flow

    manifest = write_manifest(tmp_path, [
        {"id": "can", "prompt": "a red soda can", "init": "hull",
         "params": {**FAST_PARAMS, "hull_resolution": 48}},
    ])
    summary = catalog_flow(str(manifest), pipeline_config)
    assert summary.produced == 1, summary.assets
    _, _, metrics, _ = _detail(pipeline_config, summary.assets[0]["asset_id"])
    # As `foundry3d reconstruct` does: the refined mesh went through the hull prior.
    assert metrics["refine_hull_prior_pulled"] >= 0
    assert metrics["refine_hull_prior_regions"] >= 0


def test_init_lrm_runs_with_a_tiny_checkpoint_file(pipeline_config, tmp_path):
    import torch

    from flows.catalog import catalog_flow
    from models.reconstruct.lrm import LRM, get_config, save_checkpoint

    torch.manual_seed(0)
    checkpoint = save_checkpoint(LRM(get_config("tiny")).eval(), tmp_path / "tiny_lrm.ckpt")
    manifest = write_manifest(tmp_path, [
        {"prompt": "a soda can", "init": "lrm",  # random LRM weights: judged by nothing
         "params": {**FAST_PARAMS, "lrm_path": str(checkpoint), "lrm_variant": "tiny",
                    **NO_VERDICT}},
    ])
    summary = catalog_flow(str(manifest), pipeline_config)
    assert summary.produced == 1, summary.assets
    _, keys, metrics, _ = _detail(pipeline_config, summary.assets[0]["asset_id"])
    assert metrics["init_faces"] > 0
    assert "coarse.glb" in keys


def test_kiss3dgen_generator_draws_the_bundle_with_local_weights(pipeline_config, tmp_path):
    from flows.catalog import catalog_flow
    from models.generate.kiss3dgen.tiny import save_tiny_flux

    flux = save_tiny_flux(tmp_path / "tiny-flux")
    generator_params = {"flux_path": str(flux), "steps": 2, "check_degenerate": False}
    manifest = write_manifest(tmp_path, [
        {"prompt": "a wooden chair", "generator": "kiss3dgen", "init": "sphere",
         "params": {**FAST_PARAMS, **generator_params, **NO_VERDICT}},
    ])
    summary = catalog_flow(str(manifest), pipeline_config)
    assert summary.produced == 1, summary.assets
    _, keys, metrics, _ = _detail(pipeline_config, summary.assets[0]["asset_id"])
    assert "kiss3dgen_seconds" in metrics
    sidecar = open_store(pipeline_config.store_url).get_bytes(keys["bundle.json"])
    assert b'"producer": "kiss3dgen"' in sidecar


def test_kiss3dgen_without_weights_fails_permanently_naming_the_path(pipeline_config, tmp_path):
    from flows.catalog import catalog_flow

    missing = tmp_path / "no-such-flux"
    manifest = write_manifest(tmp_path, [
        {"prompt": "a wooden chair", "generator": "kiss3dgen",
         "params": {**FAST_PARAMS, "flux_path": str(missing)}},
    ])
    summary = catalog_flow(str(manifest), pipeline_config)
    assert summary.failed == 1
    with Session(engine_for(pipeline_config.database_url)) as session:
        asset = queries.get_asset(session, summary.assets[0]["asset_id"])
        assert asset.last_error_class == "permanent:WeightsMissingError"
        assert str(missing) in asset.last_error_message
