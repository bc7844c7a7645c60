"""The in-process job runner: a FIFO queue of assets and a pool of worker threads.

``POST /v1/jobs`` ingests the manifest at once (so the batch id and the line-numbered
rejections are in the response) and queues the batch's assets here. Each worker thread takes
the next asset and runs the real ``asset`` flow on it (in this process on the embedded
defaults; on the asset deployment's work pool with ``run_deployment`` when
``FOUNDRY_PREFECT_MODE=server``). When a job's last asset ends, the batch is finished in the
database and its callback, if any, is posted.

Cancelling a job drops its queued assets and marks them and its running ones failed with error
class ``Cancelled``; a running asset loses its lease, so its worker stops at its next lease
renewal, after the stage in progress (see :func:`storage.queries.cancel_assets`).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from foundry3d.api.callbacks import post_callback
from storage import queries
from storage.db import in_transaction
from storage.schema import utcnow
from tasks.config import PipelineConfig

log = logging.getLogger("foundry3d.api.jobs")


@dataclass
class Job:
    """What the runner knows about one submitted batch beyond the database."""

    batch_id: str
    """The batch id (``batches.id``)."""
    asset_ids: list[str]
    """Assets this job runs, in manifest order."""
    submitted_at: datetime
    """When the job was accepted (UTC)."""
    submitted_clock: float
    """``time.perf_counter()`` at submission, for the submit-to-first-stage latency."""
    callback_url: str | None = None
    """Where the completion notice goes, already checked against the allow-list."""
    cancelled: bool = False
    """Whether the job was cancelled."""
    outstanding: set[str] = field(default_factory=set)
    """Assets queued or running."""
    outcomes: dict[str, str] = field(default_factory=dict)
    """asset id -> succeeded / needs_review / skipped / failed / cancelled / lost."""
    first_stage_s: float | None = None
    """Seconds from submission to the first stage start of any of its assets."""
    finished_at: datetime | None = None
    """When the last asset ended (UTC)."""
    callback: dict | None = None
    """Delivery report of the callback."""


class JobRunner:
    """A bounded pool of worker threads over one FIFO asset queue."""

    def __init__(self, config: PipelineConfig, engine: Engine, *, concurrency: int = 2,
                 deployment: str | None = None, callback_secret: str | None = None) -> None:
        self.config = config
        self.engine = engine
        self.concurrency = max(1, concurrency)
        self.deployment = deployment
        self.callback_secret = callback_secret
        self.jobs: dict[str, Job] = {}
        self._queue: collections.deque[tuple[Job, str]] = collections.deque()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._live: dict[str, dict] = {}  # asset id -> latest progress event
        self._unsubscribe = None

    # --- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        from tasks import progress

        self._unsubscribe = progress.subscribe(self._on_progress)
        self.warmed = threading.Thread(target=_warm_up, name="foundry3d-warm-up", daemon=True)
        self.warmed.start()
        for n in range(self.concurrency):
            thread = threading.Thread(target=self._work, name=f"foundry3d-job-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking assets; running ones go on in their daemon threads until exit."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout / max(1, len(self._threads)))
        if self._unsubscribe:
            self._unsubscribe()

    # --- submission --------------------------------------------------------------------------

    def submit(self, manifest: Path, callback_url: str | None = None):  # noqa: ANN201
        """Ingest ``manifest`` now and queue its assets; returns the ``IngestResult``."""
        from tasks.ingest import ingest_manifest

        clock = time.perf_counter()
        ingest = ingest_manifest(manifest, self.config)
        job = Job(batch_id=ingest.batch_id, asset_ids=list(ingest.to_run), submitted_at=utcnow(),
                  submitted_clock=clock, callback_url=callback_url)
        with self._cond:
            self.jobs[job.batch_id] = job
            job.outstanding.update(job.asset_ids)
            self._queue.extend((job, asset_id) for asset_id in job.asset_ids)
            self._cond.notify_all()
        if not job.asset_ids:
            self._finish(job)
        return ingest

    def retry(self, batch_id: str | None, asset_id: str) -> None:
        """Queue an asset already reset to pending, under its batch's job (made if unknown)."""
        key = batch_id or f"retry-{asset_id}"
        with self._cond:
            job = self.jobs.get(key)
            if job is None:
                job = Job(batch_id=key, asset_ids=[], submitted_at=utcnow(),
                          submitted_clock=time.perf_counter())
                self.jobs[key] = job
            job.asset_ids.append(asset_id)
            job.outstanding.add(asset_id)
            job.outcomes.pop(asset_id, None)
            job.finished_at = None
            self._queue.append((job, asset_id))
            self._cond.notify_all()

    def cancel(self, batch_id: str, asset_ids: list[str]) -> list[str]:
        """Cancel a job: drop its queued assets, fail those of ``asset_ids`` not done yet."""
        with self._cond:
            job = self.jobs.get(batch_id)
            dropped: list[str] = []
            if job is not None and (job.outstanding or asset_ids):  # a finished job stays so
                job.cancelled = True
                kept = collections.deque()
                for entry in self._queue:
                    (dropped if entry[0] is job else kept).append(entry)
                self._queue = kept
                dropped = [asset_id for _job, asset_id in dropped]
        changed = in_transaction(
            self.engine,
            lambda session: queries.cancel_assets(session, asset_ids,
                                                  "cancelled by an API request"),
            retry_seconds=self.config.db_retry_seconds, step="cancelling the job's assets",
        )
        if job is not None:
            finish = False
            with self._cond:
                for asset_id in dropped:
                    job.outcomes[asset_id] = "cancelled"
                    job.outstanding.discard(asset_id)
                finish = not job.outstanding and job.finished_at is None
            if finish:
                self._finish(job)
        return changed

    # --- what the routes show ----------------------------------------------------------------

    def queue_positions(self) -> dict[str, int]:
        """asset id -> 0-based place in the queue (0: the next to start)."""
        with self._cond:
            return {asset_id: n for n, (_job, asset_id) in enumerate(self._queue)}

    def live(self, asset_id: str) -> dict | None:
        """The latest progress event of a running asset, if this process runs it."""
        return self._live.get(asset_id)

    # --- workers -----------------------------------------------------------------------------

    def _on_progress(self, event: dict) -> None:
        self._live[event["asset_id"]] = event
        if event.get("event") == "start":
            for job in list(self.jobs.values()):
                if job.first_stage_s is None and event["asset_id"] in job.outstanding:
                    job.first_stage_s = time.perf_counter() - job.submitted_clock

    def _next(self) -> tuple[Job, str] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            return self._queue.popleft()

    def _work(self) -> None:
        self.warmed.join()  # the first asset would wait for the same start-up anyway
        while (entry := self._next()) is not None:
            job, asset_id = entry
            outcome = self._run_one(job, asset_id)
            self._live.pop(asset_id, None)
            with self._cond:
                job.outcomes[asset_id] = outcome
                job.outstanding.discard(asset_id)
                finish = not job.outstanding and job.finished_at is None
            if finish:
                self._finish(job)

    def _run_one(self, job: Job, asset_id: str) -> str:
        from flows.asset import AssetFailed, asset_flow, subflow_settings
        from flows.catalog import batch_tag
        from tasks.errors import LeaseLost

        try:
            if self.deployment:
                return self._run_on_deployment(job, asset_id)
            import prefect

            with subflow_settings(), prefect.tags(batch_tag(job.batch_id)):
                outcome = asset_flow(asset_id, self.config)
            # A cancel takes the lease away: the flow reports that as a lost lease.
            return "cancelled" if outcome == "lost" and job.cancelled else outcome
        except AssetFailed:
            return "failed"
        except LeaseLost:
            return "cancelled" if job.cancelled else "lost"
        except Exception:  # a worker thread must survive any asset
            log.exception("asset %s of job %s stopped", asset_id, job.batch_id)
            return "failed"

    def _run_on_deployment(self, job: Job, asset_id: str) -> str:
        from prefect.deployments import run_deployment

        from flows.catalog import batch_tag

        run_deployment(name=self.deployment, parameters={
            "asset_ids": [asset_id], "config": self.config.model_dump()},
            tags=[batch_tag(job.batch_id)], timeout=None)
        states = in_transaction(
            self.engine, lambda session: queries.asset_states(session, [asset_id]),
            retry_seconds=self.config.db_retry_seconds, step="reading how an asset ended",
        )
        return states.get(asset_id, "failed")

    def _finish(self, job: Job) -> None:
        job.finished_at = utcnow()
        counts = collections.Counter(job.outcomes.values())
        summary = {"outcomes": dict(counts), "cancelled": job.cancelled,
                   "first_stage_s": job.first_stage_s}

        def finish(session: Session) -> None:
            if queries.get_batch(session, job.batch_id) is not None:
                queries.finish_batch(session, job.batch_id, summary)

        try:
            in_transaction(self.engine, finish, retry_seconds=self.config.db_retry_seconds,
                           step="closing the batch")
        except Exception:  # noqa: BLE001 - the job is done either way; the log says why
            log.exception("could not record the end of batch %s", job.batch_id)
        if job.callback_url and self.callback_secret:
            payload = {"batch_id": job.batch_id, "state": "cancelled" if job.cancelled
                       else "finished", "outcomes": dict(counts),
                       "finished_at": job.finished_at.isoformat()}
            job.callback = post_callback(job.callback_url, payload, self.callback_secret)


def _warm_up() -> None:
    """Import the pipeline and run one empty flow, so that Prefect's ephemeral API server (a
    subprocess that takes seconds to start) is up before the first job, not during it."""
    try:
        from prefect import flow

        import flows.asset  # noqa: F401 - the stage modules and their model imports

        @flow(name="api-warm-up")
        def warm_up() -> None:
            return None

        warm_up()
    except Exception:  # noqa: BLE001 - a failed warm-up only costs the first job its time
        log.exception("warm-up failed; the first job will start Prefect itself")
