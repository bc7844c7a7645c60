"""An in-process copy of one database's prompt index, for a long-lived server's searches.

:func:`storage.search.hybrid_search` asks the database for its keyword candidates (SQLite
ranks every entry that matches any word, thousands for a common word) and reads a cached
embedding matrix that it reloads whole whenever the index changes. A server answers many
searches over one database, so :class:`SearchIndex` keeps what those searches need in memory
and ranks in numpy:

* every entry's asset id and unit embedding (``(N, 384)`` float32), loaded once and then kept
  fresh incrementally: each search reads the index's freshness stamp (free on SQLite while
  nothing was committed) and, when it changed, only the rows updated at or after the newest
  ``updated_at`` already held (a deletion, which leaves no row to read, reloads everything);
* on SQLite, each query word's bm25 contributions per entry, asked of FTS5 once per word and
  kept until the index changes. FTS5's bm25 of ``"a" OR "b"`` is the sum, in query order, of
  the bm25 of ``"a"`` and of ``"b"`` (each phrase adds its own ``idf * tf`` term, with the
  same document count and average length), so the sums here equal what FTS5 returns for the
  whole query, to the bit;
* on PostgreSQL, each query lexeme's entries and its number of positions in each, asked once
  per lexeme and kept until the index changes; ``ts_rank`` of the OR query is computed from
  them in the float32 steps PostgreSQL takes (:meth:`SearchIndex._ts_rank`), to the bit. A
  query word that PostgreSQL parses into more than one lexeme (``foo_bar``, a phrase) sends
  that query's keyword part to :func:`storage.search.keyword_search`.

Given a snapshot folder (:func:`snapshot_folder`, beside an SQLite database file), the entries
are also saved there, the embeddings as a ``.npy`` file that the next process maps instead of
reading 1.5 kB per entry from the database, and brings up to date the same way: a cold
``foundry3d search`` over 100,000 entries starts from it.

The database is asked only for what changes under a search: the state and tags of the best
candidates (the filters), and the text and output keys of the hits. The result equals
:func:`storage.search.hybrid_search` with ``method="exact"``: the same candidates in the same
order, keyword scores to the bit and cosines to float32 rounding (BLAS rounds a row's dot
product by where the row sits in its matrix, and this one orders its rows by arrival; on
PostgreSQL, hybrid_search's default ``auto`` takes its semantic candidates from
pgvector's approximate HNSW index instead, so it can miss some that this finds). That is
``method="exact"``, the default. ``method="approximate"`` (what the API server's ``"auto"``
takes from :data:`APPROXIMATE_MIN_ENTRIES` entries on) scores the embeddings first as int8
(:mod:`storage.quantised_embeddings`, a quarter of the bytes to read) and only its best few
hundred in float32: the keyword part, the filters and the cosines reported are the same, and a
semantic candidate is missed only when int8 rounding pushed it below those few hundred
(recall@10 against exact: ``benchmarks/api.py``). Same known limit as that module's cache: a
re-indexed entry whose transaction took its ``updated_at`` before another writer's later,
already committed change is not seen until the next change.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from storage import queries, search
from storage.quantised_embeddings import QuantisedRows
from storage.schema import EMBEDDING_DIM, PG_FTS_COLUMN, SQLITE_FTS_TABLE, Asset, PromptIndex

SNAPSHOT_MIN_ENTRIES = 5000
"""Smallest index kept in a snapshot: fewer entries are read from the database as fast."""
SNAPSHOT_MIN_NEW = 1000
"""Entries read from the database since the snapshot that make it worth rewriting (fewer are
read again, quickly, by the next process that opens it)."""
log = logging.getLogger("foundry3d.search")

WORD_CACHE_SIZE = 4096
"""Query words (SQLite) or lexemes (PostgreSQL) whose matches an index keeps (least recently
used dropped)."""
_ENGLISH = sa.literal_column("'english'")  # the text search configuration of storage.search
FIRST_CANDIDATES_SLACK = 16
"""Extra candidates checked in the first round of a filtered search, beyond twice the hits."""
APPROXIMATE_MIN_ENTRIES = 20_000
"""Smallest index that ``method="auto"`` searches approximately: below it the float32 product
reads under 30 MB and costs about what the int8 pass and its re-rank cost."""
RERANK_MIN = 256
"""Fewest candidates of the int8 pass ranked again in float32 (at least 4 times the pool)."""
SIGN_SHORTLIST = 2048
"""Fewest rows nearest by sign that an unfiltered approximate search ranks in int8 (at least 8
times the rows it ranks again in float32), when the index allows it (``sign_shortlist``)."""
SIGN_MIN_RECALL = 0.99
"""Share of its rows' 10 nearest (by int8 cosine, over 32 of the rows as queries) that a sign
shortlist must hold for the index to use it; text embeddings: 1.00, random vectors: 0.71."""
SEARCH_METHODS = ("exact", "approximate", "auto")
WARM_WORDS = 1000
"""Most frequent words of the indexed texts whose matches :meth:`SearchIndex.warm_words` reads
ahead of the first search that uses them."""


@dataclass(frozen=True)
class _Entries:
    """The entries of the prompt index as read at one freshness stamp; never changed once
    published (appends go to spare rows past ``count`` of shared buffers)."""

    stamp: tuple
    """``(count(*), max(updated_at))`` of prompt_index when these entries were current."""
    high_water: Any
    """The newest ``updated_at`` read, as the driver returns it (str on SQLite)."""
    count: int
    """Number of entries N."""
    ids: np.ndarray
    """``(capacity,)`` object array of asset ids; the first N are the entries."""
    rowids: np.ndarray
    """``(capacity,)`` int64 SQLite rowids of the entries (the FTS5 rowids); 0 on PostgreSQL."""
    unit: np.ndarray
    """``(capacity, EMBEDDING_DIM)`` float32 unit embeddings (zero rows without one)."""
    embedded: np.ndarray
    """``(capacity,)`` bool: whether the entry has an embedding."""
    known_position: dict[str, int] | None
    """Asset id -> row of the entry, when already at hand (else built on first use)."""

    @cached_property
    def position(self) -> dict[str, int]:
        """Asset id -> row of the entry (100,000 ids take a cold process 60 ms to map)."""
        if self.known_position is not None:
            return self.known_position
        return {asset_id: i for i, asset_id in enumerate(self.ids[: self.count].tolist())}

    @cached_property
    def embedded_rows(self) -> np.ndarray:
        """``(E,)`` rows of the entries that have an embedding, ascending (made once, read-only)."""
        rows = np.flatnonzero(self.embedded[: self.count])
        rows.setflags(write=False)
        return rows

    @cached_property
    def _rowid_order(self) -> np.ndarray:
        return np.argsort(self.rowids[: self.count], kind="stable")

    def rows_of_rowids(self, rowids: np.ndarray) -> np.ndarray:
        """Rows of the entries with these SQLite rowids; -1 for a rowid not held."""
        if self.count == 0:
            return np.full(len(rowids), -1, dtype=np.intp)
        held = self.rowids[: self.count]
        where = np.minimum(np.searchsorted(held[self._rowid_order], rowids), self.count - 1)
        rows = self._rowid_order[where]
        return np.where(held[rows] == rowids, rows, -1)


@dataclass(frozen=True)
class _Detail:
    """What a search needs of an entry's database rows at query time."""

    text: str
    state: str
    output_keys: dict[str, Any] | None
    tags: list[str]


