"""The reference consumer of the MQTT relay: devices' events from a broker into this journal.

:class:`MqttIngest` subscribes (QoS 1, a persistent session, by default the shared
subscription ``$share/edge/edge/v1/+/+/events``, so several consumers split the load)
and, for each events message (:mod:`edge.protocols.mqtt_relay`):

1. checks it: a payload that is not a valid events message, a device outside
   ``allow_devices``, or one claiming this daemon's own id is *refused*: a WARNING
   naming the reason (never the content) and a receipt whose ``refused`` list names
   every event key with the reason code, so that the device sets them aside and moves
   on (an unreadable payload is answered from its ``idempotency-key`` user
   properties; without them it can only be dropped);
2. keeps each device's order (``ordered``, the default): a message whose ``after``
   (the event the device sent just before it) this consumer has not stored or
   refused is not stored, but answered with a *gap* receipt, and the device sends
   again from its earliest unacknowledged event. What it has is kept in memory per
   device and journal epoch; after a restart the first message of each device with
   an ``after`` is a gap, which costs the device one round trip;
3. stores its events with :meth:`Journal.ingest <edge.journal.db.Journal.ingest>` in one
   durable transaction, with the same dedupe by (device, session, seq) as
   ``/ws/relay``; relayed sessions are then served through ``/transcripts``;
4. publishes the receipt (QoS 1) to the message's MQTT 5 response topic, with its
   correlation data;
5. only then acknowledges the message to the broker (paho's manual acks): a crash
   before that gets it redelivered, and the dedupe collapses it.

A failure to store closes the connection without acknowledging (the broker delivers
the message again on the next session) and backs off. Who may publish is the broker's
ACLs' business.

Several daemons in one shared subscription each get part of every device's stream,
and no one of them can keep its order: with ``ordered`` each would answer gaps for
what the others stored. Set ``ordered = false`` there (each journal then stores what
it gets as it comes).
"""

from __future__ import annotations

import collections
import logging
import random
from typing import Any

import paho.mqtt.client as paho
import trio

from edge.core.backoff import Backoff, Circuit
from edge.journal.db import JournalError
from edge.journal.service import JournalService
from edge.protocols.audit import AuditReceipt, AuditRecordError, decode_audit, is_audit
from edge.protocols.mqtt_relay import (
    EventsMessage,
    MqttRelayError,
    Receipt,
    decode_events,
    idempotency_key,
    keys_of,
)
from edge.relay.mqtt_link import LinkError, MqttClientSettings, MqttLink, client_settings

logger = logging.getLogger(__name__)

_MAX_PAYLOAD = 16 * 1024 * 1024
_MAX_SOURCES = 10000  # devices and epochs whose order is kept in memory


