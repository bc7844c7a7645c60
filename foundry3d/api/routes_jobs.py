"""Routes of jobs: submit a manifest (or one request), follow it, cancel it; retry an asset."""

from __future__ import annotations

import difflib
import json
import shutil
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from foundry3d.api.auth import require
from foundry3d.api.callbacks import CallbackRefused, check_callback_url
from foundry3d.api.errors import ApiError
from foundry3d.api.inputs import save_inputs
from foundry3d.api.views import error_view, iso, stage_progress
from intake.limits import MAX_MANIFEST_BYTES, MAX_SEED
from storage import queries
from storage.db import session_scope
from storage.schema import ASSET_STATES

router = APIRouter(prefix="/v1", tags=["jobs"])

# Content types of a manifest body -> file extension the manifest reader dispatches on.
_CONTENT_TYPES = {
    "application/x-yaml": ".yaml", "application/yaml": ".yaml", "text/yaml": ".yaml",
    "text/x-yaml": ".yaml", "text/csv": ".csv", "application/x-ndjson": ".jsonl",
    "application/jsonl": ".jsonl", "application/json": ".json",
}
_REQUEST_KEYS = ("prompt", "image", "bundle", "mesh")
_FORM_TEXT_FIELDS = ("request", "callback_url")


@dataclass
class _Submission:
    """What a ``POST /v1/jobs`` body holds, before anything is written."""

    data: bytes
    """The manifest (or one JSON request object) as sent."""
    suffix: str
    """Extension the manifest reader dispatches on (``.json`` for a request object)."""
    callback: str | None = None
    """The callback URL, not yet checked."""
    inputs: list = field(default_factory=list)
    """Uploaded input files (starlette ``UploadFile``) to store beside the manifest."""


