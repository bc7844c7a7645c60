"""The one per-process cache of loaded models, keyed by what the model is.

A worker process keeps what it has loaded (a Flux pipeline, an LRM, the text embedder, a
library index) between assets, so nothing heavy is read twice. Every loader goes through
:func:`get_or_load` with a :class:`ModelKey`:

- ``kind`` names the family (``"kiss3dgen"``, ``"lrm"``, ...) so one family can be cleared
  or bounded on its own;
- ``identity`` says which model it is (resolved path, config, device): two requests with the
  same identity share one loaded object;
- ``version`` says which state of its files was loaded (mtimes, sizes, a digest): a request
  with the same identity but another version replaces the stale entry instead of keeping both.

Loads of one key happen once even when threads ask together (they wait for the first);
loads of different keys run side by side. A kind may be bounded by count
(``max_entries``): the least recently used entries of that kind are dropped *before* the new
one loads, so two large models never sit in memory at once.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple, TypeVar

__all__ = ["ModelKey", "ModelCache", "MODEL_CACHE", "get_or_load", "clear"]

T = TypeVar("T")


class ModelKey(NamedTuple):
    """What a cached model is; compared as a whole to find a hit."""

    kind: str
    """Model family, e.g. ``"lrm"``; the unit of :meth:`ModelCache.clear` and of ``max_entries``."""
    identity: tuple[Hashable, ...]
    """Which model: resolved path(s), config, device. Same identity -> same loaded object."""
    version: tuple[Hashable, ...] = ()
    """Which state of its files (mtime_ns, size, sha). Another version replaces the entry."""


class ModelCache:
    """A thread-safe map ``(kind, identity) -> (version, model)``, least recently used first."""

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[str, tuple], tuple[tuple, Any]] = OrderedDict()
        self._lock = threading.Lock()
        # One lock per slot being loaded, so a second caller waits for the first load.
        self._loading: dict[tuple[str, tuple], threading.Lock] = {}

    def get_or_load(
        self, key: ModelKey, loader: Callable[[], T], *, max_entries: int | None = None
    ) -> T:
        """The model cached under ``key``, calling ``loader()`` once when it is absent or stale.

        ``max_entries`` bounds how many models of ``key.kind`` stay loaded (None: no bound);
        older entries of that kind are dropped before ``loader`` runs. An exception from
        ``loader`` propagates and caches nothing.
        """
        if max_entries is not None and max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        slot = (key.kind, tuple(key.identity))
        version = tuple(key.version)
        hit = self._lookup(slot, version)
        if hit is not None:
            return hit[0]
        with self._lock:
            slot_lock = self._loading.setdefault(slot, threading.Lock())
        with slot_lock:
            hit = self._lookup(slot, version)
            if hit is not None:
                return hit[0]
            self._make_room(slot, key.kind, max_entries)
            model = loader()
            with self._lock:
                self._entries[slot] = (version, model)
                self._entries.move_to_end(slot)
                self._loading.pop(slot, None)
            return model

    def clear(self, kind: str | None = None) -> None:
        """Forget every entry of ``kind`` (every entry when None); memory is freed once no one
        else holds the models."""
        with self._lock:
            for slot in [s for s in self._entries if kind is None or s[0] == kind]:
                del self._entries[slot]
        _release_accelerator_memory()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def kinds(self) -> dict[str, int]:
        """Number of loaded entries per kind (for logs and tests)."""
        with self._lock:
            counts: dict[str, int] = {}
            for kind, _identity in self._entries:
                counts[kind] = counts.get(kind, 0) + 1
            return counts

    def _lookup(self, slot: tuple[str, tuple], version: tuple) -> tuple[Any] | None:
        """``(model,)`` when ``slot`` holds ``version`` (marked as just used), else None."""
        with self._lock:
            entry = self._entries.get(slot)
            if entry is None or entry[0] != version:
                return None
            self._entries.move_to_end(slot)
            return (entry[1],)

    def _make_room(self, slot: tuple[str, tuple], kind: str, max_entries: int | None) -> None:
        """Drop the stale entry of ``slot`` and, under a bound, the oldest entries of ``kind``."""
        dropped = False
        with self._lock:
            if self._entries.pop(slot, None) is not None:
                dropped = True
            if max_entries is not None:
                same_kind = [s for s in self._entries if s[0] == kind]
                for old in same_kind[: max(0, len(same_kind) - (max_entries - 1))]:
                    del self._entries[old]
                    dropped = True
        if dropped:
            _release_accelerator_memory()


def _release_accelerator_memory() -> None:
    """Return freed CUDA blocks to the driver so the next model fits (no-op without torch/CUDA)."""
    torch = sys.modules.get("torch")  # never import torch just to clear a cache
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


#: The process's model cache.
MODEL_CACHE = ModelCache()


def get_or_load(key: ModelKey, loader: Callable[[], T], *, max_entries: int | None = None) -> T:
    """:meth:`ModelCache.get_or_load` on the process's :data:`MODEL_CACHE`."""
    return MODEL_CACHE.get_or_load(key, loader, max_entries=max_entries)


def clear(kind: str | None = None) -> None:
    """:meth:`ModelCache.clear` on the process's :data:`MODEL_CACHE`."""
    MODEL_CACHE.clear(kind)
