"""Test-session set-up: isolated data and Prefect home, and the shared server fixtures."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from foundry3d.prefect_defaults import apply_prefect_defaults

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="foundry3d-tests-"))
# Runs after pytest's session teardown has stopped the servers that use it.
atexit.register(shutil.rmtree, _SESSION_TMP, ignore_errors=True)
# Set before anything imports Prefect or reads settings.
os.environ["PREFECT_HOME"] = str(_SESSION_TMP / "prefect-home")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_TO_API_ENABLED"] = "false"
os.environ.setdefault("FOUNDRY_DATA_DIR", str(_SESSION_TMP / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
apply_prefect_defaults()  # as the CLI does: the harness's server batches its writes

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.s3",
    "tests.fixtures.prefect",
    "tests.fixtures.prefect_server",
    "tests.fixtures.gltf_validator",
]

REFERENCE_DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def reference_data_dir() -> Path:
    """``tests/data``: reference files copied from the team's shared folder (``golden/`` bundles,
    ``lrm_keys/`` lists), so the suite needs nothing beside the checkout."""
    return REFERENCE_DATA
