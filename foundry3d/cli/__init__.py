"""The ``foundry3d`` command line. Each area registers its commands on :data:`app`."""

from __future__ import annotations

import os
import sys

# Prefect's ephemeral server must start within this many seconds; its default (20 s) is too short
# on a busy 2-core laptop. Set before any command module imports Prefect.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

# Importing the command modules registers their commands on `app`.
from foundry3d.cli import core3d, db, generators, library, manifests, pipeline  # noqa: F401
from foundry3d.cli.app import UserError, app, err_console


def main() -> None:
    """Entry point of the console script: user errors print as a message, exit code 2."""
    try:
        app()
    except UserError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)
