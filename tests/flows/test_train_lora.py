"""The ``train-lora`` flow and CLI command on a tiny library and the tiny random Flux."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.generate.kiss3dgen.tiny import save_tiny_flux
from models.generate.kiss3dgen.train import LORA_FILE, read_lora_file
from tests.models.kiss3dgen_fixtures import (
    TEST_SEQ,
    TEST_TILE,
    disc_bundle,
    write_tiny_library,
)


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory) -> Path:
    return save_tiny_flux(tmp_path_factory.mktemp("flux") / "tiny-flux", seed=0)


def _prerendered(tmp_path: Path) -> tuple[Path, Path]:
    """A library whose bundles are already in ``out/dataset`` (so nothing is re-rendered)."""
    library = write_tiny_library(tmp_path / "library")
    out = tmp_path / "out"
    (out / "dataset").mkdir(parents=True)
    disc_bundle(radius=0.3).save(out / "dataset" / "box.png")
    disc_bundle(radius=0.4, colour=(20, 160, 40)).save(out / "dataset" / "cylinder.png")
    return library, out


def test_the_flow_trains_a_loadable_lora_from_the_library(prefect_harness, flux_dir, tmp_path):
    from flows.train_lora import train_lora_flow

    library, out = _prerendered(tmp_path)
    result = train_lora_flow(
        library_path=str(library),
        out_dir=str(out),
        flux_path=str(flux_dir),
        rank=4,
        steps=3,
        lr=1e-2,
        tile=TEST_TILE,
        config={"alpha": 2.0, "max_sequence_length": TEST_SEQ, "checkpoint_every": 0,
                "device": "cpu", "dtype": "float32"},
    )
    assert Path(result["lora_path"]) == out / LORA_FILE
    _, meta = read_lora_file(result["lora_path"])
    assert (meta["r"], meta["lora_alpha"]) == (4, 2.0)
    dataset = (out / "dataset" / "dataset.jsonl").read_text()
    assert "a flat wooden box" in dataset and "a tall metal can" in dataset


def test_the_flow_refuses_unknown_training_options(prefect_harness, tmp_path):
    from flows.train_lora import train_lora_flow

    with pytest.raises(ValueError, match="learning_rate"):
        train_lora_flow(library_path=str(tmp_path), out_dir=str(tmp_path / "o"),
                        flux_path=str(tmp_path), config={"learning_rate": 1.0})


def test_the_flow_renders_the_library_meshes_when_no_bundles_exist(
    prefect_harness, flux_dir, tmp_path
):
    from flows.train_lora import train_lora_flow

    library = write_tiny_library(tmp_path / "library")
    result = train_lora_flow(
        library_path=str(library), out_dir=str(tmp_path / "out"), flux_path=str(flux_dir),
        rank=2, steps=1, tile=TEST_TILE,
        config={"max_sequence_length": TEST_SEQ, "device": "cpu", "dtype": "float32"},
    )
    assert Path(result["lora_path"]).is_file()
    assert (tmp_path / "out" / "dataset" / "box.png").is_file()


def test_the_cli_trains_with_a_progress_bar_showing_the_loss(flux_dir, tmp_path):
    from typer.testing import CliRunner

    from foundry3d.cli.app import app

    library, out = _prerendered(tmp_path)
    result = CliRunner().invoke(app, [
        "train-lora", str(library), "--out", str(out), "--rank", "2", "--steps", "2",
        "--tile", str(TEST_TILE), "--flux-path", str(flux_dir), "--lr", "0.01",
    ], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "loss" in result.output and "trained" in result.output
    assert (out / LORA_FILE).is_file()


def test_the_cli_names_missing_flux_weights(tmp_path):
    from typer.testing import CliRunner

    from foundry3d.cli.app import UserError, app

    library, out = _prerendered(tmp_path)
    result = CliRunner().invoke(app, [
        "train-lora", str(library), "--out", str(out), "--steps", "1",
        "--tile", str(TEST_TILE), "--flux-path", str(tmp_path / "nowhere"),
    ])
    assert isinstance(result.exception, UserError)
    assert "nowhere" in str(result.exception)
