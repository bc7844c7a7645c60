"""The ``foundry3d`` command line. Each area registers its commands on :data:`app`."""

from __future__ import annotations

import sys

from rich.markup import escape

from foundry3d.prefect_defaults import apply_prefect_defaults

# Before any command module imports Prefect.
apply_prefect_defaults()

# Importing the command modules registers their commands on `app`.
from foundry3d.cli import (  # noqa: E402,F401
    api,
    assets,
    core3d,
    db,
    generators,
    library,
    manifests,
    pipeline,
    serve,
    tokens,
    verify,
)
from foundry3d.cli.app import UserError, app, err_console  # noqa: E402
from foundry3d.cli.startup import skip_collection_at_exit  # noqa: E402
from storage.redact import redact_text  # noqa: E402


def main() -> None:
    """Entry point of the console script: user errors print as a message, exit code 2."""
    try:
        app()
    except UserError as exc:
        # soft_wrap: one line however narrow the terminal (or none: a pipe reads as 80 columns)
        message = redact_text(str(exc))  # a URL in a message never shows its password
        err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
        sys.exit(2)
    finally:
        skip_collection_at_exit()
