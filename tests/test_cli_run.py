"""``foundry3d run`` as a user meets it: exit status, one line per problem, no orphan servers.

Every test runs the real command in a subprocess, on SQLite and a local folder, with its own
Prefect home (so the private API server it starts can be found by its environment).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from foundry3d.ephemeral_api import SERVER_APP
from storage import queries
from storage.db import upgrade_database
from tasks.config import PipelineConfig
from tasks.ingest import ingest_manifest
from tasks.resources import engine_for
from tests.fixtures.prefect_server import free_port
from tests.flows.conftest import cli_env, foundry3d_cmd, tiny_library, write_manifest  # noqa: F401

CLI_TIMEOUT_S = 600
ORPHAN_GRACE_S = 5.0
"""How long a killed run's API server may outlive it (the kernel signals it at once)."""

NO_WEIGHTS = {"id": "nowt", "prompt": "a teapot", "generator": "kiss3dgen"}
"""A row that fails permanently at its first stage (no Flux weights), in about a second."""
GOOD = {"id": "crate", "prompt": "a wooden crate", "init": "library"}


@pytest.fixture
def config(tmp_path: Path, tiny_library: Path) -> PipelineConfig:  # noqa: F811
    database_url = f"sqlite:///{tmp_path / 'app.db'}"
    upgrade_database(database_url)
    return PipelineConfig(
        database_url=database_url,
        store_url=(tmp_path / "objects").as_uri(),
        library_path=str(tiny_library),
    )


def run_cli(config: PipelineConfig, tmp_path: Path, *args: str, **env: str):
    """``foundry3d run ARGS`` to the end; (exit status, stdout and stderr together)."""
    result = subprocess.run(
        foundry3d_cmd("run", *args), env=cli_env(config, tmp_path, **env), cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=CLI_TIMEOUT_S,
    )
    return result.returncode, result.stdout


def flat(text: str) -> str:
    """``text`` with table borders and line breaks gone, to find words that a cell wrapped."""
    return " ".join(re.sub(r"[│┃|]", " ", text).split())


def _directory(tmp_path: Path) -> Path:
    path = tmp_path / "folder.yaml"
    path.mkdir()
    return path


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)
    return path


def _utf16(tmp_path: Path) -> Path:
    path = tmp_path / "utf16.yaml"
    path.write_text("items:\n  - prompt: a red mug\n", encoding="utf-16")
    return path


def _read_error(tmp_path: Path) -> Path:
    # A regular file whose read fails (EIO): the reading process's own memory at offset 0.
    path = tmp_path / "unreadable.yaml"
    path.symlink_to("/proc/self/mem")
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_directory, "not a regular file"),
        (_fifo, "not a regular file"),
        (_utf16, "not UTF-8"),
        (_read_error, "cannot be read"),
        (lambda tmp_path: tmp_path / "missing.yaml", "not found"),
    ],
    ids=["directory", "fifo", "utf16", "read-error", "missing"],
)
def test_a_manifest_that_cannot_be_read_is_one_line_and_status_2(config, tmp_path, make, reason):
    manifest = make(tmp_path)
    status, output = run_cli(config, tmp_path, str(manifest))
    assert status == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: manifest") and reason in lines[0], output


def test_an_unreachable_database_is_one_line_and_status_2_without_its_password(
    config, tmp_path
):
    manifest = write_manifest(tmp_path, [GOOD])
    url = f"postgresql+psycopg://foundry:s3cret@127.0.0.1:{free_port()}/nowhere"
    nowhere = config.model_copy(update={"database_url": url})
    status, output = run_cli(nowhere, tmp_path, str(manifest))
    assert status == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot use the database"), output
    assert "s3cret" not in output


def test_a_failed_asset_is_one_line_with_its_reason_and_the_run_exits_1(config, tmp_path):
    manifest = write_manifest(tmp_path, [NO_WEIGHTS])
    status, output = run_cli(config, tmp_path, str(manifest))
    assert status == 1, output
    assert "Traceback" not in output and "ERROR" not in output, output
    assert "failed: kiss3dgen weights: no path given" in flat(output), output
    assert "0 produced, 0 skipped (already done), 1 failed" in flat(output), output
    assert re.search(r"foundry3d retry --batch [0-9a-f]{32}", flat(output)), output


def test_verbose_shows_the_traceback_of_a_failed_asset(config, tmp_path):
    manifest = write_manifest(tmp_path, [NO_WEIGHTS])
    status, output = run_cli(config, tmp_path, str(manifest), "--verbose")
    assert status == 1, output
    assert "Traceback" in output, output


