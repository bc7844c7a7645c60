"""Settings of the HTTP API (``FOUNDRY_API_*``), beside the factory's own ``FOUNDRY_*`` ones.

Kept in the api package so that the service's options travel with it; like
:mod:`foundry3d.settings`, nothing else in the package reads the environment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO = Path(__file__).resolve().parents[2]


class ApiSettings(BaseSettings):
    """Options of ``foundry3d api``; each field is ``FOUNDRY_API_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="FOUNDRY_API_", extra="ignore")

    callback_secret: str | None = Field(
        None, description="HMAC-SHA256 key that signs job callbacks; callbacks are refused "
        "without it."
    )
    vendor_dir: Path = Field(
        REPO / "vendor" / "node_modules",
        description="npm folder holding @google/model-viewer and swagger-ui-dist "
        "(scripts/install.sh fills it).",
    )
    url: str = Field(
        "http://127.0.0.1:8000",
        description="Where `foundry3d search` looks for a running API server first.",
    )
    token: str | None = Field(
        None, description="Bearer token `foundry3d search` sends to that server (read scope)."
    )


@lru_cache(maxsize=1)
def get_api_settings() -> ApiSettings:
    """The process-wide API settings, read once from the environment."""
    return ApiSettings()


def database_fingerprint(database_url: str) -> str:
    """A short hash naming a database without revealing its URL (or password)."""
    import hashlib

    return hashlib.sha256(database_url.encode()).hexdigest()[:16]
