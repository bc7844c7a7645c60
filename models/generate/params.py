"""Parameters of Stage I (the ``bundle`` stage) shared by every generator, and the ``library``
generator's own. The ``kiss3dgen`` generator's are :class:`models.generate.kiss3dgen.params.
Kiss3DGenParams`; the ``file`` generator takes none.

Manifest keys: ``tile`` (unprefixed) and each generator field unprefixed (``library_id``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from models.param_fields import Range, checked_params


@dataclass(frozen=True)
class BundleParams:
    """How the bundle image is drawn, whichever generator draws it."""

    tile: int = 512
    """Side of one of the 8 square tiles in pixels (the bundle is 4 tile x 2 tile). 32..2048
    and even: 32-pixel bundles are the smallest the tests and benchmarks render, and a 2048
    tile (an 8192 x 4096 bundle) is the largest that refinement's targets fit in memory."""

    RANGES: ClassVar[dict[str, Range]] = {"tile": Range(32, 2048, even=True)}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, **defaults: Any) -> BundleParams:
        """Params from a mapping over ``defaults`` (e.g. ``tile`` from settings); unknown keys,
        wrong types and out-of-range values raise :class:`models.param_fields.ParameterError`."""
        return checked_params(cls, data, what="bundle", ranges=cls.RANGES, defaults=defaults)


@dataclass(frozen=True)
class LibraryParams:
    """How the ``library`` generator picks the mesh it renders."""

    library_id: str | None = None
    """Id of a library entry to render directly (its ``id`` in ``library.jsonl``); ``None``
    retrieves the entry nearest to the prompt or image."""

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, **defaults: Any) -> LibraryParams:
        """Params from a mapping over ``defaults``; unknown keys and wrong types raise
        :class:`models.param_fields.ParameterError`."""
        return checked_params(cls, data, what="library", defaults=defaults)
