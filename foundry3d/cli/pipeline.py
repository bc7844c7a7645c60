"""CLI commands of the pipeline: run, retry, search, serve."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live
from rich.table import Table

from foundry3d.cli.app import UserError, app, console


def _prepare(verbose: bool = False):
    """Settings -> config, with the database migrated and Prefect quiet unless asked."""
    from foundry3d.settings import get_settings
    from storage.db import ensure_database

    if not verbose:
        # The live table shows progress; Prefect's per-run INFO lines would scroll it away.
        for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.server"):
            logging.getLogger(name).setLevel(logging.WARNING)
        os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ensure_database(settings.resolved_database_url)
    return settings, settings.pipeline_config()


class _ProgressBoard:
    """A live table: one row per asset with its current stage and step progress."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.started = time.perf_counter()

    def __call__(self, event: dict) -> None:
        with self.lock:
            row = self.rows.setdefault(event["asset_id"], {"stage": "", "status": "", "done": 0})
            row["stage"] = event["stage"]
            kind = event["event"]
            if kind == "step":
                row["status"] = f"{event['step']}/{event['total']} {event.get('message', '')}"[:60]
            elif kind == "done":
                row["status"] = f"done in {event.get('seconds', 0):.1f} s"
                row["done"] += 1
            elif kind == "skipped":
                row["status"] = "already done"
                row["done"] += 1
            else:
                row["status"] = kind if kind != "failed" else f"failed: {event.get('message', '')}"

    def render(self) -> Table:
        from tasks.stage import STAGES

        table = Table(title=f"foundry3d  {time.perf_counter() - self.started:5.0f} s", expand=False)
        table.add_column("asset")
        table.add_column("stage")
        table.add_column("stages done", justify="right")
        table.add_column("progress", overflow="fold")
        with self.lock:
            for asset_id, row in self.rows.items():
                table.add_row(asset_id[:12], row["stage"], f"{row['done']}/{len(STAGES)}",
                              row["status"])
        return table


def _print_summary(summary, store_url: str) -> None:
    table = Table(title="catalog summary")
    for column in ("asset", "request", "outcome", "seconds", "files (asset.glb, preview.png, ...)"):
        table.add_column(column, overflow="fold")
    for row in summary.assets:
        style = {"succeeded": "green", "failed": "red"}.get(row["outcome"], "dim")
        outcome = row["outcome"] if row["outcome"] != "failed" else f"failed: {row['error']}"
        seconds = f"{row['seconds']:.1f}" if row["outcome"] == "succeeded" else ""
        table.add_row(row["asset_id"][:12], row["prompt"], f"[{style}]{outcome}[/]", seconds,
                      row["folder"])
    for rejection in summary.rejections:
        table.add_row("-", f"{Path(rejection['file']).name}:{rejection['line']}",
                      f"[yellow]rejected: {rejection['reason']}[/]", "", "")
    console.print(table)
    console.print(summary.render_text())
    if summary.nothing_new:
        console.print("[bold]Nothing new:[/] every asset of this manifest was already done "
                      "(or is being produced by another run).")
    console.print(f"Files are in {store_url} under assets/<asset id>/ ; details: "
                  "[bold]foundry3d show ASSET_ID[/]")