async def _manifest_body(request: Request) -> _Submission:
    """The manifest, callback URL and uploaded inputs of an upload or a raw body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    callback = request.query_params.get("callback_url")
    if content_type == "multipart/form-data":
        return await _multipart_body(request, callback)
    if content_type not in _CONTENT_TYPES:
        raise ApiError(415, "unsupported_media_type",
                       f"send the manifest as YAML, JSON, JSONL or CSV (got {content_type!r})",
                       {"accepted": sorted(_CONTENT_TYPES) + ["multipart/form-data"]})
    data = await request.body()
    return _Submission(data, _CONTENT_TYPES[content_type], callback)


async def _multipart_body(request: Request, callback: str | None) -> _Submission:
    """A multipart upload: the manifest file in field ``manifest`` (or one JSON request
    object in the text field ``request``), an optional ``callback_url``, and any other file
    fields as input files the rows name by base name (:mod:`foundry3d.api.inputs`)."""
    from foundry3d.api.inputs import MAX_INPUT_FILES

    form = await request.form(max_files=MAX_INPUT_FILES + 1,
                              max_part_size=MAX_MANIFEST_BYTES + 1)
    manifest, inputs, single = None, [], None
    for name, value in form.multi_items():
        if hasattr(value, "read"):
            if name == "manifest":
                manifest = value
            else:
                inputs.append(value)
        elif name == "request":
            single = value
        elif name != "callback_url":
            raise ApiError(422, "invalid_request", f"unknown form field {name!r}; known: "
                           f"manifest (file), input files, {', '.join(_FORM_TEXT_FIELDS)}")
    form_callback = form.get("callback_url")
    callback = form_callback if isinstance(form_callback, str) and form_callback else callback
    if (manifest is None) == (single is None):
        raise ApiError(422, "invalid_request", "the upload needs either a file field "
                       "'manifest' or a text field 'request' (one JSON request object)")
    if single is not None:
        return _Submission(single.encode(), ".json", callback, inputs)
    data = await manifest.read(MAX_MANIFEST_BYTES + 1)
    suffix = Path(manifest.filename or "").suffix.lower() or ".yaml"
    return _Submission(data, suffix, callback, inputs)


def _json_manifest(data: bytes) -> tuple[bytes, str | None]:
    """A JSON body as a YAML manifest (JSON is YAML): a manifest, or one request object."""
    try:
        body = json.loads(data)
    except ValueError as exc:
        rejected = [{"line": getattr(exc, "lineno", 0), "reason": str(exc)}]
        raise ApiError(422, "invalid_manifest", f"the body is not valid JSON: {exc}",
                       {"rejected": rejected}) from None
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_manifest", "the JSON body must be an object: a manifest "
                       "with 'items', or one request with 'prompt', 'image', 'bundle' or 'mesh'")
    callback = body.pop("callback_url", None)
    if "items" not in body and any(k in body for k in _REQUEST_KEYS):
        body = {"items": [body]}
    return yaml.safe_dump(body, sort_keys=False).encode(), callback


@router.post("/jobs", status_code=202, summary="Submit a manifest or one request",
             dependencies=[Depends(require("write"))])
async def submit_job(request: Request) -> JSONResponse:
    """Body: a manifest (YAML, JSON, JSONL or CSV; or a multipart upload in field
    ``manifest``), or one request object (JSON with ``prompt``/``image``/``bundle``/``mesh``;
    in a multipart upload, the text field ``request``). A multipart upload may add the input
    files its rows name (meshes, images, bundles) as further file fields: a row's relative path
    is the file's base name. ``callback_url`` as a query parameter, form field or JSON key.
    Rows are checked as by ``foundry3d validate``: rejected rows come back with their line; a
    manifest with no valid row is answered 422. Returns the batch id at once; the assets run
    in the background."""
    app = request.app
    submission = await _manifest_body(request)
    data, suffix, callback = submission.data, submission.suffix, submission.callback
    if len(data) > MAX_MANIFEST_BYTES:
        raise ApiError(413, "too_large", f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
    if suffix == ".json":
        data, json_callback = _json_manifest(data)
        callback, suffix = callback or json_callback, ".yaml"
    if callback is not None:
        try:
            check_callback_url(str(callback), app.state.settings.url_hosts,
                               app.state.api_settings.callback_secret)
        except CallbackRefused as exc:
            raise ApiError(422, "callback_refused", str(exc), {"callback_url": callback}) from None
    folder = app.state.upload_dir / uuid.uuid4().hex
    folder.mkdir(parents=True)
    try:
        await save_inputs(submission.inputs, folder)
    except ApiError:
        shutil.rmtree(folder, ignore_errors=True)  # a refused job leaves nothing behind
        raise
    path = folder / f"manifest{suffix}"
    path.write_bytes(data)
    parsed = await run_in_threadpool(_validate, app, path)
    rejected = [{"line": r.line, "reason": r.reason} for r in parsed.rejected]
    if not parsed.requests:
        raise ApiError(422, "invalid_manifest", "no valid row in the manifest",
                       {"rejected": rejected})
    ingest = await run_in_threadpool(app.state.runner.submit, path, callback)
    return JSONResponse(status_code=202, content={
        "batch_id": ingest.batch_id,
        "job_url": f"/v1/jobs/{ingest.batch_id}",
        "assets": ingest.asset_ids,
        "to_run": ingest.to_run,
        "already_done": ingest.already_done,
        "failed_before": ingest.failed_before,
        "needs_review_before": ingest.review_before,
        "rejected": rejected,
    })


def _validate(app, path: Path):  # noqa: ANN001, ANN202
    from intake.parse import parse_manifest

    settings = app.state.settings
    return parse_manifest(path, image_roots=settings.image_roots,
                          allow_urls=settings.allow_url_fetch, url_hosts=settings.url_hosts,
                          max_image_pixels=settings.max_image_pixels, fetch=False)


def job_view(app, batch_id: str) -> dict[str, Any]:  # noqa: ANN001
    """State, counts, per-asset stage/progress/queue place and timings of a batch."""
    runner = app.state.runner
    job = runner.jobs.get(batch_id)
    positions = runner.queue_positions()
    with session_scope(app.state.engine) as session:
        batch = queries.get_batch(session, batch_id)
        if batch is None:
            raise ApiError(404, "not_found", f"no job with id {batch_id!r}")
        assets = queries.batch_assets(session, batch_id)
        rejections = queries.batch_rejections(session, batch_id)
        runs = queries.stage_runs_of(session, [a.id for a in assets])
        counts = dict.fromkeys(ASSET_STATES, 0)  # needs_review: finished, below the verdict
        rows = []
        for asset in assets:
            counts[asset.state] = counts.get(asset.state, 0) + 1
            started = min((r.started_at for r in runs[asset.id]), default=None)
            rows.append({
                "asset_id": asset.id, "prompt": asset.prompt, "state": asset.state,
                "stage": asset.current_stage,
                "progress": stage_progress(runs[asset.id], runner.live(asset.id), asset.state),
                "queue_position": positions.get(asset.id), "attempts": asset.attempts,
                "error": error_view(asset), "started_at": iso(started),
                "finished_at": iso(asset.finished_at),
                "duration_s": (asset.finished_at - started).total_seconds()
                if started and asset.finished_at else None,
            })
        finished_at = job.finished_at if job else batch.finished_at
        active = counts["pending"] + counts["running"]
        if job is not None and job.cancelled and (finished_at or not active):
            state = "cancelled"
        elif finished_at is not None or (job is not None and not job.outstanding):
            state = "finished"
        elif counts["running"] or any(runs.values()):
            state = "running"
        else:
            state = "queued"
        first_stage_s = job.first_stage_s if job else None
        if job is not None and first_stage_s is None:
            # Assets run on the asset deployment's workers (server mode) send this process no
            # progress events: their stage records say when the first stage started.
            starts = [r.started_at for a in assets for r in runs[a.id]
                      if r.started_at >= job.submitted_at]
            if starts:
                first_stage_s = (min(starts) - job.submitted_at).total_seconds()
        queued = [p for p in (positions.get(a.id) for a in assets) if p is not None]
        return {
            "batch_id": batch_id, "state": state, "counts": counts,
            "queue_position": min(queued) if queued else None,
            "submitted_at": iso(batch.created_at), "finished_at": iso(finished_at),
            "first_stage_s": first_stage_s,
            "callback": job.callback if job else None,
            "rejected": [{"line": r.line, "reason": r.reason} for r in rejections],
            "assets": rows,
        }


@router.get("/jobs/{batch_id}", summary="State and progress of a job",
            dependencies=[Depends(require("read"))])
def get_job(batch_id: str, request: Request) -> dict[str, Any]:
    return job_view(request.app, batch_id)


@router.post("/jobs/{batch_id}/cancel", summary="Cancel a job",
             dependencies=[Depends(require("write"))])
def cancel_job(batch_id: str, request: Request) -> dict[str, Any]:
    """Queued assets are dropped; running ones stop after the stage they are in. Cancelled
    assets are ``failed`` with error class ``Cancelled`` (``retry`` resumes them)."""
    app = request.app
    with session_scope(app.state.engine) as session:
        if queries.get_batch(session, batch_id) is None:
            raise ApiError(404, "not_found", f"no job with id {batch_id!r}")
        open_ids = [a.id for a in queries.batch_assets(session, batch_id)
                    if a.state in ("pending", "running")]
    cancelled = app.state.runner.cancel(batch_id, open_ids)
    return {"batch_id": batch_id, "cancelled": cancelled}


@dataclass(frozen=True)
class RetryOptions:
    """Optional changes for a retried asset (the JSON body of ``POST /v1/assets/{id}/retry``)."""

    seed: int | None = None
    """A new seed, 0 <= seed < 2**32; every stage from the bundle on runs again."""
    reseed: bool = False
    """Draw a new random seed (ignored when ``seed`` is given)."""
    params: dict[str, str | int | float | bool] = field(default_factory=dict)
    """Stage parameters merged into the asset's (the stages they change run again)."""

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None) -> RetryOptions:
        """Options from a JSON object; raises ValueError naming an unknown key's nearest
        valid one, or the first bad value."""
        from intake.items import _check_params

        data = dict(data or {})
        known = [f.name for f in fields(cls)]
        for key in data:
            if key not in known:
                near = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else f"; known: {known}"
                raise ValueError(f"unknown retry option {key!r}{hint}")
        seed = data.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                                 or not 0 <= seed <= MAX_SEED):
            raise ValueError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
        if not isinstance(data.get("reseed", False), bool):
            raise ValueError(f"reseed must be true or false, got {data['reseed']!r}")
        return cls(seed=seed, reseed=data.get("reseed", False),
                   params=dict(_check_params(data.get("params"))))


