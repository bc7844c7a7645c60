"""How every stage runs: skip when done with the same parameters, else record, work, record.

The object is always written before the database says the stage is done, so a crash between the
two leaves a stage that is simply run again (same keys, overwritten), never a record of an object
that does not exist.
"""

from __future__ import annotations

import hashlib
import json
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from storage import queries
from storage.integrity import file_digest
from storage.objects import ObjectStore
from tasks import progress
from tasks.config import PipelineConfig
from tasks.errors import error_class
from tasks.resources import engine_for, store_for, torch_device, worker_name

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
    """A stage's view of the object store: fetch inputs into a scratch folder, publish outputs."""

    store: ObjectStore
    asset_id: str
    stage: str
    scratch: Path
    outputs: dict[str, str]
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
        """Upload ``artefact`` (from :meth:`local` unless ``path``); returns its key."""
        key = asset_key(self.asset_id, artefact)
        self.store.put_file(key, path or self.local(artefact))
        self.digests[key] = file_digest(path or self.local(artefact))
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

    Two database sessions at most: one that checks for a done run and records the start (or
    nothing else, when skipping), one that records the end. ``work`` publishes its artefacts
    through the :class:`StageIO` and may return a dict of metrics (name -> float). Returns the
    stage's output keys. Exceptions propagate after the failure is recorded.
    """
    engine = engine_for(config.database_url)
    store = store_for(config.store_url)
    with Session(engine) as session:
        done = queries.completed_stage(session, asset_id, stage, phash)
        if done is not None and all(store.exists(k) for k in (done.output_keys or {}).values()):
            progress.emit(asset_id, stage, "skipped")
            return dict(done.output_keys or {})
        run = queries.record_stage_start(
            session,
            asset_id,
            stage,
            params_hash=phash,
            host=worker_name(),
            device=torch_device(config.device),
            flow_run_id=flow_run_id,
        )
        run_id = run.id  # read before the commit expires it (reading it after is a third query)
        session.commit()
    progress.emit(asset_id, stage, "start")
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix=f"foundry3d-{stage}-") as scratch:
            io = StageIO(store, asset_id, stage, Path(scratch), {})
            metrics = work(io) or {}
    except BaseException as exc:
        with Session(engine) as session:
            queries.record_stage_failure(session, run_id, error_class(exc), _message(exc))
            session.commit()
        progress.emit(asset_id, stage, "failed", message=_message(exc))
        raise
    with Session(engine) as session:
        queries.record_stage_success(session, run_id, io.outputs, peak_memory_mb=_peak_rss_mb())
        queries.record_object_digests(session, asset_id, io.digests)
        if metrics:
            queries.set_metrics(session, asset_id, metrics)
        session.commit()
    progress.emit(asset_id, stage, "done", seconds=time.perf_counter() - started)
    return dict(io.outputs)


def _message(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:2000]


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
