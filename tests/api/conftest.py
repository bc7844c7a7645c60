"""A real API server process per test database: ``foundry3d api`` on a free loopback port.

The servers run the real pipeline on the flow tests' tiny library (64-pixel tiles, few refine
steps), with the loopback address allow-listed for callbacks and a callback secret set.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.flows.conftest import FAST_PARAMS, cli_env, foundry3d_cmd, tiny_library  # noqa: F401

CALLBACK_SECRET = "test-callback-secret"
START_TIMEOUT_S = 180.0
JOB_TIMEOUT_S = 600.0
ARTEFACTS = Path(__file__).resolve().parents[2] / "test-artefacts" / "api"
"""Screenshots and other outputs of the API tests (ignored by git)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class ApiServer:
    """A running ``foundry3d api`` process and a small HTTP client for it."""

    url: str
    env: dict[str, str]
    process: subprocess.Popen
    log_path: Path
    tokens: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, body: bytes | dict | None = None, *,
                token: str | None = "write", content_type: str | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        """``token``: a name in :attr:`tokens`, a raw secret, or None for no header."""
        sent = dict(headers or {})
        secret = self.tokens.get(token, token) if token else None
        if secret:
            sent["Authorization"] = f"Bearer {secret}"
        if isinstance(body, dict):
            body, content_type = json.dumps(body).encode(), "application/json"
        if content_type:
            sent["Content-Type"] = content_type
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return Reply(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, dict(exc.headers), exc.read())

    def wait_job(self, batch_id: str, timeout_s: float = JOB_TIMEOUT_S) -> dict:
        """Poll the job until it is finished or cancelled; returns its last view."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.request("GET", f"/v1/jobs/{batch_id}").json()
            if job["state"] in ("finished", "cancelled"):
                return job
            time.sleep(0.5)
        raise AssertionError(f"job {batch_id} not done in {timeout_s} s: {job}\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def manifest_yaml(items: list[dict]) -> bytes:
    import yaml

    return yaml.safe_dump({"defaults": {"params": FAST_PARAMS}, "items": items}).encode()


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(foundry3d_cmd(*args), env=env, capture_output=True, text=True,
                          timeout=300)


def start_server(env: dict[str, str], workdir: Path, *args: str) -> ApiServer:
    port = free_port()
    log_path = workdir / f"api-{port}.log"
    handle = open(log_path, "w")  # noqa: SIM115 - open for the life of the process
    process = subprocess.Popen(
        foundry3d_cmd("api", "--port", str(port), "--concurrency", "1", *args),
        env=env, stdout=handle, stderr=subprocess.STDOUT,
    )
    server = ApiServer(f"http://127.0.0.1:{port}", env, process, log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the API server exited with {process.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(server.url + "/openapi.json", timeout=2):
                return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    process.terminate()
    pytest.fail(f"the API server did not answer in {START_TIMEOUT_S} s:\n{server.log()}")


def stop_server(server: ApiServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def server_env(database_url: str, store_url: str, library: Path, workdir: Path) -> dict:
    from tasks.config import PipelineConfig

    config = PipelineConfig(database_url=database_url, store_url=store_url,
                            library_path=str(library), lease_seconds=60)
    return cli_env(config, workdir, FOUNDRY_URL_HOSTS="127.0.0.1",
                   FOUNDRY_API_CALLBACK_SECRET=CALLBACK_SECRET, FOUNDRY_LEASE_SECONDS="60")


def with_tokens(env: dict[str, str]) -> dict[str, str]:
    """Create a read, a write and a revoked token with the CLI; name -> secret."""
    tokens = {}
    for name, scope in (("reader", "read"), ("write", "write"), ("revoked", "read")):
        done = run_cli(env, "token", "create", "--name", name, "--scope", scope)
        assert done.returncode == 0, done.stderr
        tokens[name] = done.stdout.strip().splitlines()[-1]
    done = run_cli(env, "token", "revoke", "revoked")
    assert done.returncode == 0, done.stderr
    return tokens


@pytest.fixture(scope="session")
def api_server(tmp_path_factory: pytest.TempPathFactory, tiny_library: Path  # noqa: F811
               ) -> Iterator[ApiServer]:
    """SQLite + local folder, with tokens (reader, write, revoked) made by the CLI."""
    from storage.db import upgrade_database

    workdir = tmp_path_factory.mktemp("api-sqlite")
    database_url = f"sqlite:///{workdir / 'app.db'}"
    upgrade_database(database_url)
    env = server_env(database_url, (workdir / "objects").as_uri(), tiny_library, workdir)
    tokens = with_tokens(env)
    server = start_server(env, workdir)
    server.tokens = tokens
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def produced_asset(api_server: ApiServer) -> dict:
    """A job of one prompt run to the end on the SQLite server: ``{"job", "asset_id"}``."""
    reply = api_server.request("POST", "/v1/jobs", manifest_yaml(
        [{"id": "crate", "prompt": "a wooden crate box", "tags": ["api-test"]}]),
        content_type="application/x-yaml")
    assert reply.status == 202, reply.body
    job = api_server.wait_job(reply.json()["batch_id"])
    assert job["counts"]["succeeded"] == 1, (job, api_server.log())
    return {"job": job, "asset_id": job["assets"][0]["asset_id"]}
