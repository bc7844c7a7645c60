"""Calibrates the library generator's text-match thresholds on a labelled query set.

Each query of ``benchmarks/data/retrieval_queries.jsonl`` is either a paraphrase of a sample
library object (``match`` lists the entry ids that count as right) or a prompt for an object the
library does not hold (``match`` is empty). The query runs through the same index and embedder
as the ``library`` generator; a query is *accepted* when its best similarity reaches the
threshold. For each threshold it prints

- precision: of the accepted queries, the share whose best entry is a right one;
- recall: of the queries that have a right entry, the share accepted with a right entry;
- false accepts: accepted queries for objects not in the library.

and then the figures at the thresholds the generator uses (``models/generate/library.py``).

    python benchmarks/retrieval.py            # builds a text-only sample library in a temp dir
    python benchmarks/retrieval.py --library foundry-data/library
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUERIES = ROOT / "benchmarks" / "data" / "retrieval_queries.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--library", type=Path, help="indexed library folder (default: sample)")
    args = parser.parse_args()

    from models.embed.text import get_text_embedder
    from models.generate.library import MATCH_THRESHOLDS
    from models.library.index import LibraryIndex, build_library_index

    embedder = get_text_embedder()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.library
        if folder is None:
            from foundry3d.sample_library import write_sample_library

            folder = Path(tmp) / "library"
            write_sample_library(folder)
            build_library_index(folder, embedder=embedder, render=False)
        index = LibraryIndex.load(folder)
        queries = [json.loads(line) for line in QUERIES.read_text().splitlines() if line]
        started = time.perf_counter()
        embeddings = embedder.embed_texts([q["query"] for q in queries])
        best = [index.query_text(e, k=1)[0] for e in embeddings]
        seconds = time.perf_counter() - started

    sims = np.array([b.similarity for b in best])
    right = np.array([b.entry.id in q["match"] for b, q in zip(best, queries, strict=True)])
    in_library = np.array([bool(q["match"]) for q in queries])
    print(f"{len(queries)} queries ({in_library.sum()} paraphrases of library objects, "
          f"{(~in_library).sum()} objects not in the library); {seconds * 1000:.0f} ms in all")
    print(f"top-1 right among paraphrases: {right[in_library].mean():.3f}")
    print("\nthreshold  precision  recall  false-accepts  accepted")
    for t in np.arange(0.30, 0.80, 0.05):
        print(_row(t, sims, right, in_library))
    print("\nthresholds the generator uses:")
    for name, t in MATCH_THRESHOLDS.items():
        print(f"{name:>10}: " + _row(t, sims, right, in_library))
    print("\nnot-in-library queries, best similarity:")
    order = np.argsort(-sims)
    for i in order:
        if not in_library[i]:
            print(f"  {sims[i]:.3f}  {queries[i]['query']!r} -> {best[i].entry.caption!r}")
    print("\nparaphrases matched wrongly or below 'weak':")
    for i in order:
        if in_library[i] and (not right[i] or sims[i] < MATCH_THRESHOLDS["weak"]):
            print(f"  {sims[i]:.3f}  {queries[i]['query']!r} -> {best[i].entry.caption!r}"
                  f"{'' if right[i] else '  (wrong entry)'}")


def _row(t: float, sims: np.ndarray, right: np.ndarray, in_library: np.ndarray) -> str:
    accepted = sims >= t
    precision = (accepted & right).sum() / max(1, accepted.sum())
    recall = (accepted & right & in_library).sum() / max(1, in_library.sum())
    false = (accepted & ~in_library).sum()
    return f"{t:9.2f}  {precision:9.3f}  {recall:6.3f}  {false:13d}  {accepted.sum():8d}"


if __name__ == "__main__":
    main()