@app.command()
def run(
    manifest: Annotated[Path, typer.Argument(help="Manifest (YAML, JSONL or CSV).")],
    concurrency: Annotated[int, typer.Option(help="Assets produced at once.")] = 0,
    shard_size: Annotated[int, typer.Option(help="Assets per worker process (server mode).")] = 1,
    verbose: Annotated[bool, typer.Option(help="Show Prefect's logs.")] = False,
) -> None:
    """Generate every asset of MANIFEST: bundle -> mesh -> refine -> texture -> GLB + metrics.

    Runs in this process on the embedded defaults, or on the asset deployment's work pool when
    FOUNDRY_PREFECT_MODE=server. Assets already done are skipped; rejected rows are listed.
    """
    if not manifest.exists():
        raise UserError(f"manifest {manifest} does not exist")
    settings, config = _prepare(verbose)
    _check_library(config)
    from flows.catalog import catalog_flow
    from tasks import progress

    board = _ProgressBoard()
    unsubscribe = progress.subscribe(board)
    deployment = settings.asset_deployment if settings.prefect_mode == "server" else None
    try:
        with Live(board.render(), console=console, refresh_per_second=2, transient=False) as live:
            result: dict = {}
            worker = threading.Thread(
                target=lambda: result.update(summary=catalog_flow(
                    str(manifest.resolve()), config,
                    concurrency=concurrency or settings.concurrency,
                    shard_size=shard_size, deployment=deployment,
                )),
                daemon=True,
            )
            worker.start()
            while worker.is_alive():
                live.update(board.render())
                worker.join(0.5)
            live.update(board.render())
    finally:
        unsubscribe()
    if "summary" not in result:
        raise UserError("the catalog flow stopped before producing a summary (see the log above)")
    summary = result["summary"]
    _print_summary(summary, config.store_url)
    if summary.failed:
        raise typer.Exit(1)


def _check_library(config) -> None:
    if not (Path(config.library_path) / "library.jsonl").exists():
        raise UserError(
            f"no mesh library at {config.library_path}; build the sample one with "
            "`foundry3d library sample` or point FOUNDRY_LIBRARY_PATH at yours"
        )


@app.command()
def retry(
    batch: Annotated[str | None, typer.Option(help="Only assets of this batch id.")] = None,
    stage: Annotated[str | None, typer.Option(help="Only failures at this stage.")] = None,
    error: Annotated[str | None, typer.Option(help="Only this error class.")] = None,
    older_than: Annotated[float | None, typer.Option(help="Only failures older than N s.")] = None,
    asset: Annotated[list[str] | None, typer.Option(help="Only these asset ids.")] = None,
    reseed: Annotated[bool, typer.Option(help="Give each asset a new seed.")] = False,
    concurrency: Annotated[int, typer.Option(help="Assets retried at once.")] = 0,
    verbose: Annotated[bool, typer.Option(help="Show Prefect's logs.")] = False,
) -> None:
    """Re-run failed assets (and those whose worker died) from their failing stage."""
    settings, config = _prepare(verbose)
    from flows.retry import retry_flow

    outcomes = retry_flow(
        config, batch_id=batch, stage=stage, error_class=error, older_than_s=older_than,
        asset_ids=asset, reseed=reseed, concurrency=concurrency or settings.concurrency,
    )
    if not outcomes:
        console.print("No failed assets match; nothing to retry.")
        return
    table = Table(title="retry")
    table.add_column("asset")
    table.add_column("outcome")
    for asset_id, outcome in outcomes.items():
        table.add_row(asset_id, outcome)
    console.print(table)
    if any(o == "failed" for o in outcomes.values()):
        raise typer.Exit(1)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="Words to look for, e.g. 'red mug'.")],
    limit: Annotated[int, typer.Option(help="Most results shown.")] = 10,
    state: Annotated[str | None, typer.Option(help="Only assets in this state.")] = "succeeded",
    tag: Annotated[str | None, typer.Option(help="Only assets with this tag.")] = None,
    urls: Annotated[bool, typer.Option(help="Show presigned URLs of the GLB files.")] = False,
    show_all: Annotated[bool, typer.Option("--all", help="Show weak matches too.")] = False,
) -> None:
    """Find produced assets by prompt, file name or tag: keyword and semantic ranking combined.

    A running `foundry3d api` server on the same database (FOUNDRY_API_URL) answers with its
    loaded model; otherwise the query is embedded here by the numpy encoder (no torch import).
    Failed, pending and running assets (--state) are found by keyword in the assets table.
    """
    from foundry3d.api.client import search_via_server

    indexed = state in (None, "succeeded")
    if not indexed:
        from storage.schema import ASSET_STATES

        if state not in ASSET_STATES:
            raise UserError(f"--state must be one of {', '.join(ASSET_STATES)}, got {state!r}")
    hits = None if (urls or not indexed) else search_via_server(
        query, limit=limit, state=state, tag=tag)
    config = None
    if hits is None:
        config, hits = _search_database(query, limit, state, tag, indexed)
    from storage.search import MIN_HYBRID_SCORE

    shown = hits if (show_all or not indexed) else [h for h in hits if h.score >= MIN_HYBRID_SCORE]
    if not hits:
        console.print(f"No assets match {query!r}.")
        return
    if not shown:
        best = hits[0]
        console.print(f"No asset matches {query!r} well (best: {best.text!r} {best.score:.2f}); "
                      "--all shows weak matches.")
        return
    store = None
    if urls:
        from tasks.resources import store_for

        store = store_for(config.store_url)
    table = Table(title=f"search: {query}")
    for column in ("score", "keyword", "semantic", "asset", "prompt / files", "asset.glb"):
        table.add_column(column, overflow="fold")
    for hit in shown:
        key = (hit.output_keys or {}).get("asset.glb", "")
        location = store.presigned_url(key) if (store and key) else key
        text = hit.text
        files = getattr(hit, "references", None) or []
        if files and not any(Path(f).name in text for f in files):
            text += "\nfiles: " + ", ".join(Path(f).name for f in files)
        if getattr(hit, "library_match_weak", None):
            text += "\n[yellow]weak library match: review[/]"
        score = f"{hit.score:.3f}" if hit.score >= MIN_HYBRID_SCORE or not indexed else (
            f"[dim]{hit.score:.3f} weak[/]")
        table.add_row(score, _score(hit.keyword_score), _score(hit.semantic_score),
                      hit.asset_id, text, location)
    console.print(table)


