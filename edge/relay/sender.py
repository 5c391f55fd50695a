"""Store and forward: push the journal upstream, in order, at least once.

The relay reads unrelayed events from the journal in id order, sends them in batches
over a WebSocket to an upstream that speaks the relay messages (another edge daemon's
``/ws/relay``, or a cloud service implementing the same), and marks them relayed only
when the upstream acknowledges a batch, which it does after storing it durably. A
crash anywhere means events are sent again, never lost; the upstream removes
duplicates by (device, session, seq).

Wire messages (JSON text frames), documented in the README:

* upstream -> device on accept: ``{"type": "relay_init", "server": ..., "version": ...}``
* device -> upstream: ``{"type": "relay_batch", "batch": n, "device_id": ...,
  "events": [event, ...], "shed": {"events": k, "bytes": b}}`` (``shed`` only when the
  outbox overflowed since the last batch)
* upstream -> device: ``{"type": "relay_ack", "batch": n, "up_to": last_event_id,
  "stored": new_events}``; or ``{"type": "error", ...}`` and a close.

The relay never slows local transcription: it only reads the journal (in the
journal's worker thread) and talks to the network.
"""

from __future__ import annotations

import json
import logging
import math
import random
import ssl
from dataclasses import dataclass
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from edge.journal.db import Backlog, JournalError, RelayEvent
from edge.journal.service import JournalService
from edge.protocols.live import CLOSE_TOO_BIG

logger = logging.getLogger(__name__)

_IDLE_POLL = 1.0
_SHED_CHECK_INTERVAL = 5.0
_MIN_BATCH_BYTES = 16 * 1024
_CIRCUIT_OPEN_AFTER = 3  # consecutive failures before health calls the link down


class RelayProtocolError(Exception):
    """The upstream answered something other than the ack we waited for."""


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


