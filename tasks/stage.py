"""How every stage runs: skip when done with the same parameters, else record, work, record.

The object is always written before the database says the stage is done, so a crash between the
two leaves a stage that is simply run again, never a record of an object that does not exist.

Writes are fenced by the worker's lease (:mod:`tasks.lease`). A stage's work only hands its
artefacts over (:meth:`StageIO.publish` keeps the scratch file); they are uploaded to
``assets/<asset_id>/<artefact>`` inside the transaction that records the stage, right after an
UPDATE that checks the asset is still held by this owner in this claim and locks its row until
the commit. A claim by another worker waits for that commit, and a worker that lost its lease
fails the check before uploading anything: it can never replace the objects another worker's
records point at, and records nothing. Starts and failures are fenced the same way.
"""

from __future__ import annotations

import hashlib
import json
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from storage import queries
from storage.db import DatabaseUnavailable, in_transaction
from storage.integrity import file_digest
from storage.objects import ObjectStore
from storage.redact import redact_text
from tasks import progress
from tasks.config import PipelineConfig
from tasks.errors import LeaseLost, error_class
from tasks.lease import Hold, hold_of
from tasks.resources import engine_for, store_for, torch_device, worker_name
from tasks.scratch import scratch_folder

STAGES = ("bundle", "init", "refine", "texture", "export", "evaluate", "publish")


def asset_key(asset_id: str, artefact: str) -> str:
    """Object key of an artefact: ``assets/<asset_id>/<artefact>``."""
    return f"assets/{asset_id}/{artefact}"


def params_hash(params: dict) -> str:
    """Stable hash of a stage's parameters (sorted JSON; paths and other objects as strings)."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class StageIO:
    """A stage's view of the object store: fetch inputs into a scratch folder, publish outputs
    (uploaded when the stage is recorded, see :func:`run_stage`)."""

    store: ObjectStore
    asset_id: str
    stage: str
    scratch: Path
    outputs: dict[str, str]
    """Artefact name -> object key of what :meth:`publish` was given."""
    hold: Hold | None = None
    """This worker's hold on the asset; publishing stops once it is lost."""
    files: dict[str, Path] = field(default_factory=dict)
    """Object key -> scratch file to upload when the stage is recorded."""
    digests: dict[str, dict] = field(default_factory=dict)
    """Object key -> size and sha256 of what :meth:`publish` wrote (checked by ``verify``)."""

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
        """Hand ``artefact`` over (from :meth:`local` unless ``path``); returns the key it is
        uploaded to when the stage is recorded, under this worker's lease."""
        if self.hold is not None:
            self.hold.check()
        source = path or self.local(artefact)
        if not source.is_file():
            raise FileNotFoundError(f"stage {self.stage} published {artefact}, but {source} "
                                    "does not exist")
        key = asset_key(self.asset_id, artefact)
        self.files[key] = source
        self.digests[key] = file_digest(source)
        self.outputs[artefact] = key
        return key

    def upload(self) -> None:
        """Upload every published file to its key (done inside the fenced record)."""
        for key, source in self.files.items():
            self.store.put_file(key, source)

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

    def succeeded(session: Session) -> None:
        _fence(session, hold)
        io.upload()  # under the fence: the asset row stays locked until the commit
        queries.record_stage_success(session, run_id, io.outputs, peak_memory_mb=_peak_rss_mb())
        queries.record_object_digests(session, asset_id, io.digests)
        if metrics:
            queries.set_metrics(session, asset_id, metrics)

    try:
        with scratch_folder(stage) as scratch:
            io = StageIO(store, asset_id, stage, scratch, {}, hold=hold)
            metrics = work(io) or {}
            in_transaction(engine, succeeded, retry_seconds=config.db_retry_seconds)
    except (LeaseLost, DatabaseUnavailable):
        raise  # nothing can be recorded: another worker holds the asset, or no database
    except BaseException as exc:
        kind, message = error_class(exc), _message(exc)

        def failed(session: Session) -> None:
            _fence(session, hold)
            queries.record_stage_failure(session, run_id, kind, message)

        try:
            in_transaction(engine, failed, retry_seconds=config.db_retry_seconds)
        except LeaseLost as lost:
            raise lost from exc
        progress.emit(asset_id, stage, "failed", message=message)
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


def _message(exc: BaseException) -> str:
    text = redact_text(str(exc).strip()) or type(exc).__name__
    return text[:2000]


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
