"""Routes of assets: search and list, one asset's record, its files (with HTTP ranges)."""

from __future__ import annotations

import base64
import json
import re
import time
from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from foundry3d.api.auth import require
from foundry3d.api.errors import ApiError
from foundry3d.api.query_prefetch import prefetched
from foundry3d.api.views import (
    KEY_METRICS,
    error_view,
    files_of,
    iso,
    request_view,
    stage_run_view,
    thumbnail_of,
)
from storage import queries
from storage.db import session_scope
from storage.objects import InvalidKey, LocalObjectStore, ObjectNotFound, validate_key
from storage.schema import ASSET_STATES, Asset, BatchItem

router = APIRouter(prefix="/v1", tags=["assets"])
MAX_LIMIT = 100
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _encode_cursor(value: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> dict:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded))
        if not isinstance(value, dict):
            raise ValueError
        return value
    except ValueError:
        raise ApiError(422, "invalid_cursor", "the cursor is not one this API returned") from None


def _cards(session, assets: dict[str, Any], order: list[str],  # noqa: ANN001
           scores: dict[str, float]) -> list[dict[str, Any]]:
    """Gallery cards: prompt, state, tags, key metrics, thumbnail and GLB URLs; ``assets``
    maps ids to Asset objects or rows of :data:`storage.queries.CARD_COLUMNS`."""
    # The key metrics and the weak-match flag in one read (a database round trip per page).
    found = queries.metrics_of(session, order, [*KEY_METRICS, "library_match_weak"]) \
        if order else {}
    metrics = {asset_id: {k: v for k, v in values.items() if k in KEY_METRICS}
               for asset_id, values in found.items()}
    weak = {asset_id: values for asset_id, values in found.items()
            if "library_match_weak" in values}
    references = queries.asset_references(session, order) if order else {}
    cards = []
    for asset_id in order:
        asset = assets.get(asset_id)
        if asset is None:
            continue
        names = {k.rsplit("/", 1)[-1] for k in (asset.output_keys or {}).values()
                 if isinstance(k, str)}
        card = {
            "asset_id": asset.id, "prompt": asset.prompt, "kind": asset.kind,
            "state": asset.state, "tags": asset.tags, "stage": asset.current_stage,
            "created_at": iso(asset.created_at), "metrics": metrics.get(asset_id, {}),
            "thumbnail_url": thumbnail_of(asset.id, names),
            "glb_url": f"/v1/assets/{asset.id}/files/asset.glb" if "asset.glb" in names else None,
            "url": f"/v1/assets/{asset.id}",
            "references": references.get(asset_id, []),
            "library_match_weak": bool(weak[asset_id]["library_match_weak"])
            if asset_id in weak else None,
        }
        if asset_id in scores:
            card["score"] = scores[asset_id]
        cards.append(card)
    return cards


@router.get("/assets", summary="Search and list assets",
            dependencies=[Depends(require("read"))])
