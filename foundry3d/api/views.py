"""JSON views of database rows for the API's answers (plain dicts; times in ISO 8601 UTC)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from storage.schema import Asset, StageRun
from tasks.stage import STAGES

KEY_METRICS = ("mask_iou", "normal_angle_deg", "colour_psnr", "mesh_faces")
"""Metrics shown on gallery cards when the asset has them."""
THUMBNAIL_FILES = ("thumbnail.png", "preview.png", "bundle.png")
"""Files a card shows, best first."""


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def file_url(asset_id: str, name: str) -> str:
    return f"/v1/assets/{asset_id}/files/{name}"


def files_of(asset_id: str, keys: list[str]) -> list[dict[str, str]]:
    """``[{"name", "url"}]`` of the object keys under ``assets/<asset_id>/``."""
    prefix = f"assets/{asset_id}/"
    names = sorted({k[len(prefix):] for k in keys if k.startswith(prefix)})
    return [{"name": n, "url": file_url(asset_id, n)} for n in names]


def thumbnail_of(asset_id: str, names: set[str]) -> str | None:
    for name in THUMBNAIL_FILES:
        if name in names:
            return file_url(asset_id, name)
    return None


def stage_progress(runs: list[StageRun], live: dict | None, state: str) -> int:
    """0-100: stages done of the 7, plus the running stage's step fraction when known."""
    if state in ("succeeded", "needs_review"):  # every stage done
        return 100
    latest: dict[str, str] = {}
    for run in runs:
        latest[run.stage] = run.status
    done = sum(1 for s in STAGES if latest.get(s) in ("succeeded", "skipped"))
    fraction = 0.0
    if live and live.get("event") == "step" and live.get("total"):
        fraction = min(1.0, float(live.get("step", 0)) / float(live["total"]))
    return min(99, int(100 * (done + fraction) / len(STAGES)))


def stage_run_view(run: StageRun) -> dict[str, Any]:
    return {
        "stage": run.stage, "attempt": run.attempt, "status": run.status,
        "started_at": iso(run.started_at), "finished_at": iso(run.finished_at),
        "duration_s": run.duration_s, "error_class": run.error_class,
        "error_message": run.error_message, "host": run.host, "device": run.device,
        "peak_memory_mb": run.peak_memory_mb,
    }


def request_view(asset: Asset) -> dict[str, Any]:
    return {
        "kind": asset.kind, "prompt": asset.prompt, "image_ref": asset.image_ref,
        "bundle_ref": asset.bundle_ref, "mesh_ref": asset.mesh_ref, "seed": asset.seed,
        "variant": asset.variant,
        "generator": asset.generator, "init": asset.init, "params": asset.params,
        "tags": asset.tags,
    }


def error_view(asset: Asset) -> dict[str, str] | None:
    if not asset.last_error_class and not asset.last_error_message:
        return None
    return {"class": asset.last_error_class, "message": asset.last_error_message}
