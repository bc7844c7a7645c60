"""The benchmark comparison over row files: shards add up, repeated runs average."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _row(name: str, f05: float) -> dict:
    return {"name": name, "init_f05": 0.9, "init_cd": 0.02, "hull_f05": 0.95, "f05": f05,
            "seen_f05": f05, "f05_surface": f05, "init_f05_surface": 0.9,
            "hull_f05_surface": 0.95, "cd": 0.01, "f10": 1.0, "nerr": 5.0, "iou": 0.99,
            "psnr": 40.0, "unseen": 0.2, "kept": "refined", "faces": 10000, "seconds": 5.0,
            "cpu": 5.0, "mib": 1000.0}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def compare(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/compare_reconstruct.py", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})


def test_an_object_in_two_files_is_refused_as_overlapping_shards(tmp_path):
    a = _write(tmp_path / "a.jsonl", [_row("wrench", 0.97)])
    b = _write(tmp_path / "b.jsonl", [_row("wrench", 0.98)])
    result = compare(a, b)
    assert result.returncode != 0
    assert "wrench is already in an earlier file" in result.stderr
    assert "Traceback" not in result.stderr


def test_repeated_runs_are_averaged_and_their_ranges_compared(tmp_path):
    old = [_write(tmp_path / f"old{i}.jsonl", [_row("wrench", f)])
           for i, f in enumerate((0.94, 0.945, 0.955))]
    new = [_write(tmp_path / f"new{i}.jsonl", [_row("wrench", f)])
           for i, f in enumerate((0.99, 1.0))]
    result = compare("--repeated", *old, "--against", *new)
    assert result.returncode == 0, result.stderr
    assert "3-3 runs per object, averaged" in result.stdout
    assert "wrench                       0.947 -> 0.995 (+0.048)" in result.stdout
    assert "[0.940..0.955] -> [0.990..1.000] apart" in result.stdout


def test_the_summary_judges_an_objects_mean_against_its_hull(tmp_path):
    # One of the three runs ends above the hull's 0.95, their mean below it.
    runs = [_write(tmp_path / f"run{i}.jsonl", [_row("wrench", f)])
            for i, f in enumerate((0.94, 0.945, 0.955))]
    result = compare("--repeated", *runs)
    assert "below the hull's F@0.05 without depth carving: 1 ['wrench']" in result.stdout


def test_overlapping_ranges_are_called_so(tmp_path):
    old = [_write(tmp_path / f"old{i}.jsonl", [_row("chain", f)])
           for i, f in enumerate((0.75, 0.80))]
    new = [_write(tmp_path / f"new{i}.jsonl", [_row("chain", f)])
           for i, f in enumerate((0.78, 0.79))]
    result = compare("--repeated", *old, "--against", *new)
    assert "[0.750..0.800] -> [0.780..0.790] ranges overlap" in result.stdout


def test_the_summary_tells_a_loss_on_unseen_surface_from_one_on_seen_surface(tmp_path):
    # Both cups end below their init's 0.9 overall; only cup-b also over the surface it shows.
    cup_a = {**_row("cup-a", 0.64), "seen_f05": 0.97, "init_seen_f05": 0.95,
             "hull_seen_f05": 0.94}
    cup_b = {**_row("cup-b", 0.64), "seen_f05": 0.93, "init_seen_f05": 0.95,
             "hull_seen_f05": 0.94}
    result = compare(_write(tmp_path / "rows.jsonl", [cup_a, cup_b]))
    assert result.returncode == 0, result.stderr
    assert "objects below their init's F@0.05: 2 ['cup-a', 'cup-b']" in result.stdout
    assert "over the surface the views see: below their init's: 1 ['cup-b']" in result.stdout
    assert "  below the hull's without depth carving: 1 ['cup-b']" in result.stdout


def test_rows_from_before_the_seen_scores_of_init_and_hull_leave_their_lines_out(tmp_path):
    result = compare(_write(tmp_path / "rows.jsonl", [_row("wrench", 0.97)]))
    assert result.returncode == 0, result.stderr
    assert "over the surface the views see: below" not in result.stdout
