"""Naming a database to an API client without revealing its URL."""

from __future__ import annotations

import hashlib


def database_fingerprint(database_url: str) -> str:
    """A short hash naming a database without revealing its URL (or password)."""
    return hashlib.sha256(database_url.encode()).hexdigest()[:16]
