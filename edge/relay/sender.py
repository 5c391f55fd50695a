"""Store and forward: push the journal upstream, in order, at least once.

The relay reads unrelayed events from the journal in id order, sends them in batches
over a WebSocket to an upstream that speaks the relay messages (another edge daemon's
``/ws/relay``, or a cloud service implementing the same), and marks them relayed only
when the upstream acknowledges a batch, which it does after storing it durably. A
crash anywhere means events are sent again, never lost; the upstream removes
duplicates by (device, session, seq).

The messages (JSON text frames) are :mod:`edge.protocols.relay`'s, documented in
docs/journal-and-relay.md: ``relay_init`` from the upstream on accept, then a
``relay_batch`` from the device and a ``relay_ack`` for exactly that batch (or an
``error`` and a close).

Whatever the upstream sends or does (a frame that is not the ack expected, an error, a
close, silence past ``ack_timeout``, a refused handshake) is a failure of the link:
counted in :attr:`Relay.failures`, described in :attr:`Relay.last_error`, followed by
a reconnect after a backoff with jitter; nothing is marked relayed. :meth:`Relay.run`
never raises for the peer's behaviour; an exception that escapes it is a bug here.

The relay never makes local transcription queue behind it: it never writes a final or a
session, and its journal calls (reading a batch, marking it relayed, bounding the
outbox) run through :meth:`JournalService.call`, on the journal's bulk connection and
worker thread, apart from the connection and thread that sessions journal their finals
on. What it still shares with them (see :mod:`edge.journal.service`): SQLite's write
lock, held by its writes for one short transaction without an fsync (a waiting final
goes first), the disk, the GIL and the event loop (encoding and framing a batch). Those
are measured by ``bench/hotpath.py``: during a full-speed drain a final's journal write
keeps its median but its p99 grows (on a 2-core VM from about 4 ms to about 20 ms),
while the worst stall, which queueing behind bulk work caused, falls from 0.4 s to 0.08 s.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from edge.journal.db import JournalError
from edge.journal.service import JournalService
from edge.protocols.audit import AuditBatch, AuditRecord
from edge.protocols.relay import (
    CLOSE_TOO_BIG,
    RelayBatch,
    RelayEvent,
    RelayInit,
    RelayProtocolError,
    Shed,
    UpstreamMessage,
    encode,
    expect_ack,
    parse_upstream,
)
from edge.relay.outbox import IDLE_POLL, OutboxRelay

logger = logging.getLogger(__name__)

_MIN_BATCH_BYTES = 16 * 1024


@dataclass(frozen=True)
class RelaySettings:
    url: str
    token: str
    batch_events: int = 200
    batch_bytes: int = 256 * 1024
    max_backlog_bytes: int = 256 * 1024 * 1024
    ack_timeout: float = 30.0
    backoff_base: float = 0.5
    backoff_max: float = 60.0
    cafile: str | None = None


class Relay(OutboxRelay):
    """Start with ``await nursery.start(relay.run)``; runs until cancelled."""

    def __init__(self, settings: RelaySettings, journal: JournalService) -> None:
        super().__init__(journal, max_backlog_bytes=settings.max_backlog_bytes,
                         backoff_base=settings.backoff_base, backoff_max=settings.backoff_max)
        self._settings = settings
        self._batch = 0
        self._batch_bytes = settings.batch_bytes  # halved if the upstream finds it too big
        self._next_audit_look = 0.0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        context = None
        if self._settings.url.startswith("wss:"):
            context = ssl.create_default_context(cafile=self._settings.cafile)
        while True:
            try:
                await self._connected(context)
            except Exception as exc:  # the link's boundary: anything else is a bug
                if not _is_link_error(exc):
                    raise
                if _closed_with(exc, CLOSE_TOO_BIG) and self._batch_bytes > _MIN_BATCH_BYTES:
                    self._batch_bytes = max(_MIN_BATCH_BYTES, self._batch_bytes // 2)
                    logger.warning("relay: the upstream refused a batch as too big; sending "
                                   "at most %d bytes per batch", self._batch_bytes)
                self._link_failed("upstream", _describe(exc))
            await self._back_off()

    async def _connected(self, context: ssl.SSLContext | None) -> None:
        headers = [(b"authorization", f"Bearer {self._settings.token}".encode())]
        async with open_websocket_url(self._settings.url, extra_headers=headers,
                                      ssl_context=context, message_queue_size=4,
                                      connect_timeout=self._settings.ack_timeout,
                                      disconnect_timeout=2.0) as ws:
            with trio.fail_after(self._settings.ack_timeout):
                hello = await _receive(ws)
            if not isinstance(hello, RelayInit):
                raise RelayProtocolError("bad_reply", "expected relay_init from the upstream, "
                                         f"got {_name(hello)}")
            self.state = "connected"
            limit = self._settings.batch_events
            if hello.max_batch_events is not None:
                limit = min(limit, hello.max_batch_events)
            await self._pump(ws, limit, audit=hello.audit)

    async def _pump(self, ws: WebSocketConnection, limit: int, *, audit: bool) -> None:
        """Send events, and (to an upstream that takes them) audit records, as they
        come; during a long drain of events the trail is looked at once a second, so
        it is not held back and costs the drain little."""
        journal = self._journal
        while True:
            await self._shed_if_due()
            changed = journal.changed
            events = await journal.call(journal.journal.pending, limit, self._batch_bytes)
            records = []
            # Between event batches of a drain, a look at the trail once a second.
            if audit and (not events or trio.current_time() >= self._next_audit_look):
                self._next_audit_look = trio.current_time() + IDLE_POLL
                records = await journal.call(journal.journal.audit_pending, limit)
            if not events and not records:
                self._link_works()
                self.state = "idle"
                with trio.move_on_after(IDLE_POLL):
                    await changed.wait()
                continue
            self.state = "sending"
            if events:
                await self._send_batch(ws, events)
            if records:
                await self._send_audit(ws, records)

    async def _send_audit(self, ws: WebSocketConnection, records: list[AuditRecord]) -> None:
        self._batch += 1
        batch = AuditBatch(self._batch, self._journal.journal.device_id, tuple(records))
        with trio.fail_after(self._settings.ack_timeout):
            await ws.send_message(encode(batch))
            expect_ack(await _receive(ws), batch)
        self._link_works()
        await self._journal.call(self._journal.journal.audit_mark_relayed, batch.up_to)
        self.sent_audit += len(records)

    async def _send_batch(self, ws: WebSocketConnection, events: list[RelayEvent]) -> None:
        self._batch += 1
        shed = Shed(*self._unreported_shed) if self._unreported_shed != (0, 0) else None
        batch = RelayBatch(self._batch, self._journal.journal.device_id, tuple(events), shed)
        with trio.fail_after(self._settings.ack_timeout):
            await ws.send_message(encode(batch))
            expect_ack(await _receive(ws), batch)
        self._unreported_shed = (0, 0)
        self._link_works()
        await self._journal.call(self._journal.journal.mark_relayed, batch.up_to)
        self.sent_events += len(events)
        self.last_ack = trio.current_time()


async def _receive(ws: WebSocketConnection) -> UpstreamMessage:
    """The upstream's next message. A frame that is not one closes the connection with
    the protocol error's close code, and the error propagates (a link failure)."""
    frame = await ws.get_message()
    try:
        return parse_upstream(frame)
    except RelayProtocolError as exc:
        with trio.move_on_after(2.0):
            await ws.aclose(exc.close_code, exc.code)
        raise


