"""Prompt search over produced assets: keyword, semantic and hybrid ranking.

Keyword search uses the database's own full-text engine (SQLite FTS5 with bm25, PostgreSQL
``ts_rank`` over a stored ``to_tsvector('english', text)`` column); both are created by the
migrations. Semantic
search compares ``(384,)`` float32 prompt embeddings by cosine similarity: with pgvector's ``<=>``
operator when the server has the extension, otherwise exactly, in numpy, over the stored vectors.
Like :mod:`storage.queries`, every function takes the session first and never commits.

Exact search keeps a per-process cache, per database URL, of the asset ids and the ``(N, 384)``
float32 unit embedding matrix. Every query first reads the stamp ``(count(*), max(updated_at))``
of ``prompt_index`` (two look-ups in the ``updated_at`` index) and reloads the matrix when the
stamp changed, so an entry indexed and committed by any process is visible to the next query.
A connection rereads the stamp only when a cheap signal says the index may have changed
(SQLite's ``PRAGMA data_version``, PostgreSQL's trigger-kept ``prompt_index_version``).
Known limit: an update of an existing entry whose transaction took its ``updated_at`` before
another writer's later, already committed change leaves the stamp unchanged; the cache then
shows the old embedding of that entry until the next change of the index. New and deleted entries
always change the count.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from storage import queries
from storage.queries import dialect_insert
from storage.schema import (
    EMBEDDING_DIM,
    PG_FTS_COLUMN,
    PG_VECTOR_COLUMN,
    PG_VERSION_TABLE,
    SQLITE_FTS_TABLE,
    Asset,
    PromptIndex,
    utcnow,
)

_WORD = re.compile(r"\w+", re.UNICODE)
_ENGLISH = sa.literal_column("'english'")  # a constant regconfig: to_tsquery folds at plan time


@dataclass(frozen=True)
class SearchHit:
    """One search result; higher scores are better."""

    asset_id: str
    """Identity hash of the asset."""
    score: float
    """The ranking score of the search that produced the hit."""
    keyword_score: float | None
    """bm25 (SQLite, sign flipped) or ts_rank (PostgreSQL); None when the keywords missed."""
    semantic_score: float | None
    """Cosine similarity in [-1, 1] of the prompt embeddings; None without an embedding."""
    text: str
    """The indexed prompt text."""
    state: str
    """The asset's state."""
    output_keys: dict[str, Any] = field(default_factory=dict)
    """Artefact name -> object key of the asset."""
    references: list[str] = field(default_factory=list)
    """The manifest's image/bundle references of the asset (filled by :func:`with_details`)."""
    library_match_weak: bool | None = None
    """Whether the library mesh it was built from matched weakly; None when not retrieved
    (filled by :func:`with_details`)."""


# --- embeddings -------------------------------------------------------------------------------


def encode_embedding(embedding: np.ndarray) -> bytes:
    """``(EMBEDDING_DIM,)`` float array -> little-endian float32 bytes (the stored form)."""
    vector = np.asarray(embedding, dtype=np.float32)
    if vector.shape != (EMBEDDING_DIM,):
        raise ValueError(f"embedding must have shape ({EMBEDDING_DIM},), got {vector.shape}")
    if not np.all(np.isfinite(vector)):
        raise ValueError("embedding contains NaN or infinite values")
    return vector.astype("<f4").tobytes()


def decode_embedding(data: bytes) -> np.ndarray:
    """Stored bytes -> ``(EMBEDDING_DIM,)`` float32 array."""
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; zero rows stay zero (their cosine is 0)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def has_pgvector(session: Session) -> bool:
    """Whether this database has the pgvector column (PostgreSQL with the extension)."""
    if session.get_bind().dialect.name != "postgresql":
        return False
    info = session.connection().info  # lives as long as the pooled DBAPI connection
    if "foundry3d_pgvector" not in info:
        info["foundry3d_pgvector"] = bool(
            session.scalar(
                sa.text(
                    "SELECT count(*) FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND table_name = 'prompt_index' "
                    "AND column_name = :column"
                ),
                {"column": PG_VECTOR_COLUMN},
            )
        )
    return info["foundry3d_pgvector"]


def _vector_literal(embedding: np.ndarray) -> str:
    return "[" + ",".join(repr(float(x)) for x in np.asarray(embedding, np.float32)) + "]"


# --- indexing ---------------------------------------------------------------------------------


