"""The receiving end of the relay: ``/ws/relay`` on an upstream edge daemon.

A device (a token with ``relay:write`` whose ``sub`` is the device id) sends batches
of journal events; each batch is stored in this daemon's journal in one transaction
(fsync on commit) and only then acknowledged. Duplicates (device, session, seq) are
ignored, so a device resending after a lost ack changes nothing. Relayed sessions are
served to this daemon's own clients (``/transcripts/<id>``) and, when this daemon
relays too, passed on upstream (tiers: room devices -> clinic server -> cloud).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from edge import __version__
from edge.core.config import Config
from edge.core.stats import Stats
from edge.journal.db import JournalError, RelayEvent
from edge.journal.service import JournalService
from edge.net.connection import Connection, SessionInfo, Stop
from edge.protocols.live import CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_POLICY

logger = logging.getLogger(__name__)

SCOPE_RELAY = "relay:write"
MAX_BATCH_EVENTS = 1000


class RelayIngest(Connection):
    def __init__(self, ws: WebSocketConnection, info: SessionInfo, config: Config,
                 stats: Stats, journal: JournalService) -> None:
        super().__init__(ws, info, config, stats)
        self._journal = journal
        self._device = info.claims.sub
        self.stored = 0
        self._cancel = trio.CancelScope()

    async def run(self) -> Stop:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sender)
            self._queue({"type": "relay_init", "server": "edge", "version": __version__,
                         "device_id": self._device, "max_batch_events": MAX_BATCH_EVENTS})
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
                text = await self.ws.get_message()
            except ConnectionClosed:
                self.stop(Stop(CLOSE_GOING_AWAY, "client_closed", notify=False))
                return
            self._last_client_message = trio.current_time()
            try:
                batch, events = self._parse(text)
            except ValueError as exc:
                self.stop(Stop(CLOSE_POLICY, "bad_batch", ("bad_batch", str(exc))))
                return
            try:
                new = await self._journal.call(self._journal.journal.ingest, events)
            except (JournalError, ValueError) as exc:
                logger.error("relay from %s: cannot store a batch: %s", self._device, exc)
                self.stop(Stop(CLOSE_INTERNAL_ERROR, "store_failed", (
                    "store_failed", "the upstream could not store the batch; retry later")))
                return
            self._journal.changed.set()
            self._journal.changed = trio.Event()
            self.stored += new
            if isinstance(batch.get("shed"), dict):
                logger.warning("relay from %s: the device reports %s event(s) it could not "
                               "keep queued for relaying", self._device,
                               batch["shed"].get("events"))
            self._queue({"type": "relay_ack", "batch": batch.get("batch"),
                         "up_to": events[-1].id, "stored": new})

    def _parse(self, text: str | bytes) -> tuple[dict[str, Any], list[RelayEvent]]:
        if not isinstance(text, str):
            raise ValueError("relay batches are JSON text frames")
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("type") != "relay_batch":
            raise ValueError('expected {"type": "relay_batch", ...}')
        raw = data.get("events")
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_BATCH_EVENTS:
            raise ValueError(f"events must be a list of 1 to {MAX_BATCH_EVENTS} events")
        events = [RelayEvent.from_wire(item) for item in raw]
        foreign = {e.device_id for e in events} - {self._device}
        if foreign:
            raise ValueError("a device may only relay its own events (device_id must be "
                             "the token's sub)")
        if [e.id for e in events] != sorted(e.id for e in events):
            raise ValueError("events must be in id order")
        return data, events

    def _summary(self, stop: Stop) -> dict[str, Any]:
        return {**super()._summary(stop), "stored": self.stored}
