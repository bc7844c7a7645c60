"""Alembic environment of the foundry3d application database.

The URL is, in order: ``alembic -x url=...``, the ``sqlalchemy.url`` option set by the caller
(:func:`storage.db.alembic_config`, tests), then ``foundry3d.settings``. A caller may also hand
over an open connection in ``config.attributes["connection"]``.
"""

from __future__ import annotations

import contextlib
from logging.config import fileConfig

from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from alembic import context
from storage.db import make_engine, normalise_url
from storage.schema import SQLITE_FTS_TABLE, UNMANAGED_NAMES, Base, UTCDateTime

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata

# Registers the 'vector' type for reflection, so comparing a pgvector database does not warn.
with contextlib.suppress(ImportError):
    import pgvector.sqlalchemy  # noqa: F401


def database_url() -> str:
    """The URL to migrate (see the module docstring for the order of precedence)."""
    url = context.get_x_argument(as_dictionary=True).get("url")
    url = url or config.get_main_option("sqlalchemy.url")
    if not url:
        from foundry3d.settings import get_settings

        url = get_settings().resolved_database_url
    return normalise_url(url).render_as_string(hide_password=False)


def include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Leave the dialect-specific search objects (created by migrations only) to the migrations.

    FTS5 creates shadow tables named ``prompt_fts_*``; the PostgreSQL full-text index, the pgvector
    column and its index are unknown to the ORM metadata on purpose.
    """
    if type_ == "table" and name is not None and name.startswith(SQLITE_FTS_TABLE):
        return False
    return name not in UNMANAGED_NAMES


def render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    """Render UTCDateTime as a plain timestamptz so migrations do not import live types."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        include_object=include_object,
        render_item=render_item,
        compare_type=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    url = database_url()
    _configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    engine = make_engine(database_url(), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            _run_with(connection)
    finally:
        engine.dispose()


def _run_with(connection: Connection) -> None:
    # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
