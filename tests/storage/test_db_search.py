"""Prompt search (keyword, semantic, hybrid) on SQLite and on a real PostgreSQL server.

Embeddings are synthetic: random unit vectors, and vectors built to sit at known angles from a
query, so the expected ranking follows from geometry rather than from a model.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import sqlalchemy as sa

from storage import queries as q
from storage import search
from storage.db import make_engine, session_scope
from storage.schema import EMBEDDING_DIM, PG_FTS_COLUMN, PG_FTS_INDEX, Asset, PromptIndex

PROMPTS = {
    "chair": ("a red wooden chair", ["furniture"]),
    "chairs": ("two red chairs and a table", ["furniture", "set"]),
    "lamp": ("a brass desk lamp", ["lighting"]),
    "mug": ("a ceramic coffee mug", ["kitchen"]),
}


def _asset_id(name: str) -> str:
    return name.ljust(64, "0")


def _basis(seed: int = 0) -> np.ndarray:
    """Two orthonormal (D,) float32 directions."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(2, EMBEDDING_DIM))
    a /= np.linalg.norm(a)
    b -= (b @ a) * a
    b /= np.linalg.norm(b)
    return np.stack([a, b]).astype(np.float32)


def _at_angle(degrees: float) -> np.ndarray:
    """A unit vector at ``degrees`` from the query direction ``_basis()[0]``."""
    a, b = _basis()
    t = np.radians(degrees)
    return (np.cos(t) * a + np.sin(t) * b).astype(np.float32)


ANGLES = {"chair": 10.0, "chairs": 40.0, "lamp": 80.0, "mug": 150.0}


def _index_prompts(engine: sa.Engine) -> sa.Engine:
    """The four prompts indexed, with embeddings at ANGLES from the query; the mug succeeded."""
    with session_scope(engine) as session:
        for name, (text, tags) in PROMPTS.items():
            q.insert_asset_if_new(
                session,
                asset_id=_asset_id(name),
                kind="prompt",
                prompt=text,
                seed=0,
                generator="library",
                init="library",
                tags=tags,
            )
            search.index_prompt(session, _asset_id(name), text, tags, _at_angle(ANGLES[name]))
        q.claim_asset(session, _asset_id("mug"), "w", 60)
        q.release_asset(session, _asset_id("mug"), "w", "succeeded")
    return engine


@pytest.fixture
def indexed(db_engine):
    return _index_prompts(db_engine)


def _filled_postgres(new_postgres_database, fill) -> Iterator[sa.Engine]:
    """An engine on a new migrated PostgreSQL database filled by ``fill``; disposed after."""
    engine = fill(make_engine(new_postgres_database(migrated=True)))
    yield engine
    engine.dispose()


@pytest.fixture
def indexed_postgres(new_postgres_database):
    yield from _filled_postgres(new_postgres_database, _index_prompts)


def _names(hits: list[search.SearchHit]) -> list[str]:
    return [h.asset_id.rstrip("0") for h in hits]


# --- keyword ------------------------------------------------------------------------------------


def test_keyword_search_matches_stemmed_words(indexed):
    with session_scope(indexed) as session:
        assert set(_names(search.keyword_search(session, "chair"))) == {"chair", "chairs"}
        assert _names(search.keyword_search(session, "lamps")) == ["lamp"]


def test_keyword_search_ranks_entries_matching_more_words_first(indexed):
    with session_scope(indexed) as session:
        hits = search.keyword_search(session, "red table")
    assert _names(hits)[0] == "chairs"
    assert hits[0].score > hits[1].score
    assert all(h.keyword_score == h.score and h.semantic_score is None for h in hits)


def test_keyword_search_filters_by_state_and_tag(indexed):
    with session_scope(indexed) as session:
        assert _names(search.keyword_search(session, "chair mug", state="succeeded")) == ["mug"]
        assert _names(search.keyword_search(session, "red", tag="set")) == ["chairs"]
        assert search.keyword_search(session, "red", tag="kitchen") == []


def test_keyword_search_treats_operators_and_punctuation_as_plain_words(indexed):
    with session_scope(indexed) as session:
        assert search.keyword_search(session, '") OR NOT * mug:"') != []
        assert search.keyword_search(session, "!!! ???") == []


def test_keyword_hits_carry_state_text_and_output_keys(indexed):
    with session_scope(indexed) as session:
        run = q.record_stage_start(session, _asset_id("mug"), "export", "h")
        q.record_stage_success(session, run.id, {"asset.glb": "assets/mug/asset.glb"})
    with session_scope(indexed) as session:
        (hit,) = search.keyword_search(session, "coffee")
    assert (hit.state, hit.text) == ("succeeded", "a ceramic coffee mug")
    assert hit.output_keys == {"asset.glb": "assets/mug/asset.glb"}


