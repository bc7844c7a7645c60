"""Engines, sessions and migrations of the application database.

One engine per process (:func:`get_engine`); query functions take a session and never commit, the
caller opens it with :func:`session_scope` and commits once. The schema comes only from Alembic:
:func:`upgrade_database` runs the migrations programmatically, :func:`ensure_database` upgrades an
embedded SQLite database on first use and refuses a server database that is behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from alembic.config import Config

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long an SQLite connection waits for another writer before failing."""

UPGRADE_HINT = "foundry3d db upgrade"

DB_RETRY_SECONDS = 60.0
"""Default window in which a transaction is retried while the database is unreachable."""

RETRY_DELAYS_S = (0.25, 0.5, 1.0, 2.0, 4.0)
"""Backoff between retries of a transaction; the last delay repeats until the window ends."""

log = logging.getLogger(__name__)
T = TypeVar("T")


class DatabaseNotMigrated(RuntimeError):
    """The database schema is not at the latest Alembic revision."""


def normalise_url(url: str | URL) -> URL:
    """Parse ``url``; a bare ``postgresql://`` gets the installed psycopg 3 driver."""
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _sqlite_path(url: URL) -> Path | None:
    """The file of an SQLite URL, or None for an in-memory database."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets readers (status, search) run while a worker writes.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def make_engine(url: str | URL, **kwargs: object) -> Engine:
    """A new engine for ``url``; prefer :func:`get_engine`, which keeps one per process and URL.

    SQLite connections use WAL, a busy timeout of :data:`SQLITE_BUSY_TIMEOUT_MS`, foreign keys,
    and may be shared between threads; the parent folder of an SQLite file is created.
    PostgreSQL connections are pinged before use.
    """
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = _sqlite_path(parsed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        engine = sa.create_engine(parsed, connect_args=connect_args, **kwargs)
        sa.event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(parsed, **kwargs)


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def get_engine(url: str | URL) -> Engine:
    """The process's one engine for ``url`` (created on first use, then shared by every thread).

    The CLI, the tasks and the flows all get their engines here, so a process holds one
    connection pool per database however many tasks run in it.
    """
    key = normalise_url(url).render_as_string(hide_password=False)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = make_engine(key)
        return engine


def dispose_engines() -> None:
    """Close and forget every engine of this process (tests, and forked workers)."""
    with _engines_lock:
        engines = list(_engines.values())
        _engines.clear()
    for engine in engines:
        engine.dispose()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A sessionmaker bound to ``engine``; objects stay readable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextlib.contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits once when the block ends, or rolls back if it raises."""
    session = Session(bind=engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


class DatabaseUnavailable(RuntimeError):
    """The database stayed unreachable for the whole retry window (retryable later).

    ``step`` names what was being done (``"recording the manifest"``), or is None; the message
    says it, the window and the driver's error class, and never a URL.
    """

    retryable = True
    retry_in_place = False  # the window was the in-place retry; the retry flow comes next

    def __init__(self, message: str, step: str | None = None) -> None:
        super().__init__(message)
        self.step = step


def is_connection_error(exc: BaseException) -> bool:
    """True for errors that mean "the database is unreachable or busy", worth retrying.

    SQLAlchemy wraps a refused or dropped connection (and SQLite's "database is locked") in
    ``OperationalError`` / ``InterfaceError``, or flags it ``connection_invalidated``; schema
    and data errors are other classes.
    """
    if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        return True
    return isinstance(exc, sa.exc.DBAPIError) and bool(exc.connection_invalidated)


def through_outage(
    call: Callable[[], T],
    *,
    retry_seconds: float = DB_RETRY_SECONDS,
    step: str | None = None,
) -> T:
    """``call()``, run again with backoff (:data:`RETRY_DELAYS_S`) while it fails because the
    database is unreachable, for up to ``retry_seconds``; then :class:`DatabaseUnavailable`
    naming ``step``.

    ``call`` must open its own session(s) and be safe to run again: a transaction whose commit
    was cut off may or may not have been written. Its own errors (not connection errors)
    propagate at once. Prefer :func:`in_transaction` for one transaction.
    """
    deadline = time.monotonic() + retry_seconds
    tries = 0
    while True:
        try:
            return call()
        except sa.exc.DBAPIError as exc:
            if not is_connection_error(exc):
                raise
            delay = RETRY_DELAYS_S[min(tries, len(RETRY_DELAYS_S) - 1)]
            if time.monotonic() + delay > deadline:
                during = f" while {step}" if step else ""
                cause = type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__
                raise DatabaseUnavailable(
                    f"database unreachable for {retry_seconds:g} s{during} ({cause})", step
                ) from exc
            if tries == 0:
                log.warning("database unreachable (%s)%s; retrying for up to %g s",
                            type(exc).__name__, f" while {step}" if step else "", retry_seconds)
            tries += 1
            time.sleep(delay)


def in_transaction(
    engine: Engine,
    body: Callable[[Session], T],
    *,
    retry_seconds: float = DB_RETRY_SECONDS,
    step: str | None = None,
) -> T:
    """``body(session)`` in one transaction, committed; retried from the start with backoff
    while the database is unreachable, for up to ``retry_seconds`` (then
    :class:`DatabaseUnavailable` naming ``step``, whose message names no URL).

    ``body`` must be safe to run again: a transaction whose commit was cut off may or may not
    have been written. Its own errors (not connection errors) propagate at once. ORM objects
    expire at the commit: return plain values.
    """

    def once() -> T:
        with Session(engine) as session:
            result = body(session)
            session.commit()
            return result

    return through_outage(once, retry_seconds=retry_seconds, step=step)


# --- migrations -------------------------------------------------------------------------------


def alembic_dir() -> Path:
    """The ``alembic/`` folder of the repository (found beside the ``storage`` package)."""
    path = Path(__file__).resolve().parent.parent / "alembic"
    if not (path / "env.py").is_file():
        raise FileNotFoundError(
            f"alembic migrations not found at {path}; install foundry3d from its repository "
            "(pip install -e .) so the migrations are available"
        )
    return path


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic ``Config`` for the migrations; ``url`` (if given) overrides the settings."""
    from alembic.config import Config

    # Alembic's default stdout is bound when alembic is first imported; pass the current one.
    config = Config(stdout=sys.stdout)
    config.set_main_option("script_location", str(alembic_dir()))
    if url is not None:
        rendered = normalise_url(url).render_as_string(hide_password=False)
        # ConfigParser interpolation would eat '%' in passwords.
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The latest migration revision id."""
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"expected one migration head, found {heads}")
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for a database never migrated."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@contextlib.contextmanager
def _migration_lock(url: URL) -> Iterator[None]:
    """Serialise migrations of one SQLite file between processes (a lock file beside it)."""
    path = _sqlite_path(url)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".migrate.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade_database(url: str | URL, revision: str = "head") -> str | None:
    """Run the Alembic migrations on ``url`` up to ``revision``; returns the new revision."""
    from alembic import command

    parsed = normalise_url(url)
    with _migration_lock(parsed):
        command.upgrade(alembic_config(parsed), revision)
    # A short-lived engine, closed at once: a pooled connection left open by the process engine
    # would, for one, keep PostgreSQL from copying a freshly migrated template database.
    engine = make_engine(parsed)
    try:
        return current_revision(engine)
    finally:
        engine.dispose()


def check_migrated(engine: Engine) -> None:
    """Raise :class:`DatabaseNotMigrated`, naming the command to run, unless at the head."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        where = engine.url.render_as_string(hide_password=True)
        state = "has no schema" if current is None else f"is at revision {current}"
        raise DatabaseNotMigrated(
            f"database {where} {state}, expected {head}; run `{UPGRADE_HINT}`"
        )


_ensured: set[str] = set()
_ensure_lock = threading.Lock()


def ensure_database(url: str | URL) -> Engine:
    """The process engine of ``url``, with the schema checked once per process.

    An embedded SQLite database is created and upgraded automatically; a server database
    (PostgreSQL) that is behind raises :class:`DatabaseNotMigrated`, since upgrading shared
    production schemas is an explicit step (``foundry3d db upgrade``).
    """
    parsed = normalise_url(url)
    key = parsed.render_as_string(hide_password=False)
    engine = get_engine(parsed)
    with _ensure_lock:
        if key in _ensured:
            return engine
        if parsed.get_backend_name() == "sqlite" and _sqlite_path(parsed) is not None:
            if current_revision(engine) != head_revision():
                upgrade_database(parsed)
        check_migrated(engine)
        _ensured.add(key)
    return engine
