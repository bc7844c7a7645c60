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
# YAML guards: the event pass stops a huge or deeply nested document before it is composed.
MAX_YAML_EVENTS = 2_000_000
MAX_YAML_DEPTH = 32
FETCH_TIMEOUT_S = 20.0
RAW_CHARS = 300  # how much of a rejected row's text is kept for the report

GENERATORS = ("library", "kiss3dgen", "file")
INITS = ("hull", "sphere", "library", "lrm")
FORMATS = {".yaml": "yaml", ".yml": "yaml", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
CSV_COLUMNS = (
    "prompt", "image", "bundle", "id", "seed", "variants", "tags", "generator", "init", "params",
)

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
PARAM_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$")

Kind = Literal["prompt", "image", "bundle"]
