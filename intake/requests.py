"""What reading a manifest gives: valid asset requests, rejections (file, line, reason)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intake.limits import Kind


@dataclass(frozen=True)
class Rejection:
    """A manifest row (or the whole file, line 0) that did not become a request."""

    file: str
    """The manifest path as given."""
    line: int
    """1-based physical line where the row starts; 0 for a whole-file problem without one."""
    reason: str
    """What is wrong, specific enough to fix it."""
    raw: str = ""
    """The row's text (truncated), for the report and the ``rejected`` record."""
    item_id: str | None = None
    """The row's ``id`` if it had a readable one."""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class AssetRequest:
    """One asset to make: a valid manifest row, one per variant.

    ``seed`` is the effective seed (the row's seed + ``variant``).
    """

    line: int
    item_id: str | None
    kind: Kind
    prompt: str | None
    image_ref: str | None
    """Resolved absolute local path, ``s3://bucket/key`` or ``https://`` URL."""
    image_sha256: str | None
    """Hex SHA-256 of the image bytes; None for a remote image that was not fetched."""
    bundle_ref: str | None
    bundle_sha256: str | None
    seed: int
    variant: int
    generator: str
    init: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    tags: tuple[str, ...] = ()
    mesh_ref: str | None = None
    """Input mesh of a ``mesh`` request: resolved absolute local path or ``s3://`` reference."""
    mesh_sha256: str | None = None
    """Hex SHA-256 of the mesh file; None for a remote mesh that was not fetched."""

    def canonical(self) -> dict[str, Any]:
        """The fields that define the asset's identity, in a stable JSON-ready form.

        Images, bundles and meshes count by content (``sha256:<hex>``) when their bytes were
        read, by reference otherwise. Tags, ids and line numbers do not count. ``mesh`` is
        present only for mesh requests, so the ids of every other request stay as they were.
        """
        canonical = {
            "kind": self.kind,
            "prompt": self.prompt,
            "image": _content_id(self.image_ref, self.image_sha256),
            "bundle": _content_id(self.bundle_ref, self.bundle_sha256),
            "seed": self.seed,
            "variant": self.variant,
            "generator": self.generator,
            "init": self.init,
            "params": {k: self.params[k] for k in sorted(self.params)},
        }
        if self.mesh_ref is not None:
            canonical["mesh"] = _content_id(self.mesh_ref, self.mesh_sha256)
        return canonical

    def canonical_json(self) -> str:
        """:meth:`canonical` as compact JSON with sorted keys."""
        return json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))


def _content_id(ref: str | None, sha: str | None) -> str | None:
    if ref is None:
        return None
    return f"sha256:{sha}" if sha else ref


@dataclass
class ParsedManifest:
    """The outcome of :func:`parse_manifest`."""

    path: Path
    format: str | None
    """``yaml``, ``jsonl``, ``csv``, or None when the extension is unknown."""
    requests: list[AssetRequest] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    rows: int = 0
    """Rows (items) seen, valid or not; variants do not multiply it."""
    sha256: str | None = None
    """Hex SHA-256 of the manifest file's bytes (None when it could not be read)."""

    @property
    def ok(self) -> bool:
        return not self.rejected
