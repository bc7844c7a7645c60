"""``foundry3d reconstruct`` reports where its seconds went, export stage included."""

from __future__ import annotations

import re

import trimesh


def test_reconstruct_report_splits_the_seconds_of_the_export_stage(tmp_path):
    from typer.testing import CliRunner

    from foundry3d.cli.app import app

    trimesh.creation.box(extents=(1.0, 0.6, 0.8)).export(tmp_path / "box.stl")
    bundle = tmp_path / "bundle.png"
    runner = CliRunner()
    made = runner.invoke(app, ["render-bundle", str(tmp_path / "box.stl"), "-o", str(bundle),
                               "--tile", "64"])
    assert made.exit_code == 0, made.output
    result = runner.invoke(app, ["reconstruct", str(bundle), "-o", str(tmp_path / "box.glb"),
                                 "--coarse-steps", "2", "--fine-steps", "2",
                                 "--texture-mode", "vertex"])
    assert result.exit_code == 0, result.output
    assert "export_seconds" in result.output and "report_seconds" in result.output
    # "export: turntable 0.52 s, preview 0.11 s, ..." (rich may wrap it over lines)
    split = " ".join(result.output.split("export:", 1)[1].split())
    assert re.search(r"turntable \d+\.\d\d s", split)
    assert re.search(r"preview \d+\.\d\d s", split)