def test_reindexing_replaces_the_searchable_text(indexed):
    with session_scope(indexed) as session:
        search.index_prompt(session, _asset_id("lamp"), "a floor lamp of steel", ["lighting"])
    with session_scope(indexed) as session:
        assert search.keyword_search(session, "brass") == []
        assert _names(search.keyword_search(session, "steel")) == ["lamp"]
        search.remove_from_index(session, _asset_id("lamp"))
    with session_scope(indexed) as session:
        assert search.keyword_search(session, "steel") == []


# --- semantic -----------------------------------------------------------------------------------


def test_semantic_search_ranks_by_angle_to_the_query(indexed):
    query = _basis()[0]
    with session_scope(indexed) as session:
        hits = search.semantic_search(session, query, limit=3)
    assert _names(hits) == ["chair", "chairs", "lamp"]
    expected = [np.cos(np.radians(ANGLES[n])) for n in _names(hits)]
    np.testing.assert_allclose([h.score for h in hits], expected, atol=1e-4)


def test_semantic_search_ignores_the_query_length(indexed):
    query = _basis()[0]
    with session_scope(indexed) as session:
        short = search.semantic_search(session, query, method="exact")
        long = search.semantic_search(session, 5.0 * query, method="exact")
    assert _names(short) == _names(long)
    np.testing.assert_allclose([h.score for h in short], [h.score for h in long], atol=1e-5)


def test_semantic_search_filters_by_state_and_tag(indexed):
    query = _basis()[0]
    with session_scope(indexed) as session:
        assert _names(search.semantic_search(session, query, state="succeeded")) == ["mug"]
        assert _names(search.semantic_search(session, query, tag="lighting")) == ["lamp"]


def test_index_prompt_rejects_an_embedding_of_the_wrong_shape(db_engine):
    with session_scope(db_engine) as session:
        with pytest.raises(ValueError, match="shape"):
            search.index_prompt(session, "x", "text", [], np.zeros(EMBEDDING_DIM + 1, np.float32))


def test_embeddings_round_trip_as_float32_bytes():
    vector = np.random.default_rng(1).normal(size=EMBEDDING_DIM).astype(np.float32)
    data = search.encode_embedding(vector)
    assert len(data) == 4 * EMBEDDING_DIM
    np.testing.assert_array_equal(search.decode_embedding(data), vector)


@pytest.mark.postgres
def test_pgvector_and_exact_search_agree(indexed_postgres):
    """On PostgreSQL the migration enabled pgvector; its ranking equals the exact one."""
    rng = np.random.default_rng(3)
    with session_scope(indexed_postgres) as session:
        assert search.has_pgvector(session)
        for _ in range(3):
            query = rng.normal(size=EMBEDDING_DIM).astype(np.float32)
            exact = search.semantic_search(session, query, method="exact")
            vector = search.semantic_search(session, query, method="pgvector")
            assert _names(vector) == _names(exact)
            np.testing.assert_allclose(
                [h.score for h in vector], [h.score for h in exact], atol=1e-5
            )


@pytest.mark.postgres
def test_postgres_keyword_search_can_use_the_full_text_index(indexed_postgres):
    """The query matches on the indexed tsvector column (else the index is dead weight)."""
    statements: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany) -> None:
        if PG_FTS_COLUMN in statement:
            statements.append((statement, parameters))

    sa.event.listen(indexed_postgres, "before_cursor_execute", capture)
    with session_scope(indexed_postgres) as session:
        search.keyword_search(session, "red chair")
    sa.event.remove(indexed_postgres, "before_cursor_execute", capture)
    ((statement, parameters),) = statements
    with indexed_postgres.connect() as connection:
        connection.exec_driver_sql("SET enable_seqscan = off")
        plan = connection.exec_driver_sql("EXPLAIN " + statement, parameters).scalars().all()
    assert any(PG_FTS_INDEX in line for line in plan), plan


# --- hybrid -------------------------------------------------------------------------------------


def test_hybrid_search_combines_keyword_and_semantic_evidence(indexed):
    """'mug' matches only the mug's words but points at the chair: the weight decides."""
    query = _basis()[0]
    with session_scope(indexed) as session:
        words = search.hybrid_search(session, "mug", query, keyword_weight=0.9)
        meaning = search.hybrid_search(session, "mug", query, keyword_weight=0.1)
    assert _names(words)[0] == "mug"
    assert _names(meaning)[0] == "chair"
    mug = next(h for h in words if h.asset_id == _asset_id("mug"))
    assert mug.keyword_score is not None and mug.semantic_score is not None
    assert mug.semantic_score == pytest.approx(np.cos(np.radians(150.0)), abs=1e-4)


