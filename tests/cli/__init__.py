"""Tests of the command line (foundry3d/cli)."""
