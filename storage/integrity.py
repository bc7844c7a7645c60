"""Whether the objects the database records are really in the store, and removing assets whole.

An object recorded with a digest (``assets.object_digests``, written right after the object
since migration 0006) is checked for existence, size and sha256; one recorded before has no
digest and is checked for existence and a non-zero size. Deleting an asset removes its objects
first (under ``assets/<id>/``; the content-addressed ``inputs/`` may be shared with other assets
and stay), then its rows; both steps are idempotent, so a delete interrupted between them is
finished by running it again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from storage import queries
from storage.objects import ObjectStore
from storage.schema import Asset
from storage.search import remove_from_index

MISSING_OBJECT = "retryable:MissingObject"
"""Error class of an asset whose recorded objects are gone: ``foundry3d retry`` re-runs it."""


def file_digest(path: str | os.PathLike) -> dict[str, int | str]:
    """``{"size": bytes, "sha256": hex}`` of a local file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(Path(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"size": Path(path).stat().st_size, "sha256": digest.hexdigest()}


def bytes_digest(data: bytes) -> dict[str, int | str]:
    """``{"size": bytes, "sha256": hex}`` of bytes in memory."""
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@dataclass(frozen=True)
class ObjectProblem:
    """One recorded object that is not as recorded."""

    key: str
    """The object key."""
    problem: str
    """``missing``, ``size`` (differs from the recorded size, or empty) or ``checksum``."""
    detail: str
    """What was expected and found, for people."""


def recorded_keys(session: Session, asset: Asset) -> list[str]:
    """Every object key recorded for ``asset`` (its own and its succeeded stage runs'), sorted."""
    keys = set((asset.output_keys or {}).values())
    for run in queries.stage_runs(session, asset.id):
        if run.status == "succeeded":
            keys.update((run.output_keys or {}).values())
    return sorted(k for k in keys if isinstance(k, str))


def check_object(store: ObjectStore, key: str, digest: dict | None) -> ObjectProblem | None:
    """The problem of one object, or None when it is as recorded (see the module docstring)."""
    if not store.exists(key):
        return ObjectProblem(key, "missing", "not in the store")
    size = store.size(key)
    if digest is None:
        return ObjectProblem(key, "size", "empty object") if size == 0 else None
    if size != digest["size"]:
        return ObjectProblem(key, "size", f"{size} bytes, recorded {digest['size']}")
    if "sha256" in digest and bytes_digest(store.get_bytes(key))["sha256"] != digest["sha256"]:
        return ObjectProblem(key, "checksum", "sha256 differs from the one recorded")
    return None


def check_asset(session: Session, store: ObjectStore, asset: Asset) -> list[ObjectProblem]:
    """The problems of every object recorded for ``asset`` (empty when all are fine)."""
    digests = asset.object_digests or {}
    problems = []
    for key in recorded_keys(session, asset):
        problem = check_object(store, key, digests.get(key))
        if problem is not None:
            problems.append(problem)
    return problems


def repair_asset(
    session: Session, asset: Asset, problems: list[ObjectProblem], stage_order: Sequence[str]
) -> list[str]:
    """Mark the stages that wrote a bad object, and every stage after them, as not done, and
    the asset as failed with :data:`MISSING_OBJECT`; returns the stages undone.

    ``stage_order`` : the pipeline's stage names in order (the layer above knows them).
    """
    bad = {p.key for p in problems}
    first = None
    for run in queries.stage_runs(session, asset.id):
        if run.status == "succeeded" and bad & set((run.output_keys or {}).values()):
            position = stage_order.index(run.stage) if run.stage in stage_order else 0
            first = position if first is None else min(first, position)
    if first is None:
        return []
    message = "objects missing or corrupt: " + ", ".join(sorted(bad))
    undone = list(stage_order[first:])
    queries.undo_stages(session, asset.id, undone, MISSING_OBJECT, message[:2000])
    remove_from_index(session, asset.id)
    return [s for s in undone]


def delete_asset_objects(store: ObjectStore, asset_id: str) -> int:
    """Delete every object under ``assets/<asset_id>/``; returns how many there were."""
    return store.delete_prefix(f"assets/{asset_id}/")


def delete_assets(
    session: Session, store: ObjectStore, asset_ids: Collection[str]
) -> dict[str, int]:
    """Delete each asset's objects, then its rows (flushed, not committed: the caller commits
    the rows of all of them in one transaction). Returns ``{asset_id: objects removed}`` for
    the assets that existed; unknown ids are ignored, so deleting twice is fine."""
    existing = queries.asset_states(session, asset_ids)
    removed = {asset_id: delete_asset_objects(store, asset_id) for asset_id in existing}
    queries.delete_assets(session, list(existing))
    return removed
