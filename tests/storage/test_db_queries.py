"""Query functions of the application database, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import multiprocessing
import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from storage import queries as q
from storage.db import make_engine, session_scope
from storage.schema import Asset


def _request(asset_id: str = "a" * 64, **overrides) -> dict:
    values = dict(
        asset_id=asset_id,
        kind="prompt",
        prompt="a red chair",
        seed=7,
        variant=0,
        generator="library",
        init="library",
        params={"tile": 64},
        tags=["furniture"],
    )
    values.update(overrides)
    return values


def _add(engine: sa.Engine, asset_id: str = "a" * 64, **overrides) -> str:
    with session_scope(engine) as session:
        q.insert_asset_if_new(session, **_request(asset_id, **overrides))
    return asset_id


# --- requests -----------------------------------------------------------------------------------


def test_inserting_a_request_creates_a_pending_asset_once(db_engine):
    with session_scope(db_engine) as session:
        asset, created = q.insert_asset_if_new(session, **_request())
        assert created
        assert (asset.state, asset.attempts, asset.params, asset.tags) == (
            "pending",
            0,
            {"tile": 64},
            ["furniture"],
        )
    with session_scope(db_engine) as session:
        again, created_again = q.insert_asset_if_new(session, **_request(prompt="something else"))
        assert not created_again
        assert again.prompt == "a red chair"
        assert session.scalar(sa.select(sa.func.count()).select_from(Asset)) == 1


def test_inserting_an_existing_request_leaves_a_running_asset_untouched(db_engine):
    asset_id = _add(db_engine)
    with session_scope(db_engine) as session:
        assert q.claim_asset(session, asset_id, "worker-1", 60)
    with session_scope(db_engine) as session:
        asset, created = q.insert_asset_if_new(session, **_request(asset_id))
        assert not created
        assert (asset.state, asset.lease_owner) == ("running", "worker-1")


def test_concurrent_inserts_of_one_request_create_the_asset_exactly_once(db_url):
    engines = [make_engine(db_url) for _ in range(4)]
    barrier = threading.Barrier(len(engines))
    created: list[bool] = []

    def insert(engine: sa.Engine) -> None:
        barrier.wait()
        with session_scope(engine) as session:
            created.append(q.insert_asset_if_new(session, **_request())[1])

    threads = [threading.Thread(target=insert, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for engine in engines:
        engine.dispose()
    assert sorted(created) == [False, False, False, True]


def test_timestamps_read_back_timezone_aware_utc(db_engine):
    asset_id = _add(db_engine)
    with session_scope(db_engine) as session:
        asset = session.get(Asset, asset_id)
        assert asset.created_at.tzinfo is not None
        assert asset.created_at.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - asset.created_at) < timedelta(minutes=1)


def test_resolve_asset_id_accepts_a_unique_prefix(db_engine):
    _add(db_engine, "abc1" + "0" * 60)
    _add(db_engine, "abc2" + "0" * 60)
    with session_scope(db_engine) as session:
        assert q.resolve_asset_id(session, "abc1") == "abc1" + "0" * 60
        with pytest.raises(q.AmbiguousAssetId):
            q.resolve_asset_id(session, "abc")
        with pytest.raises(q.UnknownAsset):
            q.resolve_asset_id(session, "ffff")
        with pytest.raises(q.UnknownAsset):
            q.resolve_asset_id(session, "ab_%")  # wildcards are taken literally


# --- batches ------------------------------------------------------------------------------------


def test_batches_record_accepted_and_rejected_rows_and_share_assets(db_engine):
    asset_id = _add(db_engine)
    with session_scope(db_engine) as session:
        first = q.create_batch(session, "m1.yaml", "f" * 64)
        second = q.create_batch(session, "m2.yaml")
        q.add_batch_item(session, first.id, 3, "chair", asset_id, "accepted", raw="{}")
        q.add_batch_item(session, first.id, 4, None, None, "rejected", reason="negative seed")
        q.add_batch_item(session, second.id, 1, "chair", asset_id, "accepted")
        q.finish_batch(session, first.id, {"produced": 1, "rejected": 1})
        ids = (first.id, second.id)
    with session_scope(db_engine) as session:
        first = session.get(q.Batch, ids[0])
        assert first.status == "finished" and first.finished_at is not None
        assert first.summary == {"produced": 1, "rejected": 1}
        assert [(i.line, i.status, i.reason) for i in first.items] == [
            (3, "accepted", None),
            (4, "rejected", "negative seed"),
        ]
        assert [a.id for a in q.list_assets(session, batch_id=ids[1])] == [asset_id]
        assert q.get_asset_detail(session, asset_id).batch_ids == sorted(ids)


def test_batch_counts_give_each_distinct_asset_state_and_the_rejected_rows(db_engine):
    done, waiting = _add(db_engine, "d" * 64), _add(db_engine, "e" * 64)
    with session_scope(db_engine) as session:
        q.claim_asset(session, done, "w", 60)
        q.release_asset(session, done, "w", "succeeded")
        batch = q.create_batch(session, "m.yaml")
        q.add_batch_items(session, batch.id, [
            {"line": 1, "asset_id": done, "status": "accepted"},
            {"line": 2, "asset_id": done, "status": "accepted"},  # a duplicate row
            {"line": 3, "asset_id": waiting, "status": "accepted"},
            {"line": 4, "status": "rejected", "reason": "negative seed"},
        ])
        counts = q.batch_counts(session, batch.id)
        states = q.batch_asset_states(session, batch.id)
    assert counts == {"pending": 1, "running": 0, "succeeded": 1, "failed": 0,
                      "needs_review": 0, "rejected": 1}
    assert states == {done: "succeeded", waiting: "pending"}


def test_asset_lookups_by_id_skip_unknown_ids(db_engine):
    known = _add(db_engine)
    with session_scope(db_engine) as session:
        assert q.asset_states(session, [known, "f" * 64]) == {known: "pending"}
        assert list(q.assets_by_id(session, [known, "f" * 64])) == [known]
        assert q.asset_states(session, []) == {}


def test_asset_lookups_split_long_id_lists(db_engine):
    known = _add(db_engine)
    many = [f"{i:064x}" for i in range(q.IN_CLAUSE_SIZE + 10)] + [known]
    with session_scope(db_engine) as session:
        assert q.asset_states(session, many) == {known: "pending"}


def test_succeeded_stage_runs_are_those_of_the_given_assets_only(db_engine):
    mine, other = _add(db_engine, "a" * 64), _add(db_engine, "b" * 64)
    with session_scope(db_engine) as session:
        for asset_id in (mine, other):
            run = q.record_stage_start(session, asset_id, "bundle", "h")
            q.record_stage_success(session, run.id, {})
        failed = q.record_stage_start(session, mine, "init", "h")
        q.record_stage_failure(session, failed.id, "E", "x")
        runs = q.succeeded_stage_runs(session, [mine])
    assert [(r.asset_id, r.stage) for r in runs] == [(mine, "bundle")]


def test_a_rejected_batch_item_needs_a_reason(db_engine):
    with session_scope(db_engine) as session:
        batch = q.create_batch(session, "m.yaml")
        with pytest.raises(ValueError, match="reason"):
            q.add_batch_item(session, batch.id, 1, None, None, "rejected")


# --- claims -------------------------------------------------------------------------------------


def test_claim_takes_a_pending_asset_and_counts_an_attempt(db_engine):
    asset_id = _add(db_engine)
    now = datetime(2030, 1, 1, tzinfo=UTC)
    with session_scope(db_engine) as session:
        assert q.claim_asset(session, asset_id, "worker-1", 60, now=now)
    with session_scope(db_engine) as session:
        asset = session.get(Asset, asset_id)
        assert (asset.state, asset.lease_owner, asset.attempts) == ("running", "worker-1", 1)
        assert asset.lease_expires_at == now + timedelta(seconds=60)


def test_claim_fails_while_the_lease_is_live_and_succeeds_once_it_expired(db_engine):
    asset_id = _add(db_engine)
    now = datetime(2030, 1, 1, tzinfo=UTC)
    with session_scope(db_engine) as session:
        assert q.claim_asset(session, asset_id, "worker-1", 60, now=now)
    with session_scope(db_engine) as session:
        assert not q.claim_asset(session, asset_id, "worker-2", 60, now=now + timedelta(seconds=59))
    with session_scope(db_engine) as session:
        assert q.claim_asset(session, asset_id, "worker-2", 60, now=now + timedelta(seconds=61))
        asset = session.get(Asset, asset_id)
        assert (asset.lease_owner, asset.attempts) == ("worker-2", 2)


@pytest.mark.parametrize("state", ["succeeded", "failed", "needs_review"])
def test_claim_refuses_finished_assets(db_engine, state):
    asset_id = _add(db_engine)
    with session_scope(db_engine) as session:
        q.claim_asset(session, asset_id, "w", 60)
        q.release_asset(session, asset_id, "w", state)
    with session_scope(db_engine) as session:
        assert not q.claim_asset(session, asset_id, "w2", 60)


def test_claim_of_an_unknown_asset_fails(db_engine):
    with session_scope(db_engine) as session:
        assert not q.claim_asset(session, "nope", "w", 60)


def _race_to_claim(engines: list[sa.Engine], asset_id: str) -> list[str]:
    """Every engine's thread claims ``asset_id`` at the same moment; returns the winners."""
    barrier = threading.Barrier(len(engines))
    winners: list[str] = []
    errors: list[BaseException] = []

    def claim(engine: sa.Engine, owner: str) -> None:
        try:
            barrier.wait()
            with session_scope(engine) as session:
                if q.claim_asset(session, asset_id, owner, 300):
                    winners.append(owner)
        except BaseException as exc:  # re-raised in the test thread below
            errors.append(exc)

    threads = [
        threading.Thread(target=claim, args=(engine, f"worker-{i}"))
        for i, engine in enumerate(engines)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return winners


def test_concurrent_claimers_exactly_one_wins(db_url):
    """Separate engines (connections) race on the same pending asset, several rounds."""
    engines = [make_engine(db_url) for _ in range(6)]
    try:
        for i in range(4):
            asset_id = _add(engines[0], f"{i:064x}")
            winners = _race_to_claim(engines, asset_id)
            assert len(winners) == 1
            with session_scope(engines[0]) as session:
                asset = session.get(Asset, asset_id)
                assert (asset.lease_owner, asset.attempts) == (winners[0], 1)
    finally:
        for engine in engines:
            engine.dispose()


def _claim_in_process(url: str, asset_id: str, owner: str, barrier, results) -> None:
    """Child process: its own engine, wait for the others, claim, report."""
    engine = make_engine(url)
    try:
        barrier.wait(timeout=60)
        with session_scope(engine) as session:
            results.put((owner, q.claim_asset(session, asset_id, owner, 300)))
    finally:
        engine.dispose()


def test_concurrent_claimers_in_separate_processes_exactly_one_wins(db_engine, db_url):
    asset_id = _add(db_engine)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(3), context.Queue()
    processes = [
        context.Process(
            target=_claim_in_process, args=(db_url, asset_id, f"p{i}", barrier, results)
        )
        for i in range(3)
    ]
    for p in processes:
        p.start()
    outcomes = dict(results.get(timeout=120) for _ in processes)
    for p in processes:
        p.join(timeout=60)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    assert sum(outcomes.values()) == 1


def test_only_the_owner_can_renew_or_release(db_engine):
    asset_id = _add(db_engine)
    now = datetime(2030, 1, 1, tzinfo=UTC)
    with session_scope(db_engine) as session:
        q.claim_asset(session, asset_id, "worker-1", 60, now=now)
    with session_scope(db_engine) as session:
        assert not q.renew_lease(session, asset_id, "intruder", 600, now=now)
        assert not q.release_asset(session, asset_id, "intruder", "succeeded")
        assert q.renew_lease(session, asset_id, "worker-1", 600, now=now)
    with session_scope(db_engine) as session:
        assert session.get(Asset, asset_id).lease_expires_at == now + timedelta(seconds=600)
        assert q.release_asset(session, asset_id, "worker-1", "failed", "OOM", "out of memory")
    with session_scope(db_engine) as session:
        asset = session.get(Asset, asset_id)
        assert (asset.state, asset.lease_owner, asset.last_error_class) == ("failed", None, "OOM")
        assert asset.finished_at is not None


def test_a_worker_whose_lease_was_taken_over_cannot_release(db_engine):
    asset_id = _add(db_engine)
    now = datetime(2030, 1, 1, tzinfo=UTC)
    with session_scope(db_engine) as session:
        q.claim_asset(session, asset_id, "slow", 10, now=now)
        q.claim_asset(session, asset_id, "fast", 10, now=now + timedelta(seconds=11))
    with session_scope(db_engine) as session:
        assert not q.release_asset(session, asset_id, "slow", "failed")
        assert session.get(Asset, asset_id).lease_owner == "fast"


def test_list_expired_leases_finds_running_assets_whose_worker_is_gone(db_engine):
    live, lost, idle = (_add(db_engine, f"{i:064x}") for i in range(3))
    now = datetime(2030, 1, 1, tzinfo=UTC)
    with session_scope(db_engine) as session:
        q.claim_asset(session, live, "w", 600, now=now)
        q.claim_asset(session, lost, "w", 10, now=now)
        batch = q.create_batch(session, "m.yaml")
        q.add_batch_item(session, batch.id, 1, None, lost, "accepted")
    later = now + timedelta(seconds=60)
    with session_scope(db_engine) as session:
        assert [a.id for a in q.list_expired_leases(session, now=later)] == [lost]
        assert [a.id for a in q.list_expired_leases(session, batch_id=batch.id, now=later)] == [
            lost
        ]
        assert q.list_expired_leases(session, now=now) == []


def test_reset_for_retry_makes_a_failed_asset_claimable_again(db_engine):
    asset_id = _add(db_engine)
    with session_scope(db_engine) as session:
        q.claim_asset(session, asset_id, "w", 60)
        q.release_asset(session, asset_id, "w", "failed", "BadInput", "no")
    with session_scope(db_engine) as session:
        assert q.reset_for_retry(session, asset_id)
        assert not q.reset_for_retry(session, asset_id)  # already pending
    with session_scope(db_engine) as session:
        asset = session.get(Asset, asset_id)
        assert (asset.state, asset.seed, asset.last_error_class) == ("pending", 7, None)
        assert q.claim_asset(session, asset_id, "w2", 60)


def test_releasing_to_needs_review_records_its_reasons_and_finishes_the_asset(db_engine):
    asset_id = _add(db_engine)
    with session_scope(db_engine) as session:
        q.claim_asset(session, asset_id, "w", 60)
        assert q.release_asset(session, asset_id, "w", "needs_review", "review:QualityVerdict",
                               "needs review: mask_iou 0.41 < min 0.9")
    with session_scope(db_engine) as session:
        asset = session.get(Asset, asset_id)
        assert (asset.state, asset.last_error_message, asset.lease_owner) == (
            "needs_review", "needs review: mask_iou 0.41 < min 0.9", None)
        assert asset.finished_at is not None


def test_reset_for_retry_makes_a_needs_review_asset_claimable_again(db_engine):
    asset_id = _add(db_engine)
    with session_scope(db_engine) as session:
        q.claim_asset(session, asset_id, "w", 60)
        q.release_asset(session, asset_id, "w", "needs_review", "review:QualityVerdict", "low")
    with session_scope(db_engine) as session:
        assert q.reset_for_retry(session, asset_id)
    with session_scope(db_engine) as session:
        assert q.claim_asset(session, asset_id, "w2", 60)


def test_reset_for_retry_with_a_new_seed_records_the_old_one(db_engine):
    asset_id = _add(db_engine)
    with session_scope(db_engine) as session:
        q.claim_asset(session, asset_id, "w", 60)
        q.release_asset(session, asset_id, "w", "failed")
        q.reset_for_retry(session, asset_id, new_seed=99)
    with session_scope(db_engine) as session:
        asset = session.get(Asset, asset_id)
        assert asset.seed == 99
        assert asset.previous_seeds == [7]
        assert asset.params == {"tile": 64}  # the generator's parameters stay its own


# --- stage records ------------------------------------------------------------------------------


def test_stage_attempts_count_up_per_stage(db_engine):
    asset_id = _add(db_engine)
    with session_scope(db_engine) as session:
        first = q.record_stage_start(session, asset_id, "bundle", "h1", host="box", device="cpu")
        q.record_stage_failure(session, first.id, "OutOfMemory", "CUDA OOM")
        second = q.record_stage_start(session, asset_id, "bundle", "h1")
        other = q.record_stage_start(session, asset_id, "init", "h2")
        assert (first.attempt, second.attempt, other.attempt) == (1, 2, 1)
        assert session.get(Asset, asset_id).current_stage == "init"


def test_stage_success_records_outputs_duration_and_memory(db_engine):
    asset_id = _add(db_engine)
    with session_scope(db_engine) as session:
        run = q.record_stage_start(session, asset_id, "bundle", "h1", flow_run_id="fr-1")
        q.record_stage_success(session, run.id, {"bundle.png": "assets/x/bundle.png"}, 512.5)
    with session_scope(db_engine) as session:
        (run,) = q.stage_runs(session, asset_id)
        assert (run.status, run.peak_memory_mb, run.flow_run_id) == ("succeeded", 512.5, "fr-1")
        assert run.finished_at >= run.started_at and run.duration_s >= 0
        assert session.get(Asset, asset_id).output_keys == {"bundle.png": "assets/x/bundle.png"}


def test_recorded_output_keys_cover_the_asset_and_every_stage_run(db_engine):
    asset_id = _add(db_engine)
    with session_scope(db_engine) as session:
        run = q.record_stage_start(session, asset_id, "bundle", "h")
        q.record_stage_success(session, run.id, {"bundle.png": "k/bundle.png"})
        q.merge_output_keys(session, asset_id, {"extra": "k/extra.bin"})
    with session_scope(db_engine) as session:
        assert q.recorded_output_keys(session, asset_id) == {"k/bundle.png", "k/extra.bin"}
        assert session.get(Asset, asset_id).output_keys == {
            "bundle.png": "k/bundle.png",
            "extra": "k/extra.bin",
        }


def test_stage_failure_is_copied_to_the_asset(db_engine):
    asset_id = _add(db_engine)
    with session_scope(db_engine) as session:
        run = q.record_stage_start(session, asset_id, "refine", "h")
        q.record_stage_failure(session, run.id, "ValueError", "bad normals")
    with session_scope(db_engine) as session:
        asset = session.get(Asset, asset_id)
        assert (asset.last_error_class, asset.last_error_message) == ("ValueError", "bad normals")
        assert q.stage_runs(session, asset_id)[0].status == "failed"


def test_completed_stage_matches_only_succeeded_runs_with_the_same_params(db_engine):
    asset_id = _add(db_engine)
    with session_scope(db_engine) as session:
        assert q.completed_stage(session, asset_id, "bundle", "h1") is None
        failed = q.record_stage_start(session, asset_id, "bundle", "h1")
        q.record_stage_failure(session, failed.id, "E", "x")
        assert q.completed_stage(session, asset_id, "bundle", "h1") is None
        done = q.record_stage_start(session, asset_id, "bundle", "h1")
        q.record_stage_success(session, done.id, {"bundle.png": "k"})
        assert q.completed_stage(session, asset_id, "bundle", "h1").id == done.id
        assert q.completed_stage(session, asset_id, "bundle", "h2") is None
        assert q.completed_stage(session, asset_id, "init", "h1") is None


# --- metrics, listings, reports -----------------------------------------------------------------


def test_set_metrics_inserts_and_overwrites_by_name(db_engine):
    asset_id = _add(db_engine)
    with session_scope(db_engine) as session:
        q.set_metrics(session, asset_id, {"mask_iou": 0.5, "faces": 100})
        q.set_metrics(session, asset_id, {"mask_iou": 0.75})
    with session_scope(db_engine) as session:
        assert q.get_metrics(session, asset_id) == {"faces": 100.0, "mask_iou": 0.75}


def test_list_assets_filters_by_state_stage_error_and_age(db_engine):
    ok, bad, new = (_add(db_engine, f"{i:064x}") for i in range(3))
    with session_scope(db_engine) as session:
        for asset_id in (ok, bad):
            q.claim_asset(session, asset_id, "w", 60)
        run = q.record_stage_start(session, bad, "refine", "h")
        q.record_stage_failure(session, run.id, "OutOfMemory", "oom")
        q.release_asset(session, bad, "w", "failed", "OutOfMemory", "oom")
        q.release_asset(session, ok, "w", "succeeded")
    with session_scope(db_engine) as session:
        assert [a.id for a in q.list_assets(session, state="failed")] == [bad]
        assert [a.id for a in q.list_assets(session, stage="refine")] == [bad]
        assert [a.id for a in q.list_assets(session, error_class="OutOfMemory")] == [bad]
        assert q.list_assets(session, error_class="Other") == []
        assert {a.id for a in q.list_assets(session)} == {ok, bad, new}
        assert len(q.list_assets(session, limit=2)) == 2
        assert q.list_assets(session, older_than=timedelta(hours=1)) == []
        future = datetime.now(UTC) + timedelta(hours=1)
        assert len(q.list_assets(session, older_than=future)) == 3
        with pytest.raises(ValueError, match="unknown asset state"):
            q.list_assets(session, state="done")


def test_counts_by_state_and_by_latest_stage_attempt(db_engine):
    first, second = _add(db_engine, "1" * 64), _add(db_engine, "2" * 64)
    with session_scope(db_engine) as session:
        q.claim_asset(session, first, "w", 60)
        retried = q.record_stage_start(session, first, "bundle", "h")
        q.record_stage_failure(session, retried.id, "E", "x")
        q.record_stage_success(session, q.record_stage_start(session, first, "bundle", "h").id, {})
        q.record_stage_start(session, second, "bundle", "h")
    with session_scope(db_engine) as session:
        assert q.counts_by_state(session) == {
            "pending": 1,
            "running": 1,
            "succeeded": 0,
            "failed": 0,
            "needs_review": 0,
        }
        assert q.counts_by_stage(session) == {"bundle": {"succeeded": 1, "running": 1}}


def test_asset_detail_gathers_runs_and_metrics(db_engine):
    asset_id = _add(db_engine)
    with session_scope(db_engine) as session:
        run = q.record_stage_start(session, asset_id, "bundle", "h")
        q.record_stage_success(session, run.id, {"bundle.png": "k"})
        q.set_metrics(session, asset_id, {"psnr": 30.0})
    with session_scope(db_engine) as session:
        detail = q.get_asset_detail(session, asset_id)
        assert detail.asset.id == asset_id
        assert [(r.stage, r.status) for r in detail.stage_runs] == [("bundle", "succeeded")]
        assert detail.metrics == {"psnr": 30.0}
        assert q.get_asset_detail(session, "missing") is None


def test_query_functions_never_commit(db_engine):
    with session_scope(db_engine) as session:
        q.insert_asset_if_new(session, **_request())
        q.create_batch(session, "m.yaml")
        session.rollback()
    with session_scope(db_engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Asset)) == 0
