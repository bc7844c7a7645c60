"""Per-process handles on the database and the object store, opened once per URL."""

from __future__ import annotations

import os
import socket
from functools import lru_cache

from storage.db import get_engine
from storage.objects import ObjectStore, open_store

#: The process's engine for a database URL: :func:`storage.db.get_engine` itself, the one owner
#: of engines (kept under this name for the stage tasks and flows that call it).
engine_for = get_engine

__all__ = ["engine_for", "get_engine", "store_for", "worker_name", "torch_device", "rasteriser_for"]


@lru_cache(maxsize=8)
def store_for(url: str) -> ObjectStore:
    """The process's object store for ``url``."""
    return open_store(url)


def worker_name() -> str:
    """``host:pid`` of this process, used as the lease owner."""
    return f"{socket.gethostname()}:{os.getpid()}"


def torch_device(name: str) -> str:
    """``auto`` -> ``cuda`` when this process sees a GPU, else ``cpu``; other names unchanged.

    Resolved in the process that does the work, so a GPU worker uses its GPU even when the
    catalog that sent the asset ran on a CPU machine.
    """
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def rasteriser_for(name: str, device: str):  # noqa: ANN201 - a models.raster backend
    """The rasteriser backend called ``name`` (``auto``: nvdiffrast on CUDA, else cpu)."""
    from models.raster import get_rasteriser

    return get_rasteriser(name, device=device)
