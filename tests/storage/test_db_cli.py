"""The database commands of the CLI: `db upgrade`, `db current`, `status`, `show`."""

from __future__ import annotations

import re
import sys

import pytest
from typer.testing import CliRunner

from foundry3d.cli import app, main
from foundry3d.cli.app import UserError
from foundry3d.settings import get_settings
from storage import queries as q
from storage.db import current_revision, head_revision, make_engine, session_scope

runner = CliRunner()
ASSET = "feedbeef" + "0" * 56


@pytest.fixture
def use_database(monkeypatch):
    """Point the settings at ``url`` for the CLI under test."""

    def point(url: str) -> str:
        monkeypatch.setenv("FOUNDRY_DATABASE_URL", url)
        get_settings.cache_clear()
        return url

    yield point
    get_settings.cache_clear()


@pytest.fixture
def populated(db_url, use_database):
    """One asset that failed at `refine` after a successful `bundle`, with a metric."""
    engine = make_engine(db_url)
    with session_scope(engine) as session:
        q.insert_asset_if_new(
            session,
            asset_id=ASSET,
            kind="prompt",
            prompt="a blue teapot",
            seed=3,
            generator="library",
            init="library",
            tags=["kitchen"],
        )
        q.claim_asset(session, ASSET, "worker-1", 60)
        run = q.record_stage_start(session, ASSET, "bundle", "h", host="box", device="cpu")
        q.record_stage_success(session, run.id, {"bundle.png": f"assets/{ASSET}/bundle.png"}, 64)
        run = q.record_stage_start(session, ASSET, "refine", "h", host="box", device="cpu")
        q.record_stage_failure(session, run.id, "OutOfMemory", "needed 9 GB")
        q.release_asset(session, ASSET, "worker-1", "failed", "OutOfMemory", "needed 9 GB")
        q.set_metrics(session, ASSET, {"mask_iou": 0.875})
    engine.dispose()
    return use_database(db_url)


def test_db_upgrade_migrates_the_configured_database(tmp_path, use_database):
    url = use_database(f"sqlite:///{tmp_path / 'fresh.db'}")
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert head_revision() in result.output
    engine = make_engine(url)
    assert current_revision(engine) == head_revision()
    engine.dispose()
    current = runner.invoke(app, ["db", "current"])
    assert "up to date" in current.output


def test_status_counts_states_and_stages(populated):
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("failed" in line and "1" in line for line in lines)
    assert any("bundle" in line for line in lines)
    assert any("refine" in line for line in lines)
    assert "OutOfMemory" in result.output


def test_status_on_a_new_embedded_database_creates_it(tmp_path, use_database):
    use_database(f"sqlite:///{tmp_path / 'new' / 'foundry.db'}")
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    assert "no stage has run yet" in result.output


def test_show_lists_stages_errors_metrics_and_objects_by_id_prefix(populated):
    result = runner.invoke(app, ["show", ASSET[:8]])
    assert result.exit_code == 0, result.output
    # Long ids and keys wrap inside their cells; compare with the table layout removed.
    flat = re.sub(r"[\s│]", "", result.output)
    for expected in (ASSET, "a blue teapot", "refine", "OutOfMemory", "needed 9 GB",
                     "mask_iou", "0.875", f"assets/{ASSET}/bundle.png"):  # fmt: skip
        assert expected.replace(" ", "") in flat


def test_show_of_an_unknown_id_is_a_user_error(populated):
    result = runner.invoke(app, ["show", "0123abcd"])
    assert isinstance(result.exception, UserError)
    assert "no asset with id '0123abcd'" in str(result.exception)


def test_user_errors_print_one_line_and_exit_2(populated, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["foundry3d", "show", "0123abcd"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no asset with id" in err and "Traceback" not in err


@pytest.mark.postgres
def test_status_on_an_unmigrated_server_database_names_the_upgrade_command(
    new_postgres_database, use_database
):
    use_database(new_postgres_database())
    result = runner.invoke(app, ["status"])
    assert isinstance(result.exception, UserError)
    assert "foundry3d db upgrade" in str(result.exception)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://app:SECRET@127.0.0.1:{port}/foundry",
        "postgresql+psycopg://app@127.0.0.1:{port}/foundry?password=SECRET",
    ],
)
def test_a_failed_db_upgrade_prints_one_line_without_the_password(
    use_database, monkeypatch, capsys, url
):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    use_database(url.format(port=port))
    monkeypatch.setattr(sys, "argv", ["foundry3d", "db", "upgrade"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    assert "could not upgrade" in shown and f"127.0.0.1:{port}" in shown
    assert "SECRET" not in shown and "Traceback" not in shown


REVIEWED = "cafe0000" + "0" * 56
REASONS = "needs review: mask_iou 0.41 < min 0.9"


@pytest.fixture
def reviewed(db_url, use_database):
    """One asset that finished every stage but missed the quality verdict."""
    engine = make_engine(db_url)
    with session_scope(engine) as session:
        q.insert_asset_if_new(session, asset_id=REVIEWED, kind="prompt", prompt="a green vase",
                              seed=3, generator="library", init="library")
        q.claim_asset(session, REVIEWED, "worker-1", 60)
        q.release_asset(session, REVIEWED, "worker-1", "needs_review", "review:QualityVerdict",
                        REASONS)
    engine.dispose()
    return use_database(db_url)


def test_show_of_an_asset_that_needs_review_lists_its_reasons(reviewed):
    result = runner.invoke(app, ["show", REVIEWED[:8]])
    assert result.exit_code == 0, result.output
    flat = re.sub(r"[\s│]", "", result.output)
    assert "needs_review" in flat
    assert "review" + REASONS.replace(" ", "") in flat


def test_status_counts_needs_review_and_lists_the_reasons(reviewed):
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    assert any("needs_review" in line and "1" in line for line in result.output.splitlines())
    assert REASONS.replace(" ", "") in re.sub(r"[\s│]", "", result.output)
