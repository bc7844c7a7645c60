"""The Typer application and the error type that prints as a message, not a traceback."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    name="foundry3d",
    help="foundry3d: a batch factory for 3D assets (bundle images -> reconstruction -> GLB).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Typer keeps a docstring's single line breaks in its other markup modes, so 95-column
    # docstrings printed ragged on an 80-column terminal; Markdown flows each paragraph.
    rich_markup_mode="markdown",
)
console = Console()
err_console = Console(stderr=True)


class UserError(Exception):
    """A mistake the user can fix; printed as one red line with exit code 2."""
