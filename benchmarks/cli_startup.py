"""Start-up and exit of a ``foundry3d reconstruct`` process, with and without the cyclic
garbage collector (:mod:`foundry3d.cli.startup`).

Each run is a fresh interpreter that imports what the reconstruct command imports, then exits.
It prints per run the seconds of the imports (measured inside the process) and of the exit
(the process's wall time after the imports), for three ways of running:

- ``collected``: Python's defaults;
- ``paused``: the imports inside ``imports_without_collection`` (collector paused, then what
  they made frozen), the exit as by default;
- ``cli``: as the CLI runs them: that block, and ``skip_collection_at_exit`` before the exit.

    PYTHONPATH=. .venv/bin/python benchmarks/cli_startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

#: What ``foundry3d reconstruct`` imports before its clock starts (foundry3d/cli/core3d.py).
IMPORTS = """
import foundry3d.cli
from rich.progress import Progress
from rich.table import Table
from foundry3d.settings import get_settings
from models.bundle.spec import Bundle
from models.evaluate.asset import evaluate_asset
from models.evaluate.metrics import chamfer_fscore
from models.export.params import ExportParams
from models.geometry.frames import to_bundle_frame
from models.geometry.glb import export_glb
from models.geometry.mesh import load_mesh
from models.raster import get_rasteriser
from models.reconstruct.hull import HullParamsError
from models.reconstruct.init import INITIALISERS
from models.reconstruct.pipeline import reconstruct_bundle
from models.render.preview import preview_sheet
"""

CHILD = """
import sys, time
from foundry3d.cli.startup import imports_without_collection, skip_collection_at_exit
mode = sys.argv[1]
start = time.perf_counter()
if mode == "collected":
    exec(IMPORTS)
else:
    with imports_without_collection():
        exec(IMPORTS)
print(time.perf_counter() - start, flush=True)
if mode == "cli":
    skip_collection_at_exit()
"""

MODES = ("collected", "paused", "cli")


def run_once(mode: str) -> tuple[float, float]:
    """``(import seconds, exit seconds)`` of one fresh interpreter in ``mode``."""
    code = f"IMPORTS = {IMPORTS!r}\n{CHILD}"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the {mode} run failed:\n{done.stderr}")
    imports = float(done.stdout.strip().splitlines()[-1])
    # The interpreter's own start before the imports is the same in every mode; it counts
    # toward the exit here, so compare the modes' exits, not their absolute values.
    return imports, wall - imports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each mode, interleaved")
    args = parser.parse_args(argv)
    print("load before:", os.getloadavg())
    results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    print(f"{'run':>4} {'mode':>10} {'imports':>8} {'start+exit':>10} {'wall':>6}")
    for k in range(args.repeats):
        for mode in MODES:
            imports, rest = run_once(mode)
            results[mode].append((imports, rest))
            print(f"{k + 1:>4} {mode:>10} {imports:8.2f} {rest:10.2f} {imports + rest:6.2f}")
    print("medians:")
    for mode in MODES:
        imports = statistics.median(r[0] for r in results[mode])
        rest = statistics.median(r[1] for r in results[mode])
        print(f"{'':>4} {mode:>10} {imports:8.2f} {rest:10.2f} {imports + rest:6.2f}")
    print("load after:", os.getloadavg())
    return 0


if __name__ == "__main__":
    sys.exit(main())
