"""The CLI's start-up helpers: heavy imports without cyclic collection, none at exit."""

from __future__ import annotations

import gc
import importlib
import subprocess
import sys

import pytest

from foundry3d.cli.startup import imports_without_collection, skip_collection_at_exit


@pytest.fixture()
def restored_gc():
    """Undo a test's freeze and collector switch, so later tests collect as usual."""
    was_enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if was_enabled:
        gc.enable()
    else:
        gc.disable()


def test_collection_is_paused_inside_the_imports_block(restored_gc):
    gc.enable()
    with imports_without_collection():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_objects_made_by_the_imports_are_frozen_afterwards(restored_gc, tmp_path, monkeypatch):
    (tmp_path / "startup_probe_module.py").write_text("MADE = [[] for _ in range(1000)]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    gc.unfreeze()
    with imports_without_collection():
        module = importlib.import_module("startup_probe_module")
    assert gc.get_freeze_count() >= len(module.MADE)


def test_nothing_is_frozen_when_the_block_imports_nothing_new(restored_gc):
    gc.unfreeze()
    with imports_without_collection():
        import foundry3d.cli.startup  # noqa: F401  (loaded already)
    assert gc.get_freeze_count() == 0


def test_a_disabled_collector_stays_disabled(restored_gc):
    gc.disable()
    with imports_without_collection():
        pass
    assert not gc.isenabled()


def test_the_collector_comes_back_after_a_failed_import(restored_gc):
    gc.enable()
    with pytest.raises(ModuleNotFoundError), imports_without_collection():
        import foundry3d_no_such_module  # noqa: F401
    assert gc.isenabled()


def test_skip_collection_at_exit_freezes_what_is_alive(restored_gc):
    gc.unfreeze()
    skip_collection_at_exit()
    assert gc.get_freeze_count() > 0


def test_the_cli_still_flushes_its_output_at_exit():
    done = subprocess.run([sys.executable, "-m", "foundry3d", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0
    assert "reconstruct" in done.stdout
