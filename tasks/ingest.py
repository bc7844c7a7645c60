"""Manifest ingestion: validate rows, copy their inputs into the store, upsert the assets.

Rejected rows are recorded with their line and reason; valid rows always go on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from intake.parse import parse_manifest
from intake.references import (
    FetchedOnce,
    Fetcher,
    ReferenceRejected,
    default_fetcher,
    read_sidecar,
    reference_roots,
)
from intake.requests import AssetRequest, ParsedManifest
from storage import queries
from storage.db import in_transaction
from storage.identity import asset_identity
from storage.objects import ObjectStore, StoreError
from storage.redact import redact_text
from storage.schema import new_id
from tasks.config import PipelineConfig
from tasks.resources import get_engine, store_for
from tasks.scratch import scratch_folder


@dataclass
class IngestResult:
    """What one manifest run recorded: its batch, its assets and its rejected rows."""

    batch_id: str
    manifest: str
    asset_ids: list[str] = field(default_factory=list)
    to_run: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    failed_before: list[str] = field(default_factory=list)
    review_before: list[str] = field(default_factory=list)
    """Assets an earlier run left ``needs_review``: not re-run (``foundry3d retry`` does)."""
    rejected: list[dict] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    """asset id -> what the user wrote: manifest id, prompt or input file name (for reports)."""


#: Manifest params that choose a generator's weights (part of its identity).
WEIGHT_PARAMS = ("flux_path", "lora_path", "lora_scale", "controlnet_path", "use_controlnet",
                 "redux_path", "use_redux", "matting_path", "caption_path", "zero123_path",
                 "coarse_lrm_path", "coarse_lrm_variant")


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
        zero123 = params.get("zero123_path", config.zero123_path)
        if zero123 is not None:  # the coarse bundle comes from Zero123++ + the LRM
            lrm = params.get("coarse_lrm_path", config.lrm_path)
            variant = params.get("coarse_lrm_variant", config.lrm_variant)
            parts.append(f"zero123={zero123}:lrm={lrm}:{variant}")
        else:
            parts.append(f"library={_library_version(Path(config.library_path))}")
    return ":".join(parts)


def _library_version(folder: Path) -> str:
    jsonl = folder / "library.jsonl"
    if not jsonl.exists():
        return "missing"
    return hashlib.sha256(jsonl.read_bytes()).hexdigest()[:12]


def _input_key(store: ObjectStore, local: str, sha256: str, roots: list[Path]) -> str:
    """Copy a local input (image or bundle, plus a bundle's sidecar) into ``inputs/``.

    The sidecar is read again under the rules validation applied (:func:`read_sidecar`:
    confined to ``roots``, a regular file, small, a JSON object), so a sidecar swapped for a
    symlink or a FIFO after validation is refused, not copied or waited on."""
    path = Path(local)
    key = f"inputs/{sha256}{path.suffix.lower()}"
    if not store.exists(key):
        store.put_file(key, path)
    sidecar = read_sidecar(path, roots) if path.suffix.lower() == ".png" else None
    if sidecar is not None:
        store.put_bytes(f"inputs/{sha256}.json", sidecar, content_type="application/json")
    return key


class InputNotStored(Exception):
    """A request's image or bundle could not be fetched or stored; the message says why."""


class _Inputs:
    """Copies requests' images and bundles into the store's ``inputs/`` (workers read them
    there), opening the store on first need and remembering each reference's outcome.

    A failure (store down, bucket missing, reference unreadable) is remembered per reference,
    so the variants of one row, or rows sharing an image, fail once and fast; the message is
    redacted, since store errors name endpoints.
    """

    def __init__(self, store_url: str, fetched: FetchedOnce, roots: list[Path]) -> None:
        self.store_url = store_url
        self.fetched = fetched
        self.roots = roots
        self._store: ObjectStore | None = None
        self._keys: dict[str, str] = {}
        self._failures: dict[str, str] = {}

    def store(self) -> ObjectStore:
        if self._store is None:
            self._store = store_for(self.store_url)
        return self._store

    def key(self, ref: str | None, sha256: str | None) -> str | None:
        """The ``inputs/`` key of ``ref``; raises :class:`InputNotStored` with the reason."""
        if ref is None:
            return None
        if ref in self._failures:
            raise InputNotStored(self._failures[ref])
        if ref not in self._keys:
            try:
                self._keys[ref] = self._copy(ref, sha256)
            except Exception as exc:  # noqa: BLE001 - one input's failure rejects its row only
                self._failures[ref] = _reason(ref, exc)
                raise InputNotStored(self._failures[ref]) from None
        return self._keys[ref]

    def _copy(self, ref: str, sha256: str | None) -> str:
        if ref.startswith(("s3://", "https://")):
            local = self.fetched.local_copy(ref)
            digest = sha256 or _file_sha256(local)
            key = f"inputs/{digest}{Path(ref.split('?')[0]).suffix.lower()}"
            if not self.store().exists(key):
                self.store().put_file(key, local)
            return key
        return _input_key(self.store(), ref, sha256 or "", self.roots)


def _reason(ref: str, exc: BaseException) -> str:
    """One line, secrets masked: why ``ref`` could not be stored."""
    if isinstance(exc, ReferenceRejected | StoreError):
        detail = str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        detail = exc.strerror
    else:
        detail = f"{type(exc).__name__}: {exc}"
    detail = " ".join(detail.split())  # one line, whatever the library's message looked like
    return redact_text(f"input {ref!r} could not be stored: {detail}")


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
    with scratch_folder("fetched") as scratch:
        fetched = FetchedOnce(fetcher, scratch)
        parsed = parse_manifest(
            path,
            image_roots=[Path(p) for p in config.image_roots],
            allow_urls=config.allow_url_fetch,
            url_hosts=config.url_hosts,
            max_image_pixels=config.max_image_pixels,
            fetch=config.allow_url_fetch,
            fetcher=fetched,
        )
        roots = reference_roots(path, config.image_roots)
        return _record(path, parsed, config, _Inputs(config.store_url, fetched, roots))


def _record(
    path: Path, parsed: ParsedManifest, config: PipelineConfig, inputs: _Inputs
) -> IngestResult:
    """Store the inputs of the parsed requests and record the batch, its rows and new assets.

    A request whose inputs cannot be stored (unreachable S3, missing bucket, a file that
    changed since validation) rejects its row with the line and the reason; the other rows
    go on. The inputs are stored first, then everything is recorded in one transaction,
    retried through a database outage of up to ``config.db_retry_seconds``
    (:class:`storage.db.DatabaseUnavailable` after that, with nothing recorded)."""
    identities: dict[tuple, str] = {}  # generator identity per generator + weight params
    # The batch id is chosen here, not by the database, so that a retried transaction can
    # tell whether its first try was written after all (its commit reply lost).
    result = IngestResult(batch_id=new_id(), manifest=str(path))
    items = []
    for rejection in parsed.rejected:
        reason = redact_text(rejection.reason)
        items.append({"line": rejection.line, "status": "rejected",
                      "reason": reason, "raw": redact_text(rejection.raw)})
        result.rejected.append(
            {"file": str(rejection.file), "line": rejection.line, "reason": reason}
        )
    assets: dict[str, dict] = {}  # asset id -> insert arguments, in manifest order
    failed_lines: set[int] = set()
    for request in parsed.requests:
        if request.line in failed_lines:
            continue  # another variant of a row already rejected
        try:
            values = _asset_values(inputs, request, config, identities)
        except InputNotStored as exc:
            failed_lines.add(request.line)
            items.append({"line": request.line, "item_id": request.item_id,
                          "status": "rejected", "reason": str(exc)})
            result.rejected.append(
                {"file": str(path), "line": request.line, "reason": str(exc)}
            )
            continue
        assets.setdefault(values["asset_id"], values)
        result.labels.setdefault(values["asset_id"], _label(request))
        items.append({"line": request.line, "item_id": request.item_id,
                      "asset_id": values["asset_id"], "status": "accepted",
                      "reference": request.image_ref or request.bundle_ref})
    result.asset_ids = list(assets)
    result.rejected.sort(key=lambda r: r["line"])

    def record(session: Session) -> dict[str, str]:
        record_batch(session, result.batch_id, str(path), parsed.sha256,
                     list(assets.values()), items)
        return queries.batch_asset_states(session, result.batch_id)

    states = in_transaction(get_engine(config.database_url), record,
                            retry_seconds=config.db_retry_seconds, step=INGEST_STEP)
    for asset_id in result.asset_ids:
        state = states.get(asset_id)
        if state == "succeeded":
            result.already_done.append(asset_id)
        elif state == "failed":
            result.failed_before.append(asset_id)
        elif state == "needs_review":
            result.review_before.append(asset_id)
        else:
            result.to_run.append(asset_id)
    return result


INGEST_STEP = "recording the manifest (ingest)"
"""What :class:`storage.db.DatabaseUnavailable` says ingest was doing."""


def record_batch(
    session: Session,
    batch_id: str,
    manifest_path: str,
    manifest_sha256: str | None,
    assets: list[dict],
    items: list[dict],
) -> bool:
    """Record batch ``batch_id`` of a manifest run, its rows (``items``) and its new assets
    (:func:`storage.queries.insert_assets_if_new` arguments); False when that batch is
    recorded already.

    Safe to run again in a new transaction after one whose commit reply was lost: the batch,
    its rows and its assets were written together or not at all, so a batch found means all
    of them are there, and assets are inserted only where their id is new.
    """
    if queries.get_batch(session, batch_id) is not None:
        return False
    queries.create_batch(session, manifest_path=manifest_path,
                         manifest_sha256=manifest_sha256, batch_id=batch_id)
    queries.insert_assets_if_new(session, assets)
    queries.add_batch_items(session, batch_id, items)
    return True


def _asset_values(
    inputs: _Inputs,
    request: AssetRequest,
    config: PipelineConfig,
    identities: dict[tuple, str],
) -> dict:
    """The :func:`storage.queries.insert_asset_if_new` arguments of a request (inputs copied).

    Raises :class:`InputNotStored` when the request's image or bundle cannot be stored."""
    params = dict(request.params)
    key = (request.generator, *(str(params.get(k)) for k in WEIGHT_PARAMS))
    if key not in identities:  # reading the library's version once, not once per row
        identities[key] = generator_identity(request.generator, config, params)
    identity = identities[key]
    caption = params.get("caption_path", config.caption_path)
    if request.prompt is None and (request.kind == "mesh" or (
            request.generator == "kiss3dgen-image" and caption is not None)):
        identity += f":caption={caption}"  # the prompt comes from this captioning model
    return {
        "asset_id": asset_identity(request.canonical(), identity),
        "kind": request.kind,
        "prompt": request.prompt,
        "image_ref": inputs.key(request.image_ref, request.image_sha256),
        "image_sha256": request.image_sha256,
        "bundle_ref": inputs.key(request.bundle_ref, request.bundle_sha256),
        "mesh_ref": inputs.key(request.mesh_ref, request.mesh_sha256),
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
    source = request.image_ref or request.bundle_ref or request.mesh_ref or ""
    text = request.prompt or Path(source).name
    if request.mesh_ref and request.prompt:  # an unprompted enhance is named by its mesh
        text = f"{Path(request.mesh_ref).name}: {text}"
    if request.item_id:
        text = f"{request.item_id}: {text}"
    if request.variant:
        text = f"{text} (variant {request.variant})"
    return text
