"""CLI command ``foundry3d api``: serve the HTTP job API and the web gallery with uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

from foundry3d.cli.app import UserError, app, console


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Address to listen on; non-loopback needs a token.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    concurrency: Annotated[int, typer.Option(help="Assets produced at once (0: settings).")] = 0,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Serve the job API (/v1, OpenAPI at /docs) and the gallery (/) until interrupted.

    Binding beyond loopback (e.g. --host 0.0.0.0) needs at least one active token
    (`foundry3d token create`); with no token ever created, a loopback server is open.
    """
    import uvicorn

    from foundry3d.api.app import create_app
    from foundry3d.api.auth import check_bind
    from foundry3d.cli.pipeline import _prepare, start_prefect_api
    from foundry3d.settings import get_api_settings
    from storage import queries
    from storage.db import DatabaseNotMigrated, get_engine, session_scope

    try:
        settings, _config = _prepare()  # quiet Prefect logs, data folder, database checked
    except DatabaseNotMigrated as exc:
        raise UserError(str(exc)) from exc
    with session_scope(get_engine(settings.resolved_database_url)) as session:
        _total, active = queries.api_token_counts(session)
    if (reason := check_bind(host, active)) is not None:
        raise UserError(reason)
    start_prefect_api(settings)
    application = create_app(settings, get_api_settings(), concurrency=concurrency or None)
    console.print(f"foundry3d API on http://{host}:{port}  (gallery /, OpenAPI /docs)")
    uvicorn.run(application, host=host, port=port, log_level=log_level)
