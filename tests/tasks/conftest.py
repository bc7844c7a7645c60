"""Set-up of the stage-task tests: a migrated SQLite database, a local store, a tiny library."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from tasks.assets import AssetSnapshot, snapshot
from tasks.config import PipelineConfig
from tests.flows.conftest import FAST_PARAMS, tiny_library  # noqa: F401 (a fixture)


@pytest.fixture
def config(tmp_path: Path, tiny_library: Path) -> PipelineConfig:  # noqa: F811
    """SQLite + a local folder store, migrated, with the tiny three-mesh library."""
    from storage.db import upgrade_database

    database_url = f"sqlite:///{tmp_path / 'app.db'}"
    upgrade_database(database_url)
    return PipelineConfig(
        database_url=database_url,
        store_url=(tmp_path / "objects").as_uri(),
        library_path=str(tiny_library),
        lease_seconds=60,
    )


def add_asset(
    config: PipelineConfig,
    params: dict | None = None,
    *,
    asset_id: str = "asset0000001",
    prompt: str = "a tall metal soda can",
    generator: str = "library",
    init: str = "sphere",
    seed: int = 0,
) -> AssetSnapshot:
    """Insert a prompt asset (FAST_PARAMS under ``params``) and return its snapshot."""
    from storage import queries
    from storage.schema import Asset
    from tasks.resources import engine_for

    with Session(engine_for(config.database_url)) as session:
        queries.insert_asset_if_new(
            session, asset_id=asset_id, kind="prompt", prompt=prompt, image_ref=None,
            image_sha256=None, bundle_ref=None, seed=seed, variant=0, generator=generator,
            init=init, params={**FAST_PARAMS, **(params or {})}, tags=["test"],
        )
        session.commit()
        return snapshot(session.get(Asset, asset_id))
