"""Stage scratch folders: removed when the stage ends, and removed later when a killed worker
could not (its process is gone), never while their owner runs or when another host owns them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tasks.scratch import OWNER_FILE, remove_orphaned_scratch, scratch_folder

_HOLD_A_FOLDER = """
import time
from tasks.scratch import scratch_folder
with scratch_folder("refine") as folder:
    print(folder, flush=True)
    time.sleep(120)
"""


@pytest.fixture
def scratch_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary folder of its own for this process and the workers it starts."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def _start_worker(root: Path) -> tuple[subprocess.Popen, Path]:
    """A process holding a scratch folder under ``root``, and that folder."""
    env = {**os.environ, "TMPDIR": str(root), "PYTHONPATH": str(Path.cwd())}
    worker = subprocess.Popen([sys.executable, "-c", _HOLD_A_FOLDER], env=env,
                              stdout=subprocess.PIPE, text=True)
    folder = Path(worker.stdout.readline().strip())
    assert folder.parent == root, folder
    return worker, folder


def test_a_scratch_folder_is_removed_when_its_stage_fails(scratch_root):
    with pytest.raises(RuntimeError), scratch_folder("refine") as folder:
        (folder / "out").mkdir()
        (folder / "out" / "mesh.glb").write_bytes(b"half")
        raise RuntimeError("the stage failed")
    assert not folder.exists()


def test_a_killed_workers_scratch_folder_goes_when_the_next_stage_starts(scratch_root):
    worker, left = _start_worker(scratch_root)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    assert left.exists(), "SIGKILL lets no process clean up"

    with scratch_folder("refine") as mine:
        assert not left.exists()
        assert mine.exists()


def test_a_running_workers_scratch_folder_is_kept(scratch_root):
    worker, held = _start_worker(scratch_root)
    try:
        assert remove_orphaned_scratch() == []
        assert held.exists()
    finally:
        worker.kill()
        worker.wait()


def test_a_folder_owned_from_another_host_is_kept(scratch_root):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    folder = scratch_root / "foundry3d-refine-abc"
    folder.mkdir()
    (folder / OWNER_FILE).write_text(f"not-{socket.gethostname()} {finished.stdout.strip()}\n")
    assert remove_orphaned_scratch() == []
    assert folder.exists()


def test_a_folder_without_an_owner_file_is_kept(scratch_root):
    folder = scratch_root / "foundry3d-tests-abc"
    folder.mkdir()
    assert remove_orphaned_scratch() == []
    assert folder.exists()
