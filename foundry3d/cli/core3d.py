"""CLI commands: core3d."""

from foundry3d.cli.app import app  # noqa: F401
