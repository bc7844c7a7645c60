"""No secret at rest: the database password and the store credentials never reach the console,
the application database or Prefect's database (flow run parameters, task runs, logs, states)."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from storage.schema import Base
from tasks.config import PipelineConfig
from tests.flows.conftest import write_manifest

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]

DB_SECRET = "pgPASSWORD4711"
STORE_SECRET = "SECRET"


def _text_of_every_row(url: str, tables: list[str] | None = None) -> str:
    """Every row of every table of the database at ``url``, as one text."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            names = tables or sa.inspect(connection).get_table_names()
            return "\n".join(
                repr(row)
                for name in names
                for row in connection.execute(sa.text(f'SELECT * FROM "{name}"'))
            )
    finally:
        engine.dispose()


def _prefect_database_url() -> str:
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    secret = url.get_secret_value() if hasattr(url, "get_secret_value") else str(url)
    return secret.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")


@pytest.mark.postgres
@pytest.mark.s3
def test_no_secret_is_stored_or_shown_after_a_failing_and_a_succeeding_asset(
    new_postgres_database, s3_server, tiny_library, tmp_path, capsys, caplog
):
    from flows.catalog import catalog_flow

    caplog.set_level(logging.INFO)  # what the console shows (library DEBUG chatter is off)
    # The test server trusts local connections, so a password in the URL is carried but unused.
    database_url = make_url(new_postgres_database(migrated=True)).set(password=DB_SECRET)
    database_url = database_url.render_as_string(hide_password=False)
    if not s3_server.running:
        s3_server.start()
    store_url = s3_server.bucket_url(prefix=f"secrets-{tmp_path.name}").replace(
        "endpoint_url=http://", f"endpoint_url=http://foundry:{STORE_SECRET}@"
    )
    config = PipelineConfig(database_url=database_url, store_url=store_url,
                            library_path=str(tiny_library), lease_seconds=60)
    manifest = write_manifest(tmp_path, [
        {"id": "no-weights", "prompt": "a soda can", "init": "lrm"},  # fails: no LRM weights
        {"id": "fine", "prompt": "a rubber ball", "init": "library"},
    ])

    summary = catalog_flow(str(manifest), config)

    assert (summary.produced, summary.failed) == (1, 1)
    console = capsys.readouterr()
    places = {
        "console": console.out + console.err + caplog.text,
        "application database": _text_of_every_row(database_url, sorted(Base.metadata.tables)),
        "Prefect database": _text_of_every_row(_prefect_database_url()),
    }
    for place, text in places.items():
        assert text, f"nothing read from the {place}"
        assert DB_SECRET not in text, f"the database password is in the {place}"
        assert f":{STORE_SECRET}@" not in text, f"the store credentials are in the {place}"
