"""The server's in-memory search index ranks exactly as the database's hybrid search does, on
SQLite and on a real PostgreSQL server, and follows entries indexed, re-indexed and removed
after it was built."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import sqlalchemy as sa

from storage import queries as q
from storage import search, search_index
from storage.db import make_engine, session_scope
from storage.schema import EMBEDDING_DIM, Asset
from storage.search_index import SearchIndex, snapshot_folder

COLOURS = ["red", "blue", "green", "old"]
NOUNS = ["chair", "chairs", "mug", "lamp", "table", "kettle"]
MATERIALS = ["wooden", "ceramic", "brass"]
ENTRIES = 400
RARE_TAG = "rare"
QUERIES = ["red chair", "chairs", "blue ceramic mug", "old old lamp", "kettle", "zebra",
           "wooden", "green table lamp", "the mug", "red_chair lamp", "a", "brass wooden chair"]
FILTERS = [(None, None), ("succeeded", None), (None, RARE_TAG), ("succeeded", RARE_TAG),
           ("failed", None)]


def _asset_id(n: int) -> str:
    return f"e{n:05d}".ljust(64, "0")


def _add(session, n: int, text: str, tags: list[str], vector: np.ndarray | None) -> None:  # noqa: ANN001
    q.insert_asset_if_new(session, asset_id=_asset_id(n), kind="prompt", prompt=text, seed=n,
                          generator="library", init="library", tags=tags)
    search.index_prompt(session, _asset_id(n), text, tags, vector)


@pytest.fixture
def catalog(db_engine):
    """ENTRIES prompts from a small vocabulary (so keyword scores tie), random embeddings
    (every 40th entry has none), two thirds succeeded, every 25th tagged RARE_TAG."""
    rng = np.random.default_rng(3)
    words = itertools.product(COLOURS, MATERIALS, NOUNS)
    texts = [" ".join(w) for w in words]
    with session_scope(db_engine) as session:
        for n in range(ENTRIES):
            text = texts[n % len(texts)] if n % 7 else NOUNS[n % len(NOUNS)]
            if n % 11 == 0:  # a word at several positions
                text += " " + " ".join(text.split()[-1:] * (1 + n % 4))
            vector = None if n % 40 == 39 else rng.normal(size=EMBEDDING_DIM).astype(np.float32)
            _add(session, n, text, [RARE_TAG] if n % 25 == 0 else ["common"], vector)
            if n % 3:
                q.claim_asset(session, _asset_id(n), "w", 60)
                q.release_asset(session, _asset_id(n), "w", "succeeded" if n % 3 == 1
                                else "failed")
    search.clear_embedding_cache()
    return db_engine


def _same(hits: list[search.SearchHit]) -> list[tuple]:
    """What two equal rankings share exactly: the hits in order, keyword scores and rows."""
    return [(h.asset_id, h.keyword_score, h.semantic_score is None, h.text, h.state,
             h.output_keys) for h in hits]


def _assert_equal(found: list[search.SearchHit], expected: list[search.SearchHit],
                  case: object) -> None:
    """Equal rankings; cosines and scores to float32 rounding (BLAS rounds a row's dot product
    by where the row sits in the matrix, and the two matrices order their rows differently)."""
    assert _same(found) == _same(expected), case
    np.testing.assert_allclose([h.score for h in found], [h.score for h in expected],
                               rtol=0, atol=1e-6, err_msg=str(case))
    np.testing.assert_allclose([h.semantic_score or 0.0 for h in found],
                               [h.semantic_score or 0.0 for h in expected],
                               rtol=0, atol=1e-6, err_msg=str(case))


def _embedding(query: str) -> np.ndarray:
    seed = sum(query.encode())
    return np.random.default_rng(seed).normal(size=EMBEDDING_DIM).astype(np.float32)


def test_the_index_ranks_every_query_and_filter_as_the_exact_hybrid_search(catalog):
    index = SearchIndex()
    for query, (state, tag), limit in itertools.product(QUERIES, FILTERS, (1, 7, 30)):
        with session_scope(catalog) as session:
            expected = search.hybrid_search(session, query, _embedding(query), limit=limit,
                                            state=state, tag=tag, method="exact")
            found = index.search(session, query, _embedding(query), limit=limit, state=state,
                                 tag=tag)
        _assert_equal(found, expected, (query, state, tag, limit))


def test_without_an_embedding_the_index_ranks_as_keyword_search(catalog):
    index = SearchIndex()
    for query, (state, tag) in itertools.product(QUERIES, FILTERS):
        with session_scope(catalog) as session:
            expected = search.hybrid_search(session, query, None, limit=12, state=state,
                                            tag=tag)
            found = index.search(session, query, None, limit=12, state=state, tag=tag)
        _assert_equal(found, expected, (query, state, tag))


def test_an_embedding_given_late_ranks_as_one_given_at_once(catalog):
    index = SearchIndex()
    asked: list[str] = []

    def late(query: str):  # noqa: ANN202 - a callable as a future's result
        def result() -> np.ndarray | None:
            asked.append(query)
            return None if query == "chair" else _embedding(query)
        return result

    for query in ("red chair", "chair", "oak"):
        with session_scope(catalog) as session:
            now = index.search(session, query, None if query == "chair" else _embedding(query),
                               limit=9)
            profile: dict[str, tuple[float, float]] = {}
            found = index.search(session, query, late(query), limit=9, profile=profile)
        _assert_equal(found, now, query)
        assert {"embed", "embed_wait", "semantic"} <= set(profile)
    assert asked == ["red chair", "chair", "oak"]


def test_a_rare_filter_past_the_widening_rounds_is_still_exact(catalog, monkeypatch):
    monkeypatch.setattr(search, "MAX_FILTER_CANDIDATES", 40)  # the filter becomes a mask
    index = SearchIndex()
    for query in QUERIES:
        with session_scope(catalog) as session:
            expected = search.hybrid_search(session, query, _embedding(query), limit=10,
                                            state="succeeded", tag=RARE_TAG, method="exact")
            found = index.search(session, query, _embedding(query), limit=10,
                                 state="succeeded", tag=RARE_TAG)
        _assert_equal(found, expected, query)


def test_the_index_sees_entries_indexed_re_indexed_and_removed_after_it_was_built(catalog):
    index = SearchIndex()
    query = "purple teapot"
    vector = _embedding(query)
    with session_scope(catalog) as session:
        assert index.refresh(session) == ENTRIES
        before = index.search(session, query, vector, limit=3)
    writer = make_engine(catalog.url)  # another engine: nothing shared with the index
    try:
        with session_scope(writer) as session:
            _add(session, ENTRIES, "a purple teapot", ["new"], vector)
        with session_scope(catalog) as session:
            found = index.search(session, query, vector, limit=3)
            assert found[0].asset_id == _asset_id(ENTRIES) != before[0].asset_id
            assert found[0].keyword_score is not None
            _assert_equal(found, search.hybrid_search(
                session, query, vector, limit=3, method="exact"), "after")
        with session_scope(writer) as session:  # re-indexed: new text, opposite embedding
            search.index_prompt(session, _asset_id(ENTRIES), "a plain box", ["new"], -vector)
        with session_scope(catalog) as session:
            found = index.search(session, query, vector, limit=3)
            assert _asset_id(ENTRIES) not in [h.asset_id for h in found]
            _assert_equal(found, before, "re-indexed")
            (box,) = index.search(session, "plain box", None, limit=1)
            assert box.asset_id == _asset_id(ENTRIES)
        with session_scope(writer) as session:
            search.remove_from_index(session, before[0].asset_id)
        with session_scope(catalog) as session:
            assert index.refresh(session) == ENTRIES
            found = index.search(session, query, vector, limit=3)
            assert before[0].asset_id not in [h.asset_id for h in found]
            _assert_equal(found, search.hybrid_search(
                session, query, vector, limit=3, method="exact"), "after")
    finally:
        writer.dispose()


def test_a_state_change_after_the_index_was_built_moves_the_asset_between_filters(catalog):
    index = SearchIndex()
    query = "red wooden chair"
    vector = _embedding(query)
    with session_scope(catalog) as session:
        (first,) = index.search(session, query, vector, limit=1, state="succeeded")
        session.execute(sa.update(Asset).where(Asset.id == first.asset_id)
                        .values(state="failed"))
    with session_scope(catalog) as session:
        (second,) = index.search(session, query, vector, limit=1, state="succeeded")
        failed = index.search(session, query, vector, limit=50, state="failed")
    assert second.asset_id != first.asset_id
    assert first.asset_id in [h.asset_id for h in failed]


def test_an_index_refuses_a_second_database(catalog, tmp_path):
    from storage.db import ensure_database

    other = ensure_database(f"sqlite:///{tmp_path / 'other.db'}")
    index = SearchIndex()
    with session_scope(catalog) as session:
        index.refresh(session)
    with session_scope(other) as session, pytest.raises(ValueError, match="one database"):
        index.refresh(session)
    other.dispose()


def test_a_new_index_starts_from_the_saved_snapshot_and_reads_only_later_entries(
    catalog, tmp_path, monkeypatch
):
    monkeypatch.setattr(search_index, "SNAPSHOT_MIN_ENTRIES", 0)
    monkeypatch.setattr(search_index, "SNAPSHOT_MIN_NEW", 0)
    folder = tmp_path / "foundry.db.search-index"
    query = "purple teapot"
    vector = _embedding(query)
    with session_scope(catalog) as session:
        SearchIndex(folder).refresh(session)
    assert (folder / "current").is_file()
    with session_scope(catalog) as session:
        _add(session, ENTRIES, "a purple teapot", ["new"], vector)

    def no_full_read(*_args):  # noqa: ANN202
        raise AssertionError("the snapshot should have spared reading every entry")

    monkeypatch.setattr(search_index, "_load_all", no_full_read)
    with session_scope(catalog) as session:
        found = SearchIndex(folder).search(session, query, vector, limit=5)
        expected = search.hybrid_search(session, query, vector, limit=5, method="exact")
    assert found[0].asset_id == _asset_id(ENTRIES)
    _assert_equal(found, expected, "from the snapshot")


def test_only_an_sqlite_database_file_keeps_a_snapshot_beside_it(tmp_path):
    assert snapshot_folder(sa.make_url(f"sqlite:///{tmp_path / 'foundry.db'}")) == (
        tmp_path / "foundry.db.search-index")
    assert snapshot_folder(sa.make_url("sqlite://")) is None
    assert snapshot_folder(sa.make_url("postgresql+psycopg://u@h/db")) is None


def test_an_approximate_search_ranks_the_catalog_as_the_exact_hybrid_search(catalog):
    index = SearchIndex()
    for query, (state, tag), limit in itertools.product(QUERIES, FILTERS, (1, 7)):
        with session_scope(catalog) as session:
            expected = search.hybrid_search(session, query, _embedding(query), limit=limit,
                                            state=state, tag=tag, method="exact")
            found = index.search(session, query, _embedding(query), limit=limit, state=state,
                                 tag=tag, method="approximate")
        _assert_equal(found, expected, (query, state, tag, limit))


def test_the_int8_pass_and_its_re_rank_find_the_ten_best_of_20000_random_entries():
    rng = np.random.default_rng(11)
    unit = rng.normal(size=(20_000, EMBEDDING_DIM)).astype(np.float32)
    search.scale_rows_to_unit(unit)
    ids = np.array([f"{n:08d}" for n in range(len(unit))], dtype=object)
    embedded = np.arange(len(unit))
    quantised = search_index.QuantisedRows(unit)
    quantised.extend(len(unit))
    recalls = []
    for _ in range(40):
        query = search._unit(rng.normal(size=(1, EMBEDDING_DIM)).astype(np.float32))[0]
        exact = unit @ query
        approximate, reranked = search_index.semantic_scores(
            unit, embedded, ids, query, search_index.RERANK_MIN, quantised)
        assert len(reranked) == search_index.RERANK_MIN
        best = np.argsort(-approximate, kind="stable")[:10]
        recalls.append(len(set(best) & set(np.argsort(-exact, kind="stable")[:10])) / 10)
        np.testing.assert_allclose(approximate[best], exact[best], rtol=0, atol=1e-6)
    assert np.mean(recalls) >= 0.95


def _clustered_unit_rows(rng: np.random.Generator, count: int) -> np.ndarray:
    centres = rng.normal(size=(300, EMBEDDING_DIM)).astype(np.float32)
    rows = centres[rng.integers(0, 300, count)] + rng.normal(
        size=(count, EMBEDDING_DIM)).astype(np.float32)
    search.scale_rows_to_unit(rows)
    return rows


def test_a_sign_shortlisted_pass_finds_the_ten_best_of_20000_clustered_entries():
    rng = np.random.default_rng(12)
    unit = _clustered_unit_rows(rng, 20_000)
    ids = np.array([f"{n:08d}" for n in range(len(unit))], dtype=object)
    quantised = search_index.QuantisedRows(unit)
    quantised.extend(len(unit))
    for row in rng.choice(len(unit), 20, replace=False):
        # A query near an entry, as a short text lies near the prompts that share its words.
        noise = rng.normal(size=EMBEDDING_DIM) / np.sqrt(EMBEDDING_DIM)
        query = search._unit((unit[row] + 0.5 * noise).astype(np.float32)[None])[0]
        exact = unit @ query
        scores, reranked = search_index.semantic_scores(
            unit, np.arange(len(unit)), ids, query, search_index.RERANK_MIN, quantised,
            shortlist=search_index.SIGN_SHORTLIST)
        assert len(reranked) == search_index.RERANK_MIN
        best = reranked[np.argsort(-scores[reranked], kind="stable")[:10]]
        assert set(best) == set(np.argsort(-exact, kind="stable")[:10])
        np.testing.assert_allclose(scores[best], exact[best], rtol=0, atol=1e-6)


def test_an_index_shortlists_by_sign_only_where_its_own_rows_show_the_shortlist_holds():
    rng = np.random.default_rng(13)
    size = search_index.SIGN_SHORTLIST
    for rows, holds in ((_clustered_unit_rows(rng, 12_000), True),
                        (search._unit(rng.normal(size=(12_000, EMBEDDING_DIM)).astype(
                            np.float32)), False)):
        quantised = search_index.QuantisedRows(rows)
        quantised.extend(len(rows))
        assert SearchIndex(sign_shortlist=True)._sign_holds(quantised, len(rows), size) is holds
        assert SearchIndex()._sign_holds(quantised, len(rows), size) is False


def test_auto_searches_approximately_only_from_the_threshold_on(catalog, monkeypatch):
    query = "red chair"
    with session_scope(catalog) as session:
        small = SearchIndex()
        small.search(session, query, _embedding(query), method="auto")
        assert small._int8 is None  # no int8 copy below APPROXIMATE_MIN_ENTRIES
        monkeypatch.setattr(search_index, "APPROXIMATE_MIN_ENTRIES", ENTRIES)
        large = SearchIndex()
        large.search(session, query, _embedding(query), method="auto")
        assert large._int8 is not None and large._int8.count == ENTRIES


def test_an_entry_indexed_after_the_int8_copy_was_made_is_found_approximately(catalog):
    index = SearchIndex()
    query = "purple teapot"
    vector = _embedding(query)
    with session_scope(catalog) as session:
        index.search(session, query, vector, limit=3, method="approximate")
        _add(session, ENTRIES, "a box", ["new"], vector)
    with session_scope(catalog) as session:
        (first,) = index.search(session, query, vector, limit=1, method="approximate")
    assert first.asset_id == _asset_id(ENTRIES)
    assert first.semantic_score == pytest.approx(1.0, abs=1e-6)


def test_an_unknown_method_is_refused(catalog):
    with session_scope(catalog) as session, pytest.raises(ValueError, match="method"):
        SearchIndex().search(session, "mug", None, method="fast")


def test_a_profile_receives_the_wall_and_cpu_time_of_each_part(catalog):
    profile: dict[str, tuple[float, float]] = {}
    with session_scope(catalog) as session:
        SearchIndex().search(session, "red chair", _embedding("red chair"), state="succeeded",
                             profile=profile)
    assert set(profile) == {"fresh", "keyword", "semantic", "merge", "rows"}
    assert all(wall >= 0 and cpu >= 0 for wall, cpu in profile.values())


def test_words_read_ahead_spare_the_database_at_the_first_search_using_them(catalog):
    index = SearchIndex()
    with session_scope(catalog) as session:
        assert index.warm_words(session) == len(set(COLOURS + MATERIALS + NOUNS))
        expected = search.hybrid_search(session, "chair", None, limit=5)
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:  # noqa: ANN001
        statements.append(statement)

    sa.event.listen(catalog, "before_cursor_execute", record)
    try:
        with session_scope(catalog) as session:
            found = index.search(session, "chair", None, limit=5)
    finally:
        sa.event.remove(catalog, "before_cursor_execute", record)
    _assert_equal(found, expected, "chair")
    assert not [s for s in statements if "MATCH" in s or "to_tsquery" in s or "unnest" in s]
