"""The summary of a reconstruction benchmark run, apart from the benchmark itself.

``benchmarks/reconstruct.py`` prints it after its rows, and ``benchmarks/compare_reconstruct.py``
prints it over the row files of a run's shards; this module imports nothing heavy, so the
comparison starts at once instead of loading torch and the pipeline.
"""

from __future__ import annotations

import statistics

#: The F@0.05 every object should reach (issue #12's median target).
TARGET_F05 = 0.96
#: The keys of a benchmark row.
ROW_KEYS = ("name", "init_f05", "init_cd", "hull_f05", "f05", "seen_f05", "init_seen_f05",
            "hull_seen_f05", "f05_surface", "init_f05_surface", "hull_f05_surface", "cd", "f10",
            "nerr", "iou", "psnr", "unseen", "kept", "faces", "seconds", "cpu", "mib")
#: Keys added after row files were first written, with the value a row from an older run gets
#: (NaN: not measured; left out of medians and counts).
LATER_KEYS = {"seen_f05": float("nan"), "f05_surface": float("nan"),
              "init_f05_surface": float("nan"), "hull_f05_surface": float("nan"),
              "init_seen_f05": float("nan"), "hull_seen_f05": float("nan")}


def print_summary(rows: list[dict]) -> None:
    """Print the medians of ``rows`` (as ``benchmarks/reconstruct.py`` makes them, keys
    :data:`ROW_KEYS`), the count at or above :data:`TARGET_F05` (F@0.05 over all the surface
    and over the seen surface), and the objects below their init and below the hull without
    depth carving (when the rows have that hull's score); then the same by F@0.05 over the
    surface the views see and by F@0.05 to the surface (when the rows have them)."""
    med = {k: _median([r[k] for r in rows]) for k in rows[0] if k not in ("name", "kept")}
    med["name"] = f"MEDIAN of {len(rows)}"
    med["kept"] = f"{sum(r['kept'] == 'init' for r in rows)} init"
    print(format_row(med))
    reached = sum(r["f05"] >= TARGET_F05 for r in rows)
    # NaN compares False: rows of an older run never count.
    seen = sum(r["seen_f05"] >= TARGET_F05 for r in rows)
    scored = sum(r["seen_f05"] == r["seen_f05"] for r in rows)
    print(f"objects at F@0.05 >= {TARGET_F05}: {reached} of {len(rows)}"
          + (f" (over the surface the views see: {seen} of {scored})" if scored else ""))
    worse = _below(rows, "f05", "init_f05")
    print(f"objects below their init's F@0.05: {len(worse)} {worse}")
    # NaN (no hull score: another init) compares False, so such rows never count.
    if any(r["hull_f05"] == r["hull_f05"] for r in rows):
        worse = _below(rows, "f05", "hull_f05")
        print(f"objects below the hull's F@0.05 without depth carving: {len(worse)} {worse}")
    seen_rows = [r for r in rows if r["init_seen_f05"] == r["init_seen_f05"]]
    if seen_rows:
        # What refinement answers for: the surface the views show.
        worse = _below(seen_rows, "seen_f05", "init_seen_f05")
        print(f"over the surface the views see: below their init's: {len(worse)} {worse}")
        if any(r["hull_seen_f05"] == r["hull_seen_f05"] for r in seen_rows):
            worse = _below(seen_rows, "seen_f05", "hull_seen_f05")
            print(f"  below the hull's without depth carving: {len(worse)} {worse}")
    surface = [r for r in rows if r["f05_surface"] == r["f05_surface"]]
    if surface:
        reached = sum(r["f05_surface"] >= TARGET_F05 for r in surface)
        print(f"F@0.05 to the surface: median {_median([r['f05_surface'] for r in surface]):.3f}"
              f", {reached} of {len(surface)} at {TARGET_F05}")
        worse = _below(surface, "f05_surface", "init_f05_surface")
        print(f"  below their init's: {len(worse)} {worse}")
        if any(r["hull_f05_surface"] == r["hull_f05_surface"] for r in surface):
            worse = _below(surface, "f05_surface", "hull_f05_surface")
            print(f"  below the hull's without depth carving: {len(worse)} {worse}")


def _below(rows: list[dict], score: str, bound: str) -> list[str]:
    """Names of the ``rows`` whose ``score`` is under their ``bound`` (a NaN never is)."""
    return [r["name"] for r in rows if r[score] < r[bound]]


def _median(values: list[float]) -> float:
    """The median of ``values`` without their NaNs (NaN when nothing is left)."""
    kept = [v for v in values if v == v]
    return statistics.median(kept) if kept else float("nan")


def format_row(row: dict) -> str:
    """One benchmark row (or the medians) as a fixed-width line under the benchmark's header."""
    return (f"{row['name'][:28]:28s} {row['init_f05']:6.3f} {row['init_cd']:7.4f} "
            f"{row['hull_f05']:6.3f} {row['f05']:7.3f} {row['seen_f05']:6.3f} "
            f"{row['hull_f05_surface']:6.3f} {row['f05_surface']:6.3f} "
            f"{row['cd']:7.4f} {row['f10']:6.3f} {row['nerr']:6.2f} {row['iou']:6.3f} "
            f"{row['psnr']:6.2f} {row['unseen']:6.3f} {row['kept']:>7s} "
            f"{int(row['faces']):6d} {row['seconds']:6.1f} {row['cpu']:6.1f} {row['mib']:6.0f}")
