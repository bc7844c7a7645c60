"""How every stage runs: skip when done with the same parameters, else record, work, record.

The object is always written before the database says the stage is done, so a crash between the
two leaves a stage that is simply run again, never a record of an object that does not exist.

Each stage run writes under its own keys (``assets/<asset_id>/runs/<stage run id>/...``) and
its records are fenced by the worker's lease (:mod:`tasks.lease`): the start, success or
failure is recorded only in a transaction that first checks the asset is still held by this
owner in this claim. A worker that lost its lease therefore records nothing, deletes what it
wrote, and can never replace objects that another worker's records point at.
"""

from __future__ import annotations

import hashlib
import json
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from storage import queries
from storage.db import in_transaction
from storage.objects import ObjectStore
from storage.redact import redact_text
from tasks import progress
from tasks.config import PipelineConfig
from tasks.errors import LeaseLost, error_class
from tasks.lease import Hold, hold_of
from tasks.resources import engine_for, store_for, torch_device, worker_name

STAGES = ("bundle", "init", "refine", "texture", "export", "evaluate", "publish")


def asset_key(asset_id: str, run_id: int, artefact: str) -> str:
    """Object key of an artefact written by stage run ``run_id``:
    ``assets/<asset_id>/runs/<run_id>/<artefact>`` (no two runs share a key)."""
    return f"assets/{asset_id}/runs/{run_id}/{artefact}"


def params_hash(params: dict) -> str:
    """Stable hash of a stage's parameters (sorted JSON; paths and other objects as strings)."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class StageIO:
    """A stage's view of the object store: fetch inputs into a scratch folder, publish outputs."""

    store: ObjectStore
    asset_id: str
    stage: str
    scratch: Path
    outputs: dict[str, str]
    run_id: int = 0
    """The stage run whose key folder outputs go to."""
    hold: Hold | None = None
    """This worker's hold on the asset; an upload is refused once it is lost."""

    def fetch(self, key: str, name: str | None = None) -> Path:
        """Download ``key`` into the scratch folder (as ``name``); returns the local path."""
        dest = self.scratch / "in" / (name or key.replace("/", "__"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.store.get_file(key, dest)
        return dest

    def local(self, artefact: str) -> Path:
        """A scratch path to write ``artefact`` to before :meth:`publish`."""
        path = self.scratch / "out" / artefact
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def publish(self, artefact: str, path: Path | None = None) -> str:
        """Upload ``artefact`` (from :meth:`local` unless ``path``); returns its key."""
        if self.hold is not None:
            self.hold.check()
        key = asset_key(self.asset_id, self.run_id, artefact)
        self.store.put_file(key, path or self.local(artefact))
        self.outputs[artefact] = key
        return key

    def progress(self, step: int, total: int, message: str = "") -> None:
        progress.emit(self.asset_id, self.stage, "step", step=step, total=total, message=message)


Work = Callable[[StageIO], dict | None]


def run_stage(
    config: PipelineConfig,
    asset_id: str,
    stage: str,
    phash: str,
    work: Work,
    *,
    flow_run_id: str | None = None,
) -> dict[str, str]:
    """Run ``work`` for ``(asset_id, stage)`` unless it is done with the parameter hash ``phash``
    (see :func:`tasks.assets.plan_stages`) and its recorded objects still exist.

    Two database transactions at most: one that checks for a done run and records the start (or
    nothing else, when skipping), one that records the end; each is retried while the database
    is unreachable (``config.db_retry_seconds``). When this process holds the asset's lease
    (:func:`tasks.lease.holding`, as the asset flow does), both are fenced by it and a lost
    lease raises :class:`tasks.errors.LeaseLost` with nothing recorded. ``work`` publishes its
    artefacts through the :class:`StageIO` and may return a dict of metrics (name -> float).
    Returns the stage's output keys. Exceptions propagate after the failure is recorded; the
    recorded and emitted error messages are redacted (no passwords, no secret query values).
    """
    engine = engine_for(config.database_url)
    store = store_for(config.store_url)
    hold = hold_of(asset_id)
    if hold is not None:
        hold.check()

    def start(session: Session) -> dict[str, str] | int:
        done = queries.completed_stage(session, asset_id, stage, phash)
        if done is not None and all(store.exists(k) for k in (done.output_keys or {}).values()):
            return dict(done.output_keys or {})
        _fence(session, hold)
        run = queries.record_stage_start(
            session,
            asset_id,
            stage,
            params_hash=phash,
            host=worker_name(),
            device=torch_device(config.device),
            flow_run_id=flow_run_id,
        )
        return run.id  # read before the commit expires it (reading it after is a third query)

    started = in_transaction(engine, start, retry_seconds=config.db_retry_seconds)
    if isinstance(started, dict):
        progress.emit(asset_id, stage, "skipped")
        return started
    run_id = started
    progress.emit(asset_id, stage, "start")
    started_at = time.perf_counter()
    io = StageIO(store, asset_id, stage, Path("."), {}, run_id=run_id, hold=hold)
    try:
        with tempfile.TemporaryDirectory(prefix=f"foundry3d-{stage}-") as scratch:
            io.scratch = Path(scratch)
            metrics = work(io) or {}
    except BaseException as exc:
        kind, message = error_class(exc), _message(exc)

        def failed(session: Session) -> None:
            _fence(session, hold)
            queries.record_stage_failure(session, run_id, kind, message)

        try:
            in_transaction(engine, failed, retry_seconds=config.db_retry_seconds)
        except LeaseLost as lost:
            _discard(store, io.outputs)
            raise lost from exc
        progress.emit(asset_id, stage, "failed", message=message)
        raise

    def succeeded(session: Session) -> None:
        _fence(session, hold)
        queries.record_stage_success(session, run_id, io.outputs, peak_memory_mb=_peak_rss_mb())
        if metrics:
            queries.set_metrics(session, asset_id, metrics)

    try:
        in_transaction(engine, succeeded, retry_seconds=config.db_retry_seconds)
    except LeaseLost:
        _discard(store, io.outputs)
        raise
    progress.emit(asset_id, stage, "done", seconds=time.perf_counter() - started_at)
    return dict(io.outputs)


def _fence(session: Session, hold: Hold | None) -> None:
    """Check, in the caller's transaction, that ``hold`` still holds its asset (renewing it);
    raise :class:`LeaseLost` otherwise. The check's UPDATE locks the asset row until commit, so
    the records that follow in the transaction cannot race a new claim."""
    if hold is None:
        return
    lease = hold.lease
    if not queries.renew_lease(
        session, lease.asset_id, lease.owner, lease.seconds, epoch=lease.epoch
    ):
        hold.lost.set()
        hold.check()


def _discard(store: ObjectStore, outputs: dict[str, str]) -> None:
    """Delete what a stage run wrote before it found its lease lost (its own keys only)."""
    for key in outputs.values():
        try:
            store.delete(key)
        except Exception:  # best effort: an unrecorded object is an orphan the next claim removes
            pass


def _message(exc: BaseException) -> str:
    text = redact_text(str(exc).strip()) or type(exc).__name__
    return text[:2000]


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
