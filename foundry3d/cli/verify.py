"""CLI command `verify`: is every recorded object in the store, whole? With --repair, re-queue."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from foundry3d.cli.app import app, console


@app.command("verify")
def verify(
    repair: Annotated[
        bool,
        typer.Option(help="Mark stages whose outputs are gone as not done, for `foundry3d retry`."),
    ] = False,
) -> None:
    """Check every recorded object: it exists, has its size and (when recorded) its sha256.

    Reports the missing or corrupt objects per asset. An asset whose asset.glb is bad leaves the
    search index. With --repair, the stages that wrote a bad object and every stage after them
    are marked not done and the asset failed (retryable:MissingObject), so `foundry3d retry`
    produces them again. Exits 1 when a problem is found.
    """
    import sqlalchemy as sa

    from foundry3d.cli.assets import _store
    from foundry3d.cli.db import _session
    from storage.integrity import check_asset, repair_asset
    from storage.schema import Asset
    from storage.search import remove_from_index
    from tasks.stage import STAGES

    store = _store()
    checked = 0
    found: dict[str, list] = {}
    repaired: dict[str, list[str]] = {}
    with _session() as session:
        assets = session.scalars(sa.select(Asset).order_by(Asset.created_at, Asset.id)).all()
        for asset in assets:  # read first: repairs write in the same transaction
            checked += 1
            problems = check_asset(session, store, asset)
            if not problems:
                continue
            found[asset.id] = problems
            if any(p.key.endswith("/asset.glb") for p in problems):
                remove_from_index(session, asset.id)  # never a search hit without its GLB
            if repair:
                repaired[asset.id] = repair_asset(session, asset, problems, STAGES)
    if not found:
        console.print(f"All objects of {checked} assets are in the store and intact.")
        return
    table = Table(title=f"verify: {len(found)} of {checked} assets have bad objects")
    for column in ("asset", "object", "problem", "detail"):
        table.add_column(column, overflow="fold")
    if repair:
        table.add_column("re-run stages", overflow="fold")
    for asset_id, problems in found.items():
        for i, problem in enumerate(problems):
            row = [asset_id[:12] if i == 0 else "", problem.key, problem.problem, problem.detail]
            if repair:
                row.append(", ".join(repaired.get(asset_id, [])) if i == 0 else "")
            table.add_row(*row)
    console.print(table)
    if repair:
        console.print(f"Marked {len(repaired)} assets failed (retryable:MissingObject); "
                      "run [bold]foundry3d retry --error retryable:MissingObject[/].")
    else:
        console.print("Run [bold]foundry3d verify --repair[/] to have `foundry3d retry` "
                      "produce them again.")
    raise typer.Exit(1)