def index_prompt(
    session: Session,
    asset_id: str,
    text: str,
    tags: list[str] | None = None,
    embedding: np.ndarray | None = None,
) -> None:
    """Insert or replace the search entry of an asset.

    ``embedding`` : ``(EMBEDDING_DIM,)`` float32 prompt embedding (all-MiniLM-L6-v2), or None
    for keyword search only. The full-text structures follow through triggers (SQLite) or the
    expression index (PostgreSQL); the pgvector copy is written here when the column exists.
    """
    data = encode_embedding(embedding) if embedding is not None else None
    values = {
        "asset_id": asset_id,
        "text": text,
        "tags": list(tags or []),
        "embedding": data,
        "updated_at": utcnow(),
    }
    statement = dialect_insert(session, PromptIndex.__table__).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=["asset_id"],
        set_={k: statement.excluded[k] for k in ("text", "tags", "embedding", "updated_at")},
    )
    session.execute(statement)
    if has_pgvector(session):
        session.execute(
            sa.text(
                f"UPDATE prompt_index SET {PG_VECTOR_COLUMN} = CAST(:vector AS vector) "
                "WHERE asset_id = :asset_id"
            ),
            {
                "vector": _vector_literal(embedding) if embedding is not None else None,
                "asset_id": asset_id,
            },
        )


def remove_from_index(session: Session, asset_id: str) -> None:
    """Delete the search entry of an asset (nothing happens if it has none)."""
    session.execute(sa.delete(PromptIndex).where(PromptIndex.asset_id == asset_id))


# --- filters ----------------------------------------------------------------------------------


def _filters(session: Session, state: str | None, tag: str | None) -> list[sa.ColumnElement]:
    clauses: list[sa.ColumnElement] = []
    if state is not None:
        clauses.append(Asset.state == state)
    if tag is not None:
        if session.get_bind().dialect.name == "postgresql":
            clauses.append(sa.cast(PromptIndex.tags, postgresql.JSONB).contains([tag]))
        else:
            each = sa.func.json_each(PromptIndex.tags).table_valued("value")
            clauses.append(
                sa.select(sa.literal(1)).select_from(each).where(each.c.value == tag).exists()
            )
    return clauses


def _hit_columns() -> tuple:
    return (PromptIndex.asset_id, PromptIndex.text, Asset.state, Asset.output_keys)


# --- keyword ----------------------------------------------------------------------------------


def query_words(query: str) -> list[str]:
    """The words of a free-text query (letters, digits, underscore); operators are dropped."""
    return _WORD.findall(query)


def keyword_search(
    session: Session,
    query: str,
    *,
    limit: int = 10,
    state: str | None = None,
    tag: str | None = None,
) -> list[SearchHit]:
    """Assets whose prompt contains any word of ``query`` (stemmed), best match first.

    The query is reduced to its words, so user input can never be a syntax error; an entry
    matching more (and rarer) words ranks higher, ties go to the smaller asset id. ``score`` is
    the keyword score.
    """
    words = query_words(query)
    if not words or limit <= 0:
        return []
    filters = _filters(session, state, tag)
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        rows = _keyword_rows_sqlite(session, words, limit, filters)
    elif dialect == "postgresql":
        rows = _keyword_rows_postgres(session, words, limit, filters)
    else:
        raise NotImplementedError(f"keyword search is not implemented for {dialect!r}")
    return [
        SearchHit(
            asset_id=row.asset_id,
            score=float(row.keyword_score),
            keyword_score=float(row.keyword_score),
            semantic_score=None,
            text=row.text,
            state=row.state,
            output_keys=row.output_keys or {},
        )
        for row in rows
    ]


def _keyword_rows_sqlite(
    session: Session, words: list[str], limit: int, filters: list[sa.ColumnElement]
) -> list:
    """The best ``limit`` rows by ``(bm25, asset_id)``, ranking in FTS5 alone first.

    Only the best candidates are joined with their assets (every entry tied with the last
    candidate is a candidate too), widening until ``limit`` pass the filters; past
    :data:`MAX_FILTER_CANDIDATES` candidates the filters go first in one joined query.
    """
    match = " OR ".join('"' + w + '"' for w in words)
    ranked = session.execute(
        sa.text(
            f"SELECT rowid, bm25({SQLITE_FTS_TABLE}) FROM {SQLITE_FTS_TABLE} "
            f"WHERE {SQLITE_FTS_TABLE} MATCH :match"
        ),
        {"match": match},
    ).all()
    if not ranked:
        return []
    rowids = np.array([r[0] for r in ranked], dtype=np.int64)
    ranks = np.array([r[1] for r in ranked], dtype=np.float64)  # bm25: lower is better
    rowid = sa.literal_column("prompt_index.rowid", sa.Integer)
    k = limit if not filters else 2 * limit + 16
    while True:
        if k < len(ranks):
            candidates = np.flatnonzero(ranks <= np.partition(ranks, k - 1)[k - 1])
        else:
            candidates = np.arange(len(ranks))
        if len(candidates) > MAX_FILTER_CANDIDATES:
            break
        rank_of = dict(zip(rowids[candidates].tolist(), ranks[candidates].tolist(), strict=True))
        found = session.execute(
            sa.select(*_hit_columns(), rowid.label("fts_rowid"))
            .join(Asset, Asset.id == PromptIndex.asset_id)
            .where(rowid.in_(list(rank_of)), *filters)
        ).all()
        if len(found) >= limit or len(candidates) == len(ranks):
            found.sort(key=lambda row: (rank_of[row.fts_rowid], row.asset_id))
            return [
                _KeywordRow(r.asset_id, r.text, r.state, r.output_keys, -rank_of[r.fts_rowid])
                for r in found[:limit]
            ]
        k = max(2 * k, int(2 * limit * len(candidates) / max(len(found), 1)))
    fts = sa.table(SQLITE_FTS_TABLE, sa.column("rowid"))
    rank = sa.func.bm25(sa.literal_column(SQLITE_FTS_TABLE))
    return session.execute(
        sa.select(*_hit_columns(), (-rank).label("keyword_score"))
        .select_from(fts)
        .join(PromptIndex, sa.literal_column("prompt_index.rowid") == fts.c.rowid)
        .join(Asset, Asset.id == PromptIndex.asset_id)
        .where(sa.literal_column(SQLITE_FTS_TABLE).op("MATCH")(match), *filters)
        .order_by(rank, PromptIndex.asset_id)
        .limit(limit)
    ).all()


