"""Checking a flat mapping of values against a parameter dataclass.

Every stage's parameters are a frozen dataclass with a docstring under each field. This module
turns a mapping (a manifest's ``params``, split by stage) into such an object: unknown keys are
rejected naming the nearest valid one, values are type-checked (naming the bad value) and
numeric fields are checked against their documented :class:`Range`. Errors are
:class:`ParameterError`, a permanent failure with a one-line message.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ParameterError(ValueError):
    """A parameter that does not exist or has a value its stage cannot use (permanent)."""

    retryable = False


@dataclass(frozen=True)
class Range:
    """The accepted values of a numeric field: ``low <= value <= high`` (both inclusive)."""

    low: float
    """Smallest accepted value."""
    high: float
    """Largest accepted value (sizes above it would not fit in memory, or make no sense)."""
    even: bool = False
    """Whether the value must also be even (pixel sizes split in halves)."""

    def check(self, value: float) -> str | None:
        """Why ``value`` is out of range, or None when it is fine."""
        if not self.low <= value <= self.high:
            return f"within {_number(self.low)}..{_number(self.high)}"
        if self.even and int(value) % 2:
            return "even"
        return None


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def nearest_name(name: str, candidates: Collection[str]) -> str | None:
    """The candidate closest to ``name`` by :func:`difflib.SequenceMatcher` ratio (None if none)."""
    found = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.0)
    return found[0] if found else None


def unknown_name_message(what: str, name: str, candidates: Collection[str]) -> str:
    """``unknown refine parameter 'stpes' (did you mean 'fine_steps'?)``."""
    best = nearest_name(name, candidates)
    if best is None:
        return f"unknown {what} parameter {name!r} ({what} takes no parameters)"
    return f"unknown {what} parameter {name!r} (did you mean {best!r}?)"


def field_names(cls: type) -> tuple[str, ...]:
    """The field names of the dataclass ``cls``, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls))


def checked_params(
    cls: type[T],
    data: Mapping[str, Any] | None,
    *,
    what: str,
    ranges: Mapping[str, Range] | None = None,
    settable: Collection[str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> T:
    """An instance of the dataclass ``cls`` from ``data`` over ``defaults`` over its own defaults.

    ``what`` names the parameters in messages (``refine``). ``settable``: the fields ``data`` may
    set (default: all); ``defaults`` (from settings, or supplied by the pipeline) may set any
    field and ``None`` among them is ignored. ``ranges``: field -> :class:`Range`. Raises
    :class:`ParameterError` on an unknown key, a wrong type or an out-of-range value.
    """
    names = field_names(cls)
    allowed = set(names if settable is None else settable)
    data = dict(data or {})
    for key in data:
        if key not in allowed:
            raise ParameterError(unknown_name_message(what, str(key), allowed))
    merged = {k: v for k, v in (defaults or {}).items() if v is not None}
    merged.update(data)
    hints = _type_hints(cls)
    values = {}
    for key, value in merged.items():
        if key not in names:
            raise ParameterError(unknown_name_message(what, str(key), names))
        values[key] = _coerce(what, key, hints[key], value)
        limit = (ranges or {}).get(key)
        if limit is not None and isinstance(values[key], int | float):
            problem = limit.check(values[key])
            if problem:
                raise ParameterError(
                    f"{what} parameter {key!r} must be {problem}, got {value!r}"
                )
    return cls(**values)


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """The resolved field types of ``cls`` (resolving the annotations' strings is the slow part
    of building parameters, and a class's types never change)."""
    return typing.get_type_hints(cls)


def _coerce(what: str, key: str, hint: Any, value: Any) -> Any:
    """``value`` as the type ``hint`` wants (int -> float, str -> Path), or ParameterError."""
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ParameterError(f"{what} parameter {key!r} must be set, got None")
    for option in options:
        if option is type(None):
            continue
        converted = _as(option, value)
        if converted is not _NO:
            return converted
    wanted = " or ".join(_type_name(o) for o in options if o is not type(None))
    if type(None) in options:
        wanted += " or null"
    raise ParameterError(
        f"{what} parameter {key!r} must be {wanted}, got {value!r} ({type(value).__name__})"
    )


_NO = object()


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _as(option: Any, value: Any) -> Any:
    """``value`` converted to ``option``, or ``_NO`` when it is not of that kind."""
    if option is bool:
        return value if isinstance(value, bool) else _NO
    if option is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if option is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok else _NO
    if option is str:
        return value if isinstance(value, str) else _NO
    if option is Path:
        return Path(value).expanduser() if isinstance(value, str | Path) and value else _NO
    if typing.get_origin(option) is tuple:
        items = typing.get_args(option)
        if not isinstance(value, list | tuple) or len(value) != len(items):
            return _NO
        out = [_as(t, v) for t, v in zip(items, value, strict=True)]
        return _NO if any(o is _NO for o in out) else tuple(out)
    return _NO


def _type_name(option: Any) -> str:
    if typing.get_origin(option) is tuple:
        items = typing.get_args(option)
        return f"a list of {len(items)} {_type_name(items[0])}s"
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        Path: "a path",
    }.get(option, getattr(option, "__name__", str(option)))


def plain_values(params: Any) -> dict[str, Any]:
    """A parameter dataclass as JSON-ready plain values (paths as strings, tuples as lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    return {f.name: plain(getattr(params, f.name)) for f in dataclasses.fields(params)}