def test_hybrid_scores_follow_the_stated_formula(indexed):
    query = _basis()[0]
    with session_scope(indexed) as session:
        hits = search.hybrid_search(session, "red chair", query, keyword_weight=0.3)
    best_keyword = max(h.keyword_score or 0.0 for h in hits)
    for hit in hits:
        keyword = (hit.keyword_score or 0.0) / best_keyword
        expected = 0.3 * keyword + 0.7 * max(hit.semantic_score, 0.0)
        assert hit.score == pytest.approx(expected, abs=1e-6)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_hybrid_search_without_an_embedding_is_keyword_search(indexed):
    with session_scope(indexed) as session:
        hybrid = search.hybrid_search(session, "red", None)
        keyword = search.keyword_search(session, "red")
    assert _names(hybrid) == _names(keyword)


# --- cached exact search ------------------------------------------------------------------------

MANY = 200
"""Entries of the cache tests: enough that top-k selection and filter widening matter."""
RARE_TAG = "rare"


def _index_many(engine: sa.Engine) -> sa.Engine:
    """MANY entries with random embeddings; every 3rd succeeded, every 50th tagged RARE_TAG."""
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(MANY, EMBEDDING_DIM)).astype(np.float32)
    with session_scope(engine) as session:
        for i, vector in enumerate(vectors):
            asset_id = f"m{i:04d}".ljust(64, "0")
            tags = [RARE_TAG] if i % 50 == 0 else ["common"]
            q.insert_asset_if_new(
                session,
                asset_id=asset_id,
                kind="prompt",
                prompt=f"thing {i}",
                seed=i,
                generator="library",
                init="library",
                tags=tags,
            )
            search.index_prompt(session, asset_id, f"thing {i}", tags, vector)
            if i % 3 == 0:
                q.claim_asset(session, asset_id, "w", 60)
                q.release_asset(session, asset_id, "w", "succeeded")
    search.clear_embedding_cache()
    return engine


@pytest.fixture
def many(db_engine):
    return _index_many(db_engine)


@pytest.fixture
def many_postgres(new_postgres_database):
    yield from _filled_postgres(new_postgres_database, _index_many)


def _plain_ranking(session, query, state=None, tag=None) -> list[tuple[str, float]]:
    """The uncached computation: every stored embedding decoded, filtered, scored, sorted."""
    rows = session.execute(
        sa.select(PromptIndex.asset_id, PromptIndex.embedding, PromptIndex.tags, Asset.state)
        .join(Asset, Asset.id == PromptIndex.asset_id)
        .where(PromptIndex.embedding.is_not(None))
    ).all()
    rows = [
        r for r in rows if (state is None or r.state == state) and (tag is None or tag in r.tags)
    ]
    matrix = np.stack([search.decode_embedding(r.embedding) for r in rows])
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    scores = matrix @ (query / np.linalg.norm(query))
    return sorted(
        ((r.asset_id, float(s)) for r, s in zip(rows, scores, strict=True)),
        key=lambda pair: (-pair[1], pair[0]),
    )


FILTER_CASES = [(None, None), ("succeeded", None), (None, RARE_TAG), ("succeeded", RARE_TAG)]


def test_cached_exact_search_returns_the_plain_ranking(many, monkeypatch):
    """Unfiltered, a common filter, rare filters; widening the candidates or masking by id."""
    rng = np.random.default_rng(11)
    for rounds in (3, 1):
        monkeypatch.setattr(search, "FILTER_ROUNDS_BEFORE_MASK", rounds)
        for state, tag in FILTER_CASES:
            query = rng.normal(size=EMBEDDING_DIM).astype(np.float32)
            with session_scope(many) as session:
                hits = search.semantic_search(
                    session, query, limit=12, state=state, tag=tag, method="exact"
                )
                expected = _plain_ranking(session, query, state, tag)[:12]
            case = (rounds, state, tag)
            assert [h.asset_id for h in hits] == [a for a, _ in expected], case
            np.testing.assert_allclose(
                [h.score for h in hits], [s for _, s in expected], atol=1e-6, err_msg=str(case)
            )


def test_the_embedding_matrix_is_read_once_while_the_index_is_unchanged(many):
    with session_scope(many) as session:
        first = search.embedding_matrix(session)
    with session_scope(many) as session:
        assert search.embedding_matrix(session) is first
    assert first.unit.shape == (MANY, EMBEDDING_DIM)


