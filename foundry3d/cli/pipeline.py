"""CLI commands of the pipeline: run, retry, search."""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from foundry3d.cli.app import UserError, app, console, err_console
from storage.redact import redact_url

if TYPE_CHECKING:  # imported where used: SQLAlchemy stays out of the CLI's start-up
    from storage.db import DatabaseUnavailable


def _prepare(verbose: bool = False):
    """Settings -> config, with the database migrated and Prefect quiet unless asked.

    An unreachable or unmigrated database is a :class:`UserError` (one line), not a traceback.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from foundry3d.settings import get_settings
    from storage.db import DatabaseNotMigrated, ensure_database

    if not verbose:
        # The live table shows progress; Prefect's per-run INFO lines would scroll it away.
        for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.server"):
            logging.getLogger(name).setLevel(logging.WARNING)
        os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    try:
        ensure_database(url)
    except (SQLAlchemyError, OSError, DatabaseNotMigrated) as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        raise UserError(f"cannot use the database {shown}: {_first_line(exc)}") from None
    return settings, settings.pipeline_config()


def start_prefect_api(settings, verbose: bool = False) -> None:
    """Make sure this process talks to a Prefect API: ``PREFECT_API_URL``'s, or a private
    ephemeral server that dies with this process (even on SIGKILL), never an orphan."""
    from foundry3d.ephemeral_api import ensure_prefect_api

    server_log = None if verbose else settings.data_dir / "prefect-api.log"
    try:
        ensure_prefect_api(server_log)
    except RuntimeError as exc:
        raise UserError(f"{exc} (its log: {server_log})" if server_log else str(exc)) from None


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (a driver's own error when SQLAlchemy wraps
    one), without SQLAlchemy's background link."""
    inner = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    return lines[0] if lines else type(inner).__name__


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


_OUTCOME_TEXT = {
    "produced": "[green]succeeded[/]",
    "needs review": "[yellow]needs review: {error}[/]",
    "already done": "[dim]already done[/]",
    "failed": "[red]failed: {error}[/]",
    "needs review earlier": "[yellow]needs review (earlier run): {error}[/]",
    "failed earlier": "[red]failed in an earlier run: {error}[/]",
    "held": "[dim]being produced by another run[/]",
    "not run": "[dim]not run (still pending)[/]",
}
"""The outcome column per :func:`tasks.summary.outcome_kind`."""


def _print_summary(summary, store_url: str) -> None:
    """The summary table, one line of counts, and the command that retries what failed or
    needs review. Each asset's kind comes from :func:`tasks.summary.outcome_kind`, the
    definition the Prefect summary artifact counts by."""
    table = Table(title="catalog summary")
    for column in ("asset", "request", "outcome", "seconds", "files (asset.glb, preview.png, ...)"):
        table.add_column(column, overflow="fold")
    for row in summary.assets:
        kind = row["kind"]
        error = str(row["error"] or "").removeprefix("needs review: ")
        outcome = _OUTCOME_TEXT[kind].format(error=escape(error))
        seconds = f"{row['seconds']:.1f}" if kind in ("produced", "needs review") else ""
        table.add_row(row["asset_id"][:12], row["prompt"], outcome, seconds, row["folder"])
    for rejection in summary.rejections:
        table.add_row("-", f"{Path(rejection['file']).name}:{rejection['line']}",
                      f"[yellow]rejected: {escape(rejection['reason'])}[/]", "", "")
    console.print(table)
    console.print(summary.counts_line(), soft_wrap=True)
    for stage, seconds in summary.stage_seconds.items():
        console.print(f"  {stage:<9} {seconds:7.2f} s per asset")
    if summary.failed or summary.failed_earlier:
        # A re-run of the manifest skips failed assets on purpose (a permanent failure would
        # fail again); retry re-runs them from their failing stage once the cause is fixed.
        console.print(f"Retry the failed assets with: [bold]foundry3d retry --batch "
                      f"{summary.batch_id}[/]", soft_wrap=True)
    if summary.needs_review or summary.needs_review_earlier:
        # Their metrics missed the quality verdict; a re-run would judge the same files alike.
        console.print(
            "Assets that need review have their files; see why with [bold]foundry3d show "
            "ASSET_ID[/], list them with [bold]foundry3d search QUERY --state needs_review[/], "
            f"and re-make them with [bold]foundry3d retry --batch {summary.batch_id} --state "
            "needs_review --reseed[/] (or --set a parameter, e.g. refine_fine_steps=200)",
            soft_wrap=True)
    if summary.held:
        console.print("Assets being produced by another run are not waited for; run the "
                      "manifest again later to see them done.")
    if summary.skipped == len(summary.assets) and not summary.rejected:
        console.print("[bold]Nothing new:[/] every asset of this manifest was already done.")
    console.print(f"Files are in {redact_url(store_url)} under assets/<asset id>/ ; details: "
                  "[bold]foundry3d show ASSET_ID[/]", soft_wrap=True)


