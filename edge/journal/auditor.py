"""The audit trail seen from the event loop: :class:`Auditor`, the daemon's
:data:`~edge.core.audit.AccessSink`.

Calling an ``Auditor`` never blocks and never raises: it dates the access and queues it
on a bounded trio memory channel; :meth:`Auditor.run` writes what is queued, a batch at
a time, through the journal service's bulk lane (a worker thread, one durable
transaction per batch; never ahead of a session's final, see
:mod:`edge.journal.service`). A store that fails (a full disk, an I/O error) costs
neither a session nor the daemon: the batch is kept and tried again (up to the queue's
size), the failure is counted and logged, and :meth:`Auditor.status` (``/healthz``)
shows it. A full queue drops the access, counted as ``dropped``.

Refused handshakes are not written one by one: they are counted per (reason, peer
host) and written as one record per pair and window (``handshake.refused`` with
``detail.count`` and the window's length), the record dated at the first refusal of
the window, so a flood of bad tokens costs a few records a minute, not one per packet.

The Auditor also runs the trail's retention (``audit.retention_days``; records still
unrelayed are kept while a relay is configured) and keeps the figures health shows.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import trio

from edge.core.audit import REFUSED, Access
from edge.journal.records import JournalError
from edge.journal.service import JournalService

logger = logging.getLogger(__name__)

HANDSHAKE_REFUSED = "handshake.refused"
WINDOW = 60.0  # seconds over which refused handshakes are counted into one record
QUEUE = 4096  # accesses waiting for the store
MAX_REFUSAL_KEYS = 1024  # distinct (reason, host) pairs per window; more are pooled
_BATCH = 256  # records per transaction
_RETRY = 5.0  # seconds before a failed batch is tried again
_REFRESH = 5.0  # seconds between reads of what the relay has acknowledged
_DAY = 86400.0


def _host(peer: str | None) -> str | None:
    """The host of ``host:port`` (``[v6]:port`` too): a flood comes from many ports."""
    if peer is None or peer == "cli":
        return peer
    if peer.startswith("["):
        return peer[: peer.find("]") + 1] or peer
    return peer.rsplit(":", 1)[0] if peer.count(":") == 1 else peer


class Auditor:
    """Start with ``await nursery.start(auditor.run)``; call it with each access."""

    def __init__(self, journal: JournalService, *, retention_days: float,
                 purge_interval: float, keep_unrelayed: bool, window: float = WINDOW,
                 queue: int = QUEUE) -> None:
        self._journal = journal
        self._retention = retention_days * _DAY
        self._purge_interval = purge_interval
        self._keep_unrelayed = keep_unrelayed
        self._window = window
        self._queue = queue
        self._send, self._receive = trio.open_memory_channel[tuple[Access, float]](queue)
        self._refusals: dict[tuple[str | None, str | None], tuple[int, float]] = {}
        self._retry: list[tuple[Access, float]] = []
        self.records = 0  # written since start
        self.by_action: Counter[str] = Counter()
        self.last_seq = 0
        self.relayed_seq = 0
        self.errors = 0  # failed writes since start
        self.dropped = 0  # accesses lost to a full queue or a store failing too long
        self.last_error: str | None = None

    def __call__(self, access: Access) -> None:
        """Record ``access`` (non-blocking, never raises; see the module doc)."""
        now = time.time()
        if access.action == HANDSHAKE_REFUSED:
            self._count_refusal(access, now)
            return
        try:
            self._send.send_nowait((access, now))
        except (trio.WouldBlock, trio.ClosedResourceError):
            self._drop(1)

    def _count_refusal(self, access: Access, now: float) -> None:
        key = (access.reason, _host(access.peer))
        if key not in self._refusals and len(self._refusals) >= MAX_REFUSAL_KEYS:
            key = (access.reason, "*")  # one more source of a wide flood: pooled
        count, first = self._refusals.get(key, (0, now))
        self._refusals[key] = (count + 1, first)

    def _drop(self, n: int) -> None:
        if not self.dropped:
            logger.error("audit: the trail's queue is full; accesses are being dropped "
                         "(counted in /healthz audit.dropped)")
        self.dropped += n

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Write queued accesses, flush refusal counts every window, purge and read
        the relay's progress. Runs until cancelled; never raises for the store."""
        await self._refresh()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._refusal_windows)
            nursery.start_soon(self._housekeeping)
            task_status.started()
            while True:
                batch, self._retry = self._retry, []
                if not batch:
                    batch = [await self._receive.receive()]
                while len(batch) < _BATCH:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                await self._write(batch)

    async def _write(self, batch: list[tuple[Access, float]]) -> None:
        try:
            written = await self._journal.call(self._journal.journal.audit_append, batch)
        except JournalError as exc:
            self.errors += 1
            self.last_error = str(exc)
            logger.error("audit: cannot store %d record(s): %s", len(batch), exc)
            keep = batch[-self._queue:]
            if len(keep) < len(batch):
                self._drop(len(batch) - len(keep))
            self._retry = keep  # tried again first, with what queued meanwhile
            await trio.sleep(_RETRY)
            return
        self.last_error = None
        self.records += len(written)
        self.by_action.update(r.action for r in written)
        if written:
            self.last_seq = written[-1].seq

    def flush_refusals(self) -> None:
        """Queue one record per (reason, host) counted since the last flush."""
        counts, self._refusals = self._refusals, {}
        for (reason, host), (count, first) in counts.items():
            access = Access(HANDSHAKE_REFUSED, outcome=REFUSED, reason=reason, peer=host,
                            detail={"count": count, "window_s": int(self._window)})
            try:
                self._send.send_nowait((access, first))
            except (trio.WouldBlock, trio.ClosedResourceError):
                self._drop(1)

    async def _refusal_windows(self) -> None:
        try:
            while True:
                await trio.sleep(self._window)
                self.flush_refusals()
        finally:
            self.flush_refusals()  # a stop writes what was counted, if the store still runs

    async def _housekeeping(self) -> None:
        next_purge = trio.current_time()
        while True:
            if trio.current_time() >= next_purge:
                next_purge = trio.current_time() + self._purge_interval
                try:
                    await self._journal.call(self._journal.journal.audit_purge,
                                             time.time() - self._retention,
                                             keep_unrelayed=self._keep_unrelayed)
                except JournalError as exc:
                    logger.error("audit: purge failed: %s", exc)
            await self._refresh()
            await trio.sleep(_REFRESH)

    async def _refresh(self) -> None:
        journal = self._journal.journal
        try:
            self.relayed_seq = await self._journal.call(journal.audit_relayed_seq)
            if not self.last_seq:
                self.last_seq = (await self._journal.call(journal.audit_head)).seq
        except JournalError as exc:
            self.last_error = str(exc)

    def status(self) -> dict[str, Any]:
        """For ``/healthz``: records written since start, the last ``seq``, the last
        one the relay's upstream acknowledged, failed writes, dropped accesses and the
        last error. Never blocks."""
        return {"records": self.records, "last_seq": self.last_seq,
                "relayed_seq": self.relayed_seq, "errors": self.errors,
                "dropped": self.dropped, "last_error": self.last_error}
