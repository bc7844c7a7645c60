"""Start-up and exit costs of a CLI process that imports torch, trimesh and scipy.

Those imports leave about a million long-lived objects. Python's cyclic garbage collector walks
them again at every full collection while the imports run, and at interpreter exit once more
per module it tears down, and never finds anything to free: on two cores that was 0.3 s of the
imports and 0.5 s of the exit of ``foundry3d reconstruct``
(``benchmarks/reconstruct_process.py`` prints the start-up share). Reference counting still
frees everything as usual; only the search for cycles among these objects is skipped.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def imports_without_collection() -> Iterator[None]:
    """Run the ``with`` block (a command's heavy imports) with the cyclic collector paused.

    When the block imported modules, every object alive at its end moves to the collector's
    permanent generation, so later collections during the command do not walk the imported
    modules either. When it imported nothing (the modules were loaded already, as in a test
    process that runs commands in-process) nothing is frozen: a process that keeps running
    would keep whatever garbage was alive at that moment.
    """
    was_enabled = gc.isenabled()
    loaded = len(sys.modules)
    gc.disable()
    try:
        yield
    finally:
        if len(sys.modules) > loaded:
            gc.freeze()
        if was_enabled:
            gc.enable()


def skip_collection_at_exit() -> None:
    """Spare the interpreter's exit its collections over every object still alive (called once
    a command has finished and written its files; atexit handlers and stream flushing still
    run)."""
    gc.freeze()
