"""The journal seen from the event loop.

Every :class:`~edge.journal.db.Journal` call blocks on disk, so :class:`JournalService`
runs them in worker threads, in two lanes that never queue behind each other:

* the *hot path*: :meth:`~JournalService.start_session`,
  :meth:`~JournalService.append_final` and :meth:`~JournalService.end_session`, one at a
  time (a ``CapacityLimiter(1)``) on the journal's hot connection. Sessions and the room
  await these before they send a final to anyone: a final a client saw is on disk
  (``synchronous=FULL``, one fsync per commit).
* *bulk work*: everything through :meth:`~JournalService.call` (the relay's batches,
  acknowledgements and outbox bound, a relay ingest, reads for ``/transcripts``),
  :meth:`~JournalService.backlog`, and retention, one at a time on the bulk connection.

What the lanes still share: SQLite lets one writer at a time, so a final may wait for
the one bulk write transaction in progress (never for a queue of them: a waiting final
goes first, see :class:`~edge.journal.connection.WriteGate`), and bulk writes are kept
short (the relay's are a single UPDATE without an fsync, a purge goes in chunks of a few
thousand rows, an ingest is one batch); the disk, whose fsyncs the two lanes'
commits share; and the GIL and the event loop. WAL checkpoints run in the bulk lane.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import trio

from edge.core.auth import Claims
from edge.journal.db import Backlog, Journal, JournalError

logger = logging.getLogger(__name__)

T = TypeVar("T")
_DAY = 86400.0
_CHECKPOINT_INTERVAL = 5.0


class JournalService:
    """Async access to the journal; start :meth:`run` for retention."""

    def __init__(self, journal: Journal, *, retention_days: float, purge_interval: float,
                 keep_unrelayed: bool, model: str | None = None,
                 separate_hot_path: bool = True, key_source: str | None = None) -> None:
        """``separate_hot_path=False`` runs the hot path in the bulk lane, as one worker
        did before the lanes were split (for benchmarks that measure the difference).
        ``key_source`` describes where the journal's key came from (for health)."""
        self.journal = journal
        self.key_source = key_source
        self._retention = retention_days * _DAY
        self._purge_interval = purge_interval
        self._keep_unrelayed = keep_unrelayed
        self._model = model
        self._limiter = trio.CapacityLimiter(1)  # the bulk lane
        self._hot_limiter = trio.CapacityLimiter(1) if separate_hot_path else self._limiter
        self._hot_writes = 0  # since the last checkpoint
        self.failures = 0  # writes that failed (disk full, I/O error): shown in health
        self.changed = trio.Event()  # set when events were added (wakes the relay)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in the bulk lane's worker thread. For journal
        methods on the bulk connection only (everything but the hot path's three)."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),
                                             limiter=self._limiter)

    async def start_session(self, session_id: str, claims: Claims | None, *,
                            source: str, dialect: str = "live") -> bool:
        """Journal a session's start in the hot lane; False if the disk refused it.

        ``dialect`` is the wire protocol a client session speaks (``live``,
        ``assemblyai``, ...); it is not recorded for the room (``source="room"``), which
        speaks none. Raises ValueError for a dialect that is not a short lower-case
        identifier."""
        return await self._write(
            self.journal.start_session, session_id, source=source,
            sub=claims.sub if claims else None,
            organization=claims.organization if claims else None,
            department=claims.department if claims else None, model=self._model,
            started_at=time.time(), dialect=dialect if source != "room" else None)

    async def append_final(self, session_id: str, message: Mapping[str, Any]) -> bool:
        return await self._write(self.journal.append_final, session_id, message)

    async def end_session(self, session_id: str, reason: str) -> bool:
        return await self._write(self.journal.end_session, session_id, reason=reason,
                                 ended_at=time.time())

    async def backlog(self) -> Backlog:
        return await self.call(self.journal.backlog)

    async def _write(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """A hot-path write; False (logged, counted) when the disk refused it."""
        try:
            await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),
                                          limiter=self._hot_limiter)
        except JournalError as exc:
            self.failures += 1
            logger.error("journal write failed: %s", exc)
            return False
        self._hot_writes += 1
        self.changed.set()
        self.changed = trio.Event()
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Purge expired sessions now and every ``purge_interval`` seconds, and
        checkpoint the WAL in the bulk lane every few seconds after hot-path writes.
        Runs until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._checkpoints)
            task_status.started()
            while True:
                try:
                    await self.call(self.journal.purge,
                                             time.time() - self._retention,
                                             keep_unrelayed=self._keep_unrelayed)
                except JournalError as exc:
                    logger.error("journal purge failed: %s", exc)
                await trio.sleep(self._purge_interval)

    async def _checkpoints(self) -> None:
        while True:
            await trio.sleep(_CHECKPOINT_INTERVAL)
            if self._hot_writes:
                self._hot_writes = 0
                try:
                    await self.call(self.journal.checkpoint)
                except JournalError as exc:
                    logger.warning("journal checkpoint failed: %s", exc)
