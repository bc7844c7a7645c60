"""In-process progress events from stages, for whoever is watching (the CLI's live table).

Events are plain dicts: ``{"asset_id", "stage", "event": "start"|"step"|"done"|"skipped"|
"failed", "step", "total", "message"}``. With no listener an event costs a function call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

Listener = Callable[[dict], None]
_listeners: list[Listener] = []
_lock = threading.Lock()


def subscribe(listener: Listener) -> Callable[[], None]:
    """Add ``listener``; returns a function that removes it."""
    with _lock:
        _listeners.append(listener)

    def unsubscribe() -> None:
        with _lock:
            if listener in _listeners:
                _listeners.remove(listener)

    return unsubscribe


def emit(asset_id: str, stage: str, event: str, **fields: object) -> None:
    with _lock:
        listeners = list(_listeners)
    payload = {"asset_id": asset_id, "stage": stage, "event": event, **fields}
    for listener in listeners:
        try:
            listener(payload)
        except Exception:  # a broken display must never break a stage
            pass
