"""Sum up and compare runs of ``benchmarks/reconstruct.py`` from the rows its ``--rows`` wrote.

A run on two cores is split into shards (``--count 39 --rows a1.jsonl`` and ``--skip 39
--count 39 --rows a2.jsonl``); each shard prints its own medians only. Given the row files of
one run, this prints the medians over all of them, how many objects reach F@0.05 0.96, and the
objects below their init and below the hull without depth carving, exactly as the benchmark
would have for one process. Given a second run (``--against``), it also prints both runs'
summaries and every object whose F@0.05 moved by more than ``--min-change``, largest gain
first, with both scores and the hull's.

    PYTHONPATH=. .venv/bin/python benchmarks/compare_reconstruct.py a1.jsonl a2.jsonl
    PYTHONPATH=. .venv/bin/python benchmarks/compare_reconstruct.py a1.jsonl a2.jsonl \\
        --against b1.jsonl b2.jsonl

Single objects move by up to 0.05 of F@0.05 when the step size moves by 0.1 %, so one run per
side cannot tell such a change from noise. With ``--repeated`` the row files of each side may
hold the same object more than once (runs with ``--set lr=0.2997``, ``0.3003``, ...): its rows
are averaged, the summary is over the averages, and each listed change shows both sides'
range and whether the ranges overlap.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reconstruct_summary import LATER_KEYS, ROW_KEYS, print_summary


def read_rows(paths: list[Path], repeated: bool = False) -> dict[str, list[dict]]:
    """The rows of ``paths`` (JSON lines) by object name, each object's rows in file order.
    Unless ``repeated``, an object in two files ends the program with an error (overlapping
    shards would count it twice). A row from before a key of :data:`LATER_KEYS` existed gets
    that key's stand-in value."""
    rows: dict[str, list[dict]] = {}
    for path in paths:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"{path}:{number}: not a JSON row ({exc.msg}); row files come "
                                 "from benchmarks/reconstruct.py --rows") from None
            if isinstance(row, dict):
                row = {**LATER_KEYS, **row}
            missing = [k for k in ROW_KEYS if not isinstance(row, dict) or k not in row]
            if missing:
                raise SystemExit(f"{path}:{number}: the row lacks {missing}")
            if row["name"] in rows and not repeated:
                raise SystemExit(f"{path}:{number}: {row['name']} is already in an earlier "
                                 "file; are two shards overlapping? (--repeated averages "
                                 "repeated runs)")
            rows.setdefault(row["name"], []).append(row)
    return rows


def mean_row(rows: list[dict]) -> dict:
    """One row from an object's repeated rows: the mean of each number, the first row's text
    (``name``, ``kept``)."""
    merged = dict(rows[0])
    for key, value in rows[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            merged[key] = sum(r[key] for r in rows) / len(rows)
    return merged


def _spread(rows: list[dict]) -> str:
    values = [r["f05"] for r in rows]
    return f" [{min(values):.3f}..{max(values):.3f}]" if len(values) > 1 else ""


def _overlap(a: list[dict], b: list[dict]) -> bool:
    a_f = [r["f05"] for r in a]
    b_f = [r["f05"] for r in b]
    return min(a_f) <= max(b_f) and min(b_f) <= max(a_f)


def _runs_per_object(runs: dict[str, list[dict]]) -> str:
    counts = [len(rows) for rows in runs.values()]
    if max(counts) == 1:
        return ""
    return f" ({min(counts)}-{max(counts)} runs per object, averaged)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="+", type=Path, help="row files (JSON lines) of one run")
    parser.add_argument("--against", nargs="+", type=Path, default=[], metavar="ROWS",
                        help="row files of a second run to compare with the first")
    parser.add_argument("--min-change", type=float, default=0.004,
                        help="smallest F@0.05 change listed per object (default 0.004)")
    parser.add_argument("--repeated", action="store_true",
                        help="the files of a side may hold an object more than once (repeated "
                             "runs, e.g. with --set lr=0.3003): average its rows and show "
                             "their range")
    args = parser.parse_args(argv)
    for path in args.rows + args.against:
        if not path.is_file():
            parser.error(f"no such row file: {path}")
    first_runs = read_rows(args.rows, args.repeated)
    if not first_runs:
        parser.error("the row files hold no rows")
    first = {name: mean_row(rows) for name, rows in first_runs.items()}
    print(f"run A: {len(first)} objects from {', '.join(map(str, args.rows))}"
          + _runs_per_object(first_runs))
    print_summary(list(first.values()))
    if not args.against:
        return 0
    second_runs = read_rows(args.against, args.repeated)
    second = {name: mean_row(rows) for name, rows in second_runs.items()}
    print(f"\nrun B: {len(second)} objects from {', '.join(map(str, args.against))}"
          + _runs_per_object(second_runs))
    print_summary(list(second.values()))
    common = sorted(first.keys() & second.keys())
    only = sorted(first.keys() ^ second.keys())
    if only:
        print(f"\nin one run only (left out below): {only}")
    changes = sorted(((second[n]["f05"] - first[n]["f05"], n) for n in common), reverse=True)
    print(f"\nF@0.05 changes larger than {args.min_change} (B - A), hull beside:")
    for delta, name in changes:
        if abs(delta) > args.min_change:
            a, b = first_runs[name], second_runs[name]
            spread = ""
            if len(a) > 1 or len(b) > 1:
                spread = (f"{_spread(a)} ->{_spread(b)} "
                          + ("ranges overlap" if _overlap(a, b) else "apart") + "  ")
            print(f"  {name[:28]:28s} {first[name]['f05']:.3f} -> {second[name]['f05']:.3f} "
                  f"({delta:+.3f}) {spread}  hull {first[name]['hull_f05']:.3f}   to the "
                  f"surface {first[name]['f05_surface']:.3f} -> "
                  f"{second[name]['f05_surface']:.3f}, hull "
                  f"{first[name]['hull_f05_surface']:.3f}")
    up = sum(d > args.min_change for d, _ in changes)
    down = sum(d < -args.min_change for d, _ in changes)
    print(f"  {up} up, {down} down, {len(common) - up - down} within {args.min_change}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
