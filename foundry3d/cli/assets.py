"""CLI commands that remove assets: `assets delete ID...` and `assets purge` (objects, rows)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer
from rich.table import Table

from foundry3d.cli.app import UserError, app, console

assets_app = typer.Typer(help="Remove assets with their objects.", no_args_is_help=True)
app.add_typer(assets_app, name="assets")

PURGEABLE_STATES = ("failed", "needs_review", "rejected", "pending", "succeeded")


def _store():  # noqa: ANN202
    from foundry3d.settings import get_settings
    from storage.objects import open_store

    return open_store(get_settings().pipeline_config().store_url)


def _confirm(what: str, yes: bool) -> None:
    if not yes and not typer.confirm(f"Delete {what}?", default=False):
        console.print("Nothing deleted.")
        raise typer.Exit(0)


def _report(removed: dict[str, int], rejected_rows: int = 0) -> None:
    if not removed and not rejected_rows:
        console.print("Nothing to delete: no such assets (already deleted?).")
        return
    if removed:
        table = Table(title="deleted")
        table.add_column("asset")
        table.add_column("objects", justify="right")
        for asset_id, count in removed.items():
            table.add_row(asset_id, str(count))
        console.print(table)
    if rejected_rows:
        console.print(f"Deleted {rejected_rows} rejected manifest rows.")
    console.print(f"Deleted {len(removed)} assets and {sum(removed.values())} objects.")


@assets_app.command("delete")
def delete(
    asset_ids: Annotated[list[str], typer.Argument(help="Asset ids (or unique prefixes).")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete assets: their objects in the store first, then their rows in one transaction.

    Deleting an asset that is already gone is not an error.
    """
    from foundry3d.cli.db import _session
    from storage import queries
    from storage.integrity import delete_assets

    with _session() as session:
        ids = []
        for name in asset_ids:
            try:
                ids.append(queries.resolve_asset_id(session, name))
            except queries.AmbiguousAssetId as exc:
                raise UserError(str(exc)) from exc
            except queries.UnknownAsset:
                console.print(f"no asset {name!r} (already deleted?)")
        if not ids:
            _report({})
            return
        _confirm(f"{len(ids)} asset(s) and their objects", yes)
        removed = delete_assets(session, _store(), ids)
    _report(removed)


@assets_app.command("purge")
def purge(
    state: Annotated[str, typer.Option(help=f"One of {', '.join(PURGEABLE_STATES)}.")] = "failed",
    batch: Annotated[str | None, typer.Option(help="Only assets of this batch id.")] = None,
    older_than: Annotated[
        float | None, typer.Option(help="Only those last updated more than DAYS days ago.")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete every asset in a state (default failed) with its objects; `--state rejected`
    deletes the rejected manifest rows (they have no asset and no objects)."""
    from foundry3d.cli.db import _session
    from storage import queries
    from storage.integrity import delete_assets
    from storage.schema import utcnow

    if state not in PURGEABLE_STATES:
        raise UserError(f"--state must be one of {', '.join(PURGEABLE_STATES)}, got {state!r}")
    if older_than is not None and older_than < 0:
        raise UserError(f"--older-than must be a number of days >= 0, got {older_than}")
    age = timedelta(days=older_than) if older_than is not None else None
    with _session() as session:
        if state == "rejected":
            _confirm("the rejected manifest rows" + (f" of batch {batch}" if batch else ""), yes)
            count = queries.delete_rejected_items(
                session, batch_id=batch, older_than=utcnow() - age if age else None
            )
            _report({}, count)
            return
        assets = queries.list_assets(session, state=state, batch_id=batch, older_than=age)
        if not assets:
            console.print(f"No {state} assets match; nothing to delete.")
            return
        _confirm(f"{len(assets)} {state} asset(s) and their objects", yes)
        removed = delete_assets(session, _store(), [asset.id for asset in assets])
    _report(removed)
