"""Manifest parsing: YAML, JSONL or CSV rows in, validated asset requests and rejections out.

Every row is judged on its own: a bad row becomes a :class:`Rejection` (file, line, reason)
and never costs a valid row its place. Whole-file problems (missing, empty, not UTF-8,
unknown extension, YAML syntax error) give one rejection at line 0 or the line of the error.

Formats (see tests/data/good_manifests/ for one of each):

- YAML (``.yaml``/``.yml``): a mapping with an ``items:`` list and an optional ``defaults:``
  mapping whose keys (seed, variants, tags, generator, init, params) apply to every item;
  an item's own value wins, ``params`` are merged and ``tags`` are concatenated. Anchors and
  aliases are refused (no alias bombs), as are duplicate keys.
- JSONL (``.jsonl``/``.ndjson``): one JSON object per line; blank lines are skipped.
- CSV (``.csv``): a header row with columns prompt, image, bundle, id, seed, variants,
  tags (``;``-separated), generator, init, params (a JSON object); empty cells are absent.

A row's ``params`` must each be a parameter that a stage of its generator and init reads, with
a value of the right type and range (:mod:`models.parameters`); otherwise the row is rejected
naming the key and the nearest valid one.

Line numbers are physical lines (1-based): where a YAML item starts, the JSONL line, the
first line of a CSV row (the header is line 1).

A ``mesh`` row (an input mesh plus a ``prompt``) is served by the ``kiss3dgen-mesh`` generator
and starts Stage II from that mesh (init ``mesh``); its file must be .glb, .gltf (buffers
embedded), .obj, .ply, .stl or .off, at most :data:`intake.limits.MAX_MESH_BYTES`, and must
parse into triangles (:mod:`intake.meshes`).

:func:`parse_manifest` returns everything at once; :class:`ManifestRows` yields each row's
outcome as it is judged (``foundry3d validate`` streams a million-row JSONL file this way).

Images, bundles and meshes are local paths (relative ones resolve against the manifest's folder and
must stay, symlinks resolved, inside that folder or one of ``image_roots``), ``s3://bucket/key``
references, or ``https://`` URLs from allow-listed hosts when URLs are allowed. Local images are
checked before acceptance: format (PNG/JPEG/WebP; bundles PNG 2:1), the header's pixel count
against ``max_image_pixels`` without decoding, then a full decode.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from intake import readers
from intake.items import ManifestDefaults, ManifestItem, validation_reason
from intake.limits import FORMATS
from intake.readers import FileProblem, Row, csv_rows, read_text, yaml_rows
from intake.references import (
    Fetcher,
    ReferenceContext,
    ReferenceRejected,
    default_fetcher,
    resolve_reference,
)
from intake.requests import AssetRequest, ParsedManifest, Rejection
from intake.streaming import JsonlStream


@dataclass(frozen=True)
class AcceptedRow:
    """A valid manifest row and the requests it became (one per variant)."""

    line: int
    """1-based physical line where the row starts."""
    requests: list[AssetRequest]


class ManifestRows:
    """The outcome of each row of a manifest, one at a time, in file order: an
    :class:`AcceptedRow` or a :class:`intake.requests.Rejection`.

    Whole-file problems come first (line 0, or the line of a YAML syntax error); the
    ``defaults`` block's problem and YAML top-level problems take their line's place. JSONL
    files are read line by line (at most ``max_stream_bytes``, by default the limit of a run,
:data:`intake.limits.MAX_MANIFEST_BYTES`); YAML and CSV are read whole (at
    most :data:`intake.limits.MAX_MANIFEST_BYTES`) and then judged row by row. After the
    iteration :attr:`rows` counts the rows seen and :attr:`sha256` is the file's hash. The
    arguments are those of :func:`parse_manifest`. Never raises for bad input.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        image_roots: Sequence[str | os.PathLike] = (),
        allow_urls: bool = False,
        url_hosts: Sequence[str] = (),
        max_image_pixels: int = 64_000_000,
        fetch: bool = False,
        fetcher: Fetcher | None = None,
        max_stream_bytes: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.file = str(self.path)
        self.format = FORMATS.get(self.path.suffix.lower())
        self.rows = 0
        self.sha256: str | None = None
        self.max_stream_bytes = max_stream_bytes
        manifest_dir = self.path.resolve().parent
        roots = [manifest_dir, *(Path(r).resolve() for r in image_roots)]
        self.ctx = ReferenceContext(
            manifest_dir=manifest_dir,
            roots=roots,
            root_names=", ".join(str(r) for r in roots),
            allow_urls=allow_urls,
            url_hosts={h.lower() for h in url_hosts},
            max_image_pixels=max_image_pixels,
            fetch=fetch,
            fetcher=fetcher or default_fetcher(url_hosts),
        )

    def __iter__(self) -> Iterator[AcceptedRow | Rejection]:
        if self.format is None:
            yield Rejection(
                self.file, 0,
                f"unknown manifest format {self.path.suffix or '(no extension)'!r}; "
                f"use one of {', '.join(sorted(FORMATS))}",
            )
            return
        try:
            yield from self._judged(self._raw_rows())
        except FileProblem as exc:
            yield Rejection(self.file, exc.line, exc.reason)

    def _raw_rows(self) -> Iterator[Row | Rejection]:
        """The YAML defaults block first, then raw rows and top-level problems in line order.
        Raises :class:`FileProblem`."""
        if self.format == "jsonl":
            # The limit of a run unless the caller streams bigger files (read at call time, so
            # the one limit lives in intake.readers).
            stream = JsonlStream(self.path, self.max_stream_bytes or readers.MAX_MANIFEST_BYTES)
            yield from stream
            self.sha256 = stream.sha256
            return
        text, self.sha256 = read_text(self.path)
        if self.format == "csv":
            yield from csv_rows(text)
            return
        defaults_row, rows, problems = yaml_rows(text)
        if defaults_row is not None:
            yield _DefaultsRow(defaults_row)
        ordered: list[Row | Rejection] = [Rejection(self.file, line, reason)
                                          for line, reason in problems]
        ordered.extend(rows)
        ordered.sort(key=lambda r: r.line)
        yield from ordered

    def _judged(self, raw: Iterator[Row | Rejection]) -> Iterator[AcceptedRow | Rejection]:
        defaults: dict[str, Any] = {}
        defaults_problem: str | None = None
        first_line_of_id: dict[str, int] = {}
        for row in raw:
            if isinstance(row, Rejection):
                yield row
                continue
            if isinstance(row, _DefaultsRow):
                defaults, defaults_problem = _defaults(row.row)
                if defaults_problem:
                    yield Rejection(self.file, row.row.line, defaults_problem, row.row.raw)
                continue
            self.rows += 1
            item_id = _raw_id(row.data)
            outcome = _accept(row, defaults, defaults_problem, item_id, first_line_of_id,
                              self.ctx)
            if isinstance(outcome, str):
                yield Rejection(self.file, row.line, outcome, row.raw, item_id)
            else:
                yield AcceptedRow(row.line, outcome)


