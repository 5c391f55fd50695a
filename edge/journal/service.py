"""The journal seen from the event loop.

Every :class:`~edge.journal.db.Journal` call blocks on disk (an fsync per commit), so
:class:`JournalService` runs them in a worker thread, one at a time (the journal's
connection is not shared between threads concurrently). It also purges expired
sessions on a schedule. Sessions and the room call it before they send a final to
anyone: a final a client saw is on disk.
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


class JournalService:
    """Async access to the journal; start :meth:`run` for retention."""

    def __init__(self, journal: Journal, *, retention_days: float, purge_interval: float,
                 keep_unrelayed: bool, model: str | None = None) -> None:
        self.journal = journal
        self._retention = retention_days * _DAY
        self._purge_interval = purge_interval
        self._keep_unrelayed = keep_unrelayed
        self._model = model
        self._limiter = trio.CapacityLimiter(1)
        self.failures = 0  # writes that failed (disk full, I/O error): shown in health
        self.changed = trio.Event()  # set when events were added (wakes the relay)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in the journal's worker thread."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),
                                             limiter=self._limiter)

    async def start_session(self, session_id: str, claims: Claims | None, *,
                            source: str) -> bool:
        return await self._write(
            self.journal.start_session, session_id, source=source,
            sub=claims.sub if claims else None,
            organization=claims.organization if claims else None,
            department=claims.department if claims else None, model=self._model,
            started_at=time.time())

    async def append_final(self, session_id: str, message: Mapping[str, Any]) -> bool:
        return await self._write(self.journal.append_final, session_id, message)

    async def end_session(self, session_id: str, reason: str) -> bool:
        return await self._write(self.journal.end_session, session_id, reason=reason,
                                 ended_at=time.time())

    async def backlog(self) -> Backlog:
        return await self.call(self.journal.backlog)

    async def _write(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """A journal write; False (logged, counted) when the disk refused it."""
        try:
            await self.call(fn, *args, **kwargs)
        except JournalError as exc:
            self.failures += 1
            logger.error("journal write failed: %s", exc)
            return False
        self.changed.set()
        self.changed = trio.Event()
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Purge expired sessions now and every ``purge_interval`` seconds."""
        task_status.started()
        while True:
            try:
                purged = await self.call(self.journal.purge, time.time() - self._retention,
                                         keep_unrelayed=self._keep_unrelayed)
            except JournalError as exc:
                logger.error("journal purge failed: %s", exc)
            else:
                if purged:
                    logger.info("journal: purged %d expired session(s)", purged)
            await trio.sleep(self._purge_interval)
