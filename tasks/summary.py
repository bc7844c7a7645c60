"""The end-of-run summary of a catalog batch: counts, time per stage, one row per asset.

One definition of what happened to each asset (:func:`outcome_kind`) serves the Prefect
summary artifact, the batch record and the CLI's summary: an asset another worker holds, or
one that failed or needs review from an earlier run, is counted as what it is, never as
"skipped (already done)".
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from storage import queries
from storage.db import in_transaction
from storage.redact import redact_url
from tasks.config import PipelineConfig
from tasks.ingest import IngestResult
from tasks.resources import get_engine

OUTCOME_KINDS = (
    "produced",
    "needs review",
    "failed",
    "already done",
    "needs review earlier",
    "failed earlier",
    "held",
    "not run",
)
"""What happened to an asset of a catalog run (:func:`outcome_kind`)."""


def outcome_kind(outcome: str | None, state: str | None) -> str:
    """What happened to one asset of a catalog run, one of :data:`OUTCOME_KINDS`.

    ``outcome``: what its asset flow returned in this run (``succeeded``, ``needs_review``,
    ``failed``, ``skipped`` when it could not be claimed, ``lost``), or None when the run did
    not start it (ingest found it finished); ``state``: its state in the database now. An asset
    this run did not finish is told apart by its state: ``succeeded`` is "already done",
    ``needs_review`` / ``failed`` were judged or failed in an earlier (or another) run and are
    not re-run, ``running`` is held by another worker's lease, ``pending`` was not run at all.
    """
    if outcome == "succeeded":
        return "produced"
    if outcome == "needs_review":
        return "needs review"
    if outcome == "failed":
        return "failed"
    return {
        "succeeded": "already done",
        "needs_review": "needs review earlier",
        "failed": "failed earlier",
        "running": "held",
    }.get(state or "", "not run")


@dataclass
class BatchSummary:
    """What happened to a batch's assets (counts by :func:`outcome_kind`, rejected rows),
    with per-stage timings and per-asset rows."""

    batch_id: str
    manifest: str
    store_url: str
    produced: int = 0
    """Assets this run finished ``succeeded``."""
    skipped: int = 0
    """Assets already ``succeeded`` before this run (skipped, already done); nothing else."""
    failed: int = 0
    """Assets that failed in this run."""
    needs_review: int = 0
    """Assets this run finished ``needs_review`` (metrics below the quality verdict)."""
    failed_earlier: int = 0
    """Assets that had failed in an earlier (or another) run; not re-run (``retry`` does)."""
    needs_review_earlier: int = 0
    """Assets judged ``needs_review`` in an earlier (or another) run; not re-run."""
    held: int = 0
    """Assets another worker's lease holds (being produced by another run)."""
    not_run: int = 0
    """Assets left ``pending``: this run did not get to them."""
    rejected: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    assets: list[dict] = field(default_factory=list)
    rejections: list[dict] = field(default_factory=list)

    @property
    def nothing_new(self) -> bool:
        """True when this run produced, failed and judged nothing."""
        return self.produced == 0 and self.failed == 0 and self.needs_review == 0

    def count(self, kind: str) -> int:
        """How many assets ended as ``kind`` (one of :data:`OUTCOME_KINDS`)."""
        return sum(1 for row in self.assets if row["kind"] == kind)

    def table_rows(self) -> list[dict]:
        """The artifact's table: one row per asset with its outcome, state and last error (a
        failure's, or the reasons it needs review)."""
        return [
            {k: row[k] for k in ("asset_id", "prompt", "outcome", "state", "error", "asset",
                                 "preview")}
            for row in self.assets
        ]

    def counts_line(self) -> str:
        """``2 produced, 1 skipped (already done), 1 failed, 1 needs review, 0 rejected rows in
        9.1 s``: failures and verdicts of earlier runs, assets another run holds and assets not
        run are named apart (each part only when it counts something)."""
        failed = self.failed + self.failed_earlier
        text = (f"{self.produced} produced, {self.skipped} skipped (already done), "
                f"{failed} failed")
        if self.failed_earlier:
            text += f" ({self.failed_earlier} in an earlier run, not re-run)"
        review = self.needs_review + self.needs_review_earlier
        if review:
            text += f", {review} needs review"
            if self.needs_review_earlier:
                text += f" ({self.needs_review_earlier} from an earlier run, not re-run)"
        if self.held:
            text += f", {self.held} being produced by another run"
        if self.not_run:
            text += f", {self.not_run} not run (still pending)"
        return f"{text}, {self.rejected} rejected rows in {self.seconds:.1f} s"

    def markdown_header(self) -> str:
        return f"Catalog `{self.manifest}`: {self.counts_line()}"

    def render_text(self) -> str:
        lines = [self.markdown_header()]
        for stage, secs in self.stage_seconds.items():
            lines.append(f"  {stage:<9} {secs:7.2f} s per asset")
        return "\n".join(lines)


