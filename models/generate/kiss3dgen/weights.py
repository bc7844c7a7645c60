"""The weights error every Stage I loader raises, and the dtype keyword diffusers expects.

Kept apart from :mod:`models.generate.kiss3dgen.pipeline` so the ControlNet and Redux loaders
use them without importing the pipeline (which imports them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch


class WeightsMissingError(FileNotFoundError):
    """A weights path that is absent or does not hold what the generator needs (permanent)."""

    retryable = False

    def __init__(self, path: str | Path | None, expected: str, detail: str = "") -> None:
        self.path = None if path is None else Path(path)
        self.expected = expected
        where = "no path given" if path is None else f"{path}"
        message = f"kiss3dgen weights: {where}: expected {expected}"
        if detail:
            message += f" ({detail})"
        self.problems: list[WeightsMissingError] = [self]
        super().__init__(message)

    @classmethod
    def combined(cls, problems: list[WeightsMissingError]) -> WeightsMissingError:
        """One error naming every path of ``problems`` (``.problems`` keeps them)."""
        first = problems[0]
        error = cls(first.path, first.expected)
        error.problems = list(problems)
        parts = [str(p).removeprefix("kiss3dgen weights: ") for p in problems]
        error.args = (f"kiss3dgen weights: {len(problems)} missing: " + "; ".join(parts),)
        return error

    @classmethod
    def raise_any(cls, problems: list[WeightsMissingError]) -> None:
        """Raise the one problem as it is, several as :meth:`combined`; nothing when empty."""
        if len(problems) == 1:
            raise problems[0]
        if problems:
            raise cls.combined(problems)

    @classmethod
    def check_all(cls, checks: Iterable[Callable[[], object]]) -> None:
        """Run every check (each may raise this error, itself combined or not), then raise
        what they found as :meth:`raise_any` does: a user fixes every path at once."""
        problems: list[WeightsMissingError] = []
        for check in checks:
            try:
                check()
            except WeightsMissingError as exc:
                problems.extend(exc.problems)
        cls.raise_any(problems)


def dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    # diffusers >= 0.36 renamed from_pretrained's ``torch_dtype`` to ``dtype``.
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}
