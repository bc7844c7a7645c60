"""Leases while a stage runs: a live worker keeps its asset, a frozen one loses it and its late
writes are neither recorded nor allowed to replace the winner's objects."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy.orm import Session

from storage import queries
from storage.objects import open_store
from tasks.errors import LeaseLost
from tasks.lease import Lease, holding
from tasks.resources import engine_for
from tasks.stage import StageIO, run_stage
from tests.tasks.conftest import add_asset

LEASE_S = 2


def _claim(config, asset_id: str, owner: str) -> Lease | None:
    """What the asset flow does: claim, close the previous owner's open runs, read the epoch."""
    with Session(engine_for(config.database_url)) as session:
        if not queries.claim_asset(session, asset_id, owner, LEASE_S):
            return None
        queries.abandon_running_stages(session, asset_id)
        epoch = queries.lease_epoch(session, asset_id)
        session.commit()
    return Lease(asset_id, owner, epoch, LEASE_S)


def _write(io: StageIO, text: str) -> None:
    io.local("out.txt").write_text(text)
    io.publish("out.txt")


def test_a_live_worker_keeps_its_asset_through_a_stage_longer_than_its_lease(config):
    asset = add_asset(config)
    lease = _claim(config, asset.id, "first")
    second_claims: list[bool] = []

    def slow_stage(io: StageIO) -> dict:
        for _ in range(4):  # 4 x 1 s: twice the lease
            time.sleep(1.0)
            second_claims.append(_claim(config, asset.id, "second") is not None)
        _write(io, "first")
        return {}

    with holding(lease, config.database_url):
        keys = run_stage(config, asset.id, "init", "h", slow_stage)
    assert second_claims == [False] * 4
    assert open_store(config.store_url).get_bytes(keys["out.txt"]) == b"first"


def test_a_frozen_worker_loses_its_asset_and_its_late_writes_are_not_kept(config):
    asset = add_asset(config)
    store = open_store(config.store_url)
    first = _claim(config, asset.id, "first")
    frozen, second_done = threading.Event(), threading.Event()
    first_outcome: list[BaseException | dict] = []

    def frozen_stage(io: StageIO) -> dict:
        hold.stop_heartbeat()  # the process stalls: no renewals any more
        frozen.set()
        second_done.wait(timeout=60)
        _write(io, "late")  # wakes up and carries on as if nothing happened
        return {}

    def first_worker() -> None:
        try:
            first_outcome.append(run_stage(config, asset.id, "init", "h", frozen_stage))
        except BaseException as exc:
            first_outcome.append(exc)

    with holding(first, config.database_url) as hold:
        thread = threading.Thread(target=first_worker)
        thread.start()
        assert frozen.wait(timeout=60)
        time.sleep(LEASE_S + 0.5)
        second = _claim(config, asset.id, "second")
        assert second is not None, "an expired lease must be claimable"
        with holding(second, config.database_url):
            winner = run_stage(config, asset.id, "init", "h", lambda io: _write(io, "winner"))
        second_done.set()
        thread.join(timeout=60)

    assert isinstance(first_outcome[0], LeaseLost)
    with Session(engine_for(config.database_url)) as session:
        runs = [(r.status, r.output_keys) for r in queries.stage_runs(session, asset.id)]
        assert queries.get_asset(session, asset.id).output_keys == winner
    assert runs == [("failed", {}), ("succeeded", winner)]
    assert store.get_bytes(winner["out.txt"]) == b"winner"
    assert store.list(f"assets/{asset.id}/") == [winner["out.txt"]], "late writes left behind"


def test_a_stage_started_after_the_lease_was_lost_does_not_run(config):
    asset = add_asset(config)
    first = _claim(config, asset.id, "first")
    with holding(first, config.database_url) as hold:
        hold.stop_heartbeat()
        time.sleep(LEASE_S + 0.5)
        assert _claim(config, asset.id, "second") is not None
        calls = []
        with pytest.raises(LeaseLost):
            run_stage(config, asset.id, "init", "h", lambda io: calls.append(io))
    assert calls == []
    with Session(engine_for(config.database_url)) as session:
        assert queries.stage_runs(session, asset.id) == []


def test_a_claim_by_the_same_owner_name_makes_the_older_claim_stale(config):
    """Two claims in one process share the owner name ``host:pid``; the epoch tells them apart."""
    asset = add_asset(config)
    old = _claim(config, asset.id, "host:1")
    time.sleep(LEASE_S + 0.5)
    new = _claim(config, asset.id, "host:1")
    assert new is not None and new.epoch > old.epoch
    with Session(engine_for(config.database_url)) as session:
        assert not queries.renew_lease(session, asset.id, "host:1", LEASE_S, epoch=old.epoch)
        assert queries.renew_lease(session, asset.id, "host:1", LEASE_S, epoch=new.epoch)
