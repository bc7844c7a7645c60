"""Shared set-up of the pipeline tests: a tiny captioned library, configs, manifests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
import yaml

from tasks.config import PipelineConfig

#: Manifest params that make a whole asset take a few seconds on 2 cores.
FAST_PARAMS = {
    "tile": 64,
    "refine_coarse_steps": 8,
    "refine_fine_steps": 6,
    "refine_coarse_resolution": 48,
    "refine_resolution": 64,
    "export_faces": 2000,
    "export_texture_size": 256,
    "export_thumbnail_size": 64,
    "export_turntable_frames": 4,
    "export_turntable_size": 32,
    # So few refinement steps leave a sphere short of a can's silhouette (mask IoU 0.82 at
    # 64-px tiles, below the verdict's default 0.9): these assets are fast, not good.
    "evaluate_min_mask_iou": 0.6,
}

#: Quality-verdict thresholds that judge nothing, for tests of something else whose bundles are
#: noise on purpose (tiny random Flux weights draw no object).
NO_VERDICT = {
    "evaluate_min_mask_iou": 0.0,
    "evaluate_max_normal_angle_deg": 180.0,
    "evaluate_max_non_manifold_per_face": 1.0,
    "evaluate_max_degenerate_per_face": 1.0,
    "evaluate_min_faces": 0,
}

LIBRARY = [
    ("crate", "a wooden crate box", trimesh.creation.box(extents=(1.0, 0.6, 0.8)), (150, 100, 50)),
    ("can", "a tall metal soda can", trimesh.creation.cylinder(radius=0.3, height=1.0),
     (200, 30, 30)),
    ("ball", "a round rubber ball", trimesh.creation.icosphere(subdivisions=3, radius=0.5),
     (40, 90, 220)),
]


@pytest.fixture(scope="session")
def tiny_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A library of three coloured primitives with captions, indexed at 64-pixel tiles."""
    from models.embed.text import get_text_embedder
    from models.library.index import build_library_index

    folder = tmp_path_factory.mktemp("library")
    lines = []
    for name, caption, mesh, colour in LIBRARY:
        mesh = mesh.copy()
        mesh.visual.vertex_colors = np.tile([*colour, 255], (len(mesh.vertices), 1))
        mesh.export(folder / f"{name}.ply")
        lines.append(json.dumps({"id": name, "path": f"{name}.ply", "caption": caption,
                                 "tags": ["test"], "up": "y", "licence": "CC0 (generated)"}))
    (folder / "library.jsonl").write_text("\n".join(lines) + "\n")
    build_library_index(folder, embedder=get_text_embedder(), tile=64)
    return folder


@pytest.fixture(params=["local", pytest.param("remote", marks=[pytest.mark.postgres,
                                                                  pytest.mark.s3])])
def pipeline_config(request, tmp_path: Path, tiny_library: Path) -> PipelineConfig:
    """SQLite + local folder, or PostgreSQL + S3 on the servers the suite started."""
    from storage.db import upgrade_database

    if request.param == "local":
        database_url = f"sqlite:///{tmp_path / 'app.db'}"
        store_url = (tmp_path / "objects").as_uri()
    else:
        database_url = request.getfixturevalue("new_postgres_database")()
        s3_server = request.getfixturevalue("s3_server")
        if not s3_server.running:
            s3_server.start()
        store_url = s3_server.bucket_url(prefix=f"pipeline-{tmp_path.name}")
    upgrade_database(database_url)
    return PipelineConfig(
        database_url=database_url,
        store_url=store_url,
        library_path=str(tiny_library),
        lease_seconds=60,
    )


def write_manifest(folder: Path, items: list[dict], name: str = "manifest.yaml") -> Path:
    """A YAML manifest with FAST_PARAMS as defaults."""
    path = folder / name
    path.write_text(yaml.safe_dump({"defaults": {"params": FAST_PARAMS}, "items": items}))
    return path


def cli_env(config: PipelineConfig, tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment for a ``foundry3d`` subprocess using ``config``'s database and store."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("FOUNDRY_", "PREFECT_"))}
    import uuid

    home = tmp_path / f"prefect-{uuid.uuid4().hex[:8]}"  # one Prefect home per process
    env.update(
        FOUNDRY_DATABASE_URL=config.database_url,
        FOUNDRY_STORE_URL=config.store_url,
        FOUNDRY_LIBRARY_PATH=config.library_path,
        FOUNDRY_DATA_DIR=str(tmp_path / "data"),
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def foundry3d_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "foundry3d", *args]
