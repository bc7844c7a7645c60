"""`--help` pages: a docstring's paragraphs flow to the terminal's width."""

from __future__ import annotations

import os
import subprocess
import sys


def _help(*command: str, columns: int) -> str:
    env = {**os.environ, "COLUMNS": str(columns)}
    done = subprocess.run([sys.executable, "-m", "foundry3d", *command, "--help"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_help_paragraphs_ignore_the_docstrings_line_breaks():
    # The reconstruct docstring breaks its second paragraph after "(or vertex"; on a wide
    # terminal the sentence must stay on one line.
    page = _help("reconstruct", columns=200)
    assert "a normal map (or vertex colours with --texture-mode vertex)" in page

