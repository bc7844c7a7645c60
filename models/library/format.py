"""The library's catalogue file, ``library.jsonl``: one captioned mesh per line.

Each line is a JSON object::

    {"id": "ycb-025_mug", "path": "meshes/ycb/025_mug.stl", "caption": "a mug with a handle",
     "tags": ["kitchen"], "up": "z", "licence": "YCB object set, CC BY 4.0"}

``path`` is relative to the folder (or absolute); ``up`` is the axis of the mesh file that
points up (``y`` or ``z``, default ``y``); ``tags`` and ``licence`` are optional.
See ``docs/library-format.md``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

LIBRARY_FILE = "library.jsonl"


#: Axes a library mesh may name as up (the renderer turns them into the bundle's +Y).
UP_AXES = ("y", "z")


_FIELDS = ("id", "path", "caption", "tags", "up", "licence")


_REQUIRED = ("id", "path", "caption")


class LibraryError(ValueError):
    """A library folder, ``library.jsonl`` or index that cannot be used (permanent)."""

    retryable = False


@dataclass(frozen=True)
class LibraryEntry:
    """One mesh of the library, as written in ``library.jsonl``."""

    id: str
    """Unique name of the entry within its library."""
    path: str
    """Mesh file, relative to the library folder (or absolute); any format trimesh reads."""
    caption: str
    """What the mesh shows, in plain words; text prompts are matched against it."""
    tags: tuple[str, ...] = ()
    """Free keywords (category, source)."""
    up: str = "y"
    """Axis of the mesh file that points up: ``y`` or ``z``."""
    licence: str = ""
    """Licence and source of the mesh, recorded with every asset made from it."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["tags"] = list(self.tags)
        return data


def read_library_jsonl(path: str | Path) -> list[LibraryEntry]:
    """Parse ``library.jsonl`` -> entries in file order.

    Blank lines are skipped. Every bad line is reported, with its number and reason, in one
    :class:`LibraryError` (``library.jsonl line 3: missing "caption"``).
    """
    path = Path(path)
    if not path.is_file():
        raise LibraryError(f"no {path.name} at {path}")
    entries: list[LibraryEntry] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = parse_library_line(line)
        except LibraryError as exc:
            errors.append(f"{path.name} line {number}: {exc}")
            continue
        if entry.id in seen:
            errors.append(
                f"{path.name} line {number}: duplicate id {entry.id!r} (first on line "
                f"{seen[entry.id]})"
            )
            continue
        seen[entry.id] = number
        entries.append(entry)
    if errors:
        raise LibraryError("\n".join(errors))
    return entries


def parse_library_line(line: str) -> LibraryEntry:
    """One ``library.jsonl`` line -> :class:`LibraryEntry`; :class:`LibraryError` says why not."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise LibraryError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise LibraryError(f"expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise LibraryError(f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(_FIELDS)}")
    for name in _REQUIRED:
        if name not in data:
            raise LibraryError(f'missing "{name}"')
        if not isinstance(data[name], str) or not data[name].strip():
            raise LibraryError(f'"{name}" must be a non-empty string, got {data[name]!r}')
    tags = data.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise LibraryError(f'"tags" must be a list of strings, got {tags!r}')
    up = data.get("up", "y")
    if up not in UP_AXES:
        raise LibraryError(f'"up" must be one of {", ".join(UP_AXES)}, got {up!r}')
    licence = data.get("licence", "")
    if not isinstance(licence, str):
        raise LibraryError(f'"licence" must be a string, got {licence!r}')
    return LibraryEntry(
        id=data["id"].strip(),
        path=data["path"],
        caption=data["caption"].strip(),
        tags=tuple(tags),
        up=up,
        licence=licence,
    )


def write_library_jsonl(path: str | Path, entries: Sequence[LibraryEntry]) -> bool:
    """Write ``entries`` to ``path`` atomically; returns False (and writes nothing) if unchanged."""
    path = Path(path)
    text = "".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in entries)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    _atomic_write(path, text.encode("utf-8"))
    return True


def resolve_mesh_path(folder: str | Path, entry: LibraryEntry) -> Path:
    """The entry's mesh file: ``entry.path`` if absolute, else relative to ``folder``."""
    p = Path(entry.path).expanduser()
    return p if p.is_absolute() else Path(folder) / p


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}-", delete=False) as f:
        f.write(data)
    # NamedTemporaryFile creates 0600; library files are meant to be shared like any other.
    os.chmod(f.name, 0o644)
    os.replace(f.name, path)
