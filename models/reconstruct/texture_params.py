"""Parameters of the ``texture`` stage: the keyword options of
:func:`models.reconstruct.texture.project_colours`. Manifest keys: ``texture_<field>``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from models.param_fields import ParameterError, Range, checked_params


@dataclass(frozen=True)
class TextureParams:
    """How colours are projected from the bundle's 4 views onto the refined mesh."""

    erosion_px: int | None = None
    """Pixels the masks are eroded at silhouettes before sampling colours (edge pixels mix
    object and background); ``None``: 1 pixel per 128 of tile. 0..64."""
    view_weights: tuple[float, float, float, float] | None = None
    """Weight of each of the 4 views (front, right, back, left) in the blend; ``None``: all 1."""

    RANGES: ClassVar[dict[str, Range]] = {"erosion_px": Range(0, 64)}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, **defaults: Any) -> TextureParams:
        """Params from a mapping over ``defaults``; unknown keys, wrong types and out-of-range
        values raise :class:`models.param_fields.ParameterError`."""
        params = checked_params(cls, data, what="texture", ranges=cls.RANGES, defaults=defaults)
        if params.view_weights is not None and (
            min(params.view_weights) < 0 or sum(params.view_weights) <= 0
        ):
            raise ParameterError(
                "texture parameter 'view_weights' must be 4 weights >= 0 with a positive sum, "
                f"got {list(params.view_weights)}"
            )
        return params

    def keywords(self) -> dict[str, Any]:
        """The keyword arguments of ``project_colours`` (``None`` fields left to its defaults)."""
        return {"erosion_px": self.erosion_px, "view_weights": self.view_weights}
