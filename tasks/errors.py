"""Failure classes: retryable (Prefect retries in place, the retry flow later) or permanent."""

from __future__ import annotations

RETRYABLE = "retryable"
PERMANENT = "permanent"

# Exception names that mean "try again later" even when the class carries no `retryable` flag.
_RETRYABLE_NAMES = {
    "OutOfMemoryError",  # torch.cuda.OutOfMemoryError / torch.OutOfMemoryError
    "MemoryError",
    "TimeoutError",
    "ConnectionError",
    "ConnectionRefusedError",
    "ConnectionResetError",
    "OperationalError",  # database unreachable or locked
    "StoreUnavailable",
    "LeaseLost",
}


def failure_kind(exc: BaseException) -> str:
    """``"retryable"`` or ``"permanent"`` for an exception raised by a stage."""
    flag = getattr(exc, "retryable", None)
    if flag is not None:
        return RETRYABLE if flag else PERMANENT
    for cls in type(exc).__mro__:
        if cls.__name__ in _RETRYABLE_NAMES:
            return RETRYABLE
    return PERMANENT


def is_retryable(exc: BaseException) -> bool:
    return failure_kind(exc) == RETRYABLE


def error_class(exc: BaseException) -> str:
    """The name recorded in the database: ``<kind>:<ExceptionClass>``."""
    return f"{failure_kind(exc)}:{type(exc).__name__}"


class LeaseLost(RuntimeError):
    """Another worker holds the asset now (our lease ran out); stop without recording."""

    retryable = True
    retry_in_place = False  # the asset is someone else's now: retrying here can only lose again


def retry_condition(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's signature
    """Prefect ``retry_condition_fn``: retry a task only for retryable failures."""
    try:
        state.result()
    except Exception as exc:  # the task's own exception is re-raised by result()
        # A failure that already waited out its retry window (DatabaseUnavailable) goes to the
        # retry flow instead of being retried in place again.
        return is_retryable(exc) and getattr(exc, "retry_in_place", True)
    return False
