"""Per-process handles on the database and the object store, opened once per URL."""

from __future__ import annotations

import os
import socket
from functools import lru_cache

from sqlalchemy import Engine

from storage.db import make_engine
from storage.objects import ObjectStore, open_store


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """The process's engine for ``url`` (one engine per process and URL)."""
    return make_engine(url)


@lru_cache(maxsize=8)
def store_for(url: str) -> ObjectStore:
    """The process's object store for ``url``."""
    return open_store(url)


def worker_name() -> str:
    """``host:pid`` of this process, used as the lease owner."""
    return f"{socket.gethostname()}:{os.getpid()}"
