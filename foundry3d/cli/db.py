"""CLI commands of the application database: `db upgrade`, `db current`, `status`, `show`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated

import typer
from rich.table import Table

from foundry3d.cli.app import UserError, app, console

db_app = typer.Typer(help="The application database (schema migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _database_url() -> str:
    from foundry3d.settings import get_settings

    return get_settings().resolved_database_url


def _shown_url(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from storage.redact import redact_url

    try:
        # redact_url as well: a password may also sit in the query (?password=...).
        return redact_url(make_url(url).render_as_string(hide_password=True))
    except ArgumentError:  # not a URL SQLAlchemy can parse: mask what looks like a secret
        return redact_url(url)


def _password(url: str) -> str | None:
    """The URL's password (to mask it wherever a message repeats it), if it has one."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).password or None
    except ArgumentError:
        return None


@contextlib.contextmanager
def _session() -> Iterator:
    """A read session on the settings' database, migrated (SQLite) or checked (server)."""
    from storage.db import DatabaseNotMigrated, ensure_database, session_scope

    try:
        engine = ensure_database(_database_url())
    except DatabaseNotMigrated as exc:
        raise UserError(str(exc)) from exc
    with session_scope(engine) as session:
        yield session


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def _num(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.2f}{unit}"


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Migrate the application database (FOUNDRY_DATABASE_URL) to the latest schema."""
    from storage.db import upgrade_database

    url = _database_url()
    try:
        reached = upgrade_database(url, revision)
    except Exception as exc:  # one line: unreachable server, bad URL...
        from storage.redact import redact_text

        # A driver's message may repeat the URL, password included.
        detail = redact_text(" ".join(str(exc).split()))  # one line: drivers write several
        secret = _password(url)
        if secret:
            detail = detail.replace(secret, "***")
        raise UserError(f"could not upgrade {_shown_url(url)}: {detail}") from None
    console.print(f"database {_shown_url(url)} is at revision [bold]{reached}[/]")


@db_app.command("current")
def db_current() -> None:
    """Show the schema revision of the application database and the latest one."""
    from storage.db import current_revision, get_engine, head_revision

    url = _database_url()
    current = current_revision(get_engine(url))
    head = head_revision()
    note = "up to date" if current == head else "run `foundry3d db upgrade`"
    console.print(
        f"database {_shown_url(url)}: revision {current or 'none'} (latest {head}; {note})"
    )


@app.command("status")
def status(
    failures: Annotated[int, typer.Option(help="How many recent failures to list.")] = 10,
) -> None:
    """Counts of assets per state and per stage, the latest failures and the latest assets
    that need review (with the metrics that missed their thresholds)."""
    from storage import queries

    with _session() as session:
        by_state = queries.counts_by_state(session)
        by_stage = queries.counts_by_stage(session)
        failed = queries.list_assets(session, state="failed")[-failures:] if failures else []
        review = (queries.list_assets(session, state="needs_review")[-failures:]
                  if failures else [])

    states = Table(title="Assets by state")
    states.add_column("state")
    states.add_column("assets", justify="right")
    for state, count in by_state.items():
        states.add_row(state, str(count))
    states.add_row("[bold]total[/]", f"[bold]{sum(by_state.values())}[/]")
    console.print(states)

    statuses = ("succeeded", "failed", "running", "skipped")
    stages = Table(title="Stages (latest attempt per asset)")
    stages.add_column("stage")
    for name in statuses:
        stages.add_column(name, justify="right")
    for stage, counts in by_stage.items():
        stages.add_row(stage, *(str(counts.get(name, 0)) for name in statuses))
    if not by_stage:
        stages.add_row("(no stage has run yet)", *("" for _ in statuses))
    console.print(stages)

    if failed:
        table = Table(title="Latest failures")
        for column in ("asset", "stage", "error", "message", "updated"):
            table.add_column(column, overflow="fold")
        for asset in failed:
            table.add_row(
                asset.id[:12],
                asset.current_stage or "-",
                asset.last_error_class or "-",
                (asset.last_error_message or "")[:80],
                _when(asset.updated_at),
            )
        console.print(table)

    if review:
        table = Table(title="Latest assets that need review (foundry3d retry --state needs_review)")
        for column in ("asset", "why", "updated"):
            table.add_column(column, overflow="fold")
        for asset in review:
            table.add_row(asset.id[:12], asset.last_error_message or "-", _when(asset.updated_at))
        console.print(table)


def resolve_shown_asset(session, name: str, batch: str | None) -> str:  # noqa: ANN001
    """The asset id meant by ``name``: an asset id (or unique prefix), else a manifest ``id``
    (within ``batch`` when given). Raises :class:`UserError` naming the candidates when the
    manifest id names several assets."""
    from storage import queries

    if batch is None:
        try:
            return queries.resolve_asset_id(session, name)
        except queries.AmbiguousAssetId as exc:
            raise UserError(str(exc)) from exc
        except queries.UnknownAsset:
            pass
    items = queries.find_manifest_items(session, name.strip(), batch)
    assets = list(dict.fromkeys(item.asset_id for item in items))
    if len(assets) == 1:
        return assets[0]
    if not assets:
        where = f" in batch {batch!r}" if batch else ""
        raise UserError(f"no asset with id {name!r} and no manifest row with id {name!r}{where}")
    shown = "; ".join(
        f"{item.asset_id[:12]} (batch {item.batch_id[:12]}, line {item.line})" for item in items
    )
    raise UserError(
        f"manifest id {name!r} names {len(assets)} assets: {shown}; pick one with --batch BATCH"
    )


def library_match(asset, metrics: dict[str, float]) -> dict | None:  # noqa: ANN001
    """The library mesh an asset was built from (``match.json`` of its bundle stage, read from
    the store), or what its metrics say of it; None when it was not retrieved."""
    import json

    from foundry3d.settings import get_settings
    from storage.objects import StoreError, open_store

    match: dict = {}
    key = (asset.output_keys or {}).get("match.json")
    if key:
        try:
            store = open_store(get_settings().pipeline_config().store_url)
            match = json.loads(store.get_bytes(key))
        except (StoreError, ValueError, OSError):
            match = {}  # the metrics below still say how good the match was
    if "library_similarity" in metrics:
        match.setdefault("similarity", metrics["library_similarity"])
    if "library_match_weak" in metrics:
        match["weak"] = bool(metrics["library_match_weak"])
    return match or None


def _match_line(match: dict) -> str:
    name = match.get("caption") or match.get("id") or "?"
    parts = [f"{match['id']}: {name}" if match.get("id") and match.get("caption") else name]
    if match.get("similarity") is not None:
        parts.append(f"similarity {float(match['similarity']):.2f}")
    if match.get("licence"):
        parts.append(f"licence: {match['licence']}")
    line = ", ".join(parts)
    if match.get("weak"):
        line = "[bold yellow]WEAK MATCH[/] " + line + " (review: it may not be what was asked for)"
    return line


@app.command("show")
def show(
    asset_id: Annotated[
        str, typer.Argument(help="Asset id (or a unique prefix), or the manifest row's id.")
    ],
    batch: Annotated[
        str | None, typer.Option(help="Batch id (or prefix) when a manifest id is ambiguous.")
    ] = None,
) -> None:
    """Everything recorded about one asset: request, stages, errors, metrics, object keys."""
    from storage import queries

    with _session() as session:
        full_id = resolve_shown_asset(session, asset_id, batch)
        detail = queries.get_asset_detail(session, full_id)
        references = queries.asset_references(session, [full_id]).get(full_id, [])
    assert detail is not None
    asset = detail.asset
    match = library_match(asset, detail.metrics)

    about = Table(title=f"Asset {asset.id}", show_header=False)
    about.add_column("field", style="bold")
    about.add_column("value", overflow="fold")  # ids and paths wrap, never an ellipsis
    request = asset.prompt if asset.kind == "prompt" else asset.image_ref or asset.bundle_ref
    rows = [
        ("kind", asset.kind),
        ("request", request or "-"),
        ("files", ", ".join(references) or "-"),
        ("library mesh", _match_line(match) if match else "-"),
        ("seed / variant", f"{asset.seed} / {asset.variant}"),
        ("generator / init", f"{asset.generator} / {asset.init}"),
        ("tags", ", ".join(asset.tags) or "-"),
        ("state", asset.state),
        ("current stage", asset.current_stage or "-"),
        ("attempts", str(asset.attempts)),
        (
            "lease",
            f"{asset.lease_owner} until {_when(asset.lease_expires_at)}"
            if asset.lease_owner
            else "-",
        ),  # fmt: skip
        (
            "last error",
            f"{asset.last_error_class}: {asset.last_error_message}"
            if asset.last_error_class and asset.state != "needs_review"
            else "-",
        ),  # fmt: skip
        # Its metrics missed the quality verdict: which ones, their values and thresholds.
        ("review", asset.last_error_message or "-") if asset.state == "needs_review" else None,
        ("created / updated", f"{_when(asset.created_at)} / {_when(asset.updated_at)}"),
        ("finished", _when(asset.finished_at)),
        ("batches", ", ".join(detail.batch_ids) or "-"),
    ]
    for row in rows:
        if row is not None:
            about.add_row(*row)
    console.print(about)

    runs = Table(title="Stage runs (times in UTC)")
    for column in ("stage", "#", "status", "started", "duration"):
        runs.add_column(column, no_wrap=True)
    runs.add_column("host / device", overflow="fold")
    runs.add_column("peak MB", justify="right", no_wrap=True)
    for run in detail.stage_runs:
        runs.add_row(
            run.stage,
            str(run.attempt),
            run.status,
            _when(run.started_at),
            _num(run.duration_s, " s"),
            f"{run.host or '-'} / {run.device or '-'}",
            _num(run.peak_memory_mb),
        )
    if not detail.stage_runs:
        runs.add_row("(none yet)", *("" for _ in range(6)))
    console.print(runs)

    failed_runs = [run for run in detail.stage_runs if run.error_class]
    if failed_runs:
        errors = Table(title="Errors")
        errors.add_column("stage", no_wrap=True)
        errors.add_column("#")
        errors.add_column("error", overflow="fold")
        for run in failed_runs:
            errors.add_row(run.stage, str(run.attempt), f"{run.error_class}: {run.error_message}")
        console.print(errors)

    if detail.metrics:
        metrics = Table(title="Metrics")
        metrics.add_column("name")
        metrics.add_column("value", justify="right")
        for name, value in detail.metrics.items():
            metrics.add_row(name, f"{value:.6g}")
        console.print(metrics)

    if asset.output_keys:
        keys = Table(title="Objects")
        keys.add_column("artefact")
        keys.add_column("key", overflow="fold")
        for name, key in sorted(asset.output_keys.items()):
            keys.add_row(name, str(key))
        console.print(keys)
