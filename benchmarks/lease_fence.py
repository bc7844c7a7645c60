"""What the lease fence costs a stage: ``run_stage`` with a trivial body on SQLite + a local
store, 30 stages without a held lease, then 30 with one (heartbeat running, every record and
upload fenced). Prints milliseconds per stage.

    PYTHONPATH=. python benchmarks/lease_fence.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from sqlalchemy.orm import Session

from storage import queries
from storage.db import upgrade_database
from tasks.config import PipelineConfig
from tasks.lease import Lease, holding
from tasks.resources import engine_for
from tasks.stage import StageIO, run_stage

STAGES = 30


def _work(io: StageIO) -> None:
    io.local("x.txt").write_text("x")
    io.publish("x.txt")


def _ms_per_stage(config: PipelineConfig, asset_id: str) -> float:
    started = time.perf_counter()
    for i in range(STAGES):
        run_stage(config, asset_id, "init", f"hash-{i}", _work)
    return (time.perf_counter() - started) / STAGES * 1000


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="lease-fence-"))
    url = f"sqlite:///{folder / 'app.db'}"
    upgrade_database(url)
    config = PipelineConfig(database_url=url, store_url=(folder / "objects").as_uri(),
                            library_path=str(folder))
    with Session(engine_for(url)) as session:
        for asset_id in ("unfenced", "fenced"):
            queries.insert_asset_if_new(
                session, asset_id=asset_id, kind="prompt", prompt="p", image_ref=None,
                image_sha256=None, bundle_ref=None, seed=0, variant=0, generator="library",
                init="sphere", params={}, tags=[],
            )
        assert queries.claim_asset(session, "fenced", "bench", 60)
        epoch = queries.lease_epoch(session, "fenced")
        session.commit()
    print(f"without a lease: {_ms_per_stage(config, 'unfenced'):.1f} ms/stage")
    with holding(Lease("fenced", "bench", epoch, 60), url):
        print(f"fenced:          {_ms_per_stage(config, 'fenced'):.1f} ms/stage")


if __name__ == "__main__":
    main()
