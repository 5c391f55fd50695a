"""The reference consumer of the MQTT relay: devices' events from a broker into this journal.

:class:`MqttIngest` subscribes (QoS 1, a persistent session, by default the shared
subscription ``$share/edge/edge/v1/+/+/events``, so several consumers split the load)
and, for each events message (:mod:`edge.protocols.mqtt_relay`):

1. checks it (a payload that is not a valid events message, a device outside
   ``allow_devices``, or one claiming this daemon's own id is dropped with a WARNING
   naming the reason, never the content, and acknowledged so it is not redelivered);
2. stores its events with :meth:`Journal.ingest <edge.journal.db.Journal.ingest>` in one
   durable transaction, with the same dedupe by (device, session, seq) as
   ``/ws/relay``; relayed sessions are then served through ``/transcripts``;
3. publishes the receipt (QoS 1) to the message's MQTT 5 response topic, with its
   correlation data;
4. only then acknowledges the message to the broker (paho's manual acks): a crash
   before that gets it redelivered, and the dedupe collapses it.

A failure to store closes the connection without acknowledging (the broker delivers
the message again on the next session) and backs off. Who may publish is the broker's
ACLs' business.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import paho.mqtt.client as paho
import trio

from edge.journal.db import JournalError
from edge.journal.service import JournalService
from edge.protocols.mqtt_relay import MqttRelayError, decode_events
from edge.relay.mqtt import LinkError, MqttClientSettings, MqttLink

logger = logging.getLogger(__name__)

_MAX_PAYLOAD = 16 * 1024 * 1024


class MqttIngest:
    """Start with ``await nursery.start(ingest.run)``; runs until cancelled."""

    def __init__(self, client: MqttClientSettings, journal: JournalService, *,
                 subscription: str, allow_devices: frozenset[str] = frozenset(),
                 max_inflight: int = 64, backoff_max: float = 30.0) -> None:
        self._client = client
        self._journal = journal
        self._subscription = subscription
        self._allow = allow_devices
        self._max_inflight = max_inflight
        self._backoff_max = backoff_max
        self.state = "starting"
        self.failures = 0
        self.last_error: str | None = None
        self.messages = 0
        self.stored = 0
        self.duplicates = 0
        self.dropped = 0
        self.receipts = 0
        self.subscribed = trio.Event()  # set once the first subscription is granted

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "failures": self.failures, "messages": self.messages,
                "stored": self.stored, "duplicates": self.duplicates,
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
                self.failures = 0
                self.last_error = None
                await self._consume(link, receive)
            except (LinkError, JournalError) as exc:
                self.failures += 1
                self.last_error = str(exc)
                logger.log(logging.WARNING if self.failures <= 3 else logging.DEBUG,
                           "mqtt ingest: broker %s unavailable (%s); attempt %d",
                           self._client.where, self.last_error, self.failures)
            finally:
                # Unacknowledged messages are redelivered on the next connection.
                receive.close()
                await link.aclose()
            self.state = "backoff"
            ceiling = min(self._backoff_max, 0.5 * 2 ** min(self.failures, 16))
            await trio.sleep(random.uniform(0.25, max(0.25, ceiling)))

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
            self._drop(link, message, exc.message)
            return
        device = events.device_id
        if self._allow and device not in self._allow:
            self._drop(link, message, f"device {device!r:.60} is not in allow_devices")
            return
        if device == self._journal.journal.device_id:
            self._drop(link, message, "a device may not relay under this server's own id")
            return
        try:
            new = await self._journal.call(self._journal.journal.ingest, events.events)
        except ValueError as exc:
            self._drop(link, message, str(exc)[:200])
            return
        except JournalError as exc:
            logger.error("mqtt ingest: cannot store events from %s: %s", device, exc)
            raise LinkError(f"cannot store: {exc}") from exc
        self._journal.changed.set()
        self._journal.changed = trio.Event()
        self.stored += new
        self.duplicates += len(events.events) - new
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        if response_topic:
            link.publish(response_topic, events.receipt(new).encode(),
                         correlation=getattr(props, "CorrelationData", None))
            self.receipts += 1
        if message.qos:
            link.ack(message.mid, message.qos)

    def _drop(self, link: MqttLink, message: paho.MQTTMessage, why: str) -> None:
        self.dropped += 1
        logger.warning("mqtt ingest: dropped a message on %s (%s)", message.topic, why)
        if message.qos:
            link.ack(message.mid, message.qos)



def mqtt_ingest(config: Any, journal: JournalService) -> MqttIngest:
    """The ingest from ``[ingest.mqtt]``; its client id defaults to ``<device>-ingest``."""
    from edge.core.keys import device_id
    from edge.relay.mqtt import client_settings

    i = config.ingest.mqtt
    allow = frozenset(d.strip() for d in i.allow_devices.split(",") if d.strip())
    return MqttIngest(client_settings("ingest.mqtt", i, f"{device_id(config)}-ingest"),
                      journal, subscription=i.subscription, allow_devices=allow,
                      max_inflight=i.max_inflight, backoff_max=config.relay.backoff_max)
