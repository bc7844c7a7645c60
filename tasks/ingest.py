"""Manifest ingestion: validate rows, copy their inputs into the store, upsert the assets.

Rejected rows are recorded with their line and reason; valid rows always go on.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from intake.parse import parse_manifest
from intake.references import FetchedOnce, Fetcher, default_fetcher
from intake.requests import AssetRequest, ParsedManifest
from storage import queries
from storage.identity import asset_identity
from tasks.config import PipelineConfig
from tasks.resources import get_engine, store_for


@dataclass
class IngestResult:
    """What one manifest run recorded: its batch, its assets and its rejected rows."""

    batch_id: str
    manifest: str
    asset_ids: list[str] = field(default_factory=list)
    to_run: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    failed_before: list[str] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    """asset id -> what the user wrote: manifest id, prompt or input file name (for reports)."""


#: Manifest params that choose a generator's weights (part of its identity).
WEIGHT_PARAMS = ("flux_path", "lora_path", "lora_scale", "controlnet_path", "use_controlnet",
                 "redux_path", "use_redux", "matting_path")


def generator_identity(generator: str, config: PipelineConfig, params: dict) -> str:
    """What identifies a generator's weights (paths of the files it loads)."""
    if generator == "kiss3dgen":
        flux = params.get("flux_path", config.flux_path)
        lora = params.get("lora_path", config.lora_path)
        return f"kiss3dgen:{flux}:{lora}:{params.get('lora_scale', config.lora_scale)}"
    if generator == "library":
        return f"library:{_library_version(Path(config.library_path))}"
    if generator in ("kiss3dgen-mesh", "kiss3dgen-image"):
        return _conditioned_identity(generator, config, params)
    return generator


def _conditioned_identity(generator: str, config: PipelineConfig, params: dict) -> str:
    """The weights a reference-conditioned Kiss3DGen generator loads: Flux, LoRA and its scale,
    the ControlNet when used; for ``kiss3dgen-image`` also Redux when used, the matting model
    and the library its coarse bundle comes from."""
    parts = [
        generator,
        str(params.get("flux_path", config.flux_path)),
        str(params.get("lora_path", config.lora_path)),
        str(params.get("lora_scale", config.lora_scale)),
    ]
    if params.get("use_controlnet", True):
        parts.append(f"controlnet={params.get('controlnet_path', config.controlnet_path)}")
    if generator == "kiss3dgen-image":
        if params.get("use_redux", True):
            parts.append(f"redux={params.get('redux_path', config.redux_path)}")
        parts.append(f"matting={params.get('matting_path', config.matting_path)}")
        parts.append(f"library={_library_version(Path(config.library_path))}")
    return ":".join(parts)


def _library_version(folder: Path) -> str:
    jsonl = folder / "library.jsonl"
    if not jsonl.exists():
        return "missing"
    return hashlib.sha256(jsonl.read_bytes()).hexdigest()[:12]


def _input_key(store, local: str, sha256: str) -> str:
    """Copy a local input (image or bundle, plus a bundle's sidecar) into ``inputs/``."""
    path = Path(local)
    key = f"inputs/{sha256}{path.suffix.lower()}"
    if not store.exists(key):
        store.put_file(key, path)
    sidecar = path.with_suffix(".json")
    if sidecar.exists():
        store.put_file(f"inputs/{sha256}.json", sidecar)
    return key


def _stage_input(store, ref: str | None, sha256: str | None, fetched: FetchedOnce) -> str | None:
    """Copy a request's image or bundle into the store's ``inputs/`` (workers read it there).

    A remote reference is stored from the copy parsing fetched (fetched now only when parsing
    accepted it by reference without fetching)."""
    if ref is None:
        return None
    if ref.startswith(("s3://", "https://")):
        local = fetched.local_copy(ref)
        digest = sha256 or _file_sha256(local)
        key = f"inputs/{digest}{Path(ref.split('?')[0]).suffix.lower()}"
        if not store.exists(key):
            store.put_file(key, local)
        return key
    return _input_key(store, ref, sha256 or "")


