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

Line numbers are physical lines (1-based): where a YAML item starts, the JSONL line, the
first line of a CSV row (the header is line 1).

Images and bundles are local paths (relative ones resolve against the manifest's folder and
must stay, symlinks resolved, inside that folder or one of ``image_roots``), ``s3://bucket/key``
references, or ``https://`` URLs from allow-listed hosts when URLs are allowed. Local images are
checked before acceptance: format (PNG/JPEG/WebP; bundles PNG 2:1), the header's pixel count
against ``max_image_pixels`` without decoding, then a full decode.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from storage.images import ImageRejected, check_bundle, check_image

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
INITS = ("sphere", "library", "lrm")
FORMATS = {".yaml": "yaml", ".yml": "yaml", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
CSV_COLUMNS = (
    "prompt", "image", "bundle", "id", "seed", "variants", "tags", "generator", "init", "params",
)

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_PARAM_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$")
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Kind = Literal["prompt", "image", "bundle"]


# --------------------------------------------------------------------------- results


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

    def canonical(self) -> dict[str, Any]:
        """The fields that define the asset's identity, in a stable JSON-ready form.

        Images and bundles count by content (``sha256:<hex>``) when their bytes were read,
        by reference otherwise. Tags, ids and line numbers do not count.
        """
        return {
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


# --------------------------------------------------------------------------- the item model


def _check_text(value: str, what: str, limit: int) -> str:
    if len(value) > limit:
        raise ValueError(f"{what} is {len(value)} characters long, more than the limit of {limit}")
    for i, ch in enumerate(value):
        if not (ch.isprintable() or ch in " \n\t"):
            raise ValueError(
                f"{what} contains a non-printable character (U+{ord(ch):04X}) at position {i}"
            )
    return value


def _check_tags(value: Any) -> Any:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"tags must be a list of strings, got {type(value).__name__}")
    if len(value) > MAX_TAGS:
        raise ValueError(f"{len(value)} tags, more than the limit of {MAX_TAGS}")
    for tag in value:
        if not isinstance(tag, str) or not tag.strip():
            raise ValueError(f"each tag must be a non-empty string, got {tag!r}")
        if len(tag) > MAX_TAG_CHARS or ";" in tag or not tag.isprintable():
            raise ValueError(
                f"tag {tag[:80]!r} must be printable, without ';', "
                f"at most {MAX_TAG_CHARS} characters"
            )
    return [t.strip() for t in value]


def _check_params(value: Any) -> Any:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"params must be a mapping of name -> value, got {type(value).__name__}")
    if len(value) > MAX_PARAMS:
        raise ValueError(f"{len(value)} params, more than the limit of {MAX_PARAMS}")
    for key, item in value.items():
        if not isinstance(key, str) or not _PARAM_KEY_RE.match(key):
            raise ValueError(f"param name {key!r} must be an identifier (letters, digits, _ .)")
        if isinstance(item, float) and (item != item or item in (float("inf"), float("-inf"))):
            raise ValueError(f"param {key!r} must be a finite number, got {item}")
        if isinstance(item, str):
            _check_text(item, f"param {key!r}", MAX_PARAM_STR_CHARS)
        elif not isinstance(item, bool | int | float):
            raise ValueError(
                f"param {key!r} must be a string, number or boolean, got {type(item).__name__}"
            )
    return value


Seed = Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]
Variants = Annotated[StrictInt, Field(ge=1, le=MAX_VARIANTS)]
GeneratorName = Literal["library", "kiss3dgen", "file"]
InitName = Literal["sphere", "library", "lrm"]


