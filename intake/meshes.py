"""Acceptance checks for input meshes named in manifests (``mesh: PATH``), before any work is
queued: a known file type, a size cap, and a parse that must yield triangles.

The mesh is parsed from the bytes that were read (the bytes whose hash is the asset's identity),
so what was checked is what gets stored. A ``.gltf`` must embed its buffers (``data:`` URIs):
the file is stored alone under ``inputs/``, and a buffer beside it would be left behind.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import PurePosixPath

from intake.limits import MAX_MESH_BYTES, MESH_SUFFIXES


class MeshRejected(ValueError):
    """A mesh that may not enter the pipeline; the message is the reason shown to the user."""


@dataclass(frozen=True)
class MeshInfo:
    """What the checks learnt about an accepted mesh."""

    suffix: str
    """File type, ``.glb`` ... ``.off``."""
    vertices: int
    """Vertex count after loading (duplicates merged)."""
    faces: int
    """Triangle count."""
    sha256: str
    """Hex SHA-256 of the file bytes: the mesh's identity in asset ids."""


def mesh_suffix(name: str) -> str:
    """The lower-case suffix of ``name`` (a path or ``s3://`` key); raises :class:`MeshRejected`
    unless it is one of :data:`intake.limits.MESH_SUFFIXES`."""
    suffix = PurePosixPath(name.split("?", 1)[0]).suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise MeshRejected(
            f"mesh file type {suffix or '(no extension)'!r} is not accepted; "
            f"use one of {' '.join(MESH_SUFFIXES)}"
        )
    return suffix


def check_mesh(data: bytes, *, name: str, max_bytes: int = MAX_MESH_BYTES) -> MeshInfo:
    """Accept ``data`` (the file called ``name``) as an input mesh or raise :class:`MeshRejected`.

    Checks in order: the suffix, at most ``max_bytes``, a ``.gltf`` without external buffers or
    images, then a parse with trimesh that must give at least one triangle.
    """
    suffix = mesh_suffix(name)
    if not data:
        raise MeshRejected("mesh file is empty")
    if len(data) > max_bytes:
        raise MeshRejected(f"mesh file is {len(data)} bytes, more than the limit of {max_bytes}")
    if suffix == ".gltf":
        _check_self_contained_gltf(data)
    vertices, faces = _parse(data, suffix)
    return MeshInfo(suffix, vertices, faces, hashlib.sha256(data).hexdigest())


def _check_self_contained_gltf(data: bytes) -> None:
    try:
        gltf = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MeshRejected(f"mesh .gltf is not valid JSON: {exc}") from None
    if not isinstance(gltf, dict):
        raise MeshRejected("mesh .gltf must hold a JSON object")
    for group in ("buffers", "images"):
        for item in gltf.get(group) or []:
            uri = item.get("uri") if isinstance(item, dict) else None
            if uri is not None and not str(uri).startswith("data:"):
                raise MeshRejected(
                    f"mesh .gltf refers to the external file {str(uri)[:80]!r}; embed it "
                    "(data: URI) or convert the mesh to .glb"
                )


def _parse(data: bytes, suffix: str) -> tuple[int, int]:
    """``(vertices, faces)`` of the mesh in ``data``; raises :class:`MeshRejected`."""
    import trimesh  # imported on first use: a manifest without meshes does not pay for it

    try:
        loaded = trimesh.load(io.BytesIO(data), file_type=suffix[1:], process=True)
    except Exception as exc:  # noqa: BLE001 - trimesh raises many types for unreadable files
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise MeshRejected(f"mesh cannot be read as {suffix}: {detail}") from None
    if isinstance(loaded, trimesh.Scene):
        meshes = [g for g in loaded.geometry.values() if isinstance(g, trimesh.Trimesh)]
    else:
        meshes = [loaded] if isinstance(loaded, trimesh.Trimesh) else []
    faces = sum(len(m.faces) for m in meshes)
    if faces == 0:
        raise MeshRejected(f"mesh holds no triangles (a {type(loaded).__name__})")
    return sum(len(m.vertices) for m in meshes), faces