@dataclass(frozen=True)
class _DefaultsRow:
    """The YAML ``defaults:`` block, passed along the raw rows ahead of the items."""

    row: Row


def parse_manifest(
    path: str | os.PathLike,
    *,
    image_roots: Sequence[str | os.PathLike] = (),
    allow_urls: bool = False,
    url_hosts: Sequence[str] = (),
    max_image_pixels: int = 64_000_000,
    fetch: bool = False,
    fetcher: Fetcher | None = None,
) -> ParsedManifest:
    """Read a manifest and split it into valid :class:`AssetRequest`\\ s and :class:`Rejection`\\ s.

    ``image_roots``: folders (besides the manifest's own) that local images may live in.
    ``allow_urls`` / ``url_hosts``: whether ``https://`` images are accepted, and from where.
    ``fetch``: download ``s3://``/``https://`` images to check them and hash their content
    (with ``fetcher``, default :func:`default_fetcher`); otherwise they are accepted by
    reference and their identity is the reference. Never raises for bad input.
    """
    rows = ManifestRows(
        path, image_roots=image_roots, allow_urls=allow_urls, url_hosts=url_hosts,
        max_image_pixels=max_image_pixels, fetch=fetch, fetcher=fetcher,
    )
    result = ParsedManifest(path=Path(path), format=rows.format)
    for outcome in rows:
        if isinstance(outcome, Rejection):
            result.rejected.append(outcome)
        else:
            result.requests.extend(outcome.requests)
    result.rows = rows.rows
    result.sha256 = rows.sha256
    result.rejected.sort(key=lambda r: r.line)
    return result