class Relay:
    """Start with ``await nursery.start(relay.run)``; runs until cancelled."""

    def __init__(self, settings: RelaySettings, journal: JournalService) -> None:
        self._s = settings
        self._journal = journal
        self.state = "starting"
        self.failures = 0  # consecutive failed connections
        self.sent_events = 0
        self.shed_events = 0
        self.shed_bytes = 0
        self.last_ack: float | None = None  # trio.current_time() of the last ack
        self.last_error: str | None = None
        self._unreported_shed = (0, 0)
        self._batch = 0
        self.backlog = Backlog(0, 0)  # refreshed as the relay works
        self._batch_bytes = settings.batch_bytes  # halved if the upstream finds it too big
        self._next_shed_check = -math.inf

    @property
    def circuit_open(self) -> bool:
        return self.failures >= _CIRCUIT_OPEN_AFTER

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "circuit_open": self.circuit_open,
                "failures": self.failures, "backlog": self.backlog.events,
                "backlog_bytes": self.backlog.bytes, "sent_events": self.sent_events,
                "shed_events": self.shed_events, "last_error": self.last_error}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        context = None
        if self._s.url.startswith("wss:"):
            context = ssl.create_default_context(cafile=self._s.cafile)
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
                self.failures += 1
                self.last_error = _describe(exc)
                level = logging.WARNING if self.failures <= _CIRCUIT_OPEN_AFTER else logging.DEBUG
                logger.log(level, "relay: upstream unavailable (%s); attempt %d",
                           self.last_error, self.failures)
                if self.failures == _CIRCUIT_OPEN_AFTER:
                    logger.warning("relay: circuit open after %d failures; transcription "
                                   "goes on locally and the journal keeps everything",
                                   self.failures)
            self.state = "backoff"
            await self._shed_if_full()
            await trio.sleep(self._delay())

    def _delay(self) -> float:
        """Exponential backoff with full jitter, capped."""
        ceiling = min(self._s.backoff_max, self._s.backoff_base * 2 ** min(self.failures, 16))
        return random.uniform(self._s.backoff_base, max(self._s.backoff_base, ceiling))

    async def _connected(self, context: ssl.SSLContext | None) -> None:
        headers = [(b"authorization", f"Bearer {self._s.token}".encode())]
        async with open_websocket_url(self._s.url, extra_headers=headers,
                                      ssl_context=context, message_queue_size=4,
                                      connect_timeout=self._s.ack_timeout,
                                      disconnect_timeout=2.0) as ws:
            with trio.fail_after(self._s.ack_timeout):
                hello = json.loads(await ws.get_message())
            if hello.get("type") != "relay_init":
                raise RelayProtocolError(f"expected relay_init, got {hello.get('type')!r}")
            if self.failures:
                logger.info("relay: upstream reachable again after %d failure(s)",
                            self.failures)
            self.failures = 0
            self.last_error = None
            self.state = "connected"
            await self._pump(ws)

    async def _pump(self, ws: Any) -> None:
        journal = self._journal
        while True:
            if trio.current_time() >= self._next_shed_check:
                # Scanning the whole outbox costs milliseconds per thousand events: do
                # it every few seconds, not before every batch of a long drain.
                self._next_shed_check = trio.current_time() + _SHED_CHECK_INTERVAL
                await self._shed_if_full()
            changed = journal.changed
            events = await journal.call(journal.journal.pending, self._s.batch_events,
                                        self._batch_bytes)
            if not events:
                self.state = "idle"
                with trio.move_on_after(_IDLE_POLL):
                    await changed.wait()
                continue
            self.state = "sending"
            await self._send_batch(ws, events)

    async def _send_batch(self, ws: Any, events: list[RelayEvent]) -> None:
        self._batch += 1
        batch: dict[str, Any] = {"type": "relay_batch", "batch": self._batch,
                                 "device_id": self._journal.journal.device_id,
                                 "events": [e.to_wire() for e in events]}
        if self._unreported_shed != (0, 0):
            batch["shed"] = {"events": self._unreported_shed[0],
                             "bytes": self._unreported_shed[1]}
        with trio.fail_after(self._s.ack_timeout):
            await ws.send_message(json.dumps(batch, ensure_ascii=False,
                                              separators=(",", ":")))
            reply = json.loads(await ws.get_message())
        if reply.get("type") == "error":
            raise RelayProtocolError(f"upstream refused the batch: {reply.get('code')}: "
                                     f"{reply.get('message')}")
        up_to = events[-1].id
        if (reply.get("type") != "relay_ack" or reply.get("batch") != self._batch
                or reply.get("up_to") != up_to):
            raise RelayProtocolError("the upstream's ack does not match the batch")
        self._unreported_shed = (0, 0)
        await self._journal.call(self._journal.journal.mark_relayed, up_to)
        self.sent_events += len(events)
        self.last_ack = trio.current_time()

    async def _shed_if_full(self) -> None:
        """Keep the outbox within ``max_backlog_bytes``: the oldest unsent events stop
        being queued for the upstream (they stay in the local journal). Logged, counted
        in health and metrics, and reported upstream with the next batch."""
        shed = await self._journal.call(self._journal.journal.shed_backlog,
                                        self._s.max_backlog_bytes)
        self.backlog = await self._journal.backlog()
        if shed.events:
            self.shed_events += shed.events
            self.shed_bytes += shed.bytes
            events, nbytes = self._unreported_shed
            self._unreported_shed = (events + shed.events, nbytes + shed.bytes)
            logger.warning("relay: outbox over %d bytes; %d oldest event(s) (%d bytes) will "
                           "not be relayed; they remain in the local journal",
                           self._s.max_backlog_bytes, shed.events, shed.bytes)


_LINK_ERRORS = (HandshakeError, ConnectionClosed, OSError, trio.TooSlowError,
                RelayProtocolError, JournalError, ValueError)


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
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    cause = exc.__cause__ or exc
    return str(cause) or type(cause).__name__

