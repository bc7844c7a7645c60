"""A worker's hold on an asset: its lease, kept alive by a heartbeat thread, and the fence every
stage record passes through.

The asset flow claims an asset, then holds it with :func:`holding` for the whole run: a thread
renews the lease every third of its length, so a stage longer than the lease never lets another
worker in while this one is alive. When a renewal finds the asset claimed by someone else (this
process froze past its lease), the hold is marked lost; :func:`tasks.stage.run_stage` checks the
mark before it writes and fences its records with the same owner + epoch condition, so a stale
worker's late writes are never recorded and never replace the winner's objects.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from storage import queries
from tasks.errors import LeaseLost
from tasks.resources import engine_for

log = logging.getLogger(__name__)

RENEWALS_PER_LEASE = 3
"""The heartbeat renews this many times per lease length: two may fail before the lease ends."""


@dataclass(frozen=True)
class Lease:
    """One claim of one asset."""

    asset_id: str
    """The claimed asset."""
    owner: str
    """Lease owner name (``host:pid`` unless configured)."""
    epoch: int
    """The asset's claim counter (``attempts``) right after this claim; no other claim has it."""
    seconds: float
    """Lease length in seconds."""


@dataclass
class Hold:
    """A lease kept alive by a heartbeat thread; ``lost`` is set once another worker has it."""

    lease: Lease
    database_url: str
    lost: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def check(self) -> None:
        """Raise :class:`LeaseLost` when the heartbeat found the asset claimed by another."""
        if self.lost.is_set():
            raise LeaseLost(f"asset {self.lease.asset_id}: lease lost to another worker")

    def renew(self) -> bool:
        """Renew the lease once; False (and ``lost`` set) when it is no longer ours."""
        lease = self.lease
        with Session(engine_for(self.database_url)) as session:
            held = queries.renew_lease(
                session, lease.asset_id, lease.owner, lease.seconds, epoch=lease.epoch
            )
            session.commit()
        if not held:
            self.lost.set()
        return held

    def start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._beat, name=f"lease-{self.lease.asset_id[:12]}", daemon=True
        )
        self._thread.start()

    def stop_heartbeat(self) -> None:
        """Stop renewing (the lease then runs out on its own unless released)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def _beat(self) -> None:
        interval = self.lease.seconds / RENEWALS_PER_LEASE
        while not self._stop.wait(interval):
            try:
                if not self.renew():
                    return
            except Exception as exc:  # the database is down: keep trying while the lease lasts
                log.warning("asset %s: lease renewal failed (%s); retrying",
                            self.lease.asset_id, type(exc).__name__)


_holds: dict[str, Hold] = {}
_holds_lock = threading.Lock()


@contextmanager
def holding(lease: Lease, database_url: str) -> Iterator[Hold]:
    """Keep ``lease`` alive from a heartbeat thread for the block; the stages of its asset run
    in this process find it with :func:`hold_of`."""
    hold = Hold(lease, database_url)
    with _holds_lock:
        _holds[lease.asset_id] = hold
    hold.start_heartbeat()
    try:
        yield hold
    finally:
        hold.stop_heartbeat()
        with _holds_lock:
            if _holds.get(lease.asset_id) is hold:
                del _holds[lease.asset_id]


def hold_of(asset_id: str) -> Hold | None:
    """This process's hold on ``asset_id``, or None (a stage run outside an asset flow)."""
    with _holds_lock:
        return _holds.get(asset_id)
