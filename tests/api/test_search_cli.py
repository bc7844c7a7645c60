"""`foundry3d search` asks a running API server on its database, and searches itself otherwise."""

from __future__ import annotations

import pytest

from tests.api.conftest import run_cli


@pytest.fixture
def cli_settings(api_server, monkeypatch):
    """This process's settings pointed at the SQLite server's database and URL."""
    from foundry3d.settings import get_api_settings, get_settings

    monkeypatch.setenv("FOUNDRY_DATABASE_URL", api_server.env["FOUNDRY_DATABASE_URL"])
    monkeypatch.setenv("FOUNDRY_API_URL", api_server.url)
    monkeypatch.setenv("FOUNDRY_API_TOKEN", api_server.tokens["reader"])
    get_settings.cache_clear()
    get_api_settings.cache_clear()
    yield
    get_settings.cache_clear()
    get_api_settings.cache_clear()


def test_search_asks_a_running_server_on_the_same_database(cli_settings, produced_asset):
    from foundry3d.api.client import search_via_server

    hits = search_via_server("wooden crate", limit=5, state="succeeded", tag=None)
    assert hits is not None
    assert produced_asset["asset_id"] in [hit.asset_id for hit in hits]


def test_search_ignores_a_server_on_another_database(cli_settings, monkeypatch, tmp_path):
    from foundry3d.api.client import search_via_server
    from foundry3d.settings import get_settings

    monkeypatch.setenv("FOUNDRY_DATABASE_URL", f"sqlite:///{tmp_path / 'other.db'}")
    get_settings.cache_clear()
    assert search_via_server("wooden crate", limit=5, state="succeeded", tag=None) is None


def test_a_cold_search_without_a_server_finds_the_asset(api_server, produced_asset):
    env = dict(api_server.env, FOUNDRY_API_URL="http://127.0.0.1:9")  # nothing listens there
    done = run_cli(env, "search", "wooden crate", "--limit", "3")
    assert done.returncode == 0, done.stderr
    assert produced_asset["asset_id"][:12] in done.stdout