def test_a_rerun_counts_an_asset_that_failed_before_as_failed_not_as_done(config, tmp_path):
    manifest = write_manifest(tmp_path, [NO_WEIGHTS])
    run_cli(config, tmp_path, str(manifest))
    status, output = run_cli(config, tmp_path, str(manifest))
    assert status == 1, output
    assert ("0 produced, 0 skipped (already done), 1 failed (1 in an earlier run, not re-run)"
            in flat(output)), output
    assert "failed in an earlier run: kiss3dgen weights" in flat(output), output
    assert re.search(r"foundry3d retry --batch [0-9a-f]{32}", flat(output)), output


def test_an_asset_held_by_another_runs_lease_is_not_counted_as_done(config, tmp_path):
    manifest = write_manifest(tmp_path, [GOOD])
    asset_id = ingest_manifest(manifest, config).asset_ids[0]
    with Session(engine_for(config.database_url)) as session:
        assert queries.claim_asset(session, asset_id, "another-host:1", lease_seconds=3600)
        session.commit()
    status, output = run_cli(config, tmp_path, str(manifest))
    assert status == 0, output
    assert ("0 produced, 0 skipped (already done), 0 failed, 1 being produced by another run"
            in flat(output)), output
    assert "Nothing new" not in output


def test_a_manifest_whose_rows_are_all_rejected_exits_1(config, tmp_path):
    manifest = write_manifest(tmp_path, [{"prompt": "a mug", "generator": "no-such-generator"}])
    status, output = run_cli(config, tmp_path, str(manifest))
    assert status == 1, output
    assert "1 rejected rows" in flat(output) and "rejected:" in flat(output), output


# --- the private Prefect API server dies with the run ----------------------------------------


def _api_servers_of(prefect_home: Path) -> list[int]:
    """Pids of live Prefect API servers whose environment has this ``PREFECT_HOME``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # exited meanwhile, or not ours to read
            continue
        if (SERVER_APP.encode() in cmdline and state != "Z"
                and f"PREFECT_HOME={prefect_home}".encode() in environ):
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_a_killed_run_leaves_no_prefect_api_server_behind(config, tmp_path):
    manifest = write_manifest(tmp_path, [GOOD])
    env = cli_env(config, tmp_path)
    home = Path(env["PREFECT_HOME"])
    cli = subprocess.Popen(foundry3d_cmd("run", str(manifest)), env=env, cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + CLI_TIMEOUT_S
        servers: list[int] = []
        while not servers and cli.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            servers = _api_servers_of(home)
        assert servers, "the run never started a Prefect API server"
        time.sleep(2)  # mid-run: the catalog has started on it
        cli.send_signal(signal.SIGKILL)
        cli.wait()
        deadline = time.monotonic() + ORPHAN_GRACE_S
        while _api_servers_of(home) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _api_servers_of(home)
    finally:
        cli.kill()
        for pid in _api_servers_of(home):  # never leave one behind, even when the test fails
            os.kill(pid, signal.SIGKILL)
    assert not left, f"Prefect API server(s) {left} outlived the killed run"


def test_an_asset_below_a_quality_threshold_needs_review_and_the_run_exits_1(config, tmp_path):
    # Refined from a sphere, the crate scores several degrees of normal error: a 1-degree limit
    # sends it to review. (From the library init it would keep the library's own mesh, which
    # drew the bundle and matches it exactly.)
    strict = {**GOOD, "init": "sphere", "params": {"evaluate_max_normal_angle_deg": 1.0}}
    manifest = write_manifest(tmp_path, [strict])
    status, output = run_cli(config, tmp_path, str(manifest), COLUMNS="300")  # no cell wraps
    assert status == 1, output
    assert "Traceback" not in output, output
    assert "0 produced, 0 skipped (already done), 0 failed, 1 needs review" in flat(output), output
    assert re.search(r"needs review: normal_angle_deg [0-9.]+ > max 1", flat(output)), output
    assert "--state needs_review" in flat(output), output


def test_a_rerun_counts_an_asset_that_needs_review_as_such_not_as_done(config, tmp_path):
    manifest = write_manifest(tmp_path, [GOOD])
    asset_id = ingest_manifest(manifest, config).asset_ids[0]
    with Session(engine_for(config.database_url)) as session:
        assert queries.claim_asset(session, asset_id, "another-host:1", lease_seconds=3600)
        queries.release_asset(session, asset_id, "another-host:1", "needs_review",
                              "review:QualityVerdict", "needs review: mask_iou 0.5 < min 0.9")
        session.commit()
    status, output = run_cli(config, tmp_path, str(manifest), COLUMNS="300")  # no cell wraps
    assert status == 1, output
    assert ("0 produced, 0 skipped (already done), 0 failed, 1 needs review (1 from an earlier "
            "run, not re-run)" in flat(output)), output
    assert "needs review (earlier run): mask_iou 0.5 < min 0.9" in flat(output), output
    assert "Nothing new" not in output
