"""``python -m foundry3d`` runs the CLI."""

from foundry3d.cli import main

main()
