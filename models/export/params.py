"""Parameters of the ``export`` stage (the delivered ``asset.glb`` and its ``preview.png``).

Export reads none yet: it writes the textured mesh as it is. Fields added here (faces, LODs,
texture size, formats) become manifest keys ``export_<field>``, are checked at ``foundry3d
validate`` and enter the export stage's parameter hash with no other change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from models.param_fields import Range, checked_params


@dataclass(frozen=True)
class ExportParams:
    """How the deliverables are written (no options yet)."""

    RANGES: ClassVar[dict[str, Range]] = {}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, **defaults: Any) -> ExportParams:
        """Params from a mapping over ``defaults``; unknown keys, wrong types and out-of-range
        values raise :class:`models.param_fields.ParameterError`."""
        return checked_params(cls, data, what="export", ranges=cls.RANGES, defaults=defaults)
