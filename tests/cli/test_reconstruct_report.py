"""The report ``foundry3d reconstruct`` ends with: where the command's seconds went."""

from __future__ import annotations

import re

import trimesh


def test_reconstruct_report_splits_the_seconds_of_refinement(tmp_path):
    from typer.testing import CliRunner

    from foundry3d.cli.app import app

    trimesh.creation.box(extents=(1.0, 0.6, 0.8)).export(tmp_path / "box.stl")
    bundle = tmp_path / "bundle.png"
    runner = CliRunner()
    made = runner.invoke(app, ["render-bundle", str(tmp_path / "box.stl"), "-o", str(bundle),
                               "--tile", "64"])
    assert made.exit_code == 0, made.output
    result = runner.invoke(app, ["reconstruct", str(bundle), "-o", str(tmp_path / "box.glb"),
                                 "--coarse-steps", "3", "--fine-steps", "3", "--no-texture"])
    assert result.exit_code == 0, result.output
    # "refine: fine 0.31 s, coarse 0.12 s, ..." (rich may wrap it over lines)
    split = " ".join(result.output.split("refine:", 1)[1].split())
    for part in ("coarse", "fine", "remesh", "guard"):
        assert re.search(rf"{part} \d+\.\d\d s", split), part