def list_assets(
    request: Request,
    q: Annotated[str | None, Query(max_length=500, description="Words (keyword + semantic).")]
    = None,
    tag: Annotated[str | None, Query(max_length=64)] = None,
    state: Annotated[str | None, Query(description=f"One of {', '.join(ASSET_STATES)}.")] = None,
    batch: Annotated[str | None, Query(max_length=64, description="A batch (job) id.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
    cursor: Annotated[str | None, Query(max_length=2000)] = None,
) -> dict[str, Any]:
    """With ``q``: ranked by :func:`storage.search.hybrid_search`; otherwise newest first.
    ``next_cursor`` pages on (null on the last page)."""
    if state is not None and state not in ASSET_STATES:
        raise ApiError(422, "invalid_request", f"unknown state {state!r}",
                       {"expected": list(ASSET_STATES)})
    app = request.app
    position = _decode_cursor(cursor) if cursor else {}
    with session_scope(app.state.engine) as session:
        if q and q.strip():
            return _search(app, request.state, session, q.strip(), tag, state, batch, limit,
                           position)
        after = None
        if position:
            try:
                after = (datetime.fromisoformat(position["c"]), str(position["i"]))
            except (KeyError, ValueError, TypeError):
                raise ApiError(422, "invalid_cursor",
                               "the cursor is not one this API returned") from None
        page = queries.page_assets(session, state=state, tag=tag, batch_id=batch, after=after,
                                   limit=limit + 1)
        more = len(page) > limit
        page = page[:limit]
        next_cursor = _encode_cursor({"c": page[-1].created_at.isoformat(), "i": page[-1].id}) \
            if more else None
        items = _cards(session, {a.id: a for a in page}, [a.id for a in page], {})
        return {"items": items, "next_cursor": next_cursor}


def _search(app, request_state, session, q: str, tag, state, batch,  # noqa: ANN001
            limit: int, position: dict) -> JSONResponse:
    offset = int(position.get("o", 0)) if position.get("q") == q else 0
    laps = _Laps()
    wanted = offset + limit + 1
    # A batch filter is applied to the ranked hits: rank a wider pool so the page stays full.
    pool = wanted * 10 if batch else wanted
    # The server's in-memory index ranks as storage.search.hybrid_search, the semantic part
    # in int8 first over a large index (method "auto"; see storage.quantised_embeddings).
    # The query has been embedding since the request arrived (foundry3d.api.query_prefetch);
    # the index's worker thread takes the vector and scores it while this one ranks the
    # keyword matches (profile parts "search.embed": the worker's wait for the vector,
    # "search.semantic", and "search.query_embedding": the embedding itself).
    profile: dict[str, tuple[float, float]] = {}
    pending = prefetched(request_state, q)
    embedding = pending.vector if pending is not None else (lambda: app.state.embed(q))
    hits = app.state.search_index.search(session, q, embedding, limit=pool,
                                         state=state, tag=tag, method="auto", profile=profile)
    laps.lap("search")
    if pending is not None:
        profile["query_embedding"] = pending.timing()
    if batch:
        members = set(session.scalars(sa.select(BatchItem.asset_id).where(
            BatchItem.batch_id == batch)))
        hits = [h for h in hits if h.asset_id in members]
    page = hits[offset: offset + limit]
    ids = [h.asset_id for h in page]
    assets = queries.asset_cards(session, ids)
    items = _cards(session, assets, ids, {h.asset_id: round(h.score, 4) for h in page})
    by_id = {h.asset_id: h for h in page}
    for item in items:
        hit = by_id[item["asset_id"]]
        item["keyword_score"], item["semantic_score"] = hit.keyword_score, hit.semantic_score
    more = len(hits) > offset + limit
    laps.lap("cards")
    # Wall and CPU time per part (the CPU time is the process's, the index's worker thread
    # included: what a busy machine cannot inflate by making the request wait; the search's
    # parts are per thread).
    # The search's own parts are named "search." + part; the whole request's time, framework
    # included, is in the Server-Timing header (foundry3d.api.app).
    parts = {**laps.parts, **{f"search.{k}": v for k, v in profile.items()}}
    # Encoded here: the cards are plain JSON values already, and FastAPI's encoder would walk
    # them all again (about 1 ms of CPU for a page of 20).
    return JSONResponse({
        "items": items,
        "next_cursor": _encode_cursor({"q": q, "o": offset + limit}) if more else None,
        "timing_ms": {k: round(wall, 2) for k, (wall, _) in parts.items()}
        | {"cpu": round(sum(cpu for wall, cpu in laps.parts.values()), 2)},
        "cpu_ms": {k: round(cpu, 2) for k, (_, cpu) in parts.items()}})


class _Laps:
    """Wall and CPU milliseconds of the consecutive parts of a request."""

    def __init__(self) -> None:
        self.parts: dict[str, tuple[float, float]] = {}
        self.last = (time.perf_counter(), time.process_time())

    def lap(self, name: str) -> None:
        now = (time.perf_counter(), time.process_time())
        self.parts[name] = (1000 * (now[0] - self.last[0]), 1000 * (now[1] - self.last[1]))
        self.last = now


@router.get("/assets/{asset_id}", summary="One asset's record",
            dependencies=[Depends(require("read"))])
def get_asset(asset_id: str, request: Request) -> dict[str, Any]:
    """The request, state, stages with attempts and errors, metrics, batches and files."""
    app = request.app
    with session_scope(app.state.engine) as session:
        detail = queries.get_asset_detail(session, asset_id)
        if detail is None:
            raise ApiError(404, "not_found", f"no asset with id {asset_id!r}")
        asset = detail.asset
        view = {
            "asset_id": asset.id, "state": asset.state, "stage": asset.current_stage,
            "attempts": asset.attempts, "error": error_view(asset),
            "request": request_view(asset), "batches": detail.batch_ids,
            "created_at": iso(asset.created_at), "finished_at": iso(asset.finished_at),
            "stages": [stage_run_view(r) for r in detail.stage_runs],
            "metrics": detail.metrics,
        }
        view["request"]["references"] = queries.asset_references(
            session, [asset_id]).get(asset_id, [])
        view["library_match"] = _library_match(app.state.store, asset, detail.metrics)
    keys = app.state.store.list(f"assets/{asset_id}/")
    view["files"] = files_of(asset_id, keys)
    return view


def _library_match(store, asset: Asset, metrics: dict[str, float]) -> dict | None:  # noqa: ANN001
    """The retrieved library mesh (its ``match.json``) with ``weak`` and ``similarity`` from the
    metrics; None for an asset not built from the library."""
    match: dict[str, Any] = {}
    key = (asset.output_keys or {}).get("match.json")
    if key:
        try:
            match = json.loads(store.get_bytes(key))
        except (ObjectNotFound, ValueError):
            match = {}
    if "library_similarity" in metrics:
        match["similarity"] = metrics["library_similarity"]
    if "library_match_weak" in metrics:
        match["weak"] = bool(metrics["library_match_weak"])
    return match or None


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive of a single ``bytes=`` range; None if there is no header."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        raise ApiError(416, "range_not_satisfiable", f"unsupported range {header!r} (one "
                       "bytes=start-end range)", headers={"Content-Range": f"bytes */{size}"})
    first, last = match.groups()
    if not first:  # a suffix: the last N bytes
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise ApiError(416, "range_not_satisfiable", f"range {header!r} is outside the "
                       f"{size} bytes", headers={"Content-Range": f"bytes */{size}"})
    return start, end


_MEDIA = {".glb": "model/gltf-binary", ".png": "image/png", ".json": "application/json",
          ".webp": "image/webp", ".usdz": "model/vnd.usdz+zip", ".obj": "text/plain"}


@router.get("/assets/{asset_id}/files/{name}", summary="Download an asset's file",
            dependencies=[Depends(require("read"))], response_class=Response)
def get_file(asset_id: str, name: str, request: Request) -> Response:
    """Streams the file from the object store; honours one ``Range: bytes=`` range."""
    store = request.app.state.store
    try:
        key = validate_key(f"assets/{asset_id}/{name}")
    except InvalidKey:
        raise ApiError(404, "not_found", f"no file {name!r}") from None
    if "/" in name:
        raise ApiError(404, "not_found", f"no file {name!r}")
    media = _MEDIA.get("." + name.rsplit(".", 1)[-1].lower(), "application/octet-stream")
    if isinstance(store, LocalObjectStore):
        path = store.root / key
        if not path.is_file():
            raise ApiError(404, "not_found", f"asset {asset_id} has no file {name!r}")
        return FileResponse(path, media_type=media)  # answers Range requests itself
    try:
        size = store.size(key)
        span = _byte_range(request.headers.get("range", ""), size)
        data = store.get_bytes(key)
    except ObjectNotFound:
        raise ApiError(404, "not_found", f"asset {asset_id} has no file {name!r}") from None
    headers = {"Accept-Ranges": "bytes"}
    if span is None:
        return Response(data, media_type=media, headers=headers)
    start, end = span
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return Response(data[start: end + 1], status_code=206, media_type=media, headers=headers)
