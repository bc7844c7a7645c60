"""Values computed from the last bundle seen, kept while that bundle lives.

One reconstruction asks for the same derived arrays several times (decoded normal maps,
downsampled targets, integrated depth), from stages that do not pass them to each other. A
:class:`BundleMemo` keeps them for the bundle last asked about: the bundle is recognised by
identity (the same object holding the same image array), a different bundle replaces them,
and they are dropped when the bundle is garbage-collected (a worker does not keep its last
asset's arrays).

Each thread has its own last bundle: a catalog runs two assets at once in worker threads, and
with one shared slot a thread could be handed the dictionary another thread's bundle had just
put in its place (the check and the read are two steps), then fill or read it with the wrong
asset's arrays.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np

from models.bundle.coverage import tile_coverages
from models.bundle.spec import Bundle


class _Slot:
    """One thread's last bundle and its values."""

    def __init__(self) -> None:
        self.bundle: weakref.ref | None = None
        self.image: weakref.ref | None = None
        self.values: dict[Any, Any] = {}

    def forget(self, ref: weakref.ref) -> None:
        # Called by the garbage collector, possibly in another thread: one assignment.
        if ref is self.bundle:
            self.values = {}


class BundleMemo:
    """A dictionary of values derived from one bundle at a time per thread (see the module
    docstring)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _slot(self) -> _Slot:
        slot = getattr(self._local, "slot", None)
        if slot is None:
            slot = self._local.slot = _Slot()
        return slot

    def values(self, bundle: Bundle) -> dict[Any, Any]:
        """The values kept for ``bundle``: an empty dictionary (now kept) when this thread
        asked about another bundle last. Callers fill it themselves."""
        slot = self._slot()
        same = (slot.bundle is not None and slot.bundle() is bundle
                and slot.image is not None and slot.image() is bundle.image)
        if not same:
            slot.bundle = weakref.ref(bundle, slot.forget)
            slot.image = weakref.ref(bundle.image)
            slot.values = {}
        return slot.values

    def __len__(self) -> int:
        """How many values this thread keeps."""
        return len(self._slot().values)


_DECODED = BundleMemo()


def decoded_views(bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    """``bundle``'s decoded normal maps ``(N, T, T, 3)`` float32 (camera frame, 0 on the
    background) and masks ``(N, T, T)`` bool, decoded once per bundle.

    The hull, the depth integration, refinement's targets, the colours and the metrics all read
    them; decoding a 512-px bundle takes about 0.2 s. The arrays are shared, so they are
    read-only: a caller that needs to change them copies first.
    """
    values = _DECODED.values(bundle)
    if "views" not in values:
        normals, masks = bundle.normals(), bundle.masks()
        normals.flags.writeable = False
        masks.flags.writeable = False
        values["views"] = (normals, masks)
    return values["views"]


def decoded_coverage(bundle: Bundle) -> np.ndarray:
    """``bundle``'s per-pixel coverage ``(N, T, T)`` float32 in [0, 1]
    (:func:`models.bundle.coverage.tile_coverages`), computed once per bundle and read-only:
    refinement's silhouette targets."""
    values = _DECODED.values(bundle)
    if "coverage" not in values:
        coverage = tile_coverages(bundle.normal_tiles())
        coverage.flags.writeable = False
        values["coverage"] = coverage
    return values["coverage"]