def _keyword_rows_postgres(
    session: Session, words: list[str], limit: int, filters: list[sa.ColumnElement]
) -> list:
    """The best ``limit`` rows by ``(ts_rank desc, asset_id)`` over the stored tsvector.

    Ranks in prompt_index alone and joins only the best ``k`` with their assets, widening ``k``
    until ``limit`` pass the filters (a total order, so the result is exact); joining every
    match first costs twice as much for a common word. A filter that rejects the first
    candidates wholesale, or needs more than :data:`MAX_FILTER_CANDIDATES`, goes first instead.
    """
    tsv = sa.literal_column(f"prompt_index.{PG_FTS_COLUMN}")
    tsquery = sa.func.to_tsquery(_ENGLISH, " | ".join(words))
    matches = tsv.op("@@")(tsquery)
    rank = sa.func.ts_rank(tsv, tsquery)
    k = limit if not filters else 2 * limit + 16
    while k <= MAX_FILTER_CANDIDATES:
        best = (
            sa.select(
                PromptIndex.asset_id,
                rank.label("rank"),
                sa.func.count().over().label("matches"),
            )
            .where(matches)
            .order_by(rank.desc(), PromptIndex.asset_id)
            .limit(k)
            .subquery()
        )
        rows = session.execute(
            sa.select(*_hit_columns(), best.c.rank.label("keyword_score"), best.c.matches)
            .join(best, best.c.asset_id == PromptIndex.asset_id)
            .join(Asset, Asset.id == PromptIndex.asset_id)
            .where(*filters)
            .order_by(best.c.rank.desc(), PromptIndex.asset_id)
        ).all()
        if not rows:
            break
        if len(rows) >= limit or rows[0].matches <= k:
            return rows[:limit]
        k = max(2 * k, int(2 * limit * k / len(rows)))
    return session.execute(
        sa.select(*_hit_columns(), rank.label("keyword_score"))
        .join(Asset, Asset.id == PromptIndex.asset_id)
        .where(matches, *filters)
        .order_by(rank.desc(), PromptIndex.asset_id)
        .limit(limit)
    ).all()


@dataclass(frozen=True)
class _KeywordRow:
    asset_id: str
    text: str
    state: str
    output_keys: dict[str, Any] | None
    keyword_score: float


# --- semantic ---------------------------------------------------------------------------------


def semantic_search(
    session: Session,
    embedding: np.ndarray,
    *,
    limit: int = 10,
    state: str | None = None,
    tag: str | None = None,
    method: Literal["auto", "exact", "pgvector"] = "auto",
) -> list[SearchHit]:
    """Assets whose prompt embedding is closest (cosine) to ``embedding``, best first.

    ``embedding`` : ``(EMBEDDING_DIM,)`` float32 query embedding. ``score`` is the cosine
    similarity. ``method="auto"`` uses pgvector when the database has it and exact numpy search
    otherwise. pgvector's HNSW index is approximate and applies filters after its candidate
    scan, so a selective ``state``/``tag`` filter can leave it with fewer than ``limit`` hits;
    ``auto`` then answers with exact search instead, ``method="pgvector"`` returns what it got.
    """
    query = np.asarray(embedding, dtype=np.float32)
    encode_embedding(query)  # validates shape and finiteness
    if _use_pgvector(session, method):
        hits = _semantic_pgvector(session, query, limit, state, tag)
        if method == "pgvector" or not _filtered_short(hits, limit, state, tag):
            return hits
    return _semantic_exact(session, query, limit, state, tag)


def _use_pgvector(session: Session, method: str) -> bool:
    if method == "auto":
        return has_pgvector(session)
    if method == "pgvector" and not has_pgvector(session):
        raise RuntimeError("this database has no pgvector column; use method='exact'")
    return method == "pgvector"


