"""Starting the server: binding beyond loopback needs a token; loopback without tokens is open."""

from __future__ import annotations

import urllib.request

from tests.api.conftest import run_cli, server_env, start_server, stop_server


def _laptop_env(tmp_path, tiny_library) -> dict[str, str]:  # noqa: ANN001 - fixtures
    """A server's environment on an SQLite file and a local object folder."""
    return server_env(f"sqlite:///{tmp_path / 'app.db'}", (tmp_path / "objects").as_uri(),
                      tiny_library, tmp_path)


def test_binding_all_interfaces_without_a_token_is_refused(tmp_path, tiny_library):
    env = _laptop_env(tmp_path, tiny_library)
    done = run_cli(env, "api", "--host", "0.0.0.0", "--port", "9")
    assert done.returncode == 2
    assert "without authentication" in done.stderr


def test_a_loopback_server_without_tokens_is_open_and_serves_its_docs_offline(
    tmp_path, tiny_library
):
    env = _laptop_env(tmp_path, tiny_library)
    server = start_server(env, tmp_path)
    try:
        assert server.request("GET", "/v1/assets", token=None).status == 200
        with urllib.request.urlopen(server.url + "/docs", timeout=10) as response:
            page = response.read()
        # Swagger UI from the npm folder (scripts/install.sh), not from a CDN.
        assert b"/vendor/swagger-ui/swagger-ui-bundle.js" in page
        assert b"cdn." not in page
        bundle = server.request("GET", "/vendor/swagger-ui/swagger-ui-bundle.js", token=None)
        assert bundle.status == 200 and len(bundle.body) > 100_000
    finally:
        stop_server(server)


def test_a_token_created_while_an_open_server_runs_is_enforced_on_the_next_request(
    tmp_path, tiny_library
):
    env = _laptop_env(tmp_path, tiny_library)
    server = start_server(env, tmp_path)
    try:
        for _ in range(3):  # the server has checked (and remembered) the empty token table
            assert server.request("GET", "/v1/assets", token=None).status == 200
        done = run_cli(env, "token", "create", "--name", "late", "--scope", "read")
        assert done.returncode == 0, done.stderr
        secret = done.stdout.strip().splitlines()[-1]
        assert server.request("GET", "/v1/assets", token=None).status == 401
        assert server.request("GET", "/v1/assets", token=secret).status == 200
    finally:
        stop_server(server)
