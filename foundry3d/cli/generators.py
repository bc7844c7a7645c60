"""CLI commands: generators."""

from foundry3d.cli.app import app  # noqa: F401
