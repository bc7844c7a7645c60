"""run_stage: skip when done with the same parameter hash, else record, work, record."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from storage import queries
from storage.objects import open_store
from tasks.resources import engine_for
from tasks.stage import StageIO, run_stage
from tests.tasks.conftest import add_asset


class _Work:
    """A stage body that writes one small artefact and counts its calls."""

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    def __call__(self, io: StageIO) -> dict:
        self.calls += 1
        if self.fail:
            raise TimeoutError("simulated")
        io.local("out.txt").write_text(f"call {self.calls}")
        io.publish("out.txt")
        return {"calls": float(self.calls)}


def _runs(config, asset_id):
    with Session(engine_for(config.database_url)) as session:
        return [(r.stage, r.status, r.params_hash) for r in queries.stage_runs(session, asset_id)]


def test_the_same_hash_again_is_skipped_with_the_recorded_keys(config):
    asset = add_asset(config)
    work = _Work()
    first = run_stage(config, asset.id, "init", "hash-a", work)
    second = run_stage(config, asset.id, "init", "hash-a", work)
    assert work.calls == 1
    assert second == first == {"out.txt": f"assets/{asset.id}/out.txt"}
    assert _runs(config, asset.id) == [("init", "succeeded", "hash-a")]


def test_another_hash_runs_the_stage_again(config):
    asset = add_asset(config)
    work = _Work()
    run_stage(config, asset.id, "init", "hash-a", work)
    run_stage(config, asset.id, "init", "hash-b", work)
    assert work.calls == 2
    assert [r[2] for r in _runs(config, asset.id)] == ["hash-a", "hash-b"]


def test_a_done_stage_whose_object_is_gone_runs_again(config):
    asset = add_asset(config)
    work = _Work()
    keys = run_stage(config, asset.id, "init", "hash-a", work)
    open_store(config.store_url).delete(keys["out.txt"])
    run_stage(config, asset.id, "init", "hash-a", work)
    assert work.calls == 2
    assert open_store(config.store_url).exists(keys["out.txt"])


def test_a_failure_is_recorded_and_raised_and_the_next_try_runs(config):
    asset = add_asset(config)
    with pytest.raises(TimeoutError):
        run_stage(config, asset.id, "init", "hash-a", _Work(fail=True))
    work = _Work()
    run_stage(config, asset.id, "init", "hash-a", work)
    assert work.calls == 1
    assert [r[1] for r in _runs(config, asset.id)] == ["failed", "succeeded"]


def test_the_metrics_a_stage_returns_are_recorded(config):
    asset = add_asset(config)
    run_stage(config, asset.id, "init", "hash-a", _Work())
    with Session(engine_for(config.database_url)) as session:
        assert queries.get_asset_detail(session, asset.id).metrics["calls"] == 1.0


def _transactions(config, body) -> int:
    engine = engine_for(config.database_url)
    count = 0

    def begun(conn):
        nonlocal count
        count += 1

    sa.event.listen(engine, "begin", begun)
    try:
        body()
    finally:
        sa.event.remove(engine, "begin", begun)
    return count


def test_a_run_uses_two_database_transactions_and_a_skip_one(config):
    asset = add_asset(config)
    work = _Work()
    assert _transactions(config, lambda: run_stage(config, asset.id, "init", "h", work)) == 2
    assert _transactions(config, lambda: run_stage(config, asset.id, "init", "h", work)) == 1


def test_a_recorded_error_message_carries_no_password(config):
    asset = add_asset(config)

    def unreachable(io: StageIO) -> dict:
        raise ConnectionError("cannot reach postgresql://app:hunter2@db.internal/foundry")

    with pytest.raises(ConnectionError):
        run_stage(config, asset.id, "init", "hash-a", unreachable)
    with Session(engine_for(config.database_url)) as session:
        run = queries.stage_runs(session, asset.id)[0]
        recorded = (run.error_message, queries.get_asset(session, asset.id).last_error_message)
    assert all("hunter2" not in text and "app:***@db.internal" in text for text in recorded)
