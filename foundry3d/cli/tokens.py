"""CLI commands ``foundry3d token create|revoke|list``: bearer tokens of the HTTP API."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from foundry3d.cli.app import UserError, app, console

token_app = typer.Typer(help="Bearer tokens of the HTTP API.", no_args_is_help=True)
app.add_typer(token_app, name="token")


def _engine():  # noqa: ANN202
    from foundry3d.settings import get_settings
    from storage.db import DatabaseNotMigrated, ensure_database

    try:
        return ensure_database(get_settings().resolved_database_url)
    except DatabaseNotMigrated as exc:
        raise UserError(str(exc)) from exc


@token_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="A name to recognise and revoke the token by.")],
    scope: Annotated[str, typer.Option(help="read (list, search, download) or write (also "
                                       "submit, retry, cancel).")] = "read",
) -> None:
    """Create a token and print its secret once (only its sha256 is stored)."""
    from foundry3d.api.auth import hash_token, new_token_secret
    from storage import queries
    from storage.db import session_scope

    if scope not in ("read", "write"):
        raise UserError(f"scope must be read or write, got {scope!r}")
    if not name.strip() or len(name) > 128:
        raise UserError("the name must be 1 to 128 characters")
    secret = new_token_secret()
    try:
        with session_scope(_engine()) as session:
            queries.create_api_token(session, name=name, scope=scope,
                                     token_sha256=hash_token(secret))
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    console.print(f"token [bold]{name}[/] ({scope}); shown once, keep it safe:")
    print(secret)


@token_app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(help="The token's name.")]) -> None:
    """Revoke a token; requests carrying it are refused from now on."""
    from storage import queries
    from storage.db import session_scope

    try:
        with session_scope(_engine()) as session:
            changed = queries.revoke_api_token(session, name)
    except LookupError as exc:
        raise UserError(str(exc)) from exc
    console.print(f"token {name} " + ("revoked" if changed else "was already revoked"))


@token_app.command("list")
def list_tokens() -> None:
    """The tokens: name, scope, created, revoked."""
    from storage import queries
    from storage.db import session_scope

    with session_scope(_engine()) as session:
        tokens = queries.list_api_tokens(session)
        table = Table(title="API tokens")
        for column in ("name", "scope", "created", "revoked"):
            table.add_column(column)
        for t in tokens:
            table.add_row(t.name, t.scope, f"{t.created_at:%Y-%m-%d %H:%M}",
                          f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "-")
    console.print(table)