class SearchIndex:
    """Hybrid search over one database's prompt index, ranked in memory.

    Thread-safe: searches may run at once; a refresh is done by one of them under a lock.
    Bound to the first database it searches (a session of another database is refused).
    """

    def __init__(self, snapshot: Path | None = None, *, sign_shortlist: bool = False) -> None:
        """``snapshot``: a folder where the entries are kept between processes (see
        :func:`snapshot_folder`), or None to read them from the database in each process.
        ``sign_shortlist``: let unfiltered approximate searches rank only the rows nearest by
        sign (:data:`SIGN_SHORTLIST`), where the index's own rows show that the shortlist
        holds their nearest rows (:data:`SIGN_MIN_RECALL`; measured once per int8 copy, about
        0.2 s for 100,000 entries: for a long-lived server)."""
        self._entries: _Entries | None = None
        self._database: str | None = None
        self._snapshot = snapshot
        self._lock = threading.Lock()
        # SQLite: word -> (rows, bm25); PostgreSQL: lexeme -> (rows, position counts).
        self._words: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._words_stamp: tuple | None = None
        self._lexemes: dict[str, str | None] = {}  # PostgreSQL: query word -> lexeme
        self._int8: QuantisedRows | None = None  # for approximate searches, made on first use
        self._sign_shortlist = sign_shortlist
        self._sign_checked: tuple[int, float] | None = None  # (rows checked, recall there)
        self._executor: ThreadPoolExecutor | None = None  # see _worker

    # --- freshness ----------------------------------------------------------------------------

    def refresh(self, session: Session) -> int:
        """Bring the index up to what ``session`` sees; returns the number of entries."""
        return self._current(session).count

    def _current(self, session: Session) -> _Entries:
        url = session.get_bind().engine.url.render_as_string(hide_password=False)
        if self._database is not None and url != self._database:
            raise ValueError("a SearchIndex serves the one database it first searched")
        stamp = search._freshness_stamp(session)
        entries = self._entries
        if entries is not None and entries.stamp == stamp:
            return entries
        with self._lock:
            entries = self._entries
            if entries is None and self._snapshot is not None:
                entries = _read_snapshot(self._snapshot)
            if entries is not None and entries.stamp == stamp:
                self._entries, self._database = entries, url
                return entries
            held = entries.count if entries is not None else 0
            entries = self._updated(session, entries, stamp) if entries else None
            if entries is None:
                entries = _load_all(session, stamp)
                held = 0
            self._entries, self._database = entries, url
            if (self._snapshot is not None and entries.count >= SNAPSHOT_MIN_ENTRIES
                    and entries.count - held >= SNAPSHOT_MIN_NEW):
                _write_snapshot(self._snapshot, entries)
            return entries

    def _updated(self, session: Session, entries: _Entries, stamp: tuple) -> _Entries | None:
        """``entries`` with the rows updated since their high-water mark; None when a
        deletion (or anything else the count cannot explain) asks for a full reload."""
        sqlite = session.get_bind().dialect.name == "sqlite"
        rows = session.execute(
            sa.text(
                f"SELECT asset_id, embedding, updated_at, {'rowid' if sqlite else '0'} "
                "FROM prompt_index WHERE updated_at >= :since"
            ),
            {"since": entries.high_water},
        ).all()
        new = [row for row in rows if row[0] not in entries.position]
        if entries.count + len(new) != stamp[0]:
            return None
        # The rows at the high-water mark itself are read again each time: only a changed
        # embedding (re-indexed entry) asks for a copy of the held rows.
        changed = [row for row in rows
                   if row[0] in entries.position and not _holds(entries, row)]
        capacity = len(entries.ids)
        if changed or entries.count + len(new) > capacity:
            # Rows that readers may be scoring are never written: copy, then change the copy.
            capacity = max(capacity, int(1.5 * (entries.count + len(new))) + 64)
            ids, rowids, unit, embedded = _buffers(capacity)
            n = entries.count
            ids[:n], rowids[:n] = entries.ids[:n], entries.rowids[:n]
            unit[:n], embedded[:n] = entries.unit[:n], entries.embedded[:n]
            position = dict(entries.position)
        else:
            ids, rowids, unit, embedded = (entries.ids, entries.rowids, entries.unit,
                                           entries.embedded)
            position = dict(entries.position)
        for row in changed:
            _fill(position[row[0]], row, ids, rowids, unit, embedded)
        for n, row in enumerate(new, start=entries.count):
            _fill(n, row, ids, rowids, unit, embedded)
            position[row[0]] = n
        high_water = max([entries.high_water, *(row[2] for row in rows)],
                         key=lambda value: (value is not None, value))
        return _Entries(stamp, high_water, entries.count + len(new), ids, rowids, unit,
                        embedded, position)

    def warm_words(self, session: Session, count: int = WARM_WORDS) -> int:
        """Read the matches of the ``count`` words found in most indexed texts (as lower-case
        query words) into the word cache, so that the first search using one of them does not
        ask the database for them; returns the number of words read.

        For a server's start-up: one pass over the texts, then one query per word (about 2 s
        for 100,000 entries of a small vocabulary). The cache is emptied when the index changes,
        after which words are read again on first use, as without this.
        """
        entries = self._current(session)
        counts: dict[str, int] = {}
        for text in session.scalars(sa.select(PromptIndex.text)):
            for word in set(search.query_words((text or "").lower())):
                counts[word] = counts.get(word, 0) + 1
        words = sorted(counts, key=lambda word: (-counts[word], word))[:count]
        sqlite = session.get_bind().dialect.name == "sqlite"
        for word in words:
            if sqlite:
                self._word(session, entries, word)
            elif lexeme := self._lexeme(session, word):
                self._postings(session, entries, lexeme, word)
        return len(words)

    def warm_semantic(self, session: Session) -> float | None:
        """Make the int8 copy of the embeddings (and, with ``sign_shortlist``, measure the
        sign shortlist's recall) ahead of the first approximate search that needs them;
        returns that recall, or None when the index is too small for either."""
        entries = self._current(session)
        if entries.count < APPROXIMATE_MIN_ENTRIES:
            return None
        # The shortlist of a search for a page of 20 (and one more, to know there is a next).
        size = _shortlist_size(_rerank_size(_pool_size(21)))
        self._sign_holds(self._quantised(entries), entries.count, size)
        return self._sign_checked[1] if self._sign_checked else None

    # --- search -------------------------------------------------------------------------------

    def search(
        self,
        session: Session,
        query: str,
        embedding: np.ndarray | Callable[[], np.ndarray | None] | None,
        *,
        limit: int = 10,
        state: str | None = None,
        tag: str | None = None,
        keyword_weight: float = 0.5,
        candidates: int | None = None,
        method: str = "exact",
        profile: dict[str, tuple[float, float]] | None = None,
    ) -> list[search.SearchHit]:
        """The hits of :func:`storage.search.hybrid_search` (``method="exact"``), best first.

        ``embedding`` : ``(EMBEDDING_DIM,)`` float32 query embedding, or None for keyword
        search; or a callable returning either, called once the keyword part is done (e.g. a
        future's ``result``: a caller may embed the query on another core meanwhile; the
        wait is the ``embed_wait`` part of ``profile``). Each search proposes ``candidates``
        entries (default ``max(4 * limit, 50)``) that pass the ``state``/``tag`` filters;
        ``score = keyword_weight * keyword / best keyword + (1 - keyword_weight) *
        max(cosine, 0)``; ties go to the smaller asset id.

        ``method``: ``"exact"`` scores every entry in float32 (the ranking of hybrid_search);
        ``"approximate"`` scores them in int8 (:mod:`storage.quantised_embeddings`) and ranks
        the best ``max(4 * candidates, RERANK_MIN)`` again in float32, so a semantic candidate
        can be missed only if int8 rounding moved it that far down (recall@10 measured by
        ``benchmarks/api.py``); the cosines reported are float32 ones either way.
        ``"auto"``: approximate from :data:`APPROXIMATE_MIN_ENTRIES` entries on.
        Keyword scores, filters and ties are the same for all three.

        ``profile``: if given, receives ``part -> (wall ms, CPU ms)`` for ``fresh`` (the
        freshness check and any update), ``keyword``, ``semantic``, ``merge`` and ``rows``
        (database reads of the candidates' filters and the hits' text, taken out of the other
        parts); with a callable ``embedding`` also ``embed`` (on the worker thread, as its
        ``semantic``), ``embed_wait`` (this thread waiting for the worker) and
        ``semantic_merge`` (the filters and float32 cosines after the worker's pass).
        """
        if not 0.0 <= keyword_weight <= 1.0:
            raise ValueError(f"keyword_weight must be in [0, 1], got {keyword_weight}")
        if method not in SEARCH_METHODS:
            raise ValueError(f"method must be one of {', '.join(SEARCH_METHODS)}, got {method!r}")
        if limit <= 0:
            return []
        clock = _PartClock(profile)
        pool = candidates or _pool_size(limit)
        entries = self._current(session)
        clock.lap("fresh")
        details: dict[str, _Detail | None] = {}  # fetched once per search
        passes = _Filter(session, state, tag, details, clock)
        n = entries.count
        approximate = method == "approximate" or (
            method == "auto" and n >= APPROXIMATE_MIN_ENTRIES)
        rerank = _rerank_size(pool)
        late = None
        if callable(embedding):
            # The query is embedded and scored on the other core while this one ranks the
            # keyword matches (the two take about as long).
            late = self._worker().submit(_timed_first_pass, self, entries, embedding, rerank,
                                         approximate, passes.active)
        keyword = self._keyword(session, entries, query, pool, passes)
        clock.lap("keyword")
        if late is not None:
            first, worker_parts = late.result()
            clock.lap("embed_wait")
            for name, (wall, cpu) in worker_parts.items():
                clock.record(name, wall, cpu)
        else:
            first = self._first_pass(entries, embedding, rerank, approximate, passes.active)
            clock.lap("semantic")
        if first is None:
            hits = _hits_from_keyword(session, keyword[:limit], details, clock)
            clock.lap("merge")
            clock.finish()
            return hits
        query_vector, embedded, scores, reranked = first
        # Unfiltered, the best are among the rows ranked in float32; a filter may reach past
        # them, so it widens over every entry.
        semantic = _best(scores, entries.ids[:n], embedded if passes.active else reranked,
                         pool, passes)
        reported = [int(i) for i in semantic] + [
            i for _, _, i in keyword if i is not None and entries.embedded[i]]
        if approximate and reported:
            # Every cosine shown is a float32 one, whichever pass chose the entry.
            scores[reported] = entries.unit[reported] @ query_vector
        clock.lap("semantic" if late is None else "semantic_merge")

        keyword_scores = {asset_id: score for asset_id, score, _ in keyword}
        cosines = {str(entries.ids[i]): float(scores[i]) for i in semantic}
        for asset_id, _, i in keyword:
            if i is not None and entries.embedded[i]:
                cosines[asset_id] = float(scores[i])
        best_keyword = max((score or 0.0 for _, score, _ in keyword), default=0.0)
        ranked = []
        for asset_id in {**keyword_scores, **dict.fromkeys(cosines)}:
            raw = keyword_scores.get(asset_id)
            scaled = (raw / best_keyword) if raw and best_keyword > 0 else 0.0
            cosine = cosines.get(asset_id)
            score = keyword_weight * scaled + (1 - keyword_weight) * max(cosine or 0.0, 0.0)
            ranked.append((-float(score), asset_id))
        ranked.sort()
        chosen = ranked[:limit]
        passes.fetch([asset_id for _, asset_id in chosen])
        hits = []
        for negative_score, asset_id in chosen:
            detail = details.get(asset_id)
            if detail is None:  # removed since the candidates were chosen
                continue
            hits.append(search.SearchHit(
                asset_id=asset_id, score=-negative_score,
                keyword_score=keyword_scores.get(asset_id), semantic_score=cosines.get(asset_id),
                text=detail.text, state=detail.state, output_keys=detail.output_keys or {}))
        clock.lap("merge")
        clock.finish()
        return hits

    def _first_pass(self, entries: _Entries, embedding: np.ndarray | None, rerank: int,
                    approximate: bool, filtered: bool) -> tuple | None:
        """The semantic scores of the entries (``(query vector, embedded rows, scores,
        rows holding float32 scores)``, see :func:`semantic_scores`), None without an
        embedding. ``filtered``: the search has filters, which may reach past the best rows
        (so every row is scored)."""
        if embedding is None:
            return None
        query_vector = np.asarray(embedding, dtype=np.float32)
        search.encode_embedding(query_vector)  # validates shape and finiteness
        # Normalised twice, as hybrid_search does (once itself, once in its matrix's scores),
        # so that the cosines are the same float32 numbers.
        query_vector = search._unit(search._unit(query_vector[None])[0][None])[0]
        n = entries.count
        embedded = entries.embedded_rows
        quantised = self._quantised(entries) if approximate else None
        shortlist = 0
        if quantised is not None and not filtered:
            size = _shortlist_size(rerank)
            if self._sign_holds(quantised, n, size):
                shortlist = size
        scores, reranked = semantic_scores(
            entries.unit[:n], embedded, entries.ids[:n], query_vector, rerank, quantised,
            shortlist, None if len(embedded) == n else ~entries.embedded[:n])
        return query_vector, embedded, scores, reranked

    def _sign_holds(self, quantised: QuantisedRows, count: int, size: int) -> bool:
        """Whether a ``size``-row sign shortlist of the first ``count`` rows may stand in for
        the int8 pass: allowed, worth it, and shown to hold on the rows (measured again
        when the rows have doubled since)."""
        if not self._sign_shortlist or size * 4 > count:
            return False
        checked = self._sign_checked
        if checked is None or count >= 2 * checked[0]:
            recall = quantised.sign_recall(count, size)
            log.info("sign shortlist of %d over %d entries: recall@10 %.3f (%s)", size, count,
                     recall, "used" if recall >= SIGN_MIN_RECALL else "not used")
            checked = self._sign_checked = (count, recall)
        return checked[1] >= SIGN_MIN_RECALL

    def _worker(self) -> ThreadPoolExecutor:
        """The one thread that embeds and scores late embeddings (made on first use)."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="foundry3d-search")
            return self._executor

    def _quantised(self, entries: _Entries) -> QuantisedRows:
        """The int8 copy of ``entries``' embeddings, brought up to their count (rows appended
        to the same buffer are quantised alone; a new buffer is quantised whole)."""
        with self._lock:
            quantised = self._int8
            if quantised is None or quantised.source is not entries.unit:
                quantised = QuantisedRows(entries.unit)
            quantised.extend(entries.count)
            self._int8 = quantised
            return quantised

    def _keyword(self, session: Session, entries: _Entries, query: str, pool: int,
                 passes: _Filter) -> list[tuple[str, float, int | None]]:
        """(asset id, keyword score, row or None) of the best ``pool`` keyword matches passing
        the filters, best first, as :func:`storage.search.keyword_search` ranks them."""
        words = search.query_words(query)
        if not words:
            return []
        if session.get_bind().dialect.name == "sqlite":
            rows, bm25 = self._bm25(session, entries, words)
            scores = -bm25  # bm25: lower is better
        else:
            ranked = self._ts_rank(session, entries, words)
            if ranked is None:  # a word that is more than one lexeme: PostgreSQL ranks it
                hits = search.keyword_search(session, query, limit=pool, state=passes.state,
                                             tag=passes.tag)
                for hit in hits:  # passed the filters in SQL: their tags hold the tag asked for
                    passes.details[hit.asset_id] = _Detail(hit.text, hit.state, hit.output_keys,
                                                           [passes.tag] if passes.tag else [])
                return [(hit.asset_id, hit.score, entries.position.get(hit.asset_id))
                        for hit in hits]
            rows, scores = ranked
        best = _best(scores, entries.ids[rows], np.arange(len(rows)), pool, passes)
        if scores.dtype == np.float32:
            # A float4 reaches Python as its shortest decimal text, parsed as a double.
            return [(str(entries.ids[rows[i]]), float(str(scores[i])), int(rows[i]))
                    for i in best]
        return [(str(entries.ids[rows[i]]), float(scores[i]), int(rows[i])) for i in best]

    def _ts_rank(self, session: Session, entries: _Entries,
                 words: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """Rows of the entries that match any of ``words`` and PostgreSQL's ``ts_rank`` of
        them for the OR query of the words, as float32 (what ``ts_rank`` returns); None when a
        word is not a single lexeme (``foo_bar`` is a phrase), which this does not model.

        ``ts_rank`` of an OR query (``calc_rank_or`` in PostgreSQL's ``tsrank.c``): over the
        query's distinct lexemes, sorted bytewise, each one found in the entry adds the double
        ``(w + resj - w) / 1.64493406685`` to a float32 sum, ``resj`` being the float32 sum of
        ``0.1 / i**2`` over its ``i = 1..n`` positions (weight D, as ``to_tsvector`` gives every
        word); the sum is divided by the number of distinct lexemes in float32. The float32
        steps are taken here in the same order, so the ranks are PostgreSQL's, to the bit.
        """
        lexemes: dict[str, str] = {}  # lexeme -> a word that makes it
        for word in words:
            lexeme = self._lexeme(session, word)
            if lexeme is None:
                return None
            if lexeme:  # "" for a stop word, which the query drops
                lexemes.setdefault(lexeme, word)
        if not lexemes:
            return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.float32)
        parts = [self._postings(session, entries, lexeme, lexemes[lexeme])
                 for lexeme in sorted(lexemes, key=lambda text: text.encode())]
        rows = np.unique(np.concatenate([part[0] for part in parts]))
        total = np.zeros(len(rows), dtype=np.float32)
        for part_rows, counts in parts:
            at = np.searchsorted(rows, part_rows)
            total[at] = (total[at].astype(np.float64) + _ts_rank_terms(counts)).astype(np.float32)
        return rows, total / np.float32(len(lexemes))

    def _lexeme(self, session: Session, word: str) -> str | None:
        """The lexeme ``to_tsquery('english', word)`` makes of ``word``: "" for a stop word,
        None when it makes more than one."""
        with self._lock:
            if word in self._lexemes:
                return self._lexemes[word]
        text = session.scalar(sa.select(sa.cast(sa.func.to_tsquery(_ENGLISH, word), sa.Text)))
        match = _ONE_LEXEME.fullmatch(text or "")
        lexeme = "" if not text else (match.group(1).replace("''", "'") if match else None)
        with self._lock:
            self._lexemes[word] = lexeme
            while len(self._lexemes) > WORD_CACHE_SIZE:
                self._lexemes.pop(next(iter(self._lexemes)))
        return lexeme

    def _postings(self, session: Session, entries: _Entries, lexeme: str,
                  word: str) -> tuple[np.ndarray, np.ndarray]:
        """(rows, position counts) of the entries whose tsvector holds ``lexeme`` (which
        ``word`` makes)."""
        key = "\x00" + lexeme  # beside the SQLite words in one cache, never equal to one
        with self._lock:
            if self._words_stamp != entries.stamp:
                self._words.clear()
                self._words_stamp = entries.stamp
            cached = self._words.get(key)
            if cached is not None:
                self._words.move_to_end(key)
                return cached
        column = f"prompt_index.{PG_FTS_COLUMN}"
        found = session.execute(
            sa.text(
                # A stripped lexeme has no positions; ts_rank counts it as one.
                "SELECT prompt_index.asset_id, coalesce(array_length(u.positions, 1), 1) "
                f"FROM prompt_index, unnest({column}) AS u "
                f"WHERE {column} @@ to_tsquery('english', :query) AND u.lexeme = :lexeme"
            ),
            {"query": word, "lexeme": lexeme},
        ).all()
        position = entries.position
        known = [(position[r[0]], r[1]) for r in found if r[0] in position]
        rows = np.array([k[0] for k in known], dtype=np.intp)
        counts = np.array([k[1] for k in known], dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        value = (rows[order], counts[order])
        with self._lock:
            if self._words_stamp == entries.stamp:
                self._words[key] = value
                while len(self._words) > WORD_CACHE_SIZE:
                    self._words.popitem(last=False)
        return value

    def _bm25(self, session: Session, entries: _Entries,
              words: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the entries that match any of ``words`` and their FTS5 bm25 for the whole
        query (the sum of each word's contribution, in query order, as FTS5 adds them)."""
        parts = [self._word(session, entries, word) for word in words]
        rows = np.concatenate([p[0] for p in parts])
        if len(rows) == 0:
            return rows, np.zeros(0)
        # Counting sums each row's contributions in query order, as FTS5 adds them (the same
        # doubles as a sort by row), in one linear pass: a common word matches 10,000 rows.
        size = int(rows.max()) + 1
        total = np.bincount(rows, weights=np.concatenate([p[1] for p in parts]), minlength=size)
        matched = np.flatnonzero(np.bincount(rows, minlength=size))
        return matched, total[matched]

    def _word(self, session: Session, entries: _Entries,
              word: str) -> tuple[np.ndarray, np.ndarray]:
        """(rows, bm25 of the one-phrase query ``"word"``) of the entries matching it."""
        with self._lock:
            if self._words_stamp != entries.stamp:
                self._words.clear()
                self._words_stamp = entries.stamp
            cached = self._words.get(word)
            if cached is not None:
                self._words.move_to_end(word)
                return cached
        found = session.execute(
            sa.text(
                f"SELECT rowid, bm25({SQLITE_FTS_TABLE}) FROM {SQLITE_FTS_TABLE} "
                f"WHERE {SQLITE_FTS_TABLE} MATCH :match"
            ),
            {"match": '"' + word + '"'},
        ).all()
        rowids = np.array([r[0] for r in found], dtype=np.int64)
        ranks = np.array([r[1] for r in found], dtype=np.float64)
        rows = entries.rows_of_rowids(rowids)
        known = rows >= 0  # an entry committed after this index's stamp waits for the next
        value = (rows[known].astype(np.intp), ranks[known])
        with self._lock:
            if self._words_stamp == entries.stamp:
                self._words[word] = value
                while len(self._words) > WORD_CACHE_SIZE:
                    self._words.popitem(last=False)
        return value


class _Filter:
    """The ``state``/``tag`` filters of one search, checked on the entries' current rows."""

    def __init__(self, session: Session, state: str | None, tag: str | None,
                 details: dict[str, _Detail | None], clock: _PartClock | None = None) -> None:
        self.session, self.state, self.tag, self.details = session, state, tag, details
        self.clock = clock or _PartClock(None)

    @property
    def active(self) -> bool:
        return self.state is not None or self.tag is not None

    def fetch(self, asset_ids: list[str]) -> None:
        """Read the text, state, output keys and tags of those of ``asset_ids`` not read yet."""
        missing = [a for a in asset_ids if a not in self.details]
        if not missing:
            return
        with self.clock.part("rows"):
            self._read(missing)

    def _read(self, missing: list[str]) -> None:
        rows = queries.search_hit_details(self.session, missing)
        for asset_id in missing:
            self.details[asset_id] = None  # gone since the index read it
        for asset_id, text, state, output_keys, tags in rows:
            self.details[asset_id] = _Detail(text, state, output_keys or {}, list(tags or []))

    def __call__(self, asset_ids: list[str]) -> list[bool]:
        """Whether each entry exists and passes the filters (as the SQL filters decide:
        ``state`` equal, ``tag`` one of the entry's tags)."""
        self.fetch(asset_ids)
        return [self._passes(self.details[a]) for a in asset_ids]

    def _passes(self, detail: _Detail | None) -> bool:
        return detail is not None and (self.state is None or detail.state == self.state) and (
            self.tag is None or self.tag in detail.tags)

    def passing_ids(self) -> set[str]:
        """Every indexed asset id that passes the filters (for a rare filter)."""
        with self.clock.part("rows"):
            return set(self.session.scalars(
                sa.select(PromptIndex.asset_id)
                .join(Asset, Asset.id == PromptIndex.asset_id)
                .where(*search._filters(self.session, self.state, self.tag))
            ))


def _pool_size(limit: int) -> int:
    """Candidates a search for ``limit`` hits proposes from each of its two parts."""
    return max(4 * limit, 50)


def _rerank_size(pool: int) -> int:
    """Rows of an approximate pass ranked again in float32 for a pool of candidates."""
    return max(4 * pool, RERANK_MIN)


def _shortlist_size(rerank: int) -> int:
    """Rows nearest by sign that get the int8 pass when ``rerank`` are ranked in float32."""
    return max(SIGN_SHORTLIST, 8 * rerank)


def semantic_scores(unit: np.ndarray, embedded: np.ndarray, ids: np.ndarray,
                    query: np.ndarray, rerank: int, quantised: QuantisedRows | None,
                    shortlist: int = 0,
                    unembedded: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of ``query`` (``(D,)`` float32 unit) with the ``(N, D)`` float32 unit rows
    ``unit`` (``(N,)`` float32), and the rows among ``embedded`` that hold float32 ones.

    Without ``quantised``, every row's float32 cosine (all of ``embedded`` returned). With it
    (the int8 copy of at least N of these rows), the int8 pass's cosines, except for its
    ``rerank`` best among the rows ``embedded`` (ties by ``ids``), which get their float32
    cosine and are returned: the best entries are ranked in float32, the rest only need to
    stay below them. With a ``shortlist`` size too, only that many rows nearest by sign get
    the int8 pass, and every other row scores ``-inf``; ``unembedded``: ``(N,)`` bool, the
    rows not in ``embedded`` (None when there are none).
    """
    if quantised is None or len(embedded) == 0:
        return unit @ query, embedded
    if 0 < shortlist < len(embedded):
        rows = quantised.sign_shortlist(query, len(unit), shortlist, unembedded)
        scores = np.full(len(unit), -np.inf, dtype=np.float32)
        scores[rows] = quantised.cosines_of(query, rows)
        best = _top(scores, ids, rows, rerank)
        scores[best] = unit[best] @ query
        return scores, best
    scores = quantised.cosines(query, len(unit))
    best = _top(scores, ids, embedded, rerank)
    scores[best] = unit[best] @ query
    return scores, best


def _timed_first_pass(index: SearchIndex, entries: _Entries,
                      embedding: Callable[[], np.ndarray | None], rerank: int,
                      approximate: bool,
                      filtered: bool) -> tuple[tuple | None, dict[str, tuple[float, float]]]:
    """On the worker thread: embed (``embedding()``), then :meth:`SearchIndex._first_pass`;
    with this thread's wall and CPU seconds of each (``embed``, ``semantic``)."""
    parts: dict[str, tuple[float, float]] = {}
    mark = (time.perf_counter(), time.thread_time())
    vector = embedding()
    now = (time.perf_counter(), time.thread_time())
    parts["embed"] = (now[0] - mark[0], now[1] - mark[1])
    first = index._first_pass(entries, vector, rerank, approximate, filtered)
    end = (time.perf_counter(), time.thread_time())
    parts["semantic"] = (end[0] - now[0], end[1] - now[1])
    return first, parts


class _PartClock:
    """Wall and CPU time of the consecutive parts of one search, into a ``profile`` dict
    (``part -> (wall ms, CPU ms)``); time inside :meth:`part` blocks is counted to their part
    and taken out of the lap it falls in. CPU time is the calling thread's (the worker's parts
    come in through :meth:`record`). Does nothing without a dict."""

    def __init__(self, profile: dict[str, tuple[float, float]] | None) -> None:
        self.profile = profile
        self.totals: dict[str, list[float]] = {}
        self.inside = [0.0, 0.0]  # part-block time since the last lap
        self.last = (time.perf_counter(), time.thread_time()) if profile is not None else None

    def _add(self, name: str, wall: float, cpu: float) -> None:
        total = self.totals.setdefault(name, [0.0, 0.0])
        total[0] += wall
        total[1] += cpu

    def record(self, name: str, wall: float, cpu: float) -> None:
        """Count ``wall`` and ``cpu`` seconds spent elsewhere (another thread) to ``name``."""
        if self.last is not None:
            self._add(name, wall, cpu)

    def lap(self, name: str) -> None:
        """Count the time since the previous lap (less part blocks) to ``name``."""
        if self.last is None:
            return
        now = (time.perf_counter(), time.thread_time())
        self._add(name, now[0] - self.last[0] - self.inside[0],
                  now[1] - self.last[1] - self.inside[1])
        self.last, self.inside = now, [0.0, 0.0]

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Count the time of the block to ``name``."""
        if self.last is None:
            yield
            return
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
            self._add(name, wall, cpu)
            self.inside[0] += wall
            self.inside[1] += cpu

    def finish(self) -> None:
        """Write the parts into the profile dict, in milliseconds."""
        if self.profile is not None:
            for name, (wall, cpu) in self.totals.items():
                self.profile[name] = (1000.0 * wall, 1000.0 * cpu)


def _best(values: np.ndarray, ids: np.ndarray, candidates: np.ndarray, k: int,
          passes: _Filter) -> np.ndarray:
    """Positions (into ``values`` and ``ids``) of the ``k`` best ``candidates`` that pass the
    filters, best first: higher ``values`` first, ties to the smaller asset id.

    Filters are checked on the best candidates only, widening the list as the observed pass
    rate asks; past :data:`storage.search.MAX_FILTER_CANDIDATES` the filter becomes a mask of
    the ids that pass. Either way the result is the exact filtered ranking.
    """
    if len(candidates) == 0 or k <= 0:
        return candidates[:0]
    if not passes.active:
        return _top(values, ids, candidates, k)
    want = 2 * k + FIRST_CANDIDATES_SLACK
    while want <= search.MAX_FILTER_CANDIDATES:
        top = _top(values, ids, candidates, want)
        passed = top[np.array(passes([str(a) for a in ids[top]]), dtype=bool)]
        if len(passed) >= k or want >= len(candidates):
            return passed[:k]
        want = max(2 * want, int(2 * k * want / max(len(passed), 1)))
    allowed = passes.passing_ids()
    candidates = candidates[np.array([str(a) in allowed for a in ids[candidates]], dtype=bool)]
    top = _top(values, ids, candidates, k)
    passes.fetch([str(a) for a in ids[top]])
    return top


def _top(values: np.ndarray, ids: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` of ``candidates`` with the highest ``values``, best first, ties by asset id.

    A threshold from a sample of the values first narrows the candidates (a comparison over
    all of them costs less than partitioning them all), then the few left are partitioned and
    sorted; every candidate tied with the k-th competes on its id, as in a full sort.
    """
    chosen = values[candidates]
    keep = np.arange(len(candidates))
    if k < len(candidates):
        step = max(1, len(candidates) // 4096)
        sample = chosen[::step]
        # About twice k's share of the sample: usually enough candidates are above it.
        j = min(len(sample) - 1, 2 * (k * len(sample)) // len(candidates) + 1)
        threshold = np.partition(sample, len(sample) - 1 - j)[len(sample) - 1 - j]
        above = np.flatnonzero(chosen >= threshold)
        if len(above) >= k:
            keep = above
        if k < len(keep):
            kth = np.partition(chosen[keep], len(keep) - k)[len(keep) - k]
            keep = keep[chosen[keep] >= kth]
    order = np.lexsort((ids[candidates[keep]].astype(str), -chosen[keep]))
    return candidates[keep][order][:k]


_ONE_LEXEME = re.compile(r"'((?:[^']|'')+)'")
_PG_RANK_TERMS: list[float] = []


def _ts_rank_terms(counts: np.ndarray) -> np.ndarray:
    """The double that ``calc_rank_or`` adds for a lexeme found at ``counts`` positions."""
    top = int(counts.max()) if len(counts) else 0
    while len(_PG_RANK_TERMS) <= top:
        n = len(_PG_RANK_TERMS)
        weight = np.float32(0.1)  # weights[D]
        resj = np.float32(0.0)
        for j in range(n):
            resj = np.float32(resj + np.float32(weight / np.float32((j + 1) * (j + 1))))
        # wjm is the first position's weight (no later one is greater), jm = 0.
        inner = np.float32(np.float32(weight + resj) - np.float32(weight / np.float32(1)))
        _PG_RANK_TERMS.append(float(inner) / 1.64493406685 if n else 0.0)
    return np.array(_PG_RANK_TERMS)[counts]


def _hits_from_keyword(session: Session, keyword: list[tuple[str, float, int | None]],
                       details: dict[str, _Detail | None],
                       clock: _PartClock | None = None) -> list[search.SearchHit]:
    _Filter(session, None, None, details, clock).fetch([asset_id for asset_id, _, _ in keyword])
    return [
        search.SearchHit(asset_id=asset_id, score=score, keyword_score=score,
                         semantic_score=None, text=detail.text, state=detail.state,
                         output_keys=detail.output_keys or {})
        for asset_id, score, _ in keyword
        if (detail := details.get(asset_id)) is not None
    ]


def _buffers(capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (np.empty(capacity, dtype=object), np.zeros(capacity, dtype=np.int64),
            np.zeros((capacity, EMBEDDING_DIM), dtype=np.float32),
            np.zeros(capacity, dtype=bool))


def _holds(entries: _Entries, row) -> bool:  # noqa: ANN001
    """Whether ``entries`` already hold the ``(asset_id, embedding, updated_at, rowid)`` row."""
    i = entries.position[row[0]]
    if row[1] is None or not entries.embedded[i]:
        return row[1] is None and not entries.embedded[i]
    vector = np.frombuffer(row[1], dtype="<f4").astype(np.float32)[None]
    if vector.shape != (1, EMBEDDING_DIM):
        return False
    search.scale_rows_to_unit(vector)
    return bool(np.array_equal(vector[0], entries.unit[i]))


def _fill(n: int, row, ids, rowids, unit, embedded) -> None:  # noqa: ANN001
    """Write one ``(asset_id, embedding, updated_at, rowid)`` row into row ``n``."""
    ids[n], rowids[n] = row[0], int(row[3] or 0)
    if row[1] is None:
        unit[n], embedded[n] = 0.0, False
        return
    vector = np.frombuffer(row[1], dtype="<f4").astype(np.float32)
    if vector.shape != (EMBEDDING_DIM,):
        raise ValueError(f"prompt_index holds an embedding that is not {4 * EMBEDDING_DIM} "
                         "bytes long")
    unit[n] = vector
    search.scale_rows_to_unit(unit[n : n + 1])
    embedded[n] = True


def _load_all(session: Session, stamp: tuple) -> _Entries:
    """Every entry of prompt_index, read after ``stamp`` (so never older than it)."""
    sqlite = session.get_bind().dialect.name == "sqlite"
    rows = session.connection().exec_driver_sql(
        f"SELECT asset_id, embedding, updated_at, {'rowid' if sqlite else '0'} FROM prompt_index"
    ).all()
    capacity = int(1.25 * len(rows)) + 64
    ids, rowids, unit, embedded = _buffers(capacity)
    n = len(rows)
    ids[:n] = [row[0] for row in rows]
    rowids[:n] = [int(row[3] or 0) for row in rows]
    width = 4 * EMBEDDING_DIM
    flat = unit.reshape(-1).view(np.uint8)
    for i, row in enumerate(rows):
        if row[1] is None:
            continue
        if len(row[1]) != width:
            raise ValueError(f"prompt_index holds an embedding that is not {width} bytes long")
        flat[i * width : (i + 1) * width] = np.frombuffer(row[1], dtype=np.uint8)
        embedded[i] = True
    if unit.dtype.byteorder == ">":  # pragma: no cover - big-endian machines
        unit[:n] = unit[:n].byteswap()
    search.scale_rows_to_unit(unit[:n])
    values = [row[2] for row in rows if row[2] is not None]
    return _Entries(stamp, max(values) if values else None, n, ids, rowids, unit, embedded,
                    None)


# --- snapshots ----------------------------------------------------------------------------------

_SNAPSHOT_ARRAYS = ("ids", "rowids", "unit", "embedded")


def snapshot_folder(url: sa.URL) -> Path | None:
    """Where the index of the database at ``url`` is kept between processes: a folder beside
    an SQLite database file (``foundry.db.search-index``); None for other databases (PostgreSQL
    ranks by pgvector without a local copy) and in-memory ones."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:") or (
            url.query.get("mode") == "memory"):
        return None
    database = Path(url.database)
    return database.with_name(database.name + ".search-index")


def _write_snapshot(folder: Path, entries: _Entries) -> None:
    """Save ``entries`` as a new version in ``folder`` and point ``current`` at it; older
    versions are removed (a process that maps one keeps reading it until it unmaps).
    A folder that cannot be written only costs the next process a full read."""
    n = entries.count
    meta = {"count": n, "stamp": _jsonable(entries.stamp),
            "high_water": _jsonable(entries.high_water)}
    version = f"v{os.getpid()}-{time.time_ns()}"
    try:
        (folder / version).mkdir(parents=True)
        for name, array in (("ids", entries.ids[:n].astype(str)), ("rowids", entries.rowids[:n]),
                            ("unit", entries.unit[:n]), ("embedded", entries.embedded[:n])):
            np.save(folder / version / f"{name}.npy", array, allow_pickle=False)
        (folder / version / "meta.json").write_text(json.dumps(meta))
        pointer = folder / f"current.{version}.tmp"
        pointer.write_text(version)
        os.replace(pointer, folder / "current")
        for old in folder.iterdir():
            if old.is_dir() and old.name != version:
                shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        log.warning("could not save the search index in %s: %s", folder, exc)
        shutil.rmtree(folder / version, ignore_errors=True)


def _read_snapshot(folder: Path) -> _Entries | None:
    """The entries saved in ``folder``, the embeddings memory-mapped; None when there are
    none or they do not read back as written (then the database is read instead)."""
    try:
        version = (folder / "current").read_text().strip()
        meta = json.loads((folder / version / "meta.json").read_text())
        arrays = {name: np.load(folder / version / f"{name}.npy", allow_pickle=False,
                                mmap_mode="r" if name == "unit" else None)
                  for name in _SNAPSHOT_ARRAYS}
        n = int(meta["count"])
        if (arrays["unit"].shape != (n, EMBEDDING_DIM) or arrays["unit"].dtype != np.float32
                or any(len(arrays[name]) != n for name in _SNAPSHOT_ARRAYS)):
            raise ValueError("arrays of unexpected shapes")
        stamp = tuple(_from_jsonable(value) for value in meta["stamp"])
        high_water = _from_jsonable(meta["high_water"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if (folder / "current").exists():
            log.warning("ignoring the search index snapshot in %s: %s", folder, exc)
        return None
    return _Entries(stamp, high_water, n, arrays["ids"].astype(object),
                    arrays["rowids"].astype(np.int64), arrays["unit"],
                    arrays["embedded"].astype(bool), None)


def _jsonable(value: Any) -> Any:
    """A stamp part as JSON: datetimes tagged, so that they read back equal."""
    if isinstance(value, datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return datetime.fromisoformat(value["datetime"])
    return value
