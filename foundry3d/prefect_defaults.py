"""Defaults for the Prefect ephemeral server this process may start (laptop mode).

Without ``PREFECT_API_URL`` Prefect starts a private API server in a subprocess, on SQLite,
which inherits this process's environment. Two of its defaults hurt on a small machine:

- it must come up within 20 s, which a busy 2-core laptop misses;
- its task-run recorder writes every task-run event in its own transaction (batch size 1) and
  its event persister every 20 events. Those writes race the API's own transactions on the
  SQLite file; the loser answers 503 and Prefect's client waits ~2 s before retrying. With a
  stream of stage tasks that costs 2 s every few assets (measured with no-op assets: 12
  retries per 60, 0.85 s per asset; with 5-second batches 2-4 retries per 100, 0.40-0.45 s
  per asset; ``benchmarks/pipeline.py``). Both services still flush what they hold when
  they stop (at 10-second batches one run lost a tenth of its events at shutdown).

Values already in the environment win; a real Prefect server has its own settings.
"""

from __future__ import annotations

import os

PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "1000",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "5",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "1000",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "5",
}
"""Environment defaults; set before Prefect starts its ephemeral server."""


def apply_prefect_defaults() -> None:
    """Put :data:`PREFECT_DEFAULTS` into ``os.environ`` where the variable is not set."""
    for name, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)
