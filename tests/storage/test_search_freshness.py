"""On PostgreSQL a search learns whether the prompt index changed from one primary-key read of
the trigger-kept version counter (migration 0010), and still sees every committed change."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from storage import queries as q
from storage import search
from storage.db import make_engine, session_scope
from storage.schema import EMBEDDING_DIM, Asset

pytestmark = pytest.mark.postgres


def _asset_id(n: int) -> str:
    return f"f{n:05d}".ljust(64, "0")


def _add(session: Session, n: int, text: str) -> None:
    q.insert_asset_if_new(session, asset_id=_asset_id(n), kind="prompt", prompt=text, seed=n,
                          generator="library", init="library", tags=[])
    vector = np.random.default_rng(n).normal(size=EMBEDDING_DIM).astype(np.float32)
    search.index_prompt(session, _asset_id(n), text, [], vector)


@pytest.fixture
def engines(new_postgres_database):
    """``(reader, writer)`` on a migrated database of three entries; the reader has one
    connection, so the stamp it remembers is always the one asked."""
    url = new_postgres_database(migrated=True)
    reader = make_engine(url, pool_size=1, max_overflow=0)
    writer = make_engine(url)
    with session_scope(writer) as session:
        for n in range(3):
            _add(session, n, f"a red chair number {n}")
    yield reader, writer
    reader.dispose()
    writer.dispose()


def _fresh_and_true(engine: sa.Engine) -> tuple:
    """The stamp the search uses, asserted equal to a full count."""
    with session_scope(engine) as session:
        stamp = search._freshness_stamp(session)
        assert stamp == search._read_stamp(session)
    return stamp


def test_an_unchanged_index_costs_one_primary_key_read(engines):
    reader, _writer = engines
    _fresh_and_true(reader)
    statements: list[str] = []
    sa.event.listen(reader, "before_cursor_execute",
                    lambda _c, _cursor, statement, *_args: statements.append(statement))
    with session_scope(reader) as session:
        assert search._freshness_stamp(session)[0] == 3
    assert statements == ["SELECT version FROM prompt_index_version WHERE id = 1"]


@pytest.mark.parametrize("change", ["insert", "re-index", "remove", "asset deleted", "truncate"])
def test_each_committed_change_of_the_index_is_seen_by_the_next_stamp(engines, change):
    reader, writer = engines
    before = _fresh_and_true(reader)
    with session_scope(writer) as session:
        if change == "insert":
            _add(session, 3, "a blue mug")
        elif change == "re-index":
            search.index_prompt(session, _asset_id(1), "a green lamp", [], None)
        elif change == "remove":
            search.remove_from_index(session, _asset_id(1))
        elif change == "asset deleted":  # the entry goes by ON DELETE CASCADE
            session.execute(sa.delete(Asset).where(Asset.id == _asset_id(2)))
        else:
            session.execute(sa.text("TRUNCATE prompt_index"))
    assert _fresh_and_true(reader) != before


def test_a_version_seen_inside_a_rolled_back_write_never_names_a_later_state(engines):
    reader, writer = engines
    with Session(reader) as session:  # indexes, looks, then rolls back
        _add(session, 3, "a blue mug")
        assert search._freshness_stamp(session)[0] == 4
        session.rollback()
    with session_scope(writer) as session:  # as many statements, so as many counter steps
        _add(session, 4, "a brass kettle")
    assert _fresh_and_true(reader)[0] == 4
