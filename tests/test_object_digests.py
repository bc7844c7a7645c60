"""A stage records the size and sha256 of each object it writes, so `verify` can check them."""

from __future__ import annotations

import hashlib

from storage import queries
from storage.db import ensure_database, session_scope
from tasks.config import PipelineConfig
from tasks.stage import run_stage

ASSET = "cd" * 32


def test_a_stage_records_the_digest_of_each_object_it_writes(tmp_path):
    config = PipelineConfig(database_url=f"sqlite:///{tmp_path / 'f.db'}",
                            store_url=(tmp_path / "objects").as_uri(),
                            library_path=str(tmp_path / "library"))
    engine = ensure_database(config.database_url)
    with session_scope(engine) as session:
        queries.insert_asset_if_new(session, asset_id=ASSET, kind="prompt", prompt="a cup",
                                    seed=1, generator="library", init="library")
    data = b"not really a bundle"

    def work(io):
        io.local("bundle.png").write_bytes(data)
        io.publish("bundle.png")

    keys = run_stage(config, ASSET, "bundle", "0123456789abcdef", work)
    with session_scope(engine) as session:
        digests = queries.get_asset(session, ASSET).object_digests
    assert digests == {keys["bundle.png"]: {"size": len(data),
                                            "sha256": hashlib.sha256(data).hexdigest()}}
