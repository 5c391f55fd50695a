"""What the WebSocket relay and the MQTT relay share: the outbox and the link's health.

Both read the journal's unrelayed events and forward them, each over its own link
(:mod:`edge.relay.sender`, :mod:`edge.relay.mqtt`). :class:`OutboxRelay` holds what
they have in common and nothing of either link: the face ``/healthz`` and ``/metrics``
read (state, circuit, backlog, counters, last error), keeping the outbox within
``max_backlog_bytes``, and counting a failure of the link and backing off after it.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

import trio

from edge.core.backoff import Backoff, Circuit
from edge.journal.db import Backlog
from edge.journal.service import JournalService

IDLE_POLL = 1.0  # seconds between looks at an empty outbox
_SHED_CHECK_INTERVAL = 5.0


class OutboxRelay:
    """The outbox and link health of a relay; a subclass supplies the link."""

    def __init__(self, journal: JournalService, *, max_backlog_bytes: int,
                 backoff_base: float, backoff_max: float) -> None:
        self._journal = journal
        self._log = logging.getLogger(type(self).__module__)  # the link's module logs
        self._max_backlog_bytes = max_backlog_bytes
        # The first retry may already wait up to twice the base.
        self._backoff = Backoff(first=2 * backoff_base, most=backoff_max, least=backoff_base)
        self._rng = random.Random()
        self.state = "starting"
        self.circuit = Circuit()  # failures in a row, ended by an ack (see _link_works)
        self.sent_events = 0
        self.sent_audit = 0  # audit records the other end acknowledged since start
        self.shed_events = 0
        self.shed_bytes = 0
        self.last_ack: float | None = None  # trio.current_time() of the last ack
        self.last_error: str | None = None
        self._unreported_shed = (0, 0)
        self.backlog = Backlog(0, 0)  # refreshed as the relay works
        self._next_shed_check = -math.inf

    @property
    def failures(self) -> int:
        """Failures of the link in a row."""
        return self.circuit.failures

    @property
    def circuit_open(self) -> bool:
        return self.circuit.open

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Relay until cancelled: ready at once, then connect, forward and, after a
        failure of the link, back off and connect again. Never raises for the other
        end's or the network's behaviour. Each link supplies it."""
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "circuit_open": self.circuit_open,
                "failures": self.failures, "backlog": self.backlog.events,
                "backlog_bytes": self.backlog.bytes, "sent_events": self.sent_events,
                "shed_events": self.shed_events, "sent_audit": self.sent_audit,
                "last_error": self.last_error}

    def _link_failed(self, what: str, why: str) -> None:
        """Count a failure of the link to ``what`` (described by ``why``) and log it:
        a WARNING up to the one that opens the circuit, which is said once."""
        self.circuit = self.circuit.failed()
        self.last_error = why
        self._log.log(logging.WARNING if self.circuit.loud else logging.DEBUG,
                   "relay: %s unavailable (%s); attempt %d", what, why, self.failures)
        if self.circuit.just_opened:
            self._log.warning("relay: circuit open after %d failures; transcription "
                           "goes on locally and the journal keeps everything",
                           self.failures)

    def _link_works(self) -> None:
        """The other end acknowledged something, or greeted us with nothing to send:
        the failures in a row end here (one that greets and then answers garbage
        keeps counting them, and opens the circuit)."""
        if self.failures:
            self._log.info("relay: upstream reachable again after %d failure(s)", self.failures)
        self.circuit = self.circuit.closed()
        self.last_error = None

    async def _back_off(self) -> None:
        """Between attempts: bound the outbox, then sleep the backoff (cancellable)."""
        self.state = "backoff"
        await self._shed_if_full()
        await trio.sleep(self._backoff.delay(self.failures, self._rng))

    async def _shed_if_due(self) -> bool:
        """Bound the outbox if the last check is a few seconds old; whether it did.
        Bounding reads the whole outbox: not before every batch of a long drain."""
        if trio.current_time() < self._next_shed_check:
            return False
        self._next_shed_check = trio.current_time() + _SHED_CHECK_INTERVAL
        await self._shed_if_full()
        return True

    async def _shed_if_full(self) -> None:
        """Keep the outbox within ``max_backlog_bytes``: the oldest unsent events stop
        being queued for the upstream (they stay in the local journal). Logged, counted
        in health and metrics, and reported upstream with the next batch."""
        shed = await self._journal.call(self._journal.journal.shed_backlog,
                                        self._max_backlog_bytes)
        self.backlog = await self._journal.backlog()
        if shed.events:
            self.shed_events += shed.events
            self.shed_bytes += shed.bytes
            events, nbytes = self._unreported_shed
            self._unreported_shed = (events + shed.events, nbytes + shed.bytes)
            self._log.warning("relay: outbox over %d bytes; %d oldest event(s) (%d bytes) will "
                           "not be relayed; they remain in the local journal",
                           self._max_backlog_bytes, shed.events, shed.bytes)
