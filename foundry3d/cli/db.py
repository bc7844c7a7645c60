"""CLI commands: db."""

from foundry3d.cli.app import app  # noqa: F401
