"""Scratch folders for a stage's files that a killed worker does not leave behind for good.

A stage fetches its inputs and writes its artefacts into a temporary folder that is removed
when the stage ends. A worker killed mid-stage (SIGKILL, the out-of-memory killer, a preempted
node) cannot remove it, and a worker that is killed again and again fills the temporary
folder's disk. So each folder names its owner, host and process id, in a small file, and
making a new folder first removes those whose owner on this host has died. A folder without
that file (another program's, or one being set up) and a folder owned from another host (a
temporary folder shared between containers) are never touched.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Every scratch folder's name starts with this, then the label, then a random part.
PREFIX = "foundry3d-"
#: The file in a scratch folder that names its owner: ``<host> <pid>``.
OWNER_FILE = ".foundry3d-owner"


@contextmanager
def scratch_folder(label: str) -> Iterator[Path]:
    """A new empty folder ``<tmp>/foundry3d-<label>-XXXX`` (``label``: the stage's name, say),
    removed with everything in it when the block ends, however it ends. Folders the same host's
    dead workers left first go (:func:`remove_orphaned_scratch`). The folder also holds
    :data:`OWNER_FILE`, so callers name the files they wrote rather than list the folder."""
    remove_orphaned_scratch()
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{label}-"))
    try:
        (folder / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_orphaned_scratch(root: Path | None = None) -> list[Path]:
    """Remove the scratch folders under ``root`` (default: the temporary folder) whose owner
    process on this host no longer runs; returns them. Pids are only compared on the host that
    wrote them, and a reused pid keeps its folder (left, never wrongly removed)."""
    root = Path(root) if root is not None else Path(tempfile.gettempdir())
    host = socket.gethostname()
    removed = []
    for folder in root.glob(f"{PREFIX}*"):
        owner = _owner(folder)
        if owner is None or owner[0] != host or _running(owner[1]):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _owner(folder: Path) -> tuple[str, int] | None:
    """``(host, pid)`` from ``folder``'s owner file; None when it has none or it is unreadable
    (a folder another program made, or one whose owner is still writing the file)."""
    try:
        host, pid = (folder / OWNER_FILE).read_text().split()
        number = int(pid)
    except (OSError, ValueError):
        return None
    return (host, number) if number > 0 else None  # 0 and below name process groups


def _running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (a zombie counts: it still holds its pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
