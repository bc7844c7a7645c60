"""The ``serve`` command: a manifest generated on a schedule, by this process, via a Prefect API.

It serves :func:`foundry3d.deployments.scheduled_catalog` (plain parameters: the manifest path,
concurrency, shard size), not the catalog flow itself: its runs build their configuration from
this machine's ``FOUNDRY_*`` settings, so no database URL or password is stored in the
deployment's parameters on the Prefect server.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from foundry3d.cli.app import UserError, app, console
from foundry3d.cli.pipeline import _check_library, _check_manifest_file, _prepare

DEFAULT_CRON = "0 2 * * *"
"""Nightly at 02:00 when neither --cron nor --interval is given."""

HEALTH_TIMEOUT_S = 30.0
"""How long the Prefect API may take to answer its health check (a busy server is slow)."""

SHUTDOWN_TIMEOUT_S = 10.0
"""How long the runner may take to stop after Ctrl-C / SIGTERM before it is abandoned."""

NO_API = (
    "serve needs a Prefect API to hold its schedule: start one with `prefect server start` "
    "and set PREFECT_API_URL=http://127.0.0.1:4200/api (without one, use `foundry3d run` "
    "from cron)"
)


def _prefect_api_url() -> str:
    """The configured Prefect API, checked to answer; a :class:`UserError` otherwise."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise UserError(NO_API)
    health = f"{url.rstrip('/')}/health"
    try:
        with urllib.request.urlopen(health, timeout=HEALTH_TIMEOUT_S) as answer:
            if answer.status == 200:
                return url
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise UserError(f"the Prefect API at {url} does not answer ({exc})") from None
    raise UserError(f"the Prefect API at {url} is not healthy")


def _schedule(cron: str | None, interval: float | None, timezone: str) -> dict:
    """``add_flow`` keyword arguments for the schedule; a :class:`UserError` when invalid."""
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.schedules import Cron, Interval
    from pydantic import ValidationError

    if cron is not None and interval is not None:
        raise UserError("give either --cron or --interval, not both")
    if interval is not None:
        if interval <= 0:
            raise UserError(f"--interval must be a positive number of seconds, got {interval}")
        return {"schedule": Interval(timedelta(seconds=interval))}
    cron = cron or DEFAULT_CRON
    try:
        CronSchedule(cron=cron, timezone=timezone)  # checks both, naming what is wrong
    except ValidationError as exc:
        reason = "; ".join(error["msg"] for error in exc.errors())
        raise UserError(f"invalid --cron {cron!r} / --timezone {timezone!r}: {reason}") from None
    return {"schedule": Cron(cron, timezone=timezone)}


