"""The end-of-run summary of a catalog batch: counts, time per stage, one row per asset."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.schema import Asset, StageRun
from tasks.config import PipelineConfig
from tasks.ingest import IngestResult
from tasks.resources import engine_for


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
    """Build the summary from the database (the truth), not from in-memory outcomes alone."""
    summary = BatchSummary(
        batch_id=ingest.batch_id,
        manifest=ingest.manifest,
        store_url=config.store_url,
        rejected=len(ingest.rejected),
        rejections=list(ingest.rejected),
        seconds=seconds,
    )
    with Session(engine_for(config.database_url)) as session:
        rows = {
            a.id: a
            for a in session.scalars(select(Asset).where(Asset.id.in_(ingest.asset_ids)))
        } if ingest.asset_ids else {}
        runs = session.scalars(
            select(StageRun).where(
                StageRun.asset_id.in_(list(outcomes)), StageRun.status == "succeeded"
            )
        ).all() if outcomes else []
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
