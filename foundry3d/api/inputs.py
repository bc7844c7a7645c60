"""Input files uploaded beside a manifest: meshes, images and bundles a multipart job names.

A multipart ``POST /v1/jobs`` may carry, besides the ``manifest`` file, the files its rows
refer to (any other file field, e.g. ``-F files=@crate.glb``). Each is stored under its own
base name in the job's upload folder, next to the saved manifest, so a row's relative
``mesh: crate.glb`` resolves there and passes the same confinement and content checks as a
manifest read from disk (:mod:`intake.references`). A path outside that folder still has to
lie in ``FOUNDRY_IMAGE_ROOTS`` (or be ``s3://`` / an allowed ``https://``): an upload cannot
widen what a job may read.
"""

from __future__ import annotations

import re
from pathlib import Path

from foundry3d.api.errors import ApiError
from intake.limits import MAX_IMAGE_BYTES, MAX_MESH_BYTES, MESH_SUFFIXES

#: File types an uploaded input may have: input meshes and the image formats of images and
#: bundles (PNG, JPEG, WebP) plus a bundle's ``.json`` sidecar.
INPUT_SUFFIXES = (*MESH_SUFFIXES, ".png", ".jpg", ".jpeg", ".webp", ".json")
#: Most input files one job may upload.
MAX_INPUT_FILES = 64
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_COPY_CHUNK = 1024 * 1024


def input_file_name(filename: str | None) -> str:
    """The name an uploaded input is stored under: its own base name, which must be 1-128
    letters, digits, ``.``, ``_`` or ``-`` (no folders, not hidden) with a known suffix.

    Raises :class:`ApiError` 422 ``invalid_upload`` naming the problem."""
    name = filename or ""
    if not _NAME_RE.match(name):
        raise ApiError(422, "invalid_upload",
                       f"uploaded file name {name[:130]!r} must be 1-128 letters, digits, '.', "
                       "'_' or '-', starting with a letter or digit (no folders)")
    suffix = Path(name).suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise ApiError(422, "invalid_upload",
                       f"uploaded file {name!r}: type {suffix or '(none)'!r} is not an input "
                       f"file type; known: {', '.join(INPUT_SUFFIXES)}")
    if Path(name).stem.lower() == "manifest":
        raise ApiError(422, "invalid_upload",
                       f"uploaded file {name!r}: 'manifest.*' is the job's manifest; rename it")
    return name


def input_size_limit(name: str) -> int:
    """Bytes an upload called ``name`` may hold: the mesh cap for meshes, the image cap else."""
    return MAX_MESH_BYTES if Path(name).suffix.lower() in MESH_SUFFIXES else MAX_IMAGE_BYTES


async def save_inputs(uploads: list, folder: Path) -> list[str]:
    """Store each upload (starlette ``UploadFile``) in ``folder`` under
    :func:`input_file_name`; returns the stored names in upload order.

    Raises :class:`ApiError`: 422 ``invalid_upload`` for a bad or repeated name or too many
    files, 413 ``too_large`` for a file over its cap. Nothing is parsed here: the manifest's
    rows check what they name when the manifest is validated."""
    if len(uploads) > MAX_INPUT_FILES:
        raise ApiError(422, "invalid_upload",
                       f"{len(uploads)} input files uploaded; at most {MAX_INPUT_FILES} per job")
    names: list[str] = []
    for upload in uploads:
        name = input_file_name(upload.filename)
        if name in names:
            raise ApiError(422, "invalid_upload", f"input file {name!r} uploaded twice")
        limit = input_size_limit(name)
        written = 0
        with open(folder / name, "xb") as out:
            while chunk := await upload.read(_COPY_CHUNK):
                written += len(chunk)
                if written > limit:
                    raise ApiError(413, "too_large",
                                   f"uploaded file {name!r} is larger than {limit} bytes")
                out.write(chunk)
        names.append(name)
    return names
