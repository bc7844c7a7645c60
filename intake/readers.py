"""Rows per format: YAML, JSONL and CSV text -> raw rows with their physical line numbers."""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from intake.limits import (
    CSV_COLUMNS,
    MAX_MANIFEST_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_EVENTS,
    RAW_CHARS,
)

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

#: Longest integer literal a manifest value may hold (seeds are at most 10 digits); longer ones
#: are refused before Python's own 4300-digit conversion limit turns them into a traceback.
MAX_INT_DIGITS = 40


def _too_long_number(digits: int) -> str:
    return f"a number with {digits} digits is too large for any manifest field"


@dataclass
class Row:
    line: int
    data: Any
    raw: str
    problem: str | None = None  # set when the row could not even be read into data


class FileProblem(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


def _truncate(text: str) -> str:
    text = text.strip()
    return text if len(text) <= RAW_CHARS else text[: RAW_CHARS - 3] + "..."


def read_text(path: Path) -> tuple[str, str]:
    """(text, sha256 of the bytes); raises :class:`FileProblem` for whole-file problems.

    The file is opened without blocking and checked on its descriptor: a FIFO, a device or a
    folder is refused instead of hanging or failing later, and at most
    :data:`MAX_MANIFEST_BYTES` + 1 bytes are read whatever size the file claims (files under
    ``/proc`` claim 0). A read the OS refuses (``EIO``, ``EACCES``...) is one line, not a
    traceback.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileProblem(0, "manifest file not found") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise FileProblem(0, f"manifest cannot be opened: {_os_reason(exc)}") from None
    # fstat before fdopen: opening a folder's descriptor as a file object raises.
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise FileProblem(0, "manifest path is not a regular file")
    with os.fdopen(fd, "rb") as fh:
        if info.st_size > MAX_MANIFEST_BYTES:
            raise FileProblem(
                0, f"manifest is {info.st_size} bytes, more than the limit of {MAX_MANIFEST_BYTES}"
            )
        try:
            data = fh.read(MAX_MANIFEST_BYTES + 1)
        except OSError as exc:
            raise FileProblem(0, f"manifest cannot be read: {_os_reason(exc)}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise FileProblem(0, f"manifest is more than the limit of {MAX_MANIFEST_BYTES} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise FileProblem(
            line,
            f"manifest is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8",
        ) from None
    if not text.strip():
        raise FileProblem(0, "manifest file is empty")
    return text, hashlib.sha256(data).hexdigest()


def _os_reason(exc: BaseException) -> str:
    """``Input/output error``: the OS's words for a failure, without the path it repeats."""
    return getattr(exc, "strerror", None) or str(exc)


def yaml_rows(text: str) -> tuple[Row | None, list[Row], list[tuple[int, str]]]:
    """(defaults row or None, item rows, [(line, reason)] for top-level problems)."""
    alias_marks = _yaml_scan(text)
    loader = _YAML_LOADER(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise _yaml_problem(exc) from None
        if root is None:
            raise FileProblem(0, "manifest has no content (only comments?)")
        if not isinstance(root, yaml.MappingNode):
            raise FileProblem(
                root.start_mark.line + 1,
                "a YAML manifest must be a mapping with an 'items:' list "
                "(and optionally 'defaults:')",
            )

        def node_raw(node: yaml.Node) -> str:
            # Marks index characters (PyYAML and libyaml alike), so a slice is the node's text.
            return _truncate(text[node.start_mark.index : node.end_mark.index])

        def node_row(node: yaml.Node) -> Row:
            row = Row(node.start_mark.line + 1, None, node_raw(node))
            start, end = node.start_mark.index, node.end_mark.index
            if any(start <= m < end for m in alias_marks):
                row.problem = "YAML anchors and aliases (&name, *name) are not allowed"
                return row
            duplicate = _yaml_duplicate_key(node)
            if duplicate:
                row.problem = duplicate
                return row
            too_long = _longest_yaml_integer(node)
            if too_long > MAX_INT_DIGITS:
                row.problem = _too_long_number(too_long)
                return row
            try:
                row.data = loader.construct_object(node, deep=True)
            except yaml.YAMLError as exc:
                row.problem = f"YAML value cannot be read: {getattr(exc, 'problem', exc)}"
            return row

        defaults: Row | None = None
        items: list[Row] = []
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


def _longest_yaml_integer(node: yaml.Node) -> int:
    """Digits of the longest plain integer scalar under ``node`` (0 when there is none)."""
    longest = 0
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, yaml.ScalarNode):
            if not current.style and _INT_RE.match(current.value.replace("_", "")):
                longest = max(longest, len(current.value.lstrip("+-")))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
        elif isinstance(current, yaml.MappingNode):
            stack.extend(v for pair in current.value for v in pair)
    return longest


def _yaml_scan(text: str) -> list[int]:
    """Walk the YAML events (cheap, no composition) and return where anchors/aliases are.

    Raises :class:`FileProblem` for syntax errors and for documents that are too large or
    too deeply nested to compose safely.
    """
    marks: list[int] = []
    depth = 0
    try:
        for n, event in enumerate(yaml.parse(text, Loader=_YAML_LOADER)):
            if n > MAX_YAML_EVENTS:
                raise FileProblem(0, f"YAML document has more than {MAX_YAML_EVENTS} nodes")
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


def _yaml_too_deep(line: int) -> FileProblem:
    """Our one message for a too deeply nested document, whoever noticed it first."""
    return FileProblem(line, f"YAML is nested more than {MAX_YAML_DEPTH} levels deep")


def _yaml_problem(exc: yaml.YAMLError) -> FileProblem:
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
    return FileProblem(line, f"YAML syntax error: {detail}")


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


def jsonl_rows(text: str) -> list[Row]:
    # Lines end in LF, CRLF or a lone CR (classic Mac files); a JSON string cannot hold a raw CR.
    lines = enumerate(_LINE_END.split(text), start=1)
    return [row for number, line in lines if (row := jsonl_row(number, line)) is not None]


def jsonl_row(number: int, line: str) -> Row | None:
    """The row of JSONL line ``number`` (1-based) holding ``line``; None for a blank line."""
    if not line.strip():
        return None
    row = Row(number, None, _truncate(line))
    try:
        row.data = _json_decoder().decode(line)
    except _JsonProblem as exc:
        row.problem = str(exc)
    except json.JSONDecodeError as exc:
        row.problem = f"invalid JSON at column {exc.colno}: {exc.msg}"
    except RecursionError:
        row.problem = "JSON is nested too deeply"
    return row


class _JsonProblem(ValueError):
    pass


_LINE_END = re.compile(r"\r\n|\r|\n")


def _json_int(literal: str) -> int:
    digits = len(literal.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise _JsonProblem(_too_long_number(digits))
    return int(literal)


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


@functools.cache
def _json_decoder() -> json.JSONDecoder:
    """One decoder with the manifest's rules (``json.loads`` with hooks builds one per call,
    which is most of the cost of a short row)."""
    return json.JSONDecoder(
        object_pairs_hook=_json_object, parse_constant=_json_constant, parse_int=_json_int
    )


def csv_rows(text: str) -> list[Row]:
    lines = text.split("\n")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    header_line = 0
    rows: list[Row] = []
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raw = "\n".join(lines[start - 1 : reader.line_num])
            if header is None:
                raise FileProblem(start, f"CSV header cannot be read: {exc}") from None
            rows.append(Row(start, None, _truncate(raw), f"CSV row cannot be read: {exc}"))
            continue
        raw = _truncate("\n".join(lines[start - 1 : reader.line_num]))
        if not record or all(not cell.strip() for cell in record):
            continue
        if header is None:
            header, header_line = [c.strip() for c in record], start
            _check_csv_header(header, header_line)
            continue
        if len(record) != len(header):
            rows.append(Row(
                start, None, raw,
                f"CSV row has {len(record)} fields but the header (line {header_line}) "
                f"has {len(header)} columns",
            ))
            continue
        row = Row(start, None, raw)
        try:
            row.data = _csv_record(dict(zip(header, record, strict=True)))
        except _JsonProblem as exc:
            row.problem = str(exc)
        rows.append(row)
    if header is None:
        raise FileProblem(0, "manifest file is empty")
    return rows


def _check_csv_header(header: list[str], line: int) -> None:
    unknown = [c for c in header if c not in CSV_COLUMNS]
    if unknown:
        raise FileProblem(
            line, f"unknown CSV column(s) {unknown}; known columns: {', '.join(CSV_COLUMNS)}"
        )
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise FileProblem(line, f"CSV column(s) {duplicated} appear more than once")
    if not {"prompt", "image", "bundle"} & set(header):
        raise FileProblem(line, "CSV needs a 'prompt', 'image' or 'bundle' column")


def _csv_record(cells: dict[str, str]) -> dict[str, Any]:
    """Turn CSV text cells into typed values; empty cells are absent."""
    out: dict[str, Any] = {}
    for key, cell in cells.items():
        if not cell.strip():
            continue
        if key in ("seed", "variants"):
            # A non-integer is passed on as text so that validation names it.
            out[key] = _json_int(cell.strip()) if _INT_RE.match(cell.strip()) else cell
        elif key == "tags":
            out[key] = [t.strip() for t in cell.split(";") if t.strip()]
        elif key == "params":
            try:
                out[key] = json.loads(
                    cell,
                    object_pairs_hook=_json_object,
                    parse_constant=_json_constant,
                    parse_int=_json_int,
                )
            except json.JSONDecodeError as exc:
                raise _JsonProblem(f"params is not valid JSON: {exc.msg}") from None
        else:
            out[key] = cell
    return out
