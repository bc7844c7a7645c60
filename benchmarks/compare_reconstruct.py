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
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reconstruct_summary import LATER_KEYS, ROW_KEYS, print_summary


def read_rows(paths: list[Path]) -> dict[str, dict]:
    """The rows of ``paths`` (JSON lines) by object name; an object in two files ends the
    program with an error (overlapping shards would count it twice). A row from before a key
    of :data:`LATER_KEYS` existed gets that key's stand-in value."""
    rows: dict[str, dict] = {}
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
            if row["name"] in rows:
                raise SystemExit(f"{path}:{number}: {row['name']} is already in an earlier "
                                 "file; are two shards overlapping?")
            rows[row["name"]] = row
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="+", type=Path, help="row files (JSON lines) of one run")
    parser.add_argument("--against", nargs="+", type=Path, default=[], metavar="ROWS",
                        help="row files of a second run to compare with the first")
    parser.add_argument("--min-change", type=float, default=0.004,
                        help="smallest F@0.05 change listed per object (default 0.004)")
    args = parser.parse_args(argv)
    for path in args.rows + args.against:
        if not path.is_file():
            parser.error(f"no such row file: {path}")
    first = read_rows(args.rows)
    if not first:
        parser.error("the row files hold no rows")
    print(f"run A: {len(first)} objects from {', '.join(map(str, args.rows))}")
    print_summary(list(first.values()))
    if not args.against:
        return 0
    second = read_rows(args.against)
    print(f"\nrun B: {len(second)} objects from {', '.join(map(str, args.against))}")
    print_summary(list(second.values()))
    common = sorted(first.keys() & second.keys())
    only = sorted(first.keys() ^ second.keys())
    if only:
        print(f"\nin one run only (left out below): {only}")
    changes = sorted(((second[n]["f05"] - first[n]["f05"], n) for n in common), reverse=True)
    print(f"\nF@0.05 changes larger than {args.min_change} (B - A), hull beside:")
    for delta, name in changes:
        if abs(delta) > args.min_change:
            print(f"  {name[:28]:28s} {first[name]['f05']:.3f} -> {second[name]['f05']:.3f} "
                  f"({delta:+.3f})   hull {first[name]['hull_f05']:.3f}   to the surface "
                  f"{first[name]['f05_surface']:.3f} -> {second[name]['f05_surface']:.3f}, hull "
                  f"{first[name]['hull_f05_surface']:.3f}")
    up = sum(d > args.min_change for d, _ in changes)
    down = sum(d < -args.min_change for d, _ in changes)
    print(f"  {up} up, {down} down, {len(common) - up - down} within {args.min_change}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