def _defaults(row: Row | None) -> tuple[dict[str, Any], str | None]:
    if row is None or (row.data is None and row.problem is None):
        return {}, None
    if row.problem:
        return {}, f"defaults: {row.problem}"
    try:
        model = ManifestDefaults.model_validate(row.data)
    except ValidationError as exc:
        return {}, f"defaults: {validation_reason(exc)}"
    return model.model_dump(exclude_none=True), None


def _raw_id(data: Any) -> str | None:
    if isinstance(data, dict):
        value = data.get("id")
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    return None


def _accept(
    row: Row,
    defaults: dict[str, Any],
    defaults_problem: str | None,
    item_id: str | None,
    first_line_of_id: dict[str, int],
    ctx: ReferenceContext,
) -> list[AssetRequest] | str:
    """The row's requests, or the reason it is rejected."""
    if row.problem:
        return row.problem
    if not isinstance(row.data, dict):
        got = "nothing" if row.data is None else type(row.data).__name__
        return f"item must be a mapping of keys to values, got {got}"
    if item_id is not None:
        if item_id in first_line_of_id:
            return f"duplicate id {item_id!r} (first used on line {first_line_of_id[item_id]})"
        first_line_of_id[item_id] = row.line
    if defaults_problem:
        return "not read: the manifest's 'defaults' block is invalid"
    merged = {**defaults, **row.data}
    if isinstance(defaults.get("params"), dict) and isinstance(row.data.get("params"), dict):
        merged["params"] = {**defaults["params"], **row.data["params"]}
    if isinstance(defaults.get("tags"), list) and isinstance(row.data.get("tags"), list):
        merged["tags"] = list(dict.fromkeys([*defaults["tags"], *row.data["tags"]]))
    try:
        item = ManifestItem.model_validate(merged)
    except ValidationError as exc:
        return validation_reason(exc)
    image_ref = image_sha = bundle_ref = bundle_sha = mesh_ref = mesh_sha = None
    try:
        if item.image is not None:
            image_ref, image_sha = resolve_reference(item.image, "image", ctx)
        if item.bundle is not None:
            bundle_ref, bundle_sha = resolve_reference(item.bundle, "bundle", ctx)
        if item.mesh is not None:
            mesh_ref, mesh_sha = resolve_reference(item.mesh, "mesh", ctx)
    except ReferenceRejected as exc:
        return str(exc)
    return [
        AssetRequest(
            line=row.line,
            item_id=item.id,
            kind=item.kind,
            prompt=item.prompt,
            image_ref=image_ref,
            image_sha256=image_sha,
            bundle_ref=bundle_ref,
            bundle_sha256=bundle_sha,
            seed=item.seed + k,
            variant=k,
            generator=str(item.generator),
            init=str(item.init),
            params=dict(item.params),
            tags=tuple(item.tags),
            mesh_ref=mesh_ref,
            mesh_sha256=mesh_sha,
        )
        for k in range(item.variants)
    ]
