"""Limits and vocabularies of a manifest: sizes, counts, formats, generator and init names."""

from __future__ import annotations

import re
from typing import Literal

MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**32 - 1
MAX_VARIANTS = 64
MAX_TAGS = 32
MAX_TAG_CHARS = 64
MAX_PARAMS = 64
MAX_PARAM_STR_CHARS = 1000
MAX_IMAGE_BYTES = 256 * 1024 * 1024
#: A bundle's sidecar JSON is a dozen small fields; anything bigger is not a sidecar.
MAX_SIDECAR_BYTES = 64 * 1024
#: Smallest bundle tile (pixels) the reconstruction can use; smaller bundles fail at evaluation.
MIN_BUNDLE_TILE = 64
#: Longest local image path (bytes, UTF-8) accepted; longer ones fail in the OS (ENAMETOOLONG).
MAX_PATH_BYTES = 4096
#: Pixels a reference image is decoded to at most (the generators work at 512-1024 px a side).
MAX_REFERENCE_DECODE_PIXELS = 2048 * 2048
#: Largest input mesh file: a few million triangles, which the reference render still handles.
MAX_MESH_BYTES = 128 * 1024 * 1024
#: File types an input mesh may have (what :func:`models.geometry.mesh.load_mesh` reads).
MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")
#: Largest JSONL/CSV manifest ``foundry3d validate`` streams (row by row, in bounded memory);
#: a run still reads at most MAX_MANIFEST_BYTES at once.
MAX_STREAMED_MANIFEST_BYTES = 4 * 1024 * 1024 * 1024
# YAML guards: the event pass stops a huge or deeply nested document before it is composed.
MAX_YAML_EVENTS = 2_000_000
MAX_YAML_DEPTH = 32
FETCH_TIMEOUT_S = 20.0
RAW_CHARS = 300  # how much of a rejected row's text is kept for the report

GENERATORS = ("library", "kiss3dgen", "file", "kiss3dgen-mesh", "kiss3dgen-image")
INITS = ("hull", "sphere", "library", "lrm", "mesh")
FORMATS = {".yaml": "yaml", ".yml": "yaml", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
CSV_COLUMNS = (
    "prompt", "image", "bundle", "mesh", "id", "seed", "variants", "tags", "generator", "init",
    "params",
)

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
PARAM_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$")

Kind = Literal["prompt", "image", "bundle", "mesh"]
