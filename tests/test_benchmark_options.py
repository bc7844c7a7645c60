"""The reconstruction benchmark's ``--set`` options: a bad one is a usage error, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/reconstruct.py", *args], cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)


def test_a_set_value_that_is_no_python_literal_is_a_usage_error():
    result = run_benchmark("--count", "0", "--set", "fine_flat=false")
    assert result.returncode == 2
    assert "'false' is not a Python literal" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_set_field_refinement_lacks_is_a_usage_error():
    result = run_benchmark("--count", "0", "--set", "fine_flatness=True")
    assert result.returncode == 2
    assert "RefineParams has no field 'fine_flatness'" in result.stderr
