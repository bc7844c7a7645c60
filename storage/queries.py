"""Query functions of the application database: requests, batches, claims, stage records, metrics.

Every function takes the session first and never commits: the caller opens the session
(``storage.db.session_scope``) and commits once. Writes that race between workers (inserting a
request, claiming an asset) are single atomic statements, so they are safe on SQLite and
PostgreSQL without extra locking.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from storage.schema import (
    API_TOKEN_SCOPES,
    ASSET_STATES,
    ApiToken,
    Asset,
    Batch,
    BatchItem,
    Metric,
    PromptIndex,
    StageRun,
    utcnow,
)

TERMINAL_STATES = ("succeeded", "failed", "needs_review")
"""States an asset's run ends in; none of them is claimed again until ``retry`` resets it."""
RETRYABLE_STATES = ("failed", "needs_review")
"""States ``retry`` puts back to ``pending``: failed, or finished below the quality verdict."""
#: Ids per ``IN (...)`` list: below SQLite's bound-parameter limit and PostgreSQL's comfort.
IN_CLAUSE_SIZE = 5_000


class UnknownAsset(LookupError):
    """No asset matches the given id (or id prefix)."""


class AmbiguousAssetId(LookupError):
    """An id prefix matches more than one asset."""


def dialect_insert(session: Session, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """A dialect ``INSERT`` construct that supports ``ON CONFLICT`` (SQLite and PostgreSQL)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"database dialect {dialect!r} is not supported")


def _now(now: datetime | None) -> datetime:
    return now if now is not None else utcnow()


# --- requests ---------------------------------------------------------------------------------


def insert_asset_if_new(
    session: Session,
    *,
    asset_id: str,
    kind: str,
    prompt: str | None = None,
    image_ref: str | None = None,
    image_sha256: str | None = None,
    bundle_ref: str | None = None,
    seed: int,
    variant: int = 0,
    generator: str,
    init: str,
    params: dict[str, Any] | None = None,
    tags: list[str] | None = None,
    mesh_ref: str | None = None,
    mesh_sha256: str | None = None,
) -> tuple[Asset, bool]:
    """Insert the request ``asset_id`` unless it exists (never updates); returns
    ``(asset, created)``.

    Idempotent on the identity hash: an existing asset is returned unchanged (whatever its
    state), so running a manifest twice creates nothing new. Race-safe: concurrent callers issue
    ``INSERT .. ON CONFLICT DO NOTHING`` and exactly one of them sees ``created=True``.
    """
    values = _asset_row(
        utcnow(), asset_id=asset_id, kind=kind, prompt=prompt, image_ref=image_ref,
        image_sha256=image_sha256, bundle_ref=bundle_ref, seed=seed, variant=variant,
        generator=generator, init=init, params=params, tags=tags, mesh_ref=mesh_ref,
        mesh_sha256=mesh_sha256,
    )
    statement = (
        dialect_insert(session, Asset.__table__)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["id"])
    )
    # RETURNING rather than rowcount: the driver may not report rowcount for ON CONFLICT.
    created = session.execute(statement.returning(Asset.id)).first() is not None
    asset = session.get(Asset, asset_id, populate_existing=True)
    assert asset is not None  # inserted above or already present
    return asset, created


def _asset_row(
    now: datetime,
    *,
    asset_id: str,
    kind: str,
    prompt: str | None = None,
    image_ref: str | None = None,
    image_sha256: str | None = None,
    bundle_ref: str | None = None,
    seed: int,
    variant: int = 0,
    generator: str,
    init: str,
    params: dict[str, Any] | None = None,
    tags: list[str] | None = None,
    mesh_ref: str | None = None,
    mesh_sha256: str | None = None,
) -> dict[str, Any]:
    """The column values of a new pending asset."""
    return {
        "id": asset_id,
        "kind": kind,
        "prompt": prompt,
        "image_ref": image_ref,
        "image_sha256": image_sha256,
        "bundle_ref": bundle_ref,
        "mesh_ref": mesh_ref,
        "mesh_sha256": mesh_sha256,
        "seed": int(seed),
        "variant": int(variant),
        "generator": generator,
        "init": init,
        "params": dict(params or {}),
        "tags": list(tags or []),
        "state": "pending",
        "attempts": 0,
        "output_keys": {},
        "created_at": now,
        "updated_at": now,
    }


def insert_assets_if_new(session: Session, requests: list[dict[str, Any]]) -> None:
    """:func:`insert_asset_if_new` for many requests at once (each a dict of its keyword arguments).

    Existing assets are left unchanged; the rows go in as one batched
    ``INSERT .. ON CONFLICT DO NOTHING`` (executemany), so it is race-safe like
    :func:`insert_asset_if_new` and costs one round trip per few hundred rows instead of two
    per row.
    """
    if not requests:
        return
    now = utcnow()
    rows = [_asset_row(now, **request) for request in requests]
    statement = dialect_insert(session, Asset.__table__).on_conflict_do_nothing(
        index_elements=["id"]
    )
    session.execute(statement, rows)
    # The rows went in through Core: reload any of these assets already in the identity map.
    ids = {row["id"] for row in rows}
    for obj in list(session.identity_map.values()):
        if isinstance(obj, Asset) and obj.id in ids:
            session.expire(obj)


def get_asset(session: Session, asset_id: str) -> Asset | None:
    """The asset with exactly this id, or None."""
    return session.get(Asset, asset_id)


def assets_by_id(session: Session, asset_ids: Collection[str]) -> dict[str, Asset]:
    """The assets among ``asset_ids`` that exist, by id."""
    found: dict[str, Asset] = {}
    for chunk in _chunks(asset_ids):
        query = sa.select(Asset).where(Asset.id.in_(chunk))
        found.update((asset.id, asset) for asset in session.scalars(query))
    return found


def asset_states(session: Session, asset_ids: Collection[str]) -> dict[str, str]:
    """The state of each asset among ``asset_ids`` that exists, by id (no ORM objects loaded)."""
    states: dict[str, str] = {}
    for chunk in _chunks(asset_ids):
        query = sa.select(Asset.id, Asset.state).where(Asset.id.in_(chunk))
        states.update((asset_id, state) for asset_id, state in session.execute(query))
    return states


_ID_LIST = {
    "sqlite": "IN (SELECT value FROM json_each(:{name}))",
    "postgresql": "= ANY(:{name})",
}
"""``IN`` a list bound as one parameter (a JSON array on SQLite, an array on PostgreSQL); both
probe the column's index per value, and any number of values fits."""


def _list_value(session: Session, values: Collection[str]) -> object:
    """``values`` as the bound value of an :data:`_ID_LIST` parameter."""
    values = list(dict.fromkeys(values))
    return values if session.get_bind().dialect.name == "postgresql" else json.dumps(values)


@functools.cache
def _page_read(dialect: str, table: sa.Table, sql: str, columns: tuple[str, ...]) -> sa.TextClause:
    """``sql`` (with ``{ids}``/``{names}`` where an :data:`_ID_LIST` goes) as a text statement
    typed by ``columns`` of ``table``, made once per dialect.

    For the reads of every search page: a ``select()`` with an ``IN`` list is built, keyed for
    the compiled cache, and its list rendered and coerced value by value on every execution
    (about 1 ms of CPU for the three reads of a 20-card page on SQLite); this is keyed and bound
    as it is.
    """
    text = sql.format(ids=_ID_LIST[dialect].format(name="ids"),
                      names=_ID_LIST[dialect].format(name="names"))
    return sa.text(text).columns(*(table.c[name] for name in columns))


def _page_rows(session: Session, table: sa.Table, sql: str, columns: tuple[str, ...],
               **lists: Collection[str]) -> sa.Result:
    """The rows of :func:`_page_read` with each list bound as one parameter."""
    statement = _page_read(session.get_bind().dialect.name, table, sql, columns)
    return session.execute(  # the session's: pending ORM changes are flushed first
        statement, {name: _list_value(session, values) for name, values in lists.items()}
    )


@functools.cache
def _hit_details_read(dialect: str) -> sa.TextClause:
    index, assets = PromptIndex.__table__.c, Asset.__table__.c
    return sa.text(
        "SELECT p.asset_id, p.text, a.state, a.output_keys, p.tags FROM prompt_index p "
        "JOIN assets a ON a.id = p.asset_id WHERE p.asset_id "
        + _ID_LIST[dialect].format(name="ids")
    ).columns(index.asset_id, index.text, assets.state, assets.output_keys, index.tags)


def search_hit_details(session: Session, asset_ids: Collection[str]) -> list[sa.Row]:
    """``(asset_id, text, state, output_keys, tags)`` of those of ``asset_ids`` that are indexed:
    what a search shows and filters of its hits, read as :func:`asset_cards` reads a page."""
    if not asset_ids:
        return []
    statement = _hit_details_read(session.get_bind().dialect.name)
    return session.execute(statement, {"ids": _list_value(session, asset_ids)}).all()


def _chunks(ids: Collection[str]) -> list[list[str]]:
    """``ids`` in lists short enough for one ``IN (...)`` on every backend."""
    ordered = list(dict.fromkeys(ids))
    return [ordered[i : i + IN_CLAUSE_SIZE] for i in range(0, len(ordered), IN_CLAUSE_SIZE)]


def resolve_asset_id(session: Session, prefix: str) -> str:
    """The full id of the one asset whose id starts with ``prefix``.

    Raises :class:`UnknownAsset` when none matches and :class:`AmbiguousAssetId` when several do.
    """
    prefix = prefix.strip()
    if not prefix:
        raise UnknownAsset("empty asset id")
    if session.get(Asset, prefix) is not None:
        return prefix
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    matches = session.scalars(
        sa.select(Asset.id).where(Asset.id.like(escaped + "%", escape="\\")).limit(6)
    ).all()
    if not matches:
        raise UnknownAsset(f"no asset with id {prefix!r}")
    if len(matches) > 1:
        shown = ", ".join(m[:16] for m in matches[:5])
        raise AmbiguousAssetId(f"asset id prefix {prefix!r} matches several assets: {shown} ...")
    return matches[0]


# --- batches ----------------------------------------------------------------------------------


def create_batch(
    session: Session,
    manifest_path: str,
    manifest_sha256: str | None = None,
    *,
    batch_id: str | None = None,
) -> Batch:
    """Record a new running batch (one manifest run); its id is a fresh uuid hex unless given."""
    batch = Batch(manifest_path=str(manifest_path), manifest_sha256=manifest_sha256)
    if batch_id is not None:
        batch.id = batch_id
    session.add(batch)
    session.flush()
    return batch


def add_batch_item(
    session: Session,
    batch_id: str,
    line: int,
    item_id: str | None,
    asset_id: str | None,
    status: str,
    reason: str | None = None,
    raw: str | None = None,
) -> BatchItem:
    """Record one manifest row of a batch: ``accepted`` with its asset, or ``rejected``.

    ``line`` is the 1-based line (or row) number in the manifest; a rejected row has no asset and
    a ``reason`` saying what is wrong with it.
    """
    if status == "accepted" and asset_id is None:
        raise ValueError("an accepted batch item needs an asset_id")
    if status == "rejected" and not reason:
        raise ValueError("a rejected batch item needs a reason")
    item = BatchItem(
        batch_id=batch_id,
        line=int(line),
        item_id=item_id,
        asset_id=asset_id,
        status=status,
        reason=reason,
        raw=raw,
    )
    session.add(item)
    session.flush()
    return item


def add_batch_items(session: Session, batch_id: str, items: list[dict[str, Any]]) -> None:
    """:func:`add_batch_item` for many rows at once (dicts with ``line``, ``item_id``,
    ``asset_id``, ``status``, ``reason``, ``raw``, ``reference``), as one bulk INSERT."""
    rows = []
    for item in items:
        if item["status"] == "accepted" and item.get("asset_id") is None:
            raise ValueError("an accepted batch item needs an asset_id")
        if item["status"] == "rejected" and not item.get("reason"):
            raise ValueError("a rejected batch item needs a reason")
        rows.append({
            "batch_id": batch_id,
            "line": int(item["line"]),
            "item_id": item.get("item_id"),
            "asset_id": item.get("asset_id"),
            "status": item["status"],
            "reason": item.get("reason"),
            "raw": item.get("raw"),
            "reference": item.get("reference"),
        })
    if rows:
        session.execute(sa.insert(BatchItem), rows)


def finish_batch(
    session: Session, batch_id: str, summary: dict[str, Any], status: str = "finished"
) -> Batch:
    """Mark a batch ``finished`` (or ``failed``) now, storing its summary (JSON-serialisable)."""
    batch = session.get(Batch, batch_id)
    if batch is None:
        raise LookupError(f"no batch with id {batch_id!r}")
    batch.status = status
    batch.summary = dict(summary)
    batch.finished_at = utcnow()
    session.flush()
    return batch


def batch_asset_states(session: Session, batch_id: str) -> dict[str, str]:
    """The state of every asset a batch requested, by asset id (each asset once)."""
    return dict(
        session.execute(
            sa.select(Asset.id, Asset.state).where(Asset.id.in_(_batch_asset_ids(batch_id)))
        ).all()
    )


def batch_counts(session: Session, batch_id: str) -> dict[str, int]:
    """How a batch's rows ended: its distinct assets per state (every state, zeros included)
    plus ``rejected`` manifest rows."""
    counts = dict.fromkeys(ASSET_STATES, 0)
    for state in batch_asset_states(session, batch_id).values():
        counts[state] += 1
    counts["rejected"] = session.scalar(
        sa.select(sa.func.count())
        .select_from(BatchItem)
        .where(BatchItem.batch_id == batch_id, BatchItem.status == "rejected")
    ) or 0
    return counts


# --- claims and leases ------------------------------------------------------------------------


def claim_asset(
    session: Session,
    asset_id: str,
    owner: str,
    lease_seconds: float,
    now: datetime | None = None,
) -> bool:
    """Try to take the asset for ``owner``; True when this caller won it.

    One atomic conditional UPDATE: it succeeds when the asset is ``pending``, or ``running``
    with an expired lease (a crashed worker); it sets ``running``, the owner, a lease ending
    ``lease_seconds`` after ``now`` (UTC, default the current time), and counts an attempt. Of
    two concurrent claimers exactly one wins, because the second UPDATE re-checks the condition
    after the first one's write.
    """
    now = _now(now)
    statement = (
        sa.update(Asset)
        .where(
            Asset.id == asset_id,
            sa.or_(
                Asset.state == "pending",
                sa.and_(Asset.state == "running", Asset.lease_expires_at < now),
            ),
        )
        .values(
            state="running",
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempts=Asset.attempts + 1,
            updated_at=now,
            finished_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    won = session.execute(statement.returning(Asset.id)).first() is not None
    if won:
        _refresh(session, asset_id)
    return won


def renew_lease(
    session: Session,
    asset_id: str,
    owner: str,
    lease_seconds: float,
    now: datetime | None = None,
    *,
    epoch: int | None = None,
) -> bool:
    """Extend the lease of a running asset held by ``owner``; False if it is no longer theirs.

    ``epoch`` (the asset's ``attempts`` when ``owner`` claimed it) fences a stale holder: two
    claims by one process share an owner name but never an epoch. The conditional UPDATE also
    serves as the fence of a stage's records: it locks the asset row (SQLite: the database)
    until the caller commits, so no claim can slip in between the check and the records.
    """
    now = _now(now)
    statement = (
        sa.update(Asset)
        .where(_held_by(owner, epoch), Asset.id == asset_id)
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
        .execution_options(synchronize_session=False)
    )
    renewed = session.execute(statement.returning(Asset.id)).first() is not None
    if renewed:
        _refresh(session, asset_id)
    return renewed


def release_asset(
    session: Session,
    asset_id: str,
    owner: str,
    state: str,
    error_class: str | None = None,
    error_message: str | None = None,
    *,
    epoch: int | None = None,
) -> bool:
    """End ``owner``'s claim, leaving the asset in ``state`` (succeeded, failed, needs_review
    or pending).

    Only the current owner (and claim ``epoch``, when given) of a running asset may release it
    (False otherwise: the lease ran out and someone else took it). A terminal state stamps
    ``finished_at`` and closes the asset's stage runs still ``running`` as ``abandoned``; the
    error fields are stored as given (None clears them).
    """
    if state not in (*TERMINAL_STATES, "pending"):
        raise ValueError(f"cannot release an asset to state {state!r}")
    now = utcnow()
    statement = (
        sa.update(Asset)
        .where(_held_by(owner, epoch), Asset.id == asset_id)
        .values(
            state=state,
            lease_owner=None,
            lease_expires_at=None,
            last_error_class=error_class,
            last_error_message=error_message,
            updated_at=now,
            finished_at=now if state in TERMINAL_STATES else None,
        )
        .execution_options(synchronize_session=False)
    )
    released = session.execute(statement.returning(Asset.id)).first() is not None
    if released:
        if state in TERMINAL_STATES:
            close_running_stages(session, asset_id, "abandoned", "the asset finished without it")
        _refresh(session, asset_id)
    return released


def _held_by(owner: str, epoch: int | None) -> sa.ColumnElement[bool]:
    """The condition "running, and claimed by ``owner`` (in claim ``epoch``, when given)"."""
    held = sa.and_(Asset.state == "running", Asset.lease_owner == owner)
    return held if epoch is None else sa.and_(held, Asset.attempts == epoch)


def lease_epoch(session: Session, asset_id: str) -> int:
    """The asset's claim counter (``attempts``): read right after a claim, it names that claim."""
    epoch = session.scalar(sa.select(Asset.attempts).where(Asset.id == asset_id))
    if epoch is None:
        raise UnknownAsset(f"no asset with id {asset_id!r}")
    return epoch


def reset_for_retry(
    session: Session,
    asset_id: str,
    new_seed: int | None = None,
    params: dict[str, Any] | None = None,
) -> bool:
    """Put a failed (or ``needs_review``) asset back to ``pending``; True if it was in one of
    :data:`RETRYABLE_STATES`.

    The stage history is kept, so a retry resumes at the first stage not done. With
    ``new_seed`` the asset's seed changes and the old seed is appended to
    ``previous_seeds``: parameter hashes computed from the asset then differ, so every stage
    re-runs. With ``params`` the asset's manifest parameters are replaced (checked by the
    caller); stages whose parameters changed re-run.
    """
    asset = session.get(Asset, asset_id, with_for_update=True, populate_existing=True)
    if asset is None:
        raise UnknownAsset(f"no asset with id {asset_id!r}")
    if asset.state not in RETRYABLE_STATES:
        return False
    asset.state = "pending"
    asset.lease_owner = None
    asset.lease_expires_at = None
    asset.last_error_class = None
    asset.last_error_message = None
    asset.finished_at = None
    if new_seed is not None and int(new_seed) != asset.seed:
        asset.previous_seeds = [*(asset.previous_seeds or []), asset.seed]
        asset.seed = int(new_seed)
    if params is not None:
        asset.params = dict(params)
    session.flush()
    return True


def list_expired_leases(
    session: Session, *, batch_id: str | None = None, now: datetime | None = None
) -> list[Asset]:
    """Running assets whose lease ran out before ``now`` (their worker is presumed lost)."""
    query = sa.select(Asset).where(Asset.state == "running", Asset.lease_expires_at < _now(now))
    if batch_id is not None:
        query = query.where(Asset.id.in_(_batch_asset_ids(batch_id)))
    return list(session.scalars(query.order_by(Asset.lease_expires_at, Asset.id)))


def _refresh(session: Session, asset_id: str) -> None:
    """Reload an asset already in the identity map after a Core UPDATE changed its row."""
    asset = session.identity_map.get(sa.inspect(Asset).identity_key_from_primary_key((asset_id,)))
    if asset is not None:
        session.refresh(asset)


# --- stage records ----------------------------------------------------------------------------


def set_current_stage(session: Session, asset_id: str, stage: str | None) -> None:
    """Record the stage the asset is at (None when no stage is running)."""
    asset = session.get(Asset, asset_id)
    if asset is None:
        raise UnknownAsset(f"no asset with id {asset_id!r}")
    asset.current_stage = stage
    session.flush()


def _next_attempt(session: Session, asset_id: str, stage: str) -> int:
    latest = session.scalar(
        sa.select(sa.func.max(StageRun.attempt)).where(
            StageRun.asset_id == asset_id, StageRun.stage == stage
        )
    )
    return (latest or 0) + 1


def record_stage_start(
    session: Session,
    asset_id: str,
    stage: str,
    params_hash: str | None,
    host: str | None = None,
    device: str | None = None,
    flow_run_id: str | None = None,
) -> StageRun:
    """Open a ``running`` stage run (attempt = previous attempts of this stage + 1).

    Also sets the asset's ``current_stage`` to ``stage``.
    """
    run = StageRun(
        asset_id=asset_id,
        stage=stage,
        attempt=_next_attempt(session, asset_id, stage),
        status="running",
        params_hash=params_hash,
        started_at=utcnow(),
        host=host,
        device=device,
        flow_run_id=flow_run_id,
        output_keys={},
    )
    session.add(run)
    session.flush()
    set_current_stage(session, asset_id, stage)
    return run


def _finish_run(session: Session, run_id: int, status: str) -> StageRun:
    run = session.get(StageRun, run_id)
    if run is None:
        raise LookupError(f"no stage run with id {run_id!r}")
    now = utcnow()
    run.status = status
    run.finished_at = now
    run.duration_s = (now - run.started_at).total_seconds()
    return run


def record_stage_success(
    session: Session,
    run_id: int,
    output_keys: dict[str, str],
    peak_memory_mb: float | None = None,
) -> StageRun:
    """Close a stage run as ``succeeded`` with its outputs (artefact name -> object key).

    The keys are merged into the asset's ``output_keys``; the duration is measured from the
    start record, in seconds.
    """
    run = _finish_run(session, run_id, "succeeded")
    run.output_keys = dict(output_keys)
    run.peak_memory_mb = peak_memory_mb
    merge_output_keys(session, run.asset_id, output_keys)
    return run


def merge_output_keys(session: Session, asset_id: str, output_keys: dict[str, str]) -> None:
    """Add ``output_keys`` (artefact name -> object key) to the asset's, replacing same names."""
    asset = session.get(Asset, asset_id)
    if asset is None:
        raise UnknownAsset(f"no asset with id {asset_id!r}")
    asset.output_keys = {**asset.output_keys, **output_keys}  # a new dict, so the ORM sees it
    session.flush()


def recorded_output_keys(session: Session, asset_id: str) -> set[str]:
    """Every object key the database records for an asset (its own and any stage run's)."""
    asset = session.get(Asset, asset_id)
    keys = set((asset.output_keys or {}).values()) if asset is not None else set()
    for run_keys in session.scalars(
        sa.select(StageRun.output_keys).where(StageRun.asset_id == asset_id)
    ):
        keys.update((run_keys or {}).values())
    return keys


def record_stage_failure(
    session: Session,
    run_id: int,
    error_class: str,
    error_message: str,
    peak_memory_mb: float | None = None,
) -> StageRun:
    """Close a stage run as ``failed``; the error is also copied to the asset's last error."""
    run = _finish_run(session, run_id, "failed")
    run.error_class = error_class
    run.error_message = error_message
    run.peak_memory_mb = peak_memory_mb
    asset = session.get(Asset, run.asset_id)
    assert asset is not None
    asset.last_error_class = error_class
    asset.last_error_message = error_message
    session.flush()
    return run


def abandon_running_stages(
    session: Session, asset_id: str, reason: str = "the worker running it was lost"
) -> int:
    """Close the asset's stage runs still marked ``running`` as failed (``retryable:LostWorker``).

    Called by the new owner right after a claim: a run left ``running`` then belongs to a worker
    whose lease expired. Returns how many runs were closed.
    """
    return close_running_stages(session, asset_id, "failed", reason, "retryable:LostWorker")


def close_running_stages(
    session: Session,
    asset_id: str,
    status: str,
    reason: str,
    error_class: str | None = None,
) -> int:
    """Close the asset's stage runs still ``running`` with ``status`` and ``reason``; returns how
    many were closed."""
    runs = session.scalars(
        sa.select(StageRun).where(StageRun.asset_id == asset_id, StageRun.status == "running")
    ).all()
    for run in runs:
        _finish_run(session, run.id, status)
        run.error_class = error_class
        run.error_message = reason
    session.flush()
    return len(runs)


def completed_stage(
    session: Session, asset_id: str, stage: str, params_hash: str | None
) -> StageRun | None:
    """The latest ``succeeded`` run of ``stage`` with this parameter hash, or None (run it)."""
    return session.scalars(
        sa.select(StageRun)
        .where(
            StageRun.asset_id == asset_id,
            StageRun.stage == stage,
            StageRun.status == "succeeded",
            StageRun.params_hash == params_hash
            if params_hash is not None
            else StageRun.params_hash.is_(None),
        )
        .order_by(StageRun.attempt.desc())
        .limit(1)
    ).first()


def succeeded_stage_runs(session: Session, asset_ids: Collection[str]) -> list[StageRun]:
    """Every ``succeeded`` stage run of these assets (for per-stage timings)."""
    runs: list[StageRun] = []
    for chunk in _chunks(asset_ids):
        runs.extend(
            session.scalars(
                sa.select(StageRun).where(
                    StageRun.asset_id.in_(chunk), StageRun.status == "succeeded"
                )
            )
        )
    return runs


def stage_runs(session: Session, asset_id: str) -> list[StageRun]:
    """All stage runs of an asset in the order they started."""
    return list(
        session.scalars(
            sa.select(StageRun).where(StageRun.asset_id == asset_id).order_by(StageRun.id)
        )
    )


# --- metrics ----------------------------------------------------------------------------------


def set_metrics(session: Session, asset_id: str, values: dict[str, float]) -> None:
    """Insert or overwrite the named metrics of an asset (others are left as they are)."""
    if not values:
        return
    rows = [{"asset_id": asset_id, "name": k, "value": float(v)} for k, v in values.items()]
    statement = dialect_insert(session, Metric.__table__).values(rows)
    statement = statement.on_conflict_do_update(
        index_elements=["asset_id", "name"], set_={"value": statement.excluded.value}
    )
    session.execute(statement)
    # The Core upsert bypassed the identity map: expire what it may have made stale.
    for obj in list(session.identity_map.values()):
        if isinstance(obj, Metric) and obj.asset_id == asset_id:
            session.expire(obj)
        elif isinstance(obj, Asset) and obj.id == asset_id:
            session.expire(obj, ["metrics"])


def get_metrics(session: Session, asset_id: str) -> dict[str, float]:
    """The metrics of an asset, by name."""
    rows = session.execute(
        sa.select(Metric.name, Metric.value)
        .where(Metric.asset_id == asset_id)
        .order_by(Metric.name)
    )
    return {name: value for name, value in rows}


# --- listings and reports ---------------------------------------------------------------------


def _batch_asset_ids(batch_id: str) -> sa.Select:
    return sa.select(BatchItem.asset_id).where(
        BatchItem.batch_id == batch_id, BatchItem.asset_id.is_not(None)
    )


def list_assets(
    session: Session,
    *,
    state: str | None = None,
    batch_id: str | None = None,
    stage: str | None = None,
    error_class: str | None = None,
    older_than: datetime | timedelta | None = None,
    limit: int | None = None,
) -> list[Asset]:
    """Assets matching every given filter, oldest first.

    ``stage`` matches the asset's current (for a failed asset: failing) stage; ``error_class``
    its last error class; ``older_than`` keeps assets last updated before a time (or before
    that long ago, for a timedelta).
    """
    if state is not None and state not in ASSET_STATES:
        raise ValueError(f"unknown asset state {state!r}; expected one of {ASSET_STATES}")
    query = sa.select(Asset)
    if state is not None:
        query = query.where(Asset.state == state)
    if batch_id is not None:
        query = query.where(Asset.id.in_(_batch_asset_ids(batch_id)))
    if stage is not None:
        query = query.where(Asset.current_stage == stage)
    if error_class is not None:
        query = query.where(Asset.last_error_class == error_class)
    if older_than is not None:
        cutoff = utcnow() - older_than if isinstance(older_than, timedelta) else older_than
        query = query.where(Asset.updated_at < cutoff)
    query = query.order_by(Asset.created_at, Asset.id)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def counts_by_state(session: Session) -> dict[str, int]:
    """Number of assets in each state (every state present, zeros included)."""
    counts = dict.fromkeys(ASSET_STATES, 0)
    rows = session.execute(sa.select(Asset.state, sa.func.count()).group_by(Asset.state))
    for state, count in rows:
        counts[state] = count
    return counts


def counts_by_stage(session: Session) -> dict[str, dict[str, int]]:
    """For each stage, how many assets have their latest attempt of it in each status.

    Returns ``{stage: {status: count}}`` over stages that have any run.
    """
    latest = (
        sa.select(
            StageRun.asset_id,
            StageRun.stage,
            sa.func.max(StageRun.attempt).label("attempt"),
        )
        .group_by(StageRun.asset_id, StageRun.stage)
        .subquery()
    )
    rows = session.execute(
        sa.select(StageRun.stage, StageRun.status, sa.func.count())
        .join(
            latest,
            sa.and_(
                StageRun.asset_id == latest.c.asset_id,
                StageRun.stage == latest.c.stage,
                StageRun.attempt == latest.c.attempt,
            ),
        )
        .group_by(StageRun.stage, StageRun.status)
    )
    counts: dict[str, dict[str, int]] = {}
    for stage, status, count in rows:
        counts.setdefault(stage, {})[status] = count
    return counts


@dataclass
class AssetDetail:
    """Everything recorded about one asset, for ``foundry3d show``."""

    asset: Asset
    """The asset row."""
    stage_runs: list[StageRun] = field(default_factory=list)
    """Every stage attempt, in the order they started."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Metric name -> value."""
    batch_ids: list[str] = field(default_factory=list)
    """Batches that requested this asset."""


def get_asset_detail(session: Session, asset_id: str) -> AssetDetail | None:
    """The asset with its stage runs, metrics and batches, or None if the id is unknown."""
    asset = session.get(Asset, asset_id)
    if asset is None:
        return None
    batch_ids = session.scalars(
        sa.select(BatchItem.batch_id).where(BatchItem.asset_id == asset_id).distinct()
    ).all()
    return AssetDetail(
        asset=asset,
        stage_runs=stage_runs(session, asset_id),
        metrics=get_metrics(session, asset_id),
        batch_ids=sorted(batch_ids),
    )


# === HTTP API: tokens, jobs, asset listings (appended by the api package's work) ==============


def create_api_token(session: Session, *, name: str, scope: str, token_sha256: str) -> ApiToken:
    """Record a token by the sha256 of its secret; raises ValueError if the name is taken."""
    if scope not in API_TOKEN_SCOPES:
        raise ValueError(f"unknown token scope {scope!r}; expected one of {API_TOKEN_SCOPES}")
    if session.scalar(sa.select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise ValueError(f"a token named {name!r} already exists")
    token = ApiToken(name=name, scope=scope, token_sha256=token_sha256)
    session.add(token)
    session.flush()
    return token


def find_api_token(session: Session, token_sha256: str) -> ApiToken | None:
    """The token whose secret hashes to ``token_sha256`` (revoked ones included), or None."""
    return session.scalar(sa.select(ApiToken).where(ApiToken.token_sha256 == token_sha256))


def api_token_grant(session: Session | Connection, token_sha256: str) -> sa.Row | None:
    """``(name, scope, revoked_at)`` of the token whose secret hashes to ``token_sha256``
    (revoked ones included), or None; a Core read, for the check on every request."""
    return session.execute(
        sa.select(ApiToken.name, ApiToken.scope, ApiToken.revoked_at).where(
            ApiToken.token_sha256 == token_sha256
        )
    ).first()


def any_api_token(session: Session | Connection) -> bool:
    """Whether any token was ever created; one index probe, however many there are."""
    return bool(session.scalar(sa.select(sa.exists().select_from(ApiToken))))


def revoke_api_token(session: Session, name: str) -> bool:
    """Revoke the token named ``name``; True if it was active, False if already revoked.

    Raises LookupError for an unknown name."""
    token = session.scalar(sa.select(ApiToken).where(ApiToken.name == name))
    if token is None:
        raise LookupError(f"no token named {name!r}")
    if token.revoked_at is not None:
        return False
    token.revoked_at = utcnow()
    session.flush()
    return True


def list_api_tokens(session: Session) -> list[ApiToken]:
    """Every token, oldest first."""
    return list(session.scalars(sa.select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)))


def api_token_counts(session: Session) -> tuple[int, int]:
    """``(tokens ever created, tokens still active)``."""
    total, active = session.execute(
        sa.select(sa.func.count(), sa.func.count(sa.case((ApiToken.revoked_at.is_(None), 1))))
    ).one()
    return int(total), int(active or 0)


def get_batch(session: Session, batch_id: str) -> Batch | None:
    """The batch with id ``batch_id``, or None."""
    return session.get(Batch, batch_id)


def batch_assets(session: Session, batch_id: str) -> list[Asset]:
    """The assets a batch accepted, in manifest line order (each once)."""
    rows = session.execute(
        sa.select(BatchItem.asset_id, sa.func.min(BatchItem.line))
        .where(BatchItem.batch_id == batch_id, BatchItem.asset_id.is_not(None))
        .group_by(BatchItem.asset_id)
    ).all()
    order = {asset_id: line for asset_id, line in rows}
    assets = list(session.scalars(sa.select(Asset).where(Asset.id.in_(list(order))))) if order \
        else []
    return sorted(assets, key=lambda a: (order[a.id], a.id))


def batch_rejections(session: Session, batch_id: str) -> list[BatchItem]:
    """The rejected rows of a batch, by line."""
    return list(session.scalars(
        sa.select(BatchItem)
        .where(BatchItem.batch_id == batch_id, BatchItem.status == "rejected")
        .order_by(BatchItem.line)
    ))


def cancel_assets(session: Session, asset_ids: list[str], message: str) -> list[str]:
    """Mark the pending and running assets among ``asset_ids`` failed with error class
    ``Cancelled``; returns the ids changed.

    A running asset loses its lease and its open stage runs are closed as ``abandoned``: its
    worker notices at its next lease renewal (a third of the lease at most), records nothing
    more, and the next stage never starts. ``retry`` resumes a
    cancelled asset like any failed one.
    """
    if not asset_ids:
        return []
    now = utcnow()
    changed = session.scalars(
        sa.update(Asset)
        .where(Asset.id.in_(asset_ids), Asset.state.in_(("pending", "running")))
        .values(state="failed", lease_owner=None, lease_expires_at=None,
                last_error_class="Cancelled", last_error_message=message,
                updated_at=now, finished_at=now)
        .returning(Asset.id)
        .execution_options(synchronize_session=False)
    ).all()
    for asset_id in changed:
        close_running_stages(session, asset_id, "abandoned", message)
        _refresh(session, asset_id)
    return list(changed)


def page_assets(
    session: Session,
    *,
    state: str | None = None,
    tag: str | None = None,
    batch_id: str | None = None,
    after: tuple[datetime, str] | None = None,
    limit: int = 50,
) -> list[Asset]:
    """Newest assets first, ``limit`` of them, after the keyset ``(created_at, id)`` cursor.

    ``tag`` matches an element of the asset's tags list (JSON on both dialects)."""
    query = sa.select(Asset)
    if state is not None:
        query = query.where(Asset.state == state)
    if batch_id is not None:
        query = query.where(Asset.id.in_(_batch_asset_ids(batch_id)))
    if tag is not None:
        if session.get_bind().dialect.name == "postgresql":
            query = query.where(
                sa.cast(Asset.tags, postgresql.JSONB).contains(sa.cast([tag], postgresql.JSONB))
            )
        else:
            query = query.where(sa.text(
                "EXISTS (SELECT 1 FROM json_each(assets.tags) WHERE json_each.value = :tag)"
            ).bindparams(tag=tag))
    if after is not None:
        created, asset_id = after
        query = query.where(sa.or_(
            Asset.created_at < created,
            sa.and_(Asset.created_at == created, Asset.id < asset_id),
        ))
    return list(session.scalars(query.order_by(Asset.created_at.desc(), Asset.id.desc())
                                .limit(limit)))


def override_asset_params(session: Session, asset_id: str, params: dict[str, Any]) -> None:
    """Merge ``params`` into a (failed, about to be retried) asset's stage parameters.

    The stage parameter hashes change with them, so the stages they affect run again; the
    asset keeps its id (the id names the original request)."""
    asset = session.get(Asset, asset_id, with_for_update=True, populate_existing=True)
    if asset is None:
        raise UnknownAsset(f"no asset with id {asset_id!r}")
    asset.params = {**asset.params, **params}
    session.flush()


def stage_runs_of(session: Session, asset_ids: list[str]) -> dict[str, list[StageRun]]:
    """Every stage attempt of each of ``asset_ids`` (in start order), in one query."""
    runs: dict[str, list[StageRun]] = {asset_id: [] for asset_id in asset_ids}
    if asset_ids:
        for run in session.scalars(sa.select(StageRun).where(StageRun.asset_id.in_(asset_ids))
                                   .order_by(StageRun.id)):
            runs[run.asset_id].append(run)
    return runs


# --- finding, deleting and repairing assets (show, assets delete/purge, verify) ----------------


@dataclass(frozen=True)
class ManifestItem:
    """One accepted manifest row that names an asset."""

    asset_id: str
    """The asset the row requested."""
    batch_id: str
    """The batch (manifest run) the row belongs to."""
    line: int
    """1-based line of the row in its manifest."""
    reference: str | None
    """The row's image or bundle reference as written in the manifest, or None for a prompt."""


def find_manifest_items(
    session: Session, item_id: str, batch_id: str | None = None
) -> list[ManifestItem]:
    """Accepted manifest rows whose ``id`` is ``item_id`` (in ``batch_id`` only, if given),
    one per distinct (asset, batch), newest batch first."""
    query = (
        sa.select(BatchItem.asset_id, BatchItem.batch_id, BatchItem.line, BatchItem.reference)
        .join(Batch, Batch.id == BatchItem.batch_id)
        .where(BatchItem.item_id == item_id, BatchItem.asset_id.is_not(None))
        .order_by(Batch.created_at.desc(), BatchItem.line)
    )
    if batch_id is not None:
        query = query.where(BatchItem.batch_id.like(_escaped(batch_id) + "%", escape="\\"))
    seen: dict[tuple[str, str], ManifestItem] = {}
    for row in session.execute(query):
        seen.setdefault((row.asset_id, row.batch_id), ManifestItem(*row))
    return list(seen.values())


def _escaped(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def asset_references(session: Session, asset_ids: Collection[str]) -> dict[str, list[str]]:
    """The manifest references (image or bundle file names/URLs) each asset was requested with,
    by asset id, in first-seen order; assets requested by prompt only are absent."""
    found: dict[str, list[str]] = {}
    if not asset_ids:
        return found
    rows = _page_rows(session, BatchItem.__table__, "SELECT asset_id, reference FROM batch_items "
                      "WHERE asset_id {ids} AND reference IS NOT NULL ORDER BY id",
                      ("asset_id", "reference"), ids=asset_ids)
    for asset_id, reference in rows:
        refs = found.setdefault(asset_id, [])
        if reference not in refs:
            refs.append(reference)
    return found


CARD_COLUMNS = ("id", "prompt", "kind", "state", "tags", "current_stage", "created_at",
                "output_keys")
"""The columns of ``assets`` that a gallery card shows."""


def asset_cards(session: Session, asset_ids: Collection[str]) -> dict[str, sa.Row]:
    """Asset id -> row of :data:`CARD_COLUMNS` of those of ``asset_ids`` that exist.

    A typed read of those columns alone: loading ORM objects (every column, the identity map)
    for a page of search hits costs several times the query itself."""
    if not asset_ids:
        return {}
    rows = _page_rows(session, Asset.__table__,
                      f"SELECT {', '.join(CARD_COLUMNS)} FROM assets WHERE id {{ids}}",
                      CARD_COLUMNS, ids=asset_ids)
    return {row.id: row for row in rows}


def metrics_of(session: Session, asset_ids: Collection[str], names: Collection[str]) -> dict:
    """``{asset_id: {name: value}}`` of the named metrics of these assets (absent ones left out)."""
    found: dict[str, dict[str, float]] = {}
    if not asset_ids or not names:
        return found
    rows = _page_rows(session, Metric.__table__, "SELECT asset_id, name, value FROM metrics "
                      "WHERE asset_id {ids} AND name {names}", ("asset_id", "name", "value"),
                      ids=asset_ids, names=names)
    for asset_id, name, value in rows:
        found.setdefault(asset_id, {})[name] = value
    return found


def record_object_digests(session: Session, asset_id: str, digests: dict[str, dict]) -> None:
    """Merge ``{object key: {"size": bytes, "sha256": hex}}`` into the asset's recorded digests
    (written right after the objects, so ``verify`` can detect corruption later)."""
    if not digests:
        return
    asset = session.get(Asset, asset_id)
    if asset is None:
        raise UnknownAsset(f"no asset with id {asset_id!r}")
    asset.object_digests = {**(asset.object_digests or {}), **digests}  # a new dict: ORM sees it
    session.flush()


def delete_assets(session: Session, asset_ids: Collection[str]) -> list[str]:
    """Delete these assets and every row about them (stage runs, metrics, search entry, manifest
    rows); returns the ids that existed. Idempotent: unknown ids are ignored.

    Dependent rows are deleted explicitly rather than through ``ON DELETE CASCADE``, which SQLite
    applies only when foreign keys are switched on for the connection.
    """
    existing = list(asset_states(session, asset_ids))
    for chunk in _chunks(existing):
        for table in (StageRun, Metric, PromptIndex, BatchItem):
            session.execute(sa.delete(table).where(table.asset_id.in_(chunk)))
        session.execute(sa.delete(Asset).where(Asset.id.in_(chunk)))
    session.flush()
    return existing


def delete_rejected_items(
    session: Session, *, batch_id: str | None = None, older_than: datetime | None = None
) -> int:
    """Delete rejected manifest rows (they have no asset and no objects); returns how many."""
    query = sa.delete(BatchItem).where(BatchItem.status == "rejected")
    if batch_id is not None:
        query = query.where(BatchItem.batch_id == batch_id)
    if older_than is not None:
        query = query.where(
            BatchItem.batch_id.in_(sa.select(Batch.id).where(Batch.created_at < older_than))
        )
    return session.execute(query).rowcount or 0


def undo_stages(
    session: Session,
    asset_id: str,
    stages: Collection[str],
    error_class: str,
    message: str,
) -> list[str]:
    """Mark the succeeded runs of ``stages`` (pipeline order) as failed with ``error_class``, so
    the pipeline runs them again, and the asset as failed at the first of them; returns the
    stages that had a succeeded run. The asset's output keys written by those runs are dropped."""
    runs = session.scalars(
        sa.select(StageRun)
        .where(
            StageRun.asset_id == asset_id,
            StageRun.stage.in_(list(stages)),
            StageRun.status == "succeeded",
        )
        .order_by(StageRun.id)
    ).all()
    asset = session.get(Asset, asset_id, populate_existing=True)
    if asset is None:
        raise UnknownAsset(f"no asset with id {asset_id!r}")
    dropped: set[str] = set()
    for run in runs:
        run.status = "failed"
        run.error_class = error_class
        run.error_message = message
        dropped.update((run.output_keys or {}).values())
    asset.output_keys = {k: v for k, v in asset.output_keys.items() if v not in dropped}
    asset.state = "failed"
    asset.current_stage = next(iter(stages), None)  # the first to re-run, in pipeline order
    asset.last_error_class = error_class
    asset.last_error_message = message
    asset.lease_owner = None
    asset.lease_expires_at = None
    session.flush()
    return list(dict.fromkeys(run.stage for run in runs))