class _ManifestFields(BaseModel):
    """Checks shared by the defaults block and the items: no unknown keys, tags, params."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("tags", mode="before", check_fields=False)
    @classmethod
    def _tags(cls, value: Any) -> Any:
        return _check_tags(value)

    @field_validator("params", mode="before", check_fields=False)
    @classmethod
    def _params(cls, value: Any) -> Any:
        return _check_params(value)


class ManifestDefaults(_ManifestFields):
    """The YAML ``defaults:`` block: values every item inherits unless it sets its own."""

    seed: Seed | None = None
    variants: Variants | None = None
    tags: list[str] | None = None
    generator: GeneratorName | None = None
    init: InitName | None = None
    params: dict[str, Any] | None = None


class ManifestItem(_ManifestFields):
    """One manifest row, as written (before defaults are resolved into requests)."""

    prompt: str | None = None
    """Text prompt (printable, at most MAX_PROMPT_CHARS)."""
    image: str | None = None
    """Reference image: local path, s3://bucket/key or https:// URL."""
    bundle: str | None = None
    """A ready bundle PNG (2 x 4 tiles) for the ``file`` generator."""
    id: str | None = None
    """Optional name, unique within the manifest."""
    seed: Seed = 0
    """Base seed; 0 is a real seed. Variant k uses seed + k."""
    variants: Variants = 1
    """How many assets (seeds) to make from this row."""
    tags: list[str] = Field(default_factory=list)
    generator: GeneratorName | None = None
    """Stage-I backend; ``library`` by default, always ``file`` for a bundle."""
    init: InitName = "sphere"
    """Coarse-mesh backend."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Stage parameter overrides (scalars only)."""

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # `id: 7` in YAML means the name "7"
        if isinstance(value, str) and not _ID_RE.match(value):
            raise ValueError(
                f"id {value[:80]!r} must be 1-128 letters, digits, '.', '_', ':' or '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value:
            raise ValueError("prompt is empty")
        return _check_text(value, "prompt", MAX_PROMPT_CHARS)

    @field_validator("image", "bundle")
    @classmethod
    def _ref(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("path is empty")
        return value.strip() if value is not None else None

    @model_validator(mode="after")
    def _one_source(self) -> ManifestItem:
        given = [name for name in ("prompt", "image", "bundle") if getattr(self, name) is not None]
        if not given:
            raise ValueError("item needs one of 'prompt', 'image' or 'bundle'")
        if len(given) > 1:
            raise ValueError(f"item has both {given[0]!r} and {given[1]!r}; give exactly one")
        if self.bundle is not None:
            if self.generator not in (None, "file"):
                raise ValueError(
                    f"a 'bundle' item uses the 'file' generator, got generator {self.generator!r}"
                )
            self.generator = "file"
        elif self.generator == "file":
            raise ValueError("generator 'file' needs a 'bundle' (a ready bundle PNG)")
        elif self.generator is None:
            self.generator = "library"
        if self.seed + self.variants - 1 > MAX_SEED:
            raise ValueError(f"seed + variants - 1 must be at most {MAX_SEED}")
        return self

    @property
    def kind(self) -> Kind:
        return "prompt" if self.prompt is not None else "image" if self.image else "bundle"


def _validation_reason(exc: ValidationError) -> str:
    """One line naming each problem: ``unknown key 'x'``, ``seed: ... (got -1)``."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {loc!r}")
        elif err["type"] == "value_error" or not loc:
            parts.append(msg)
        else:
            got = repr(err.get("input"))
            got = got if len(got) <= 60 else got[:57] + "..."
            parts.append(f"{loc}: {msg} (got {got})")
    return "; ".join(parts)


# --------------------------------------------------------------------------- rows per format


@dataclass
class _Row:
    line: int
    data: Any
    raw: str
    problem: str | None = None  # set when the row could not even be read into data


class _FileProblem(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


def _truncate(text: str) -> str:
    text = text.strip()
    return text if len(text) <= RAW_CHARS else text[: RAW_CHARS - 3] + "..."


def _read_text(path: Path) -> tuple[str, str]:
    """(text, sha256 of the bytes); raises :class:`_FileProblem` for whole-file problems."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise _FileProblem(0, "manifest file not found") from None
    if not path.is_file():
        raise _FileProblem(0, "manifest path is not a file")
    if size > MAX_MANIFEST_BYTES:
        raise _FileProblem(
            0, f"manifest is {size} bytes, more than the limit of {MAX_MANIFEST_BYTES}"
        )
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise _FileProblem(
            line,
            f"manifest is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8",
        ) from None
    if not text.strip():
        raise _FileProblem(0, "manifest file is empty")
    return text, hashlib.sha256(data).hexdigest()


def _yaml_rows(text: str) -> tuple[_Row | None, list[_Row], list[tuple[int, str]]]:
    """(defaults row or None, item rows, [(line, reason)] for top-level problems)."""
    alias_marks = _yaml_scan(text)
    loader = _YAML_LOADER(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise _yaml_problem(exc) from None
        if root is None:
            raise _FileProblem(0, "manifest has no content (only comments?)")
        if not isinstance(root, yaml.MappingNode):
            raise _FileProblem(
                root.start_mark.line + 1,
                "a YAML manifest must be a mapping with an 'items:' list "
                "(and optionally 'defaults:')",
            )

        def node_raw(node: yaml.Node) -> str:
            # Marks index characters (PyYAML and libyaml alike), so a slice is the node's text.
            return _truncate(text[node.start_mark.index : node.end_mark.index])

        def node_row(node: yaml.Node) -> _Row:
            row = _Row(node.start_mark.line + 1, None, node_raw(node))
            start, end = node.start_mark.index, node.end_mark.index
            if any(start <= m < end for m in alias_marks):
                row.problem = "YAML anchors and aliases (&name, *name) are not allowed"
                return row
            duplicate = _yaml_duplicate_key(node)
            if duplicate:
                row.problem = duplicate
                return row
            try:
                row.data = loader.construct_object(node, deep=True)
            except yaml.YAMLError as exc:
                row.problem = f"YAML value cannot be read: {getattr(exc, 'problem', exc)}"
            return row

        defaults: _Row | None = None
        items: list[_Row] = []
        problems: list[tuple[int, str]] = []
        seen: set[str] = set()
        found_items = False
        for key_node, value_node in root.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.append((line, f"duplicate top-level key {key!r}"))
                continue
            seen.add(str(key))
            if key == "items":
                found_items = True
                if not isinstance(value_node, yaml.SequenceNode):
                    problems.append((line, "'items' must be a list of items"))
                    continue
                items.extend(node_row(child) for child in value_node.value)
            elif key == "defaults":
                defaults = node_row(value_node)
                if defaults.problem is None and not isinstance(defaults.data, dict | None):
                    defaults.problem = "'defaults' must be a mapping"
            else:
                problems.append(
                    (line, f"unknown top-level key {key!r} (expected 'defaults' and 'items')")
                )
        if not found_items:
            problems.append((0, "YAML manifest has no 'items:' list"))
        return defaults, items, problems
    finally:
        loader.dispose()


def _yaml_scan(text: str) -> list[int]:
    """Walk the YAML events (cheap, no composition) and return where anchors/aliases are.

    Raises :class:`_FileProblem` for syntax errors and for documents that are too large or
    too deeply nested to compose safely.
    """
    marks: list[int] = []
    depth = 0
    try:
        for n, event in enumerate(yaml.parse(text, Loader=_YAML_LOADER)):
            if n > MAX_YAML_EVENTS:
                raise _FileProblem(0, f"YAML document has more than {MAX_YAML_EVENTS} nodes")
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                marks.append(event.start_mark.index)
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise _yaml_too_deep(event.start_mark.line + 1)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError as exc:
        raise _yaml_problem(exc) from None
    return marks


def _yaml_too_deep(line: int) -> _FileProblem:
    """Our one message for a too deeply nested document, whoever noticed it first."""
    return _FileProblem(line, f"YAML is nested more than {MAX_YAML_DEPTH} levels deep")


def _yaml_problem(exc: yaml.YAMLError) -> _FileProblem:
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else 0
    problem = getattr(exc, "problem", None) or str(exc)
    if "nesting depth" in problem or "nesting level" in problem:
        # libyaml (PyYAML >= 6.0.4 with the C loader) has its own depth limit, which a deep
        # document can reach while the scanner looks ahead, before our event pass counts.
        return _yaml_too_deep(line)
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if context and context_mark is not None and context_mark.line + 1 != line:
        context = f"{context} (line {context_mark.line + 1})"
    detail = f"{context}, {problem}" if context else problem
    return _FileProblem(line, f"YAML syntax error: {detail}")


def _yaml_duplicate_key(node: yaml.Node) -> str | None:
    """The first duplicate mapping key in ``node`` (PyYAML silently keeps the last one)."""
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key_node, value_node in node.value:
            key = getattr(key_node, "value", None)
            if isinstance(key, str):
                if key in keys:
                    return f"duplicate key {key!r}"
                keys.add(key)
            inner = _yaml_duplicate_key(value_node)
            if inner:
                return inner
    elif isinstance(node, yaml.SequenceNode):
        for child in node.value:
            inner = _yaml_duplicate_key(child)
            if inner:
                return inner
    return None


def _jsonl_rows(text: str) -> list[_Row]:
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        row = _Row(number, None, _truncate(line))
        try:
            row.data = json.loads(
                line, object_pairs_hook=_json_object, parse_constant=_json_constant
            )
        except _JsonProblem as exc:
            row.problem = str(exc)
        except json.JSONDecodeError as exc:
            row.problem = f"invalid JSON at column {exc.colno}: {exc.msg}"
        except RecursionError:
            row.problem = "JSON is nested too deeply"
        rows.append(row)
    return rows


class _JsonProblem(ValueError):
    pass


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _JsonProblem(f"duplicate key {key!r}")
        out[key] = value
    return out


def _json_constant(name: str) -> Any:
    raise _JsonProblem(f"{name} is not a valid JSON number")


_INT_RE = re.compile(r"^[+-]?\d+$")


def _csv_rows(text: str) -> list[_Row]:
    lines = text.split("\n")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    header_line = 0
    rows: list[_Row] = []
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raw = "\n".join(lines[start - 1 : reader.line_num])
            if header is None:
                raise _FileProblem(start, f"CSV header cannot be read: {exc}") from None
            rows.append(_Row(start, None, _truncate(raw), f"CSV row cannot be read: {exc}"))
            continue
        raw = _truncate("\n".join(lines[start - 1 : reader.line_num]))
        if not record or all(not cell.strip() for cell in record):
            continue
        if header is None:
            header, header_line = [c.strip() for c in record], start
            _check_csv_header(header, header_line)
            continue
        if len(record) != len(header):
            rows.append(_Row(
                start, None, raw,
                f"CSV row has {len(record)} fields but the header (line {header_line}) "
                f"has {len(header)} columns",
            ))
            continue
        row = _Row(start, None, raw)
        try:
            row.data = _csv_record(dict(zip(header, record, strict=True)))
        except _JsonProblem as exc:
            row.problem = str(exc)
        rows.append(row)
    if header is None:
        raise _FileProblem(0, "manifest file is empty")
    return rows


def _check_csv_header(header: list[str], line: int) -> None:
    unknown = [c for c in header if c not in CSV_COLUMNS]
    if unknown:
        raise _FileProblem(
            line, f"unknown CSV column(s) {unknown}; known columns: {', '.join(CSV_COLUMNS)}"
        )
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise _FileProblem(line, f"CSV column(s) {duplicated} appear more than once")
    if not {"prompt", "image", "bundle"} & set(header):
        raise _FileProblem(line, "CSV needs a 'prompt', 'image' or 'bundle' column")


def _csv_record(cells: dict[str, str]) -> dict[str, Any]:
    """Turn CSV text cells into typed values; empty cells are absent."""
    out: dict[str, Any] = {}
    for key, cell in cells.items():
        if not cell.strip():
            continue
        if key in ("seed", "variants"):
            # A non-integer is passed on as text so that validation names it.
            out[key] = int(cell) if _INT_RE.match(cell.strip()) else cell
        elif key == "tags":
            out[key] = [t.strip() for t in cell.split(";") if t.strip()]
        elif key == "params":
            try:
                out[key] = json.loads(
                    cell, object_pairs_hook=_json_object, parse_constant=_json_constant
                )
            except json.JSONDecodeError as exc:
                raise _JsonProblem(f"params is not valid JSON: {exc.msg}") from None
        else:
            out[key] = cell
    return out


# --------------------------------------------------------------------------- images


Fetcher = Callable[[str], bytes]


@dataclass
class _Context:
    manifest_dir: Path
    roots: list[Path]
    root_names: str
    allow_urls: bool
    url_hosts: set[str]
    max_image_pixels: int
    fetch: bool
    fetcher: Fetcher
    cache: dict[tuple[str, str], tuple[str, str | None]] = field(default_factory=dict)


class _Reject(Exception):
    pass


def _resolve(ref: str, what: str, ctx: _Context) -> tuple[str, str | None]:
    """(resolved reference, sha256 or None) for an image or bundle; raises :class:`_Reject`."""
    key = (what, ref)
    if key not in ctx.cache:
        ctx.cache[key] = _resolve_uncached(ref, what, ctx)
    return ctx.cache[key]


def _resolve_uncached(ref: str, what: str, ctx: _Context) -> tuple[str, str | None]:
    if "://" in ref:
        scheme = ref.split("://", 1)[0].lower()
        if scheme == "s3":
            parts = urlsplit(ref)
            if not parts.netloc or not parts.path.strip("/"):
                raise _Reject(f"{what} reference {ref!r} must be s3://bucket/key")
        elif scheme == "https":
            if not ctx.allow_urls:
                raise _Reject(
                    f"{what} URLs are not allowed ({ref!r}); enable FOUNDRY_ALLOW_URL_FETCH "
                    "and list the host in FOUNDRY_URL_HOSTS"
                )
            parts = urlsplit(ref)
            if parts.username or parts.password:
                raise _Reject(f"{what} URL may not contain credentials")
            host = (parts.hostname or "").lower()
            if host not in ctx.url_hosts:
                raise _Reject(
                    f"{what} URL host {host!r} is not an allowed host (FOUNDRY_URL_HOSTS)"
                )
        else:
            raise _Reject(
                f"{what} URL scheme {scheme!r} is not allowed "
                "(local paths, s3://bucket/key, or https:// from allowed hosts)"
            )
        if not ctx.fetch:
            return ref, None
        try:
            data = ctx.fetcher(ref)
        except Exception as exc:  # noqa: BLE001 - any failure to fetch rejects the row
            raise _Reject(f"could not fetch {what} {ref!r}: {exc}") from None
        return ref, _checked_sha(data, ref, what, ctx)

    given = Path(ref)
    path = given if given.is_absolute() else ctx.manifest_dir / given
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root) for root in ctx.roots):
        lexical = Path(os.path.normpath(path))
        how = (
            "is a symlink that leads"
            if any(lexical.is_relative_to(root) for root in ctx.roots)
            else "is"
        )
        raise _Reject(
            f"{what} path {ref!r} {how} outside the manifest folder and the image roots "
            f"({ctx.root_names})"
        )
    if not resolved.exists():
        raise _Reject(f"{what} file not found: {ref!r}")
    if not resolved.is_file():
        raise _Reject(f"{what} path {ref!r} is not a file")
    size = resolved.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise _Reject(f"{what} file {ref!r} is {size} bytes, more than {MAX_IMAGE_BYTES}")
    try:
        data = resolved.read_bytes()
    except OSError as exc:
        raise _Reject(f"{what} file {ref!r} cannot be read: {exc.strerror}") from None
    return str(resolved), _checked_sha(data, ref, what, ctx)


def _checked_sha(data: bytes, ref: str, what: str, ctx: _Context) -> str:
    try:
        if what == "bundle":
            info = check_bundle(data, max_pixels=ctx.max_image_pixels)
        else:
            info = check_image(data, max_pixels=ctx.max_image_pixels)
    except ImageRejected as exc:
        raise _Reject(f"{what} {ref!r}: {exc}") from None
    return info.sha256


class _AllowListRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to https:// on an allowed host."""

    def __init__(self, hosts: set[str]) -> None:
        self.hosts = hosts

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        parts = urlsplit(newurl)
        if parts.scheme != "https" or (parts.hostname or "").lower() not in self.hosts:
            raise urllib.error.URLError(f"redirect to a disallowed location {newurl!r}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def default_fetcher(url_hosts: Iterable[str], max_bytes: int = MAX_IMAGE_BYTES) -> Fetcher:
    """A fetcher for ``https://`` (allow-listed hosts, redirects included) and ``s3://``.

    S3 references use the AWS credentials and endpoint of the environment
    (``AWS_ENDPOINT_URL`` for S3-compatible servers).
    """
    hosts = {h.lower() for h in url_hosts}

    def fetch(ref: str) -> bytes:
        if ref.startswith("s3://"):
            from storage.objects import S3ObjectStore

            parts = urlsplit(ref)
            return S3ObjectStore(parts.netloc).get_bytes(parts.path.lstrip("/"))
        opener = urllib.request.build_opener(_AllowListRedirects(hosts))
        with opener.open(ref, timeout=FETCH_TIMEOUT_S) as response:
            data = response.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ValueError(f"more than {max_bytes} bytes")
        return data

    return fetch


# --------------------------------------------------------------------------- parse


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
    path = Path(path)
    file = str(path)
    fmt = FORMATS.get(path.suffix.lower())
    result = ParsedManifest(path=path, format=fmt)
    if fmt is None:
        result.rejected.append(Rejection(
            file, 0,
            f"unknown manifest format {path.suffix or '(no extension)'!r}; "
            f"use one of {', '.join(sorted(FORMATS))}",
        ))
        return result
    manifest_dir = path.resolve().parent
    roots = [manifest_dir, *(Path(r).resolve() for r in image_roots)]
    ctx = _Context(
        manifest_dir=manifest_dir,
        roots=roots,
        root_names=", ".join(str(r) for r in roots),
        allow_urls=allow_urls,
        url_hosts={h.lower() for h in url_hosts},
        max_image_pixels=max_image_pixels,
        fetch=fetch,
        fetcher=fetcher or default_fetcher(url_hosts),
    )
    try:
        text, result.sha256 = _read_text(path)
        defaults_row: _Row | None = None
        if fmt == "yaml":
            defaults_row, rows, problems = _yaml_rows(text)
            for line, reason in problems:
                result.rejected.append(Rejection(file, line, reason))
        elif fmt == "jsonl":
            rows = _jsonl_rows(text)
        else:
            rows = _csv_rows(text)
    except _FileProblem as exc:
        result.rejected.append(Rejection(file, exc.line, exc.reason))
        return result

    defaults, defaults_problem = _defaults(defaults_row)
    if defaults_problem:
        result.rejected.append(
            Rejection(file, defaults_row.line, defaults_problem, defaults_row.raw)
        )
    result.rows = len(rows)
    first_line_of_id: dict[str, int] = {}
    for row in rows:
        item_id = _raw_id(row.data)
        outcome = _accept(row, defaults, defaults_problem, item_id, first_line_of_id, ctx)
        if isinstance(outcome, str):
            result.rejected.append(Rejection(file, row.line, outcome, row.raw, item_id))
        else:
            result.requests.extend(outcome)
    result.rejected.sort(key=lambda r: r.line)
    return result


def _defaults(row: _Row | None) -> tuple[dict[str, Any], str | None]:
    if row is None or (row.data is None and row.problem is None):
        return {}, None
    if row.problem:
        return {}, f"defaults: {row.problem}"
    try:
        model = ManifestDefaults.model_validate(row.data)
    except ValidationError as exc:
        return {}, f"defaults: {_validation_reason(exc)}"
    return model.model_dump(exclude_none=True), None


def _raw_id(data: Any) -> str | None:
    if isinstance(data, dict):
        value = data.get("id")
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    return None


def _accept(
    row: _Row,
    defaults: dict[str, Any],
    defaults_problem: str | None,
    item_id: str | None,
    first_line_of_id: dict[str, int],
    ctx: _Context,
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
        return _validation_reason(exc)
    image_ref = image_sha = bundle_ref = bundle_sha = None
    try:
        if item.image is not None:
            image_ref, image_sha = _resolve(item.image, "image", ctx)
        if item.bundle is not None:
            bundle_ref, bundle_sha = _resolve(item.bundle, "bundle", ctx)
    except _Reject as exc:
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
            init=item.init,
            params=dict(item.params),
            tags=tuple(item.tags),
        )
        for k in range(item.variants)
    ]

