"""Configuration read from the environment (``FOUNDRY_*``), in exactly one place.

The pipeline's :class:`Settings` live in :mod:`tasks.settings` (a worker's flows read them
there) and are re-exported here for the CLI and the API; the API's own options are below.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.settings import Settings, get_settings

__all__ = ["REPO", "ApiSettings", "Settings", "get_api_settings", "get_settings"]

#: The repository root (the npm folder of the gallery's viewer lives under it).
REPO = Path(__file__).resolve().parents[1]


class ApiSettings(BaseSettings):
    """Options of ``foundry3d api``; each field is ``FOUNDRY_API_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="FOUNDRY_API_", extra="ignore")

    callback_secret: str | None = Field(
        None, description="HMAC-SHA256 key that signs job callbacks; callbacks are refused "
        "without it."
    )
    vendor_dir: Path = Field(
        REPO / "tools" / "node_modules",
        description="npm folder holding @google/model-viewer and swagger-ui-dist "
        "(scripts/install.sh fills it from tools/package.json).",
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
