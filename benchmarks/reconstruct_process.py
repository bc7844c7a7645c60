"""Whole-process timing of ``foundry3d reconstruct``: start-up, imports and every stage included.

Runs the CLI ``--repeats`` times on one bundle (a fresh process each time, so imports and the
numba disk cache count as a user sees them) and prints per run: wall seconds, the process's CPU
seconds (user + sys, all threads), the seconds before the command's own clock starts (the
interpreter, the CLI's and the stage's imports), and the per-part split the CLI reports (init,
refine, texture, metrics, export, report), with its lines splitting refine (setup, coarse, fine,
remesh within them, hull prior, guard) and export; then the medians. Compare CPU seconds on a shared
machine and say what the load was (``uptime`` is printed before and after).

    PYTHONPATH=. .venv/bin/python benchmarks/reconstruct_process.py /tmp/rb/mug512.png
    PYTHONPATH=. .venv/bin/python benchmarks/reconstruct_process.py mug512.png --repeats 3 \\
        --cli=--no-texture
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Table rows of the CLI's report that hold seconds, in report order.
PARTS = ("init", "refine", "texture", "metrics", "export", "report")
_ROW = re.compile(r"│\s*(\w+)_seconds\s*│\s*([-+0-9.e]+)\s*│")
_IN_ALL = re.compile(r"\(([0-9.]+) s in all\)")


def cli_path() -> str:
    """The ``foundry3d`` console script beside this interpreter (else the one on PATH)."""
    beside = Path(sys.executable).with_name("foundry3d")
    return str(beside) if beside.exists() else (shutil.which("foundry3d") or "foundry3d")


def parse_report(text: str) -> dict[str, float]:
    """The ``*_seconds`` rows and the ``in all`` figure of the CLI's report."""
    found = {name: float(value) for name, value in _ROW.findall(text)}
    match = _IN_ALL.search(text.replace("\n", " "))
    if match:
        found["command"] = float(match.group(1))
    return found


def run_once(bundle: Path, extra: list[str], out_dir: Path) -> dict[str, float]:
    """One CLI process: wall and CPU seconds (user + sys) and the parsed report."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [cli_path(), "reconstruct", str(bundle), "-o", str(out_dir / "out.glb"), *extra],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"},
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"foundry3d reconstruct failed:\n{done.stdout}\n{done.stderr}")
    row = parse_report(done.stdout)
    row["wall"] = wall
    row["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if "command" in row:
        row["startup"] = wall - row["command"]
    for stage in ("refine", "export"):
        line = [text for text in done.stdout.splitlines() if text.startswith(f"{stage}:")]
        row[f"{stage}_split"] = line[0] if line else ""  # type: ignore[assignment]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="bundle PNG (sidecar beside it)")
    parser.add_argument("--repeats", type=int, default=3, help="CLI processes to time")
    parser.add_argument("--cli", default="--texture-mode vertex",
                        help="the CLI's own options, one string (write --cli=--no-texture)")
    args = parser.parse_args(argv)
    extra = shlex.split(args.cli)

    print("load before:", os.getloadavg())
    print("command: foundry3d reconstruct", args.bundle, "-o OUT", " ".join(extra))
    columns = ["wall", "cpu", "startup", *PARTS]
    print(" ".join(f"{c:>8}" for c in ["run", *columns]))
    rows = []
    with tempfile.TemporaryDirectory(prefix="foundry3d-bench-") as scratch:
        for k in range(args.repeats):
            row = run_once(args.bundle, extra, Path(scratch))
            rows.append(row)
            cells = [f"{row[c]:8.2f}" if c in row else f"{'-':>8}" for c in columns]
            print(f"{k + 1:>8} " + " ".join(cells))
            for stage in ("refine", "export"):
                if row[f"{stage}_split"]:
                    print(f"{'':>8} {row[f'{stage}_split']}")
    medians = [
        f"{statistics.median([r[c] for r in rows]):8.2f}" if all(c in r for r in rows)
        else f"{'-':>8}"
        for c in columns
    ]
    print(f"{'median':>8} " + " ".join(medians))
    print("load after:", os.getloadavg())
    return 0


if __name__ == "__main__":
    sys.exit(main())
