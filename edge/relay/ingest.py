"""The receiving end of the relay: ``/ws/relay`` on an upstream edge daemon.

A device (a token with ``relay:write`` whose ``sub`` is the device id) sends batches
of journal events; each batch is stored in this daemon's journal in one transaction
(fsync on commit) and only then acknowledged. Duplicates (device, session, seq) are
ignored, so a device resending after a lost ack changes nothing. Relayed sessions are
served to this daemon's own clients (``/transcripts/<id>``) and, when this daemon
relays too, passed on upstream (tiers: room devices -> clinic server -> cloud).

Audit records (``relay_audit``, announced by ``"audit": true`` in ``relay_init``) are
stored per device in the same way, acknowledged with a ``relay_ack`` up to their last
``seq``; a record whose chain is broken is stored flagged, with a WARNING (see
:mod:`edge.journal.audit`).

Frames are read with :func:`edge.protocols.relay.parse_downstream_any`. A device that sends
anything but a valid batch of its own events gets an ``error`` message with the protocol
error's code (``bad_batch``) and its close code (1003 for a binary frame, 1008 for a
malformed batch, 1009 for one too big); only a failure to store here is ``store_failed``
and 1011.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from edge import __version__
from edge.core.close_codes import CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR
from edge.core.config import Config
from edge.core.stats import Stats
from edge.journal.db import JournalError
from edge.journal.service import JournalService
from edge.net.channel import Channel, ChannelClosed
from edge.net.connection import Connection, SessionInfo, Stop
from edge.protocols.audit import AuditBatch
from edge.protocols.relay import (
    MAX_BATCH_EVENTS,
    RelayAck,
    RelayBatch,
    RelayInit,
    RelayProtocolError,
    parse_downstream_any,
)

logger = logging.getLogger(__name__)

SCOPE_RELAY = "relay:write"


class RelayIngest(Connection):
    def __init__(self, channel: Channel, info: SessionInfo, config: Config,
                 stats: Stats, journal: JournalService) -> None:
        super().__init__(channel, info, config, stats)
        self._journal = journal
        self._device = info.claims.sub
        self.stored = 0
        self.stored_audit = 0
        self._cancel = trio.CancelScope()

    async def run(self) -> Stop:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sender)
            self._queue(RelayInit("edge", __version__, self._device,
                                  MAX_BATCH_EVENTS, audit=True).to_wire())
            with self._cancel:
                async with trio.open_nursery() as inner:
                    inner.start_soon(self._token_expiry)
                    inner.start_soon(self._keepalive)
                    await self._receive()
                    inner.cancel_scope.cancel()
            self._finish()
        assert self._stop is not None
        return self._stop

    def _on_stop(self, stop: Stop) -> None:
        self._cancel.cancel()

    async def _receive(self) -> None:
        while self._stop is None:
            try:
                frame = await self.channel.receive()
            except ChannelClosed:
                self.stop(Stop(CLOSE_GOING_AWAY, "client_closed", notify=False))
                return
            self._last_client_message = trio.current_time()
            try:
                batch = self._parse(frame)
            except RelayProtocolError as exc:
                logger.info("relay from %s: refused a batch (%s)", self._device, exc.message)
                self.stop(Stop(exc.close_code, exc.code, (exc.code, exc.message)))
                return
            try:
                if isinstance(batch, AuditBatch):
                    new = await self._store_audit(batch)
                    self._queue(RelayAck(batch.batch, batch.up_to, new).to_wire())
                    continue
                new = await self._journal.call(self._journal.journal.ingest, batch.events)
            except JournalError as exc:
                logger.error("relay from %s: cannot store a batch: %s", self._device, exc)
                self.stop(Stop(CLOSE_INTERNAL_ERROR, "store_failed", (
                    "store_failed", "the upstream could not store the batch; retry later")))
                return
            self._journal.changed.set()
            self._journal.changed = trio.Event()
            self.stored += new
            if batch.shed is not None and batch.shed.events:
                logger.warning("relay from %s: the device reports %d event(s) it could not "
                               "keep queued for relaying", self._device, batch.shed.events)
            self._queue(RelayAck(batch.batch, batch.up_to, new).to_wire())

    async def _store_audit(self, batch: AuditBatch) -> int:
        """Store a device's audit records; a broken chain is stored, flagged and logged
        (see :func:`edge.journal.audit.ingest`). Raises JournalError."""
        journal = self._journal.journal
        done = await self._journal.call(journal.audit_ingest, self._device, batch.records)
        for fault in done.faults:
            logger.warning("relay from %s: the audit trail is broken: %s (stored, flagged; "
                           "see 'edge audit verify --device %s')", self._device, fault,
                           self._device)
        self.stored_audit += done.stored
        return done.stored

    def _parse(self, frame: str | bytes) -> RelayBatch | AuditBatch:
        """A batch of this device's own events or audit records, or RelayProtocolError
        (``bad_batch``)."""
        batch = parse_downstream_any(frame, max_events=MAX_BATCH_EVENTS)
        events = batch.events if isinstance(batch, RelayBatch) else ()
        if batch.device_id != self._device or any(e.device_id != self._device
                                                  for e in events):
            raise RelayProtocolError("bad_batch", "a device may only relay its own events "
                                     "(device_id must be the token's sub)")
        if self._device == self._journal.journal.device_id:
            raise RelayProtocolError("bad_batch", "a device may not relay under this "
                                     "server's own device id")
        return batch

    def _summary(self, stop: Stop) -> dict[str, Any]:
        return {**super()._summary(stop), "stored": self.stored,
                "stored_audit": self.stored_audit}