def _check_manifest_file(manifest: Path) -> None:
    """Refuse a manifest that cannot be read at all (missing, a folder or FIFO, not UTF-8,
    unknown format, unreadable) before anything starts, as one line."""
    from intake.limits import FORMATS
    from intake.readers import FileProblem, read_text

    if manifest.suffix.lower() not in FORMATS:
        raise UserError(f"manifest {manifest}: unknown format {manifest.suffix or '(none)'!r}; "
                        f"use one of {', '.join(sorted(FORMATS))}")
    try:
        read_text(manifest)
    except FileProblem as exc:
        raise UserError(f"manifest {manifest}: {exc.reason}") from None
    except OSError as exc:
        raise UserError(f"manifest {manifest}: cannot read it ({exc.strerror or exc})") from None


def _quiet_prefect(verbose: bool) -> None:
    """Non-verbose runs show one line per failed asset (the live table and the summary), not
    Prefect's ERROR records with a traceback for every failed task and flow run."""
    if verbose:
        return
    logging.getLogger("prefect").setLevel(logging.ERROR)
    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.flow_engine",
                 "prefect.task_engine"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


@app.command()
def run(
    manifest: Annotated[Path, typer.Argument(help="Manifest (YAML, JSONL or CSV).")],
    concurrency: Annotated[int, typer.Option(help="Assets produced at once.")] = 0,
    shard_size: Annotated[int, typer.Option(help="Assets per worker process (server mode).")] = 1,
    verbose: Annotated[bool, typer.Option(help="Show Prefect's logs and tracebacks.")] = False,
) -> None:
    """Generate every asset of MANIFEST: bundle -> mesh -> refine -> texture -> GLB + metrics.

    Runs in this process on the embedded defaults, or on the asset deployment's work pool when
    FOUNDRY_PREFECT_MODE=server. Assets already done are skipped; rejected rows are listed.

    Exit status: 0 when every asset is done (or being produced by another run); 1 when an
    asset failed or needs review (now or in an earlier run), a row was rejected or the run
    stopped on an error; 2 when nothing could start (unreadable manifest, unreachable
    database, no library, no Prefect API); 130 when interrupted.
    """
    _check_manifest_file(manifest)
    settings, config = _prepare(verbose)
    _check_library(config)
    start_prefect_api(settings, verbose)
    from flows.catalog import catalog_flow
    from tasks import progress

    _quiet_prefect(verbose)
    board = _ProgressBoard()
    unsubscribe = progress.subscribe(board)
    deployment = settings.asset_deployment if settings.prefect_mode == "server" else None
    result: dict = {}

    def produce() -> None:
        try:
            result["summary"] = catalog_flow(
                str(manifest.resolve()), config,
                concurrency=concurrency or settings.concurrency,
                shard_size=shard_size, deployment=deployment,
            )
        except BaseException as exc:  # reported by the main thread, as one line
            result["error"] = exc

    try:
        with Live(board.render(), console=console, refresh_per_second=2, transient=False) as live:
            worker = threading.Thread(target=produce, daemon=True)
            worker.start()
            while worker.is_alive():
                live.update(board.render())
                worker.join(0.5)
            live.update(board.render())
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]: assets being produced keep their lease "
                          "until it expires; `foundry3d retry` picks them up after that")
        raise typer.Exit(130) from None
    finally:
        unsubscribe()
    if "error" in result:
        from storage.db import DatabaseUnavailable

        error = result["error"]
        if isinstance(error, DatabaseUnavailable):
            if verbose:
                traceback.print_exception(error)
            raise _outage_exit(error, _run_outage_advice(error, manifest))
        if verbose:
            traceback.print_exception(error)
        err_console.print(f"[bold red]error:[/] the catalog run failed: "
                          f"{type(error).__name__}: {_first_line(error)}"
                          + ("" if verbose else " (--verbose shows the traceback)"),
                          soft_wrap=True)
        raise typer.Exit(1)
    summary = result["summary"]
    _print_summary(summary, config.store_url)
    unfinished = (summary.failed + summary.failed_earlier + summary.needs_review
                  + summary.needs_review_earlier)
    if unfinished or summary.rejected:
        raise typer.Exit(1)


def _outage_exit(error: DatabaseUnavailable, advice: tuple[str, int]) -> typer.Exit:
    """Print a database outage that outlasted the retry window as one line (what was being
    done, that the database is unreachable, what to run again); the exit to raise."""
    text, status = advice
    err_console.print(f"[bold red]error:[/] {escape(str(error))}; {text}", soft_wrap=True)
    return typer.Exit(status)


