"""Parameters of the ``evaluate`` stage: what :func:`models.evaluate.asset.evaluate_asset`
measures with. Manifest keys: ``evaluate_<field>``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from models.evaluate.metrics import DEFAULT_SAMPLES
from models.param_fields import Range, checked_params


@dataclass(frozen=True)
class EvaluateParams:
    """How the finished asset is measured."""

    samples: int = DEFAULT_SAMPLES
    """Surface samples per mesh for Chamfer distance, F-score and normal consistency against a
    reference mesh; 1,000..1,000,000 (two KD-trees over a million points is the memory cap)."""

    RANGES: ClassVar[dict[str, Range]] = {"samples": Range(1_000, 1_000_000)}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, **defaults: Any) -> EvaluateParams:
        """Params from a mapping over ``defaults``; unknown keys, wrong types and out-of-range
        values raise :class:`models.param_fields.ParameterError`."""
        return checked_params(cls, data, what="evaluate", ranges=cls.RANGES, defaults=defaults)
