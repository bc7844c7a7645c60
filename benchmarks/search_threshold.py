"""Calibrates the minimum hybrid score of `foundry3d search` on a labelled query set.

``benchmarks/data/search_queries.jsonl`` holds a small catalog of prompts (first line) and
queries, each either about catalog entries (``match`` lists the prompts that count as right) or
about nothing in the catalog (``match`` empty). The catalog is indexed into a temporary SQLite
database with the numpy all-MiniLM-L6-v2 encoder the CLI uses, every query runs through
:func:`storage.search.hybrid_search`, and for each threshold it prints

- kept right: queries about the catalog whose best hit is right and scores at least the threshold;
- kept wrong: queries about nothing in the catalog whose best hit still reaches it;

then the figures at :data:`storage.search.MIN_HYBRID_SCORE`.

    python benchmarks/search_threshold.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUERIES = ROOT / "benchmarks" / "data" / "search_queries.jsonl"


def main() -> None:
    import hashlib

    from models.embed.numpy_text import get_numpy_text_embedder
    from storage import queries as q
    from storage.db import ensure_database, session_scope
    from storage.search import MIN_HYBRID_SCORE, hybrid_search, index_prompt

    lines = [json.loads(line) for line in QUERIES.read_text().splitlines() if line]
    catalog, labelled = lines[0]["catalog"], lines[1:]
    embedder = get_numpy_text_embedder()
    with tempfile.TemporaryDirectory() as tmp:
        engine = ensure_database(f"sqlite:///{tmp}/bench.db")
        ids = {}
        with session_scope(engine) as session:
            vectors = embedder.embed_texts(catalog)
            for prompt, vector in zip(catalog, vectors, strict=True):
                asset_id = hashlib.sha256(prompt.encode()).hexdigest()
                ids[asset_id] = prompt
                q.insert_asset_if_new(session, asset_id=asset_id, kind="prompt", prompt=prompt,
                                      seed=0, generator="library", init="library")
                q.get_asset(session, asset_id).state = "succeeded"
                index_prompt(session, asset_id, prompt, [], vector)
        results = []  # (best score, whether the query is about the catalog, whether best is right)
        with session_scope(engine) as session:
            vectors = embedder.embed_texts([item["query"] for item in labelled])
            for item, vector in zip(labelled, vectors, strict=True):
                hits = hybrid_search(session, item["query"], vector, limit=1)
                best = hits[0] if hits else None
                score = best.score if best else 0.0
                right = best is not None and ids[best.asset_id] in item["match"]
                results.append((score, bool(item["match"]), right, item["query"]))
        engine.dispose()
    about = sum(1 for r in results if r[1])
    unrelated = len(results) - about
    print(f"{about} queries about the catalog, {unrelated} about nothing in it")
    print("threshold  kept right  kept wrong")
    for threshold in (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5):
        kept_right = sum(1 for s, a, r, _ in results if a and r and s >= threshold)
        kept_wrong = sum(1 for s, a, _, _ in results if not a and s >= threshold)
        print(f"{threshold:9.2f}  {kept_right:5d}/{about:<4d}  {kept_wrong:5d}/{unrelated}")
    print("\nper query (score, query, right):")
    for score, is_about, right, query in sorted(results):
        verdict = "right" if right else ("WRONG" if is_about else "-")
        print(f"  {score:.3f}  {query!r}  {verdict}")
    kept_right = sum(1 for s, a, r, _ in results if a and r and s >= MIN_HYBRID_SCORE)
    kept_wrong = sum(1 for s, a, _, _ in results if not a and s >= MIN_HYBRID_SCORE)
    print(f"\nMIN_HYBRID_SCORE {MIN_HYBRID_SCORE}: kept right {kept_right}/{about}, "
          f"kept wrong {kept_wrong}/{unrelated}")


if __name__ == "__main__":
    main()
