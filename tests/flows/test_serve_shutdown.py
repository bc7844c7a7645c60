"""`foundry3d serve` stops cleanly on a signal that arrives while Prefect's runner is still
starting (its deployment already registered, so a client may see it and signal)."""

from __future__ import annotations

import asyncio
import os
import signal

from foundry3d.cli.serve import _serve_until_signalled


class StartingRunner:
    """Stands in for a Prefect Runner whose start() has not yet set ``started``."""

    def __init__(self) -> None:
        self.started = False
        self.stop_calls = 0
        self.left_start = False

    async def start(self) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            self.left_start = True

    async def astop(self) -> None:
        self.stop_calls += 1
        raise RuntimeError("Runner has not yet started")


def test_a_signal_during_the_runner_start_cancels_the_start_without_stopping_it():
    runner = StartingRunner()

    async def signal_soon() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, os.kill, os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(_serve_until_signalled(runner), 10)

    asyncio.run(signal_soon())
    assert runner.left_start
    assert runner.stop_calls == 0