class MqttIngest:
    """Start with ``await nursery.start(ingest.run)``; runs until cancelled."""

    def __init__(self, client: MqttClientSettings, journal: JournalService, *,
                 subscription: str, allow_devices: frozenset[str] = frozenset(),
                 max_inflight: int = 64, backoff_max: float = 30.0,
                 ordered: bool = True) -> None:
        self._client = client
        self._journal = journal
        self._subscription = subscription
        self._allow = allow_devices
        self._max_inflight = max_inflight
        self._ordered = ordered
        # (device, epoch) -> the highest event id stored or refused, most recent last.
        self._high: collections.OrderedDict[tuple[str, str], int] = (
            collections.OrderedDict())
        # Retries from a quarter second; the first may already wait a second.
        self._backoff = Backoff(first=1.0, most=backoff_max, least=0.25)
        self._rng = random.Random()
        self.state = "starting"
        self.circuit = Circuit()
        self.last_error: str | None = None
        self.messages = 0
        self.stored = 0
        self.duplicates = 0
        self.dropped = 0  # unanswerable: refused without a receipt
        self.refused = 0  # events refused (answered in receipts)
        self.gaps = 0  # messages not stored for want of an earlier one
        self.receipts = 0
        self.audit_stored = 0  # audit records of devices stored since start
        self.subscribed = trio.Event()  # set once the first subscription is granted

    @property
    def failures(self) -> int:
        """Failures of the link in a row."""
        return self.circuit.failures

    def status(self) -> dict[str, Any]:
        """For ``/healthz`` (``ingest``) and ``/metrics``."""
        return {"state": self.state, "connected": self.state == "consuming",
                "url": self._client.where, "subscription": self._subscription,
                "ordered": self._ordered, "failures": self.failures,
                "messages": self.messages, "stored": self.stored,
                "duplicates": self.duplicates, "refused": self.refused, "gaps": self.gaps,
                "dropped": self.dropped, "receipts": self.receipts,
                "last_error": self.last_error}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        while True:
            # Bounded, one per connection: paho's thread waits while it is full.
            send, receive = trio.open_memory_channel[paho.MQTTMessage](self._max_inflight)
            link = MqttLink(self._client, sink=send, manual_ack=True,
                            receive_maximum=self._max_inflight)
            try:
                await link.open()
                await link.subscribe(self._subscription, self._client.connect_timeout)
                self.state = "consuming"
                self.subscribed.set()
                if self.failures:
                    logger.info("mqtt ingest: broker %s reachable again", self._client.where)
                self.circuit = self.circuit.closed()
                self.last_error = None
                await self._consume(link, receive)
            except (LinkError, JournalError) as exc:
                self.circuit = self.circuit.failed()
                self.last_error = str(exc)
                logger.log(logging.WARNING if self.circuit.loud else logging.DEBUG,
                           "mqtt ingest: broker %s unavailable (%s); attempt %d",
                           self._client.where, self.last_error, self.failures)
            finally:
                # Unacknowledged messages are redelivered on the next connection.
                receive.close()
                await link.aclose()
            self.state = "backoff"
            await trio.sleep(self._backoff.delay(self.failures, self._rng))

    async def _consume(self, link: MqttLink,
                       receive: trio.MemoryReceiveChannel[paho.MQTTMessage]) -> None:
        while True:
            message: paho.MQTTMessage | None = None
            with trio.move_on_after(1.0):
                message = await receive.receive()
            link.check()
            if message is not None:
                await self._handle(link, message)

    async def _handle(self, link: MqttLink, message: paho.MQTTMessage) -> None:
        self.messages += 1
        try:
            events = decode_events(bytes(message.payload), max_bytes=_MAX_PAYLOAD)
        except MqttRelayError as exc:
            if is_audit(bytes(message.payload)):
                await self._handle_audit(link, message)
            else:
                self._refuse_unreadable(link, message, exc.message)
            return
        device = events.device_id
        if self._allow and device not in self._allow:
            self._refuse(link, message, events, "device_not_allowed",
                         f"device {device!r:.60} is not in allow_devices")
            return
        if device == self._journal.journal.device_id:
            self._refuse(link, message, events, "own_device_id",
                         "a device may not relay under this server's own id")
            return
        source = (device, events.epoch)
        have = self._high.get(source)
        if self._ordered and events.after is not None and (have is None
                                                           or have < events.after):
            self.gaps += 1
            logger.info("mqtt ingest: events %d-%d of %s came before event %d, which is "
                        "not here (the highest is %s); not stored, the device sends "
                        "again in order", events.first, events.last, device, events.after,
                        have if have is not None else "none")
            self._answer(link, message, events.receipt(gap=have or 0))
            return
        try:
            new = await self._journal.call(self._journal.journal.ingest, events.events)
        except ValueError as exc:
            self._refuse(link, message, events, "invalid", str(exc)[:200])
            return
        except JournalError as exc:
            logger.error("mqtt ingest: cannot store events from %s: %s", device, exc)
            raise LinkError(f"cannot store: {exc}") from exc
        self._journal.changed.set()
        self._journal.changed = trio.Event()
        self.stored += new
        self.duplicates += len(events.events) - new
        self._advance(source, events.last)
        self._answer(link, message, events.receipt(new))

    async def _handle_audit(self, link: MqttLink, message: paho.MQTTMessage) -> None:
        """Store a device's audit records (a broken chain stored flagged, with a
        WARNING), then answer with an audit receipt. A message this ingest will not
        store is acknowledged without a receipt: the device offers it again later."""
        try:
            audit = decode_audit(bytes(message.payload))
        except AuditRecordError as exc:
            self.dropped += 1
            logger.warning("mqtt ingest: dropped audit records on %s (%s)", message.topic,
                           exc)
            self._answer(link, message, None)
            return
        device = audit.device_id
        if (self._allow and device not in self._allow) or (
                device == self._journal.journal.device_id):
            logger.warning("mqtt ingest: refused audit records of %s on %s (not an allowed "
                           "device)", f"{device!r:.60}", message.topic)
            self._answer(link, message, None)
            return
        try:
            done = await self._journal.call(self._journal.journal.audit_ingest, device,
                                            audit.records)
        except JournalError as exc:
            logger.error("mqtt ingest: cannot store audit records from %s: %s", device, exc)
            raise LinkError(f"cannot store: {exc}") from exc
        for fault in done.faults:
            logger.warning("mqtt ingest: the audit trail of %s is broken: %s (stored, "
                           "flagged; see 'edge audit verify --device %s')", device, fault,
                           device)
        self.audit_stored += done.stored
        self._answer(link, message, AuditReceipt(device, audit.last, done.stored))

    def _advance(self, source: tuple[str, str], last: int) -> None:
        self._high[source] = max(last, self._high.get(source, 0))
        self._high.move_to_end(source)
        while len(self._high) > _MAX_SOURCES:
            self._high.popitem(last=False)  # forgotten: its next message is a gap

    def _answer(self, link: MqttLink, message: paho.MQTTMessage,
                receipt: Receipt | AuditReceipt | None) -> None:
        """Publish ``receipt`` to the message's response topic (if it names one), then
        acknowledge the message to the broker."""
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        if receipt is not None and response_topic:
            link.publish(response_topic, receipt.encode(),
                         correlation=getattr(props, "CorrelationData", None))
            self.receipts += 1
        if message.qos:
            link.ack(message.mid, message.qos)

    def _refuse(self, link: MqttLink, message: paho.MQTTMessage, events: EventsMessage,
                reason: str, why: str) -> None:
        self.refused += len(events.events)
        logger.warning("mqtt ingest: refused events %d-%d of %s on %s (%s); the device "
                       "sets them aside", events.first, events.last,
                       f"{events.device_id!r:.60}", message.topic, why)
        if reason == "invalid":
            self._advance((events.device_id, events.epoch), events.last)
        self._answer(link, message, events.receipt(0, refused=reason))

    def _refuse_unreadable(self, link: MqttLink, message: paho.MQTTMessage, why: str
                           ) -> None:
        props = message.properties
        named = keys_of(getattr(props, "UserProperty", None) or []) if props else None
        if named is None:
            self.dropped += 1
            logger.warning("mqtt ingest: dropped a message on %s (%s; it names no event "
                           "keys to refuse)", message.topic, why)
            self._answer(link, message, None)
            return
        device, epoch, ids = named
        self.refused += len(ids)
        logger.warning("mqtt ingest: refused events %d-%d of %s on %s (%s); the device "
                       "sets them aside", ids[0], ids[-1], f"{device!r:.60}", message.topic,
                       why)
        keys = tuple((idempotency_key(device, epoch, i), "invalid") for i in ids)
        self._answer(link, message, Receipt(device, epoch, ids[0], ids[-1], 0, keys))


def mqtt_ingest(config: Any, journal: JournalService) -> MqttIngest:
    """The ingest from ``[ingest.mqtt]``; its client id defaults to ``<device>-ingest``."""
    from edge.core.keys import device_id

    i = config.ingest.mqtt
    allow = frozenset(d.strip() for d in i.allow_devices.split(",") if d.strip())
    return MqttIngest(client_settings("ingest.mqtt", i, f"{device_id(config)}-ingest"),
                      journal, subscription=i.subscription, allow_devices=allow,
                      max_inflight=i.max_inflight, backoff_max=config.relay.backoff_max,
                      ordered=i.ordered)