@router.post("/assets/{asset_id}/retry", status_code=202, summary="Retry a failed asset",
             dependencies=[Depends(require("write"))])
def retry_asset(asset_id: str, request: Request,
                body: Annotated[dict[str, Any] | None, Body(
                    examples=[{"reseed": True}, {"seed": 7, "params": {"refine_steps": 300}}])]
                = None) -> dict[str, Any]:
    """Resumes at the first stage not done. Body (optional): ``seed``, ``reseed``,
    ``params``; a new seed or params re-run the stages they change."""
    import secrets

    try:
        options = RetryOptions.from_mapping(body)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    app = request.app
    with session_scope(app.state.engine) as session:
        asset = queries.get_asset(session, asset_id)
        if asset is None:
            raise ApiError(404, "not_found", f"no asset with id {asset_id!r}")
        if asset.state not in queries.RETRYABLE_STATES:
            raise ApiError(409, "not_failed", f"asset {asset_id} is {asset.state}; only failed "
                           "and needs_review assets are retried")
        seed = options.seed if options.seed is not None else (
            secrets.randbelow(2**31 - 1) if options.reseed else None)
        queries.reset_for_retry(session, asset_id, new_seed=seed)
        if options.params:
            queries.override_asset_params(session, asset_id, options.params)
        batch_ids = queries.get_asset_detail(session, asset_id).batch_ids
    latest = _latest_batch(app, batch_ids)
    app.state.runner.retry(latest, asset_id)
    return {"asset_id": asset_id, "batch_id": latest, "state": "pending", "seed": seed}


def _latest_batch(app, batch_ids: list[str]) -> str | None:  # noqa: ANN001
    with session_scope(app.state.engine) as session:
        batches = [queries.get_batch(session, b) for b in batch_ids]
    batches = [b for b in batches if b is not None]
    return max(batches, key=lambda b: b.created_at).id if batches else None
