"""``foundry3d validate MANIFEST``: one clear reason per bad row, exit code 1 on any rejection."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from foundry3d.cli import app
from foundry3d.settings import get_settings
from tests.intake.test_manifest_corpus import CASES, CORPUS

GOOD = CORPUS.parent / "good_manifests"
runner = CliRunner()


def _flat(output: str) -> str:
    """The output with table borders and line wrapping folded away, for substring checks."""
    return re.sub(r"[\s│┃║|]+", " ", output)


@pytest.fixture
def settings_env(monkeypatch):
    """Set FOUNDRY_* variables for one test; settings are re-read before and after."""

    def apply(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(f"FOUNDRY_{name.upper()}", value)
        get_settings.cache_clear()

    get_settings.cache_clear()
    yield apply
    get_settings.cache_clear()


def test_valid_manifest_exits_zero_with_a_summary(settings_env):
    result = runner.invoke(app, ["validate", str(GOOD / "good.yaml")])
    assert result.exit_code == 0, result.output
    assert "3 valid row(s) -> 4 request(s), 0 rejected" in _flat(result.output)


@pytest.mark.parametrize("name, reason, line, valid, options", CASES, ids=[c[0] for c in CASES])
def test_each_bad_manifest_prints_its_reason_and_exits_one(
    name, reason, line, valid, options, monkeypatch, settings_env
):
    if options.get("allow_urls"):
        settings_env(allow_url_fetch="true", url_hosts=",".join(options["url_hosts"]))
    monkeypatch.chdir(CORPUS)
    result = runner.invoke(app, ["validate", name])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    flat = _flat(result.output)
    assert f"{name}:{line}: " in flat
    assert _flat(reason) in flat
    assert f"-> {valid} request(s)" in flat


def test_image_roots_come_from_the_settings(tmp_path, settings_env):
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    manifest = tmp_path / "manifests" / "m.yaml"
    manifest.parent.mkdir()
    manifest.write_text(f"items:\n  - image: {tmp_path / 'outside.png'}\n")
    assert runner.invoke(app, ["validate", str(manifest)]).exit_code == 1
    settings_env(image_roots=str(tmp_path))
    result = runner.invoke(app, ["validate", str(manifest)])
    assert result.exit_code == 0, result.output


def test_missing_manifest_is_a_rejection_not_a_traceback(tmp_path, settings_env):
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "manifest file not found" in _flat(result.output)
    assert "Traceback" not in result.output


def test_max_image_pixels_comes_from_the_settings(tmp_path, settings_env):
    Image.new("RGB", (8, 8)).save(tmp_path / "i.png")
    (tmp_path / "m.jsonl").write_text('{"image": "i.png"}\n')
    settings_env(max_image_pixels="63")
    result = runner.invoke(app, ["validate", str(Path(tmp_path / "m.jsonl"))])
    assert result.exit_code == 1
    assert "more than the limit of 63" in _flat(result.output)