def _search_database(query: str, limit: int, state: str | None, tag: str | None,
                     indexed: bool):  # noqa: ANN202
    """(pipeline config, hits with details) from the database itself."""
    # Read only: no migration check (a second of Alembic imports); a database without the
    # schema fails the query below, with the command that fixes it.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError, ProgrammingError
    from sqlalchemy.orm import Session

    from foundry3d.settings import get_settings
    from storage.db import get_engine
    from storage.search import hybrid_search, search_assets_table, with_details

    config = get_settings().pipeline_config()
    url = make_url(config.database_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        raise UserError(f"no database at {url.database} yet; produce assets first "
                        "(`foundry3d run MANIFEST`)")
    try:
        with Session(get_engine(config.database_url)) as session:
            if indexed:
                from models.embed.numpy_text import get_numpy_text_embedder

                embedding = get_numpy_text_embedder().embed_texts([query])[0]
                hits = hybrid_search(session, query, embedding, limit=limit, state=state,
                                     tag=tag)
            else:
                hits = search_assets_table(session, query, state=state, limit=limit, tag=tag)
            return config, with_details(session, hits)
    except (OperationalError, ProgrammingError) as exc:
        shown = url.render_as_string(hide_password=True)
        raise UserError(f"cannot search {shown}: "
                        f"{str(exc.orig).splitlines()[0]}; run `foundry3d db upgrade`") from exc


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@app.command()
def serve(
    manifest: Annotated[Path, typer.Argument(help="Manifest to generate on each run.")],
    cron: Annotated[str, typer.Option(help="Cron schedule, e.g. '0 2 * * *'.")] = "0 2 * * *",
    name: Annotated[str, typer.Option(help="Deployment name.")] = "scheduled-catalog",
) -> None:
    """Serve the catalog flow as a deployment that runs MANIFEST on a cron schedule.

    Needs a Prefect API (PREFECT_API_URL, or `prefect server start` beside it); blocks until
    interrupted, running each scheduled catalog in this process.
    """
    if not manifest.exists():
        raise UserError(f"manifest {manifest} does not exist")
    settings, config = _prepare()
    from flows.catalog import catalog_flow

    deployment = settings.asset_deployment if settings.prefect_mode == "server" else None
    console.print(f"Serving catalog deployment [bold]{name}[/] for {manifest} on cron {cron!r}")
    catalog_flow.serve(
        name=name,
        cron=cron,
        parameters={
            "manifest": str(manifest.resolve()),
            "config": config.model_dump(),
            "concurrency": settings.concurrency,
            "deployment": deployment,
        },
    )