def _run_outage_advice(error: DatabaseUnavailable, manifest: Path) -> tuple[str, int]:
    """(what to do, exit status) after ``foundry3d run`` met a database outage longer than the
    retry window: before the manifest was recorded nothing started (2), after it the run
    stopped on an error (1)."""
    from tasks.ingest import INGEST_STEP

    again = f"`foundry3d run {manifest}`"
    if error.step == INGEST_STEP:
        return (f"nothing of this manifest was recorded. Run {again} again once the database "
                "is back", 2)
    return (f"its batch is not closed and nothing is recorded as done that is not. Run {again} "
            "again once the database is back (it skips what is done; `foundry3d retry` re-runs "
            "what failed)", 1)


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
    state: Annotated[
        list[str] | None,
        typer.Option(help="Only assets in this state: failed or needs_review (repeatable; "
                     "default both)."),
    ] = None,
    reseed: Annotated[bool, typer.Option(help="Give each asset a new seed.")] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Change a manifest parameter before retrying, e.g. --set refine_fine_steps=200 "
            "(repeatable; checked like a manifest row's params).",
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Assets retried at once.")] = 0,
    verbose: Annotated[bool, typer.Option(help="Show Prefect's logs.")] = False,
) -> None:
    """Re-run failed and needs-review assets (and those whose worker died) from their failing
    stage. A needs-review asset has every stage done: only what --reseed or --set changes runs
    again before its metrics are judged anew.

    Exit status: 0 when every selected asset succeeded (or none matched); 1 when one failed or
    needs review; 2 when nothing could start (unreachable database at start-up or, for longer
    than FOUNDRY_DB_RETRY_SECONDS, while selecting the assets or putting them back to pending).
    """
    from storage.queries import RETRYABLE_STATES

    states = tuple(dict.fromkeys(state or RETRYABLE_STATES))
    for name in states:
        if name not in RETRYABLE_STATES:
            raise UserError(f"--state must be one of {', '.join(RETRYABLE_STATES)}, got {name!r}")
    overrides = parse_overrides(set_ or [])
    settings, config = _prepare(verbose)
    start_prefect_api(settings, verbose)
    from flows.retry import SELECT_STEP, retry_flow, select_retryable
    from storage.db import DatabaseUnavailable, through_outage
    from tasks.assets import ParameterError, retried_params

    _quiet_prefect(verbose)
    filters = {"batch_id": batch, "stage": stage, "error_class": error,
               "older_than_s": older_than, "asset_ids": asset, "states": states}
    advice = ("nothing was retried. Run `foundry3d retry` with the same options again once the "
              "database is back", 2)
    try:
        if overrides:
            try:  # checked here, before the flow, so a bad key is one line and not a traceback
                selected = select_retryable(config, **filters)
                through_outage(lambda: retried_params(config, selected, overrides),
                               retry_seconds=config.db_retry_seconds, step=SELECT_STEP)
            except ParameterError as exc:
                raise UserError(str(exc)) from None
        outcomes = retry_flow(
            config, **filters, reseed=reseed, concurrency=concurrency or settings.concurrency,
            overrides=overrides or None,
        )
    except DatabaseUnavailable as exc:
        if verbose:
            traceback.print_exception(exc)
        raise _outage_exit(exc, advice) from None
    if not outcomes:
        console.print(f"No {' or '.join(states)} assets match; nothing to retry.")
        return
    table = Table(title="retry")
    table.add_column("asset")
    table.add_column("outcome")
    for asset_id, outcome in outcomes.items():
        table.add_row(asset_id, outcome)
    console.print(table)
    if any(o in ("failed", "needs_review") for o in outcomes.values()):
        raise typer.Exit(1)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["refine_fine_steps=200", "library_id=mug"]`` -> ``{"refine_fine_steps": 200, ...}``.

    Values are read as YAML scalars, as a manifest's are (``200`` an integer, ``0.5`` a number,
    ``true`` a boolean, anything else a string). Raises :class:`UserError` on a malformed pair.
    """
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UserError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set refine_fine_steps=200")
        try:
            value = yaml.safe_load(text) if text.strip() else text
        except yaml.YAMLError:
            value = text
        if not isinstance(value, str | int | float | bool):
            value = text  # lists, mappings, nulls: a manifest param is a scalar, keep the text
        out[key] = value
    return out


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
    from storage.search_index import SearchIndex, snapshot_folder

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
                folder = snapshot_folder(url)
                if folder is not None:
                    # SQLite: the index kept beside the database file spares reading every
                    # embedding (1.5 s for 100,000); it ranks as hybrid_search does here.
                    hits = SearchIndex(folder).search(session, query, embedding, limit=limit,
                                                      state=state, tag=tag)
                else:
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