def _filtered_short(hits: list, limit: int, state: str | None, tag: str | None) -> bool:
    """Whether a filtered HNSW search came back short (its filter ran after the index scan)."""
    return (state is not None or tag is not None) and len(hits) < limit


def _semantic_exact(
    session: Session, query: np.ndarray, limit: int, state: str | None, tag: str | None
) -> list[SearchHit]:
    matrix = embedding_matrix(session)
    scores = matrix.scores(query)
    return _ranked_hits(session, matrix, scores, limit, state, tag)


# --- cached embedding matrix ------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddingMatrix:
    """The stored prompt embeddings of one database, as read at one freshness stamp."""

    stamp: tuple
    """``(count(*), max(updated_at))`` of ``prompt_index`` when the rows were read."""
    ids: np.ndarray
    """``(N,)`` str asset ids of the entries that have an embedding, in no particular order."""
    unit: np.ndarray
    """``(N, EMBEDDING_DIM)`` float32 embeddings scaled to unit length (zero rows stay zero)."""
    position: dict[str, int]
    """Asset id -> row of ``ids`` and ``unit``."""

    def scores(self, query: np.ndarray) -> np.ndarray:
        """``(N,)`` float32 cosine similarities of every row to a ``(EMBEDDING_DIM,)`` query."""
        return self.unit @ _unit(np.asarray(query, dtype=np.float32)[None])[0]


EMBEDDING_CACHE_SIZE = 4
"""Databases whose embedding matrix a process keeps (least recently used ones are dropped)."""
_cache: OrderedDict[str, EmbeddingMatrix] = OrderedDict()
_cache_lock = threading.Lock()


def clear_embedding_cache() -> None:
    """Forget every cached embedding matrix of this process (the next query reloads)."""
    with _cache_lock:
        _cache.clear()


def _cache_key(session: Session) -> str | None:
    """The database URL, or None for an in-memory SQLite database (one per connection)."""
    url = session.get_bind().engine.url
    if url.get_backend_name() == "sqlite" and (
        url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"
    ):
        return None
    return url.render_as_string(hide_password=False)