def _stage_mesh(store, ref: str | None, sha256: str | None, fetched: FetchedOnce) -> str | None:
    """Copy a request's input mesh into the store's ``inputs/`` (the file alone: nothing beside
    it is an input of a mesh)."""
    if ref is None or ref.startswith(("s3://", "https://")):
        return _stage_input(store, ref, sha256, fetched)
    key = f"inputs/{sha256 or _file_sha256(Path(ref))}{Path(ref).suffix.lower()}"
    if not store.exists(key):
        store.put_file(key, Path(ref))
    return key


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ingest_manifest(
    path: Path, config: PipelineConfig, fetcher: Fetcher | None = None
) -> IngestResult:
    """Parse and validate ``path``, record batch + new assets, return what needs running.

    Remote images and bundles are downloaded once (with ``fetcher``, default
    :func:`intake.references.default_fetcher` using the configured store's S3 settings): the
    bytes parsing checked are the bytes stored under ``inputs/``.
    """
    fetcher = fetcher or default_fetcher(config.url_hosts, store_url=config.store_url)
    with tempfile.TemporaryDirectory(prefix="foundry3d-fetched-") as scratch:
        fetched = FetchedOnce(fetcher, Path(scratch))
        parsed = parse_manifest(
            path,
            image_roots=[Path(p) for p in config.image_roots],
            allow_urls=config.allow_url_fetch,
            url_hosts=config.url_hosts,
            max_image_pixels=config.max_image_pixels,
            fetch=config.allow_url_fetch,
            fetcher=fetched,
        )
        return _record(path, parsed, config, fetched)


def _record(
    path: Path, parsed: ParsedManifest, config: PipelineConfig, fetched: FetchedOnce
) -> IngestResult:
    """Store the inputs of the parsed requests and record the batch, its rows and new assets."""
    store = store_for(config.store_url)
    identities: dict[tuple, str] = {}  # generator identity per generator + weight params
    with Session(get_engine(config.database_url)) as session:
        batch = queries.create_batch(
            session, manifest_path=str(path), manifest_sha256=parsed.sha256
        )
        result = IngestResult(batch_id=batch.id, manifest=str(path))
        items = []
        for rejection in parsed.rejected:
            items.append({"line": rejection.line, "status": "rejected",
                          "reason": rejection.reason, "raw": rejection.raw})
            result.rejected.append(
                {"file": str(rejection.file), "line": rejection.line, "reason": rejection.reason}
            )
        assets: dict[str, dict] = {}  # asset id -> insert arguments, in manifest order
        for request in parsed.requests:
            values = _asset_values(store, request, config, identities, fetched)
            assets.setdefault(values["asset_id"], values)
            result.labels.setdefault(values["asset_id"], _label(request))
            items.append({"line": request.line, "item_id": request.item_id,
                          "asset_id": values["asset_id"], "status": "accepted"})
        queries.insert_assets_if_new(session, list(assets.values()))
        queries.add_batch_items(session, batch.id, items)
        session.commit()
        result.asset_ids = list(assets)
        states = queries.batch_asset_states(session, batch.id)
    for asset_id in result.asset_ids:
        state = states.get(asset_id)
        if state == "succeeded":
            result.already_done.append(asset_id)
        elif state == "failed":
            result.failed_before.append(asset_id)
        else:
            result.to_run.append(asset_id)
    return result


def _asset_values(
    store,
    request: AssetRequest,
    config: PipelineConfig,
    identities: dict[tuple, str],
    fetched: FetchedOnce,
) -> dict:
    """The :func:`storage.queries.insert_asset_if_new` arguments of a request (inputs copied)."""
    params = dict(request.params)
    key = (request.generator, *(str(params.get(k)) for k in WEIGHT_PARAMS))
    if key not in identities:  # reading the library's version once, not once per row
        identities[key] = generator_identity(request.generator, config, params)
    return {
        "asset_id": asset_identity(request.canonical(), identities[key]),
        "kind": request.kind,
        "prompt": request.prompt,
        "image_ref": _stage_input(store, request.image_ref, request.image_sha256, fetched),
        "image_sha256": request.image_sha256,
        "bundle_ref": _stage_input(store, request.bundle_ref, request.bundle_sha256, fetched),
        "mesh_ref": _stage_mesh(store, request.mesh_ref, request.mesh_sha256, fetched),
        "mesh_sha256": request.mesh_sha256,
        "seed": request.seed,
        "variant": request.variant,
        "generator": request.generator,
        "init": request.init,
        "params": params,
        "tags": list(request.tags),
    }


def _label(request: AssetRequest) -> str:
    """A short human name for a request: its manifest id, else its prompt or input file."""
    text = request.prompt or Path(request.image_ref or request.bundle_ref or "").name
    if request.mesh_ref:
        text = f"{Path(request.mesh_ref).name}: {text}"
    if request.item_id:
        text = f"{request.item_id}: {text}"
    if request.variant:
        text = f"{text} (variant {request.variant})"
    return text