def test_a_prompt_indexed_by_another_connection_is_found_right_after_its_commit(many):
    query = np.random.default_rng(5).normal(size=EMBEDDING_DIM).astype(np.float32)
    with session_scope(many) as session:
        before = search.semantic_search(session, query, limit=1, method="exact")
    writer = make_engine(many.url)  # another engine: nothing shared with the reader's cache
    try:
        with session_scope(writer) as session:
            q.insert_asset_if_new(
                session,
                asset_id="new".ljust(64, "0"),
                kind="prompt",
                prompt="new",
                seed=1,
                generator="library",
                init="library",
            )
            search.index_prompt(session, "new".ljust(64, "0"), "new", [], query)
        with session_scope(many) as session:
            (hit,) = search.semantic_search(session, query, limit=1, method="exact")
        assert hit.asset_id == "new".ljust(64, "0") != before[0].asset_id
        assert hit.score == pytest.approx(1.0, abs=1e-6)
        with session_scope(writer) as session:
            search.index_prompt(session, "new".ljust(64, "0"), "new", [], -query)
        with session_scope(many) as session:
            (hit,) = search.semantic_search(session, query, limit=1, method="exact")
        assert hit.asset_id == before[0].asset_id
        with session_scope(many) as session:  # the same connection writes, then reads
            search.index_prompt(session, "new".ljust(64, "0"), "new", [], query)
            (hit,) = search.semantic_search(session, query, limit=1, method="exact")
            assert hit.asset_id == "new".ljust(64, "0")
            search.index_prompt(session, "new".ljust(64, "0"), "new", [], -query)
        with session_scope(writer) as session:
            search.remove_from_index(session, before[0].asset_id)
        with session_scope(many) as session:
            (hit,) = search.semantic_search(session, query, limit=1, method="exact")
        assert hit.asset_id != before[0].asset_id
    finally:
        writer.dispose()


def test_hybrid_search_scores_keyword_hits_with_the_cached_cosines(many):
    query = np.random.default_rng(9).normal(size=EMBEDDING_DIM).astype(np.float32)
    with session_scope(many) as session:
        plain = dict(_plain_ranking(session, query))
        hits = search.hybrid_search(session, "thing 7", query, limit=20)
    assert hits
    for hit in hits:
        assert hit.semantic_score == pytest.approx(plain[hit.asset_id], abs=1e-6)


def test_keyword_search_ranking_equals_the_joined_query_ranking(many, monkeypatch):
    """Both databases rank first and join only the best; ties ("thing 17" ~ "thing 71")."""
    for state, tag in FILTER_CASES:
        with session_scope(many) as session:
            fast = search.keyword_search(session, "thing 7", limit=12, state=state, tag=tag)
            monkeypatch.setattr(search, "MAX_FILTER_CANDIDATES", 0)  # forces the joined query
            joined = search.keyword_search(session, "thing 7", limit=12, state=state, tag=tag)
            monkeypatch.undo()
        assert fast, (state, tag)
        assert [(h.asset_id, h.score) for h in fast] == [(h.asset_id, h.score) for h in joined]


@pytest.mark.postgres
def test_pgvector_search_returns_more_hits_than_the_default_hnsw_candidate_list(many_postgres):
    """HNSW yields at most hnsw.ef_search (40) rows unless the query raises it."""
    query = np.random.default_rng(13).normal(size=EMBEDDING_DIM).astype(np.float32)
    with session_scope(many_postgres) as session:
        hits = search.semantic_search(session, query, limit=60, method="pgvector")
    assert len(hits) == 60


@pytest.mark.postgres
def test_auto_search_with_a_rare_filter_on_pgvector_equals_the_exact_ranking(many_postgres):
    """A filter that HNSW applies after its scan must not hide matching entries."""
    query = np.random.default_rng(17).normal(size=EMBEDDING_DIM).astype(np.float32)
    with session_scope(many_postgres) as session:
        # A small table: without these the planner sorts all rows instead of scanning HNSW.
        session.execute(sa.text("SET LOCAL enable_seqscan = off"))
        session.execute(sa.text("SET LOCAL enable_sort = off"))
        expected = [a for a, _ in _plain_ranking(session, query, "succeeded", RARE_TAG)]
        semantic = search.semantic_search(session, query, limit=5, state="succeeded", tag=RARE_TAG)
        hybrid = search.hybrid_search(
            session, "nothing matches", query, limit=5, state="succeeded", tag=RARE_TAG
        )
    assert 0 < len(expected) < 5
    assert [h.asset_id for h in semantic] == expected
    assert [h.asset_id for h in hybrid] == expected