def summarise_batch(
    ingest: IngestResult, outcomes: dict[str, str], config: PipelineConfig, seconds: float
) -> BatchSummary:
    """Build the summary from the database (the truth), not from in-memory outcomes alone.

    The reads are retried through a database outage of up to ``config.db_retry_seconds``
    (then :class:`storage.db.DatabaseUnavailable`)."""
    blank = BatchSummary(
        batch_id=ingest.batch_id,
        manifest=ingest.manifest,
        store_url=redact_url(config.store_url),
        rejected=len(ingest.rejected),
        rejections=list(ingest.rejected),
        seconds=seconds,
    )

    def read(session: Session) -> BatchSummary:
        summary = copy.deepcopy(blank)  # each try counts from nothing
        rows = queries.assets_by_id(session, ingest.asset_ids)
        runs = queries.succeeded_stage_runs(session, list(outcomes))
        per_stage: dict[str, list[float]] = defaultdict(list)
        run_seconds: dict[str, list[float]] = defaultdict(list)
        for run in runs:
            if run.duration_s is not None:
                per_stage[run.stage].append(run.duration_s)
                run_seconds[run.asset_id].append(run.duration_s)
        from tasks.stage import STAGES

        summary.stage_seconds = {
            s: sum(per_stage[s]) / len(per_stage[s]) for s in STAGES if per_stage.get(s)
        }
        for asset_id in ingest.asset_ids:
            asset = rows.get(asset_id)
            outcome = outcomes.get(asset_id)
            state = asset.state if asset else None
            kind = outcome_kind(outcome, state)
            counter = _COUNTERS[kind]
            setattr(summary, counter, getattr(summary, counter) + 1)
            keys = dict(asset.output_keys or {}) if asset else {}
            summary.assets.append(
                {
                    "asset_id": asset_id,
                    "prompt": ingest.labels.get(asset_id, asset.prompt if asset else "")[:60],
                    "outcome": _OUTCOME_TEXT[kind],
                    "kind": kind,
                    "state": state or "?",
                    "error": asset.last_error_message if asset else None,
                    "asset": keys.get("asset.glb", ""),
                    "preview": keys.get("preview.png", ""),
                    "folder": f"assets/{asset_id}/" if keys else "",
                    "seconds": sum(run_seconds.get(asset_id, [])),
                }
            )
        return summary

    return in_transaction(get_engine(config.database_url), read,
                          retry_seconds=config.db_retry_seconds, step=SUMMARY_STEP)


SUMMARY_STEP = "reading the end-of-run summary"
CLOSE_STEP = "closing the batch"
"""What :class:`storage.db.DatabaseUnavailable` says the summary and batch close were doing."""


_COUNTERS = {
    "produced": "produced",
    "needs review": "needs_review",
    "failed": "failed",
    "already done": "skipped",
    "needs review earlier": "needs_review_earlier",
    "failed earlier": "failed_earlier",
    "held": "held",
    "not run": "not_run",
}
"""The :class:`BatchSummary` field that counts each kind."""

_OUTCOME_TEXT = {
    "produced": "succeeded",
    "needs review": "needs review",
    "failed": "failed",
    "already done": "skipped (already done)",
    "needs review earlier": "needs review (earlier run; foundry3d retry)",
    "failed earlier": "failed earlier (foundry3d retry)",
    "held": "held by another run",
    "not run": "not run (pending)",
}
"""A summary row's ``outcome`` column (the artifact's table) per kind."""


def close_batch(
    batch_id: str,
    config: PipelineConfig,
    summary: BatchSummary | None = None,
    failure: str | None = None,
) -> dict:
    """End a batch: ``finished``, or ``failed`` with ``failure`` (what stopped the run).

    Stores the batch's assets per state and its rejected rows (counted in the database, so a run
    that failed half way still reports what it did), plus the summary's produced / skipped /
    failed counts when the run got that far. Returns what was stored. Retried through a
    database outage of up to ``config.db_retry_seconds`` (then
    :class:`storage.db.DatabaseUnavailable`).
    """

    def close(session: Session) -> dict:
        record: dict = {"states": queries.batch_counts(session, batch_id)}
        if summary is not None:
            record.update(
                produced=summary.produced,
                skipped=summary.skipped,
                failed=summary.failed,
                needs_review=summary.needs_review,
                failed_earlier=summary.failed_earlier,
                needs_review_earlier=summary.needs_review_earlier,
                held=summary.held,
                not_run=summary.not_run,
                rejected=summary.rejected,
                seconds=round(summary.seconds, 3),
            )
        if failure is not None:
            record["error"] = failure
        queries.finish_batch(
            session, batch_id, record, status="finished" if failure is None else "failed"
        )
        return record

    return in_transaction(get_engine(config.database_url), close,
                          retry_seconds=config.db_retry_seconds, step=CLOSE_STEP)
