"""The authenticator: a token created by any process is enforced on the next check, and while
none exists the check costs O(1) (on SQLite, no query of the token table at all)."""

from __future__ import annotations

import sqlalchemy as sa

from foundry3d.api.auth import Authenticator, hash_token, new_token_secret
from storage import queries
from storage.db import make_engine, session_scope


def _create_token(url: str, name: str) -> None:
    """A token made through an engine of its own, as another process would."""
    engine = make_engine(url)
    try:
        with session_scope(engine) as session:
            queries.create_api_token(session, name=name, scope="read",
                                     token_sha256=hash_token(new_token_secret()))
    finally:
        engine.dispose()


def test_a_token_created_elsewhere_is_seen_by_the_next_check(db_url):
    auth = Authenticator(make_engine(db_url))
    assert not auth.configured()
    assert not auth.configured()
    _create_token(db_url, "late")
    assert auth.configured()


def test_a_token_revoked_elsewhere_leaves_the_api_closed(db_url):
    auth = Authenticator(make_engine(db_url))
    _create_token(db_url, "only")
    engine = make_engine(db_url)
    with session_scope(engine) as session:
        queries.revoke_api_token(session, "only")
    engine.dispose()
    assert auth.configured()


def test_on_sqlite_an_unchanged_database_is_not_asked_for_its_tokens_again(tmp_path):
    from storage.db import upgrade_database

    url = f"sqlite:///{tmp_path / 'app.db'}"
    upgrade_database(url)
    engine = make_engine(url, pool_size=1, max_overflow=0)
    auth = Authenticator(engine)
    assert not auth.configured()
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute",
                    lambda _c, _cursor, statement, *_args: statements.append(statement))
    assert not auth.configured()
    assert statements == ["PRAGMA data_version"]