def _freshness_stamp(session: Session) -> tuple:
    """``(count(*), max(updated_at))`` of prompt_index as this session sees it.

    Counting 100,000 index entries costs milliseconds, so a connection reuses the stamp it read
    last while a cheap signal says the index cannot have changed since. On SQLite: no commit by
    others (``PRAGMA data_version``) and no change by itself (``total_changes``). On PostgreSQL:
    the same value of the trigger-kept version counter (:func:`_postgres_stamp`).
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return _postgres_stamp(session)
    if dialect != "sqlite":
        return _read_stamp(session)
    connection = session.connection()
    driver = connection.connection.driver_connection
    version = (connection.exec_driver_sql("PRAGMA data_version").scalar(), driver.total_changes)
    remembered = connection.info.get("foundry3d_search_stamp")
    if remembered is not None and remembered[0] == version:
        return remembered[1]
    stamp = _read_stamp(session)
    connection.info["foundry3d_search_stamp"] = (version, stamp)
    return stamp


def _postgres_stamp(session: Session) -> tuple:
    """The stamp on PostgreSQL, by one primary-key read of ``prompt_index_version`` while the
    counter holds the value this connection last read the stamp at.

    Every statement that writes prompt_index first sets the counter to a new sequence value in
    its own transaction (migration 0010), and a sequence never repeats a value, so an unchanged
    value means the rows this connection sees are those it counted. The value and a new stamp
    are read in one statement (one snapshot). A database without the counter (not migrated to
    0010) is counted on every call.
    """
    connection = session.connection()
    info = connection.info  # lives as long as the pooled DBAPI connection
    if "foundry3d_version_table" not in info:
        info["foundry3d_version_table"] = (
            connection.exec_driver_sql(f"SELECT to_regclass('{PG_VERSION_TABLE}')").scalar()
            is not None
        )
    if not info["foundry3d_version_table"]:
        return _read_stamp(session)
    version = connection.exec_driver_sql(
        f"SELECT version FROM {PG_VERSION_TABLE} WHERE id = 1"
    ).scalar()
    remembered = info.get("foundry3d_search_stamp")
    if remembered is not None and remembered[0] == version:
        return remembered[1]
    counter = sa.table(PG_VERSION_TABLE, sa.column("id"), sa.column("version"))
    row = session.execute(
        sa.select(
            counter.c.version,
            sa.select(sa.func.count()).select_from(PromptIndex).scalar_subquery(),
            sa.select(sa.func.max(PromptIndex.updated_at)).scalar_subquery(),
        ).where(counter.c.id == 1)
    ).one()
    stamp = (int(row[1]), row[2])
    info["foundry3d_search_stamp"] = (row[0], stamp)
    return stamp


def _read_stamp(session: Session) -> tuple:
    # count(*) and max() over all rows (not only those with an embedding) so that both come
    # from the updated_at index; any insert, delete or re-index changes the pair.
    # Two scalar subqueries: SQLite answers max() from the index only when it is alone.
    row = session.execute(
        sa.select(
            sa.select(sa.func.count()).select_from(PromptIndex).scalar_subquery(),
            sa.select(sa.func.max(PromptIndex.updated_at)).scalar_subquery(),
        )
    ).one()
    return (int(row[0]), row[1])


def _load_matrix(session: Session, stamp: tuple) -> EmbeddingMatrix:
    # The driver's rows directly: 100,000 ORM rows would cost more than the data itself.
    rows = (
        session.connection()
        .exec_driver_sql("SELECT asset_id, embedding FROM prompt_index WHERE embedding IS NOT NULL")
        .all()
    )
    width = 4 * EMBEDDING_DIM
    # One buffer for the whole (N, D) matrix, filled row by row and scaled in place: each
    # whole-matrix temporary (~150 MB at 100,000 rows) costs more in page faults than the maths.
    buffer = bytearray(len(rows) * width)
    view = memoryview(buffer)
    for i, row in enumerate(rows):
        if len(row[1]) != width:
            raise ValueError(f"prompt_index holds an embedding that is not {width} bytes long")
        view[i * width : (i + 1) * width] = row[1]
    unit = np.frombuffer(buffer, dtype="<f4").reshape(len(rows), EMBEDDING_DIM)
    if unit.dtype != np.float32:  # big-endian machine: native order for BLAS
        unit = unit.astype(np.float32)
    scale_rows_to_unit(unit)
    unit.flags.writeable = False  # shared by every thread of the process
    ids = np.array([row[0] for row in rows], dtype=str)
    return EmbeddingMatrix(
        stamp=stamp,
        ids=ids,
        unit=unit,
        position={asset_id: i for i, asset_id in enumerate(ids.tolist())},
    )


def scale_rows_to_unit(rows: np.ndarray) -> None:
    """Scale the rows of a float32 ``(N, EMBEDDING_DIM)`` array to unit length, in place; zero
    rows stay zero. Every stored embedding is scaled by this one function, so that any two
    copies of an entry (this module's cache, :mod:`storage.search_index`) score alike to the bit.
    """
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    rows /= np.where(norms > 0, norms, 1.0)[:, None]


def embedding_matrix(session: Session) -> EmbeddingMatrix:
    """The embeddings visible to ``session``, from this process's cache when still fresh.

    One stamp query per call; a changed stamp (or an uncached database) reads every embedding
    (about 1.5 kB per entry). The rows are read after the stamp, so a matrix is never older than
    its stamp; a newer one is simply reloaded by the next call.
    """
    stamp = _freshness_stamp(session)
    key = _cache_key(session)
    if key is not None:
        with _cache_lock:
            cached = _cache.get(key)
            if cached is not None and cached.stamp == stamp:
                _cache.move_to_end(key)
                return cached
    matrix = _load_matrix(session, stamp)
    if key is not None:
        with _cache_lock:
            _cache[key] = matrix
            _cache.move_to_end(key)
            while len(_cache) > EMBEDDING_CACHE_SIZE:
                _cache.popitem(last=False)
    return matrix


def _top_positions(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` best scores, best first; ties go to the smaller asset id."""
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
        # Every row tied with the k-th score competes on its id, as in a full sort.
        candidates = np.flatnonzero(scores >= scores[part].min())
    else:
        candidates = np.arange(len(scores))
    order = np.lexsort((ids[candidates], -scores[candidates]))
    return candidates[order][:k]


FILTER_ROUNDS_BEFORE_MASK = 3
"""Widenings of the best-first candidate list tried before a filter is applied as an id mask."""
MAX_FILTER_CANDIDATES = 4096
"""Largest candidate list whose filters are checked by id; beyond it the filter becomes a mask."""


def _ranked_hits(
    session: Session,
    matrix: EmbeddingMatrix,
    scores: np.ndarray,
    limit: int,
    state: str | None,
    tag: str | None,
) -> list[SearchHit]:
    """The ``limit`` best-scoring entries that pass the filters, as hits, best first."""
    positions = _ranked_positions(session, matrix, scores, limit, _filters(session, state, tag))
    ids = matrix.ids[positions].tolist() if positions else []
    rows = _hit_rows(session, ids, [])
    return _hits([i for i in positions if matrix.ids[i] in rows], matrix, scores, rows)


def _ranked_positions(
    session: Session,
    matrix: EmbeddingMatrix,
    scores: np.ndarray,
    limit: int,
    filters: list[sa.ColumnElement],
) -> list[int]:
    """Rows of the ``limit`` best-scoring entries that pass ``filters``, best first.

    Filters are checked in SQL on the best candidates only (one round for a common filter such
    as ``state='succeeded'``), widening the list as the observed pass rate asks; a rare filter
    falls back to fetching the ids that pass and masking the scores. Either way the result is
    the exact filtered ranking.
    """
    if limit <= 0 or len(scores) == 0:
        return []
    if not filters:
        return _top_positions(scores, matrix.ids, limit).tolist()
    k = 2 * limit + 16
    for _ in range(FILTER_ROUNDS_BEFORE_MASK):
        top = _top_positions(scores, matrix.ids, k)
        allowed = set(
            session.scalars(
                sa.select(PromptIndex.asset_id)
                .join(Asset, Asset.id == PromptIndex.asset_id)
                .where(PromptIndex.asset_id.in_(matrix.ids[top].tolist()), *filters)
            )
        )
        passed = [i for i in top.tolist() if matrix.ids[i] in allowed]
        if len(passed) >= limit or k >= len(scores):
            return passed[:limit]
        # Enough candidates for twice the missing hits at the pass rate seen so far.
        k = min(max(2 * k, int(2 * limit * k / max(len(passed), 1))), len(scores))
        if k > MAX_FILTER_CANDIDATES:
            break
    allowed = session.scalars(
        sa.select(PromptIndex.asset_id)
        .join(Asset, Asset.id == PromptIndex.asset_id)
        .where(PromptIndex.embedding.is_not(None), *filters)
    ).all()
    positions = np.array(
        [matrix.position[a] for a in allowed if a in matrix.position], dtype=np.intp
    )
    if len(positions) == 0:
        return []
    return positions[_top_positions(scores[positions], matrix.ids[positions], limit)].tolist()


def _hit_rows(session: Session, asset_ids: list[str], filters: list) -> dict[str, sa.Row]:
    """Text, state and output keys of those of ``asset_ids`` that pass ``filters``."""
    select = (
        sa.select(*_hit_columns())
        .join(Asset, Asset.id == PromptIndex.asset_id)
        .where(PromptIndex.asset_id.in_(asset_ids), *filters)
    )
    return {row.asset_id: row for row in session.execute(select)}


def _hits(
    positions: list[int], matrix: EmbeddingMatrix, scores: np.ndarray, rows: dict[str, sa.Row]
) -> list[SearchHit]:
    hits = []
    for i in positions:
        row = rows[str(matrix.ids[i])]
        score = float(scores[i])
        hits.append(
            SearchHit(
                asset_id=row.asset_id,
                score=score,
                keyword_score=None,
                semantic_score=score,
                text=row.text,
                state=row.state,
                output_keys=row.output_keys or {},
            )
        )
    return hits


def _sortable(distance: float | None) -> float:
    """A distance for sorting; NaN (zero vector) and None last, as PostgreSQL sorts NaN."""
    return np.inf if distance is None or np.isnan(distance) else distance


HNSW_EF_SEARCH = 40
"""pgvector's default candidate list of an HNSW scan; raised per query for larger limits."""


def _semantic_pgvector(
    session: Session,
    query: np.ndarray,
    limit: int,
    state: str | None,
    tag: str | None,
    needed: int | None = None,
) -> list[SearchHit]:
    """Up to ``limit`` nearest entries by HNSW; sized so that ``needed`` (default ``limit``)
    survive a common filter."""
    from pgvector.sqlalchemy import VECTOR

    # An HNSW scan yields at most hnsw.ef_search rows, before any filter runs: ask for enough
    # that a common filter still leaves ``needed`` (a larger list costs time: 40 -> 100 rows
    # doubles the scan). 1000 is pgvector's maximum.
    filtered = state is not None or tag is not None
    needed = limit if needed is None else needed
    ef_search = min(max(HNSW_EF_SEARCH, 2 * needed if filtered else needed), 1000)
    session.execute(sa.select(sa.func.set_config("hnsw.ef_search", str(ef_search), True)))
    column = sa.literal_column(f"prompt_index.{PG_VECTOR_COLUMN}", VECTOR(EMBEDDING_DIM))
    target = sa.cast(sa.bindparam("query_vector", query, type_=VECTOR(EMBEDDING_DIM)), VECTOR)
    distance = column.op("<=>", return_type=sa.Double)(target)
    select = (
        sa.select(*_hit_columns(), distance.label("distance"))
        .join(Asset, Asset.id == PromptIndex.asset_id)
        .where(column.is_not(None), *_filters(session, state, tag))
        # Ordered by the distance alone: a second sort key would stop the HNSW index from
        # serving the ORDER BY (a full scan); ties are ordered by asset id below.
        .order_by(distance)
        .limit(limit)
    )
    rows = sorted(session.execute(select), key=lambda row: (_sortable(row.distance), row.asset_id))
    hits = []
    for row in rows:
        # <=> is cosine distance (1 - cosine); NaN for a zero vector, which has no direction.
        similarity = 0.0 if row.distance is None or np.isnan(row.distance) else 1 - row.distance
        hits.append(
            SearchHit(
                asset_id=row.asset_id,
                score=float(similarity),
                keyword_score=None,
                semantic_score=float(similarity),
                text=row.text,
                state=row.state,
                output_keys=row.output_keys or {},
            )
        )
    return hits


# --- hybrid -----------------------------------------------------------------------------------


def hybrid_search(
    session: Session,
    query: str,
    embedding: np.ndarray | None,
    *,
    limit: int = 10,
    state: str | None = None,
    tag: str | None = None,
    keyword_weight: float = 0.5,
    candidates: int | None = None,
    method: Literal["auto", "exact", "pgvector"] = "auto",
) -> list[SearchHit]:
    """One ranking from keyword and semantic search.

    Each search proposes ``candidates`` hits (default ``max(4 * limit, 50)``); every candidate
    gets its exact cosine similarity and its keyword score scaled by the best keyword score
    (so in [0, 1], 0 when the keywords missed). ``score = keyword_weight * keyword +
    (1 - keyword_weight) * max(cosine, 0)``. Without an embedding this is keyword search.
    ``method`` picks the semantic candidates' search as in :func:`semantic_search` (``auto``
    falls back to exact search when a filtered HNSW scan comes back short); the exact one scores
    every entry once and reuses the scores for the keyword candidates.
    """
    if not 0.0 <= keyword_weight <= 1.0:
        raise ValueError(f"keyword_weight must be in [0, 1], got {keyword_weight}")
    pool = candidates or max(4 * limit, 50)
    keyword = keyword_search(session, query, limit=pool, state=state, tag=tag)
    if embedding is None:
        return keyword[:limit]
    query_vector = np.asarray(embedding, dtype=np.float32)
    encode_embedding(query_vector)  # validates shape and finiteness
    query_vector = _unit(query_vector[None])[0]
    by_id: dict[str, SearchHit | None]  # None: details not fetched yet
    semantic = None
    if _use_pgvector(session, method):
        # The final list needs ``limit`` semantic candidates at most, not the whole pool.
        semantic = _semantic_pgvector(session, query_vector, pool, state, tag, needed=limit)
        if method == "auto" and _filtered_short(semantic, limit, state, tag):
            semantic = None  # the exact scores below find the filtered candidates
    if semantic is not None:
        by_id = {hit.asset_id: hit for hit in semantic}
        for hit in keyword:
            by_id.setdefault(hit.asset_id, hit)
        cosines = _exact_cosines(session, list(by_id), query_vector)
    else:
        # One scoring pass serves both the semantic candidates and the keyword hits' cosines;
        # the semantic candidates' details are fetched only for those that make the final list.
        matrix = embedding_matrix(session)
        scores = matrix.scores(query_vector)
        positions = _ranked_positions(session, matrix, scores, pool, _filters(session, state, tag))
        by_id = {hit.asset_id: hit for hit in keyword}
        for i in positions:
            by_id.setdefault(str(matrix.ids[i]), None)
        cosines = {
            asset_id: float(scores[matrix.position[asset_id]])
            for asset_id in by_id
            if asset_id in matrix.position
        }
    best_keyword = max((h.keyword_score or 0.0 for h in keyword), default=0.0)
    keyword_scores = {h.asset_id: h.keyword_score for h in keyword}

    ranked = []
    for asset_id in by_id:
        raw_keyword = keyword_scores.get(asset_id)
        scaled = (raw_keyword / best_keyword) if raw_keyword and best_keyword > 0 else 0.0
        cosine = cosines.get(asset_id)
        score = keyword_weight * scaled + (1 - keyword_weight) * max(cosine or 0.0, 0.0)
        ranked.append((-float(score), asset_id))
    ranked.sort()
    ranked = ranked[:limit]
    missing = [asset_id for _, asset_id in ranked if by_id[asset_id] is None]
    rows = _hit_rows(session, missing, []) if missing else {}
    hits = []
    for negative_score, asset_id in ranked:
        detail = by_id[asset_id] or rows.get(asset_id)
        if detail is None:  # removed since the candidates were chosen
            continue
        hits.append(
            SearchHit(
                asset_id=asset_id,
                score=-negative_score,
                keyword_score=keyword_scores.get(asset_id),
                semantic_score=cosines.get(asset_id),
                text=detail.text,
                state=detail.state,
                output_keys=detail.output_keys or {},
            )
        )
    return hits


def _exact_cosines(session: Session, asset_ids: list[str], query: np.ndarray) -> dict[str, float]:
    """Cosine similarity of the stored embeddings of ``asset_ids`` to a unit ``query``."""
    if not asset_ids:
        return {}
    rows = session.execute(
        sa.select(PromptIndex.asset_id, PromptIndex.embedding).where(
            PromptIndex.asset_id.in_(asset_ids), PromptIndex.embedding.is_not(None)
        )
    ).all()
    if not rows:
        return {}
    matrix = _unit(np.stack([decode_embedding(row.embedding) for row in rows]))
    scores = matrix @ query
    return {row.asset_id: float(s) for row, s in zip(rows, scores, strict=True)}


# --- what users search for --------------------------------------------------------------------

MIN_HYBRID_SCORE = 0.17
"""Hybrid score (``keyword_weight`` 0.5) below which a hit is a weak match, not shown by default.

Calibrated by ``benchmarks/search_threshold.py`` (12 prompts, 23 labelled queries, numpy
all-MiniLM-L6-v2 encoder): the best hit of a query about nothing in the catalog scored 0.06-0.16,
the right hit of a query about it 0.19 (a paraphrase sharing no word) to 0.90; 0.17 keeps all 13
right hits and none of the 10 unrelated ones. The gap is narrow: paraphrases that share no word
score low, so ``--all`` stays available."""


def request_search_text(
    kind: str,
    prompt: str | None,
    references: list[str] | None = None,
    tags: list[str] | None = None,
    caption: str | None = None,
) -> str:
    """The text indexed for an asset: its prompt, or for an image/bundle request its file
    names (whole and split into words), what it matched in the library, and its tags.

    Tags are stored beside the text too, but keyword search reads the text alone, so a
    promptless request needs them in its text to be found by them.
    """
    if prompt:
        return prompt
    parts = [f"{kind} request"]
    for reference in references or []:
        name = reference.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
        stem = name.rsplit(".", 1)[0]
        words = " ".join(_WORD.findall(stem.replace("_", " ")))
        parts.append(name if words == stem else f"{name} ({words})")
    if caption:
        parts.append(f"like {caption}")
    if tags:
        parts.append("tags: " + ", ".join(tags))
    return " ".join(parts)


def search_assets_table(
    session: Session,
    query: str,
    *,
    state: str,
    limit: int = 10,
    tag: str | None = None,
) -> list[SearchHit]:
    """Assets in ``state`` whose prompt, manifest file names or tags contain words of ``query``.

    For states other than ``succeeded``: only published assets are in the search index, so a
    failed or running asset is found here, by keyword, in the assets table. ``score`` is the
    fraction of the query's words found (case-insensitive substring); ties go to the newest.
    """
    from storage.schema import BatchItem

    words = [w.lower() for w in query_words(query)]
    if not words or limit <= 0:
        return []
    references = (
        sa.select(
            BatchItem.asset_id,
            sa.func.group_concat(BatchItem.reference, " ").label("refs")
            if session.get_bind().dialect.name == "sqlite"
            else sa.func.string_agg(BatchItem.reference, " ").label("refs"),
        )
        .where(BatchItem.reference.is_not(None))
        .group_by(BatchItem.asset_id)
        .subquery()
    )
    haystack = sa.func.lower(
        sa.func.coalesce(Asset.prompt, "")
        + " "
        + sa.func.coalesce(references.c.refs, "")
        + " "
        + sa.cast(Asset.tags, sa.Text)
    )
    matched = [sa.case((haystack.contains(w, autoescape=True), 1), else_=0) for w in words]
    found = sum(matched[1:], matched[0]).label("found")
    statement = (
        sa.select(Asset, references.c.refs, found)
        .outerjoin(references, references.c.asset_id == Asset.id)
        .where(Asset.state == state, found > 0)
        .order_by(found.desc(), Asset.updated_at.desc(), Asset.id)
        .limit(limit * 4 if tag else limit)
    )
    hits = []
    for asset, refs, count in session.execute(statement):
        if tag is not None and tag not in (asset.tags or []):
            continue
        hits.append(
            SearchHit(
                asset_id=asset.id,
                score=count / len(words),
                keyword_score=count / len(words),
                semantic_score=None,
                text=asset.prompt or refs or f"{asset.kind} request",
                state=asset.state,
                output_keys=asset.output_keys or {},
            )
        )
    return hits[:limit]


def with_details(session: Session, hits: list[SearchHit]) -> list[SearchHit]:
    """``hits`` with their manifest references and weak-library-match flag filled in."""
    ids = [hit.asset_id for hit in hits]
    references = queries.asset_references(session, ids)
    weak = {
        asset_id: bool(values["library_match_weak"])
        for asset_id, values in queries.metrics_of(session, ids, ["library_match_weak"]).items()
    }
    return [
        replace(
            hit,
            references=references.get(hit.asset_id, []),
            library_match_weak=weak.get(hit.asset_id),
        )
        for hit in hits
    ]


def asset_search_text(session: Session, asset_id: str, caption: str | None = None) -> str:
    """:func:`request_search_text` of a recorded asset (its prompt, or its manifest file names,
    ``caption`` of its library match and tags), for the publish stage to index."""
    asset = session.get(Asset, asset_id)
    if asset is None:
        raise queries.UnknownAsset(f"no asset with id {asset_id!r}")
    references = queries.asset_references(session, [asset_id]).get(asset_id, [])
    return request_search_text(asset.kind, asset.prompt, references, list(asset.tags), caption)
