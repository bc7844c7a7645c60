"""``foundry3d validate`` streams: rejections as found, valid rows only when asked, a summary."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from foundry3d.cli import app

runner = CliRunner()


def _manifest(tmp_path, rows: int, bad_every: int):
    path = tmp_path / "big.jsonl"
    with path.open("w") as f:
        for i in range(1, rows + 1):
            row = {"prompt": f"thing {i}", "seed": -1 if i % bad_every == 0 else i}
            f.write(json.dumps(row) + "\n")
    return path


def test_rejections_stream_in_line_order_before_one_summary_line(tmp_path):
    path = _manifest(tmp_path, 30, bad_every=10)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert [line.split(": ", 1)[0] for line in lines[:3]] == [f"{path}:{n}" for n in (10, 20, 30)]
    assert lines[3] == f"{path}: 27 valid row(s) -> 27 request(s), 3 rejected"
    assert len(lines) == 4  # valid rows are not listed by default


def test_show_valid_lists_each_request_as_a_plain_line(tmp_path):
    path = _manifest(tmp_path, 3, bad_every=100)
    result = runner.invoke(app, ["validate", "--show-valid", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{path}:1: ok prompt generator=library init=hull seed=1 variant=0 thing 1"
    assert len(lines) == 4 and "┃" not in result.output


def test_a_mesh_manifest_without_weights_is_valid(tmp_path):
    import shutil
    from pathlib import Path

    examples = Path(__file__).resolve().parents[2] / "examples"
    for name in ("mesh.yaml", "meshes"):
        source = examples / name
        copy = shutil.copytree if source.is_dir() else shutil.copy
        copy(source, tmp_path / name)
    result = runner.invoke(app, ["validate", "--show-valid", str(tmp_path / "mesh.yaml")])
    assert result.exit_code == 0, result.output
    assert "ok mesh generator=kiss3dgen-mesh init=mesh" in result.output