async def _serve_until_signalled(runner) -> None:
    """Run ``runner`` until it ends or SIGINT/SIGTERM arrives, then stop it promptly.

    The runner's own SIGTERM handler stops it from inside the signal handler through Prefect's
    loop thread, which blocked for ~40 s; here both signals only set an event and the runner is
    stopped from this loop with a time limit.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Ours before the runner starts: the start registers the deployment (a client may see it
    # and signal) before the guard's first turn, and an exception raised from a Python-level
    # handler there can land in a GC callback, where it is swallowed.
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    serving = asyncio.create_task(runner.start())
    # start() installs its own SIGTERM handler at some point of its start-up: keep ours in place
    # until the end (a check every 0.2 s costs nothing).
    guarding = asyncio.create_task(_keep_signal_handlers(loop, stop))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    guarding.cancel()
    if serving.done():
        stopping.cancel()
        serving.result()  # a runner that ended by itself: surface why
        return
    console.print("Stopping: runs in progress are cancelled, the schedule is paused.")
    # Prefect's control channel logs each connection it cancels as an asyncio ERROR traceback.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    try:
        if runner.started:
            await asyncio.wait_for(runner.astop(), SHUTDOWN_TIMEOUT_S)
            await asyncio.wait_for(serving, SHUTDOWN_TIMEOUT_S)
        else:
            # Signalled while the runner was still starting (its deployment is registered
            # before it counts as started, and astop() refuses it then): nothing polls yet,
            # so its start is cancelled, which leaves its context and pauses the schedule.
            serving.cancel()
            await asyncio.wait_for(serving, SHUTDOWN_TIMEOUT_S)
    except (TimeoutError, asyncio.CancelledError):
        serving.cancel()


async def _keep_signal_handlers(loop, stop: asyncio.Event) -> None:
    """Make SIGINT and SIGTERM set ``stop``, and put that back whenever something (Prefect's
    runner) installs a handler of its own."""
    ours = None
    while not stop.is_set():
        if ours is None or signal.getsignal(signal.SIGTERM) is not ours:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            ours = signal.getsignal(signal.SIGTERM)
        await asyncio.sleep(0.2)


@app.command()
def serve(
    manifest: Annotated[Path, typer.Argument(help="Manifest to generate on each run.")],
    cron: Annotated[str | None, typer.Option(help="Cron; default '0 2 * * *' (02:00).")] = None,
    interval: Annotated[float | None, typer.Option(help="Run every N seconds instead.")] = None,
    timezone: Annotated[str, typer.Option(help="Time zone of the cron schedule.")] = "UTC",
    name: Annotated[str, typer.Option(help="Deployment name.")] = "scheduled-catalog",
    concurrency: Annotated[int, typer.Option(help="Assets at once; 0: FOUNDRY_CONCURRENCY.")] = 0,
    shard_size: Annotated[int, typer.Option(help="Assets per worker process (server mode).")] = 1,
) -> None:
    """Generate MANIFEST on a schedule: a Prefect deployment served by this process.

    Needs a Prefect API (PREFECT_API_URL; `prefect server start` beside it) and refuses to start
    without one. Blocks until Ctrl-C or SIGTERM; each scheduled run is a flow run of the
    `scheduled-catalog` flow, run in a subprocess with this machine's FOUNDRY_* settings
    (the foundry3d packages must be importable there, as they are once installed).
    """
    # Until the runner's loop takes signals over, SIGTERM stops serve as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    when = f"every {interval:g} s" if interval is not None else f"on cron {cron or DEFAULT_CRON!r}"
    try:
        _serve(manifest, _schedule(cron, interval, timezone), when, name, concurrency, shard_size)
    except KeyboardInterrupt:
        console.print("Stopped.")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _serve(manifest: Path, schedule: dict, when: str, name: str, concurrency: int,
           shard_size: int) -> None:
    """Check everything, register the deployment and serve it until a signal."""
    _check_manifest_file(manifest)
    _, config = _prepare()
    _check_library(config)
    api_url = _prefect_api_url()
    from prefect.deployments.runner import EntrypointType
    from prefect.runner import Runner

    from foundry3d.deployments import scheduled_catalog

    deployment = scheduled_catalog.to_deployment(
        name=name,
        parameters={
            "manifest": str(manifest.resolve()),
            "concurrency": concurrency or None,
            "shard_size": shard_size,
        },
        # Runs import the flow by module path in a fresh `python -m prefect.engine` process.
        # Served as an in-memory flow (flow.serve / Runner.add_flow), Prefect cloudpickles it
        # by value with only the globals its code names, so the string annotations of the
        # catalog flow (`config: PipelineConfig`) no longer resolve and every run failed.
        entrypoint_type=EntrypointType.MODULE_PATH,
        **schedule,
    )
    deployment.work_pool_name = None  # set explicitly: runs stay with this runner, no pool
    deployment.work_queue_name = None
    # limit=1: runs of one schedule never overlap (a late run waits for the one before it);
    # pause_on_shutdown (the default): a stopped serve leaves no runs piling up unserved.
    runner = Runner(name=name, limit=1)
    runner.add_deployment(deployment)
    console.print(f"Serving [bold]{scheduled_catalog.name}/{name}[/] for {manifest} {when} "
                  f"via {api_url}; Ctrl-C stops.", soft_wrap=True)
    asyncio.run(_serve_until_signalled(runner))
