"""A private Prefect API server for one ``foundry3d`` process, which dies with that process.

Without ``PREFECT_API_URL`` Prefect starts its own ephemeral API server (a ``uvicorn``
subprocess) and stops it from an ``atexit`` hook. A process killed with SIGKILL runs no hook,
so that server was left behind as an orphan, every time. This module starts the same server
itself (same command, same environment markers as Prefect's ``SubprocessASGIServer``) with
one difference: on Linux the child asks the kernel for SIGKILL when its parent dies
(``prctl(PR_SET_PDEATHSIG)``), so no orphan can outlive a killed ``foundry3d``.

It must run before Prefect is imported: Prefect reads ``PREFECT_API_URL`` once, at import.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PR_SET_PDEATHSIG = 1
"""``prctl`` option: the signal this process gets when the thread that forked it exits."""

STOP_TIMEOUT_S = 5.0
"""How long a stopped server may take to shut down before it is killed."""

EXIT_PORT_IN_USE = 3
"""uvicorn's exit status when the port was taken between choosing it and binding it."""

SERVER_APP = "prefect.server.api.server:create_app"
"""The ASGI factory Prefect's own ephemeral server runs; also how tests find the process."""


@dataclass
class EphemeralApi:
    """A running private API server: its process and its URL (``http://127.0.0.1:PORT/api``)."""

    process: subprocess.Popen
    api_url: str

    def stop(self) -> None:
        """Terminate the server and wait for it; kill it after :data:`STOP_TIMEOUT_S`."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _die_with_parent() -> None:
    """Run in the child between fork and exec: SIGKILL me when my parent dies (Linux only).

    The death signal is tied to the forking *thread*, so callers start the server from the
    main thread, which lives as long as the process.
    """
    parent = os.getppid()
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    libc = ctypes.CDLL(libc_name, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _prefect_package_dir() -> Path:
    """The folder that holds the ``prefect`` package, found without importing it."""
    spec = importlib.util.find_spec("prefect")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("Prefect is not installed")
    return Path(next(iter(spec.submodule_search_locations))).parent


def _launch(port: int, log_path: Path | None) -> subprocess.Popen:
    env = {
        **os.environ,
        # The markers Prefect's SubprocessASGIServer sets for its ephemeral server.
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    env.pop("PREFECT_API_URL", None)
    output = open(log_path, "ab") if log_path is not None else None
    try:
        return subprocess.Popen(
            [
                sys.executable, "-m", "uvicorn",
                "--app-dir", str(_prefect_package_dir()),
                "--factory", SERVER_APP,
                "--host", "127.0.0.1", "--port", str(port),
                "--log-level", "error", "--lifespan", "on",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    finally:
        if output is not None:
            output.close()


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_ephemeral_api(timeout_s: float, log_path: Path | None = None) -> EphemeralApi:
    """Start a private Prefect API server on a free loopback port and wait until it answers.

    ``timeout_s``: seconds to wait for ``/api/health``. ``log_path``: where the server's
    output goes (appended); ``None`` inherits this process's stdout/stderr. Raises
    :class:`RuntimeError` when the server exits or does not answer in time. The server is
    stopped at interpreter exit; register this before Prefect registers its own exit hooks
    (that is, before importing Prefect), so that they flush logs and events to it first.
    """
    deadline = time.monotonic() + timeout_s
    port = _free_port()
    process = _launch(port, log_path)
    api_url = f"http://127.0.0.1:{port}/api"
    server = EphemeralApi(process, api_url)
    atexit.register(server.stop)
    while not _healthy(api_url):
        status = process.poll()
        if status == EXIT_PORT_IN_USE:  # lost the race for the port: try another
            port = _free_port()
            process = server.process = _launch(port, log_path)
            api_url = server.api_url = f"http://127.0.0.1:{port}/api"
        elif status is not None:
            raise RuntimeError(f"the Prefect API server exited with status {status} at start-up")
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"the Prefect API server did not answer within {timeout_s:.0f} s")
        time.sleep(0.2)
    return server


def ensure_prefect_api(log_path: Path | None = None) -> EphemeralApi | None:
    """Give this process a Prefect API: the configured one, else a private server.

    With ``PREFECT_API_URL`` set (environment or Prefect profile) nothing happens and ``None``
    is returned. Otherwise a server from :func:`start_ephemeral_api` becomes this process's
    API (``PREFECT_API_URL`` is set and Prefect's settings are re-read), so Prefect never
    starts its own, orphan-prone one. Call from the main thread.
    """
    from prefect.context import refresh_global_settings_context
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        return None
    server = start_ephemeral_api(settings.server.ephemeral.startup_timeout_seconds, log_path)
    os.environ["PREFECT_API_URL"] = server.api_url
    refresh_global_settings_context()
    return server
