"""A captioned mesh library hosted in a bucket is synced locally and indexed."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
import trimesh
from typer.testing import CliRunner


@pytest.mark.s3
def test_library_build_syncs_a_bucket_prefix_and_indexes_it(s3_store, tmp_path):
    from foundry3d.cli import app
    from foundry3d.settings import get_settings
    from models.library.index import LibraryIndex

    entries = []
    for name, mesh in (("box", trimesh.creation.box()), ("ball", trimesh.creation.icosphere())):
        mesh.export(tmp_path / f"{name}.ply")
        s3_store.put_file(f"meshes/{name}.ply", tmp_path / f"{name}.ply")
        entries.append({"id": name, "path": f"meshes/{name}.ply", "caption": f"a plain {name}",
                        "tags": [], "up": "y", "licence": "CC0"})
    s3_store.put_bytes("library.jsonl", "\n".join(json.dumps(e) for e in entries).encode())

    result = CliRunner().invoke(app, ["library", "build", s3_store.url, "--tile", "64"])
    assert result.exit_code == 0, result.output
    parts = urlsplit(s3_store.url)
    folder = get_settings().data_dir / "library-cache" / parts.netloc / parts.path.strip("/")
    index = LibraryIndex.load(folder)
    assert sorted(e.id for e in index.entries) == ["ball", "box"]

    again = CliRunner().invoke(app, ["library", "build", s3_store.url, "--tile", "64"])
    assert "0 downloaded, 3 unchanged" in " ".join(again.output.split())
