"""Stage parameters are checked when a manifest is read: at ``foundry3d validate`` and at
``foundry3d run`` alike, a row whose params no stage reads is rejected with its line."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from intake.parse import parse_manifest

README = Path(__file__).resolve().parents[2] / "README.md"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_a_misspelt_stage_parameter_rejects_its_row_with_the_line_and_the_nearest_name(tmp_path):
    manifest = _write(tmp_path / "m.yaml", (
        "items:\n"
        "  - prompt: a chair\n"
        "    params: {refine_fine_steps: 40}\n"
        "  - prompt: a table\n"
        "    params: {refine_fine_stpes: 40}\n"
    ))
    parsed = parse_manifest(manifest)
    assert [r.prompt for r in parsed.requests] == ["a chair"]
    (rejection,) = parsed.rejected
    assert rejection.line == 4
    assert rejection.reason == "unknown refine parameter 'fine_stpes' (did you mean 'fine_steps'?)"


def test_default_params_are_checked_against_each_items_generator(tmp_path):
    manifest = _write(tmp_path / "m.yaml", (
        "defaults:\n"
        "  params: {steps: 4}\n"
        "items:\n"
        "  - prompt: drawn by flux\n"
        "    generator: kiss3dgen\n"
        "  - prompt: from the library\n"
    ))
    parsed = parse_manifest(manifest)
    assert [r.generator for r in parsed.requests] == ["kiss3dgen"]
    assert parsed.rejected[0].line == 6
    assert "'steps' is read by generator 'kiss3dgen' only" in parsed.rejected[0].reason


def test_an_init_parameter_is_accepted_only_on_rows_with_that_init(tmp_path):
    manifest = _write(tmp_path / "m.jsonl", (
        '{"prompt": "lrm row", "init": "lrm", "params": {"lrm_variant": "tiny"}}\n'
        '{"prompt": "default-init row", "params": {"lrm_variant": "tiny"}}\n'
    ))
    parsed = parse_manifest(manifest)
    assert [r.init for r in parsed.requests] == ["lrm"]
    assert parsed.rejected[0].line == 2
    assert "this row uses init 'hull'" in parsed.rejected[0].reason


def test_an_ill_typed_value_in_a_csv_cell_is_named(tmp_path):
    manifest = _write(tmp_path / "m.csv", (
        'prompt,params\n'
        'a chair,"{""tile"": ""256""}"\n'
    ))
    (rejection,) = parse_manifest(manifest).rejected
    assert rejection.line == 2
    assert rejection.reason == "bundle parameter 'tile' must be an integer, got '256' (str)"


def test_every_params_example_in_the_readme_is_accepted(tmp_path):
    import re

    text = README.read_text()
    section = text[text.index("### Manifests"):text.index("### Settings")]
    examples = re.findall(r"`([a-z_]+): ([0-9.]+)`", section)
    assert examples, "the README's Manifests section shows params examples"
    params = {key: float(value) if "." in value else int(value) for key, value in examples}
    lines = "".join(f"\n      {k}: {v}" for k, v in params.items())
    manifest = _write(tmp_path / "m.yaml", f"items:\n  - prompt: p\n    params:{lines}\n")
    parsed = parse_manifest(manifest)
    assert parsed.ok, parsed.rejected


def test_foundry3d_run_rejects_the_row_for_the_same_reason(tmp_path):
    from foundry3d.cli import app

    manifest = _write(tmp_path / "m.yaml", (
        "items:\n  - prompt: a table\n    params: {refine_stpes: 300}\n"
    ))
    result = CliRunner().invoke(app, ["validate", str(manifest)])
    assert result.exit_code == 1
    assert "unknown refine parameter 'stpes'" in " ".join(result.output.split())

    from storage.db import upgrade_database
    from tasks.config import PipelineConfig
    from tasks.ingest import ingest_manifest

    database_url = f"sqlite:///{tmp_path / 'app.db'}"
    upgrade_database(database_url)
    config = PipelineConfig(database_url=database_url, store_url=(tmp_path / "o").as_uri(),
                            library_path=str(tmp_path / "lib"))
    ingested = ingest_manifest(manifest, config)
    assert ingested.asset_ids == []
    assert ingested.rejected[0]["line"] == 2
    assert ingested.rejected[0]["reason"].startswith("unknown refine parameter 'stpes'")
