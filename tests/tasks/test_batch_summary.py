"""The catalog's summary (the Prefect artifact and the batch record): every asset is counted as
what happened to it, and only assets done before the run count as "skipped (already done)"."""

from __future__ import annotations

import pytest

from storage import queries
from storage.db import make_engine, session_scope
from tasks.config import PipelineConfig
from tasks.ingest import IngestResult
from tasks.summary import outcome_kind, summarise_batch


@pytest.mark.parametrize(
    ("outcome", "state", "kind"),
    [
        ("succeeded", "succeeded", "produced"),
        ("needs_review", "needs_review", "needs review"),
        ("failed", "failed", "failed"),
        (None, "succeeded", "already done"),
        ("skipped", "succeeded", "already done"),
        (None, "needs_review", "needs review earlier"),
        (None, "failed", "failed earlier"),
        ("skipped", "failed", "failed earlier"),
        ("skipped", "running", "held"),
        ("lost", "running", "held"),
        ("skipped", "pending", "not run"),
    ],
)
def test_each_asset_is_counted_by_its_outcome_here_or_else_by_its_state(outcome, state, kind):
    assert outcome_kind(outcome, state) == kind


def _asset(session, asset_id: str, state: str) -> None:
    """A recorded asset left in ``state`` the way a worker leaves it."""
    queries.insert_asset_if_new(session, asset_id=asset_id, kind="prompt", prompt=asset_id,
                                seed=1, generator="library", init="sphere")
    if state == "pending":
        return
    queries.claim_asset(session, asset_id, "another-host:1", 3600)
    if state != "running":
        queries.release_asset(session, asset_id, "another-host:1", state,
                              "review:QualityVerdict" if state == "needs_review" else None,
                              "needs review: mask_iou 0.5 < min 0.9"
                              if state == "needs_review" else None)


@pytest.fixture
def summary(db_url: str, tmp_path):
    """The summary of a run that produced one asset, judged one needs_review and failed one,
    while other assets were already done, failed or judged in earlier runs, or held by
    another worker's lease."""
    engine = make_engine(db_url)
    states = {
        "produced": "succeeded", "judged": "needs_review", "broke": "failed",
        "done-before": "succeeded", "review-before": "needs_review", "failed-before": "failed",
        "held": "running",
    }
    with session_scope(engine) as session:
        for asset_id, state in states.items():
            _asset(session, asset_id, state)
    engine.dispose()
    ingest = IngestResult(batch_id="b" * 32, manifest="catalog.yaml", asset_ids=list(states),
                          to_run=["produced", "judged", "broke", "held"],
                          already_done=["done-before"], failed_before=["failed-before"],
                          review_before=["review-before"])
    outcomes = {"produced": "succeeded", "judged": "needs_review", "broke": "failed",
                "held": "skipped"}
    config = PipelineConfig(database_url=db_url, store_url=(tmp_path / "objects").as_uri(),
                            library_path=str(tmp_path))
    return summarise_batch(ingest, outcomes, config, seconds=2.0)


def test_held_failed_earlier_and_needs_review_assets_are_not_counted_as_already_done(summary):
    assert (summary.produced, summary.skipped, summary.failed, summary.needs_review) == (
        1, 1, 1, 1)
    assert (summary.failed_earlier, summary.needs_review_earlier, summary.held) == (1, 1, 1)


def test_the_artifact_description_names_each_count_apart(summary):
    assert summary.markdown_header() == (
        "Catalog `catalog.yaml`: 1 produced, 1 skipped (already done), 2 failed "
        "(1 in an earlier run, not re-run), 2 needs review (1 from an earlier run, not re-run), "
        "1 being produced by another run, 0 rejected rows in 2.0 s"
    )


def test_the_artifact_table_shows_each_outcome_and_the_reasons_for_review(summary):
    rows = {row["asset_id"]: row for row in summary.table_rows()}
    assert {k: r["outcome"] for k, r in rows.items()} == {
        "produced": "succeeded",
        "judged": "needs review",
        "broke": "failed",
        "done-before": "skipped (already done)",
        "review-before": "needs review (earlier run; foundry3d retry)",
        "failed-before": "failed earlier (foundry3d retry)",
        "held": "held by another run",
    }
    assert rows["judged"]["error"] == "needs review: mask_iou 0.5 < min 0.9"