def _name(message: UpstreamMessage) -> str:
    return str(message.to_wire()["type"])


# What the network and the upstream can do to the link; anything else is a bug here.
_LINK_ERRORS = (HandshakeError, ConnectionClosed, OSError, trio.BrokenResourceError,
                trio.TooSlowError, RelayProtocolError, JournalError)


def _is_link_error(exc: BaseException) -> bool:
    """A failure of the link (network, upstream, bad reply), possibly grouped by trio."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_link_error(e) for e in exc.exceptions)
    return isinstance(exc, _LINK_ERRORS)


def _closed_with(exc: BaseException, code: int) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return any(_closed_with(e, code) for e in exc.exceptions)
    reason = getattr(exc, "reason", None)
    return isinstance(exc, ConnectionClosed) and reason is not None and reason.code == code


def _describe(exc: BaseException) -> str:
    """The failure in words, for ``last_error`` in health and the log."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    if isinstance(exc, ConnectionClosed) and exc.reason is not None:
        reason = exc.reason
        why = f": {reason.reason[:200]}" if reason.reason else ""
        return f"the upstream closed the connection ({reason.code} {reason.name}{why})"
    if isinstance(exc, trio.TooSlowError):
        return "the upstream did not answer in time"
    if isinstance(exc, RelayProtocolError):
        return f"{exc.code}: {exc.message}"
    cause = exc.__cause__ or exc
    return str(cause) or type(cause).__name__
