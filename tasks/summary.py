"""The end-of-run summary of a catalog batch: counts, time per stage, one row per asset."""

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


@dataclass
class BatchSummary:
    """Produced / skipped / failed / rejected, with per-stage timings and per-asset rows."""

    batch_id: str
    manifest: str
    store_url: str
    produced: int = 0
    skipped: int = 0
    failed: int = 0
    rejected: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    assets: list[dict] = field(default_factory=list)
    rejections: list[dict] = field(default_factory=list)

    @property
    def nothing_new(self) -> bool:
        return self.produced == 0 and self.failed == 0

    def table_rows(self) -> list[dict]:
        return [
            {k: row[k] for k in ("asset_id", "prompt", "outcome", "state", "asset", "preview")}
            for row in self.assets
        ]

    def markdown_header(self) -> str:
        return (
            f"Catalog `{self.manifest}`: {self.produced} produced, {self.skipped} skipped "
            f"(already done), {self.failed} failed, {self.rejected} rejected "
            f"in {self.seconds:.1f} s"
        )

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
            if outcome is None:
                if asset_id in ingest.already_done:
                    outcome = "already done"
                elif asset_id in ingest.failed_before:
                    outcome = "failed earlier (foundry3d retry)"
                else:
                    outcome = "held by another run"
            if outcome == "succeeded":
                summary.produced += 1
            elif outcome == "failed":
                summary.failed += 1
            else:
                summary.skipped += 1
            keys = dict(asset.output_keys or {}) if asset else {}
            summary.assets.append(
                {
                    "asset_id": asset_id,
                    "prompt": ingest.labels.get(asset_id, asset.prompt if asset else "")[:60],
                    "outcome": outcome,
                    "state": asset.state if asset else "?",
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
