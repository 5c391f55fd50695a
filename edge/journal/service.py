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

Health: each hot-path write's outcome feeds a :class:`~edge.journal.health.WriteHealth`
(``failing`` or ``ok``, see there for the rule), and :meth:`~JournalService.run` reads the
free space of the journal's filesystem every few seconds in a worker thread, and again
after a failed write; :meth:`~JournalService.status` reports both without blocking.
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
from edge.journal.health import FAILING_SECONDS, WriteHealth, describe, free_bytes

logger = logging.getLogger(__name__)

T = TypeVar("T")
_DAY = 86400.0
_CHECKPOINT_INTERVAL = 5.0
_SPACE_INTERVAL = 5.0  # how often the free space of the journal's filesystem is read


class JournalService:
    """Async access to the journal; start :meth:`run` for retention."""

    def __init__(self, journal: Journal, *, retention_days: float, purge_interval: float,
                 keep_unrelayed: bool, model: str | None = None,
                 language: str | None = None,
                 separate_hot_path: bool = True, key_source: str | None = None,
                 failing_seconds: float = FAILING_SECONDS) -> None:
        """``model`` and ``language``: what a session's start records when it does not
        say its own (the start model's name and the default language).
        ``separate_hot_path=False`` runs the hot path in the bulk lane, as one worker
        did before the lanes were split (for benchmarks that measure the difference).
        ``key_source`` describes where the journal's key came from (for health; None:
        not encrypted); ``failing_seconds``: how long :meth:`status` says ``failing``
        after a failed write (see :mod:`edge.journal.health`)."""
        self.journal = journal
        self.key_source = key_source
        self._retention = retention_days * _DAY
        self._purge_interval = purge_interval
        self._keep_unrelayed = keep_unrelayed
        self._model = model
        self._language = language
        self._limiter = trio.CapacityLimiter(1)  # the bulk lane
        self._hot_limiter = trio.CapacityLimiter(1) if separate_hot_path else self._limiter
        self._hot_writes = 0  # since the last checkpoint
        self.health = WriteHealth(failing_seconds)  # hot-path writes: shown in health
        self.free_bytes: int | None = None  # of the journal's filesystem; None: not read
        self._space_error: str | None = None  # the last statvfs error, logged once
        self._space_wanted = trio.Event()  # read the free space now
        self.changed = trio.Event()  # set when events were added (wakes the relay)

    @property
    def failures(self) -> int:
        """Hot-path writes that failed since start (disk full, I/O error)."""
        return self.health.failures

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in the bulk lane's worker thread. For journal
        methods on the bulk connection only (everything but the hot path's three)."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),
                                             limiter=self._limiter)

    async def start_session(self, session_id: str, claims: Claims | None, *,
                            source: str, dialect: str = "live",
                            started_at: float | None = None, model: str | None = None,
                            language: str | None = None) -> bool:
        """Journal a session's start in the hot lane; False if the disk refused it.

        ``dialect`` is the wire protocol a client session speaks (``live``,
        ``assemblyai``, ...); it is not recorded for the room (``source="room"``), which
        speaks none. ``started_at`` (wall clock) defaults to now: a start journaled late,
        after a failure, passes the session's own. ``model`` and ``language`` are the
        session's model's name and language tag (None or empty: the service's
        defaults). Raises ValueError for a dialect that is not a short lower-case
        identifier or a language that is not a tag."""
        return await self._write(
            self.journal.start_session, session_id, source=source,
            sub=claims.sub if claims else None,
            organization=claims.organization if claims else None,
            department=claims.department if claims else None,
            model=model or self._model, language=language or self._language,
            started_at=time.time() if started_at is None else started_at,
            dialect=dialect if source != "room" else None)

    async def describe_session(self, session_id: str, *, model: str,
                               language: str) -> bool:
        """A session's model and language, chosen after its start (a client's config
        before its audio); False if the disk refused it."""
        return await self._write(self.journal.describe_session, session_id, model=model,
                                 language=language or self._language)

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
            self.health.failed(describe(exc), now=trio.current_time(), wall=time.time())
            logger.error("journal write failed: %s", exc)
            self._space_wanted.set()  # a full disk shows at once, without delaying this
            return False
        self.health.succeeded()
        self._hot_writes += 1
        self.changed.set()
        self.changed = trio.Event()
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Purge expired sessions now and every ``purge_interval`` seconds, and
        checkpoint the WAL in the bulk lane every few seconds after hot-path writes.
        Runs until cancelled."""
        await self._read_free_space()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._checkpoints)
            nursery.start_soon(self._watch_free_space)
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

    def status(self) -> dict[str, Any]:
        """For ``/healthz``: the state of the hot-path writes, the failures since start,
        the last error (no transcript text: see :func:`~edge.journal.health.describe`),
        the free bytes last read, and whether the journal is encrypted. Never blocks."""
        h = self.health
        return {
            "state": h.state(trio.current_time()),
            "failures": h.failures,
            "last_error": h.last_error,
            "last_failure_at": None if h.last_failure_wall is None else time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(h.last_failure_wall)),
            "free_bytes": self.free_bytes,
            "encrypted": self.key_source is not None,
            "key_source": self.key_source,
        }

    async def _watch_free_space(self) -> None:
        while True:
            with trio.move_on_after(_SPACE_INTERVAL):
                await self._space_wanted.wait()
            self._space_wanted = trio.Event()
            await self._read_free_space()

    async def _read_free_space(self) -> None:
        """Read the free space in a worker thread (not a journal lane: a statvfs must
        never wait behind a write, nor a write behind it)."""
        try:
            self.free_bytes = await trio.to_thread.run_sync(
                free_bytes, self.journal.path.parent, abandon_on_cancel=True)
        except OSError as exc:
            self.free_bytes = None
            if str(exc) != self._space_error:
                logger.warning("cannot read the free space of the journal's filesystem: %s",
                               exc)
            self._space_error = str(exc)
        else:
            self._space_error = None
