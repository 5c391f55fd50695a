"""Store and forward over MQTT 5: publish the journal into a broker, in order, at least once.

:class:`MqttRelay` is the WebSocket :class:`~edge.relay.sender.Relay`'s counterpart for
brokers (Mosquitto, EMQX, HiveMQ, AWS IoT Core, ...). Both build on
:class:`~edge.relay.outbox.OutboxRelay`: the same face for ``/healthz`` and
``/metrics`` (state, backlog, circuit, shed, last error) and the same bookkeeping
(backoff with jitter, the circuit after three failures, outbox shedding).

What "sent" means. A broker's PUBACK does not always mean the message is on disk
(Mosquitto keeps it in memory until its autosave), and paho reports a publish complete
even when the PUBACK carries a failure reason code. So every PUBACK's reason code is
checked ("no matching subscribers" is not delivered: a failure; "packet too large" or
Mosquitto's "implementation specific error" for a message over its size limit halve
the size cap and the window is split again; any other failure is a failure of the
link), and with ``ack_level = "receipt"`` (the default) events are marked sent only
when a receipt (:mod:`edge.protocols.mqtt_relay`) covering them comes back on the
receipt topic, which a consumer publishes after storing them; a message without a
receipt after ``receipt_timeout`` is published again. ``ack_level = "broker"`` takes a
successful PUBACK as enough, for brokers whose PUBACK is durable.

How it runs. Each connection is an :class:`~edge.relay.mqtt_link.MqttLink`: a
persistent session, so receipts published while the device is away wait at the broker.
Each failure of the link closes the client; the next attempt is a new one.

The relay works in windows: it reads up to ``max_inflight`` messages' worth of pending
events, splits them under ``max_message_bytes`` (and the broker's Maximum Packet
Size), keeps at most ``max_inflight`` (and the broker's Receive Maximum) unacknowledged,
and marks events relayed as the acknowledged prefix grows. The window's logic (what to
publish, what an answer or a timeout means) is :mod:`edge.protocols.mqtt_window`, pure;
this module feeds it PUBACKs and receipts and does what it answers. Re-sends carry the
same idempotency keys; consumers collapse them.
"""

from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
import trio
from paho.mqtt.reasoncodes import ReasonCode

from edge.journal.db import Backlog, JournalError
from edge.journal.service import JournalService
from edge.protocols.audit import (
    AUDIT_SCHEMA,
    AuditMessage,
    AuditReceipt,
    AuditRecordError,
    decode_audit_receipt,
)
from edge.protocols.mqtt_relay import (
    SCHEMA_PROPERTY,
    EventsMessage,
    MqttRelayError,
    Receipt,
    decode_receipt,
    packet_size,
    split,
)
from edge.protocols.mqtt_window import Step, Window
from edge.relay.mqtt_link import (
    LinkError,
    MqttClientSettings,
    MqttLink,
    client_settings,
    describe_reason,
    wait_either,
)
from edge.relay.outbox import IDLE_POLL, OutboxRelay

logger = logging.getLogger(__name__)

_GO_BACKS_WARNING = 10
_LONE_DROPS = 3  # connections a broker drops over one event before it is set aside
_MIN_MESSAGE_BYTES = 4096
_RC_NO_MATCHING_SUBSCRIBERS = 0x10
_RC_IMPLEMENTATION_SPECIFIC = 0x83  # Mosquitto's answer to a message over its size limit
_RC_PACKET_TOO_LARGE = 0x95
_RC_QUOTA_EXCEEDED = 0x97
_AUDIT_RETRY = 10  # receipt timeouts before unanswered audit records are offered again


@dataclass(frozen=True)
class MqttRelaySettings:
    client: MqttClientSettings
    topic: str
    receipt_topic: str
    ack_level: str = "receipt"
    receipt_timeout: float = 30.0
    max_inflight: int = 16
    max_message_bytes: int = 98304
    batch_events: int = 200
    max_backlog_bytes: int = 256 * 1024 * 1024
    backoff_base: float = 0.5
    backoff_max: float = 60.0


class _Resplit(Exception):
    """The broker refused a message as too large: split the window smaller."""


class MqttRelay(OutboxRelay):
    """Start with ``await nursery.start(relay.run)``; runs until cancelled. Never raises
    for the broker's or the network's behaviour."""

    def __init__(self, settings: MqttRelaySettings, journal: JournalService) -> None:
        super().__init__(journal, max_backlog_bytes=settings.max_backlog_bytes,
                         backoff_base=settings.backoff_base, backoff_max=settings.backoff_max)
        self._settings = settings
        self._max_bytes = settings.max_message_bytes
        # Receipts with the window tag their correlation data carried ("" if none).
        self._receipts: collections.deque[tuple[Receipt, str]] = collections.deque(
            maxlen=4096)
        self._window = 0
        self.republished = 0
        self.go_backs = 0  # windows abandoned to send again in order
        self._go_backs_in_a_row = 0  # without the acknowledged prefix growing
        self._lone_suspect: tuple[int, int] | None = None  # (event id, dropped links)
        self._held: dict[int, str] = {}  # to set aside before the next window
        self.gaps = 0  # gap receipts acted on
        self.set_aside_events = 0  # since start: refused by a consumer or too large
        self.set_aside_reason: str | None = None  # the last one's
        self.set_aside_waiting = 0  # in the journal now (re-read every few seconds)
        self.messages = 0
        self.epoch = ""
        self._audit_receipts: collections.deque[AuditReceipt] = collections.deque(maxlen=64)
        self._audit_retry_at = -math.inf  # after an unanswered audit message: later

    def status(self) -> dict[str, Any]:
        return {**super().status(), "transport": "mqtt",
                "ack_level": self._settings.ack_level,
                "republished": self.republished, "go_backs": self.go_backs,
                "set_aside": self.set_aside_events,
                "set_aside_reason": self.set_aside_reason,
                "set_aside_waiting": self.set_aside_waiting,
                "max_message_bytes": self._max_bytes}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        self.epoch = await self._journal.call(lambda: self._journal.journal.epoch)
        while True:
            link = MqttLink(self._settings.client, on_message=self._on_receipt)
            try:
                await link.open()
                await self._session(link)
            except (LinkError, JournalError) as exc:
                self._link_failed(f"broker {self._settings.client.where}", str(exc))
            finally:
                await link.aclose()
            await self._back_off()

    def _on_receipt(self, message: paho.MQTTMessage) -> None:
        try:
            receipt = decode_receipt(bytes(message.payload))
        except MqttRelayError as exc:
            try:
                self._audit_receipts.append(decode_audit_receipt(bytes(message.payload)))
            except AuditRecordError:
                logger.warning("relay: ignored a message on the receipt topic (%s)",
                               exc.message)
            return
        props = message.properties
        correlation = getattr(props, "CorrelationData", None) if props else None
        tag = ""
        if isinstance(correlation, bytes | bytearray):
            tag = bytes(correlation).partition(b"/")[2].decode("ascii", "replace")[:20]
        self._receipts.append((receipt, tag))

    @property
    def _device(self) -> str:
        return self._journal.journal.device_id

    async def _session(self, link: MqttLink) -> None:
        self.state = "connected"
        if self._settings.ack_level == "receipt":
            await link.subscribe(self._settings.receipt_topic, self._settings.receipt_timeout)
        journal = self._journal
        while True:
            link.check()
            if await self._shed_if_due():
                self.set_aside_waiting = await journal.call(journal.journal.set_aside_count)
            cap = max(1, min(self._settings.max_inflight, link.receive_maximum))
            max_bytes = self._max_bytes
            if link.maximum_packet_size:
                max_bytes = min(max_bytes, link.maximum_packet_size)
            changed = journal.changed
            await self._send_audit(link, max_bytes)
            events = await journal.call(journal.journal.pending,
                                        self._settings.batch_events * cap, max_bytes * cap)
            if not events:
                self._link_works()
                self.state = "idle"
                self.backlog = Backlog(0, 0)
                with trio.move_on_after(IDLE_POLL):
                    await wait_either(changed, link.disconnected)
                continue
            self.state = "sending"
            try:
                await self._send_window(link, events, cap, max_bytes)
            except _Resplit:
                continue

    async def _send_audit(self, link: MqttLink, max_bytes: int) -> None:
        """Publish the pending audit records (one message, between windows) and mark
        them relayed when the consumer's audit receipt (or, with ``ack_level =
        "broker"``, a successful PUBACK) covers them. A message left unanswered for
        ``receipt_timeout`` (a consumer that does not take audit records) is not a
        failure of the link: the records wait, and are offered again later."""
        m = self._settings
        if trio.current_time() < self._audit_retry_at:
            return
        journal = self._journal
        records = await journal.call(journal.journal.audit_pending, m.batch_events)
        if not records:
            self._audit_retry_at = trio.current_time() + IDLE_POLL  # a look a second
            return
        message = AuditMessage(self._device, tuple(records))
        while len(message.records) > 1 and len(message.encode()) + 1024 > max_bytes:
            message = AuditMessage(self._device, message.records[:len(message.records) // 2])
        by_receipt = m.ack_level == "receipt"
        mid = link.publish(m.topic, message.encode(),
                           user_properties=[(SCHEMA_PROPERTY, AUDIT_SCHEMA)],
                           response_topic=m.receipt_topic if by_receipt else None,
                           correlation=message.correlation)
        self.messages += 1
        outcome: str | None = None
        with trio.move_on_after(m.receipt_timeout):
            while (outcome := self._audit_settled(link, mid, message, by_receipt)) is None:
                wake = link.wake
                link.check()
                await wake.wait()
        if outcome != "ok":
            self._audit_retry_at = trio.current_time() + _AUDIT_RETRY * m.receipt_timeout
            logger.info("relay: audit records %d-%d not taken (%s); offered again later",
                        message.records[0].seq, message.last,
                        outcome or f"no receipt within {m.receipt_timeout:g}s: does the "
                        f"consumer take {AUDIT_SCHEMA}?")
            return
        await journal.call(journal.journal.audit_mark_relayed, message.last)
        self.sent_audit += len(message.records)

    def _audit_settled(self, link: MqttLink, mid: int, message: AuditMessage,
                       by_receipt: bool) -> str | None:
        """``ok`` when the audit message is acknowledged, why not when it was refused,
        None while waiting."""
        rc = link.published.pop(mid, None)
        if rc is not None and (rc.is_failure or rc.value == _RC_NO_MATCHING_SUBSCRIBERS):
            return f"the broker answered {describe_reason(rc)}"
        if not by_receipt:
            return None if rc is None else "ok"
        covered = any(r.device_id == self._device and r.last >= message.last
                      for r in self._audit_receipts)
        return "ok" if covered else None

    async def _send_window(self, link: MqttLink, events: list[Any], cap: int,
                           max_bytes: int) -> None:
        """Publish a window of pending events and mark what is acknowledged, in order.

        Go-back-N: when a message is not acknowledged in time, or a consumer answers
        a gap, everything in flight after it is abandoned and the window ends; the
        next one starts again from the earliest unacknowledged event, in order (its
        first message carries no ``after``). A consumer that keeps the order refuses
        the abandoned messages that reach it first (they name an ``after`` it lacks),
        and re-sends it had already stored collapse by their keys."""
        m = self._settings
        if self._held:
            held, self._held = self._held, {}
            await self._set_aside(held, "the broker drops the connection over it")
            return  # read the outbox again without it
        self._window += 1
        tag = str(self._window)
        parts = split(self._device, self.epoch, events, max_bytes=max_bytes,
                      max_events=m.batch_events, topic_name=m.topic,
                      response_topic=m.receipt_topic, chain=m.ack_level == "receipt",
                      tag=tag)
        # Over the configured cap (or the broker's Maximum Packet Size) on its own: never
        # sent, set aside before anything after it is marked relayed. Over a cap only
        # learned from the broker's refusals, an event alone may still pass: it is sent.
        limit = min(m.max_message_bytes, link.maximum_packet_size or m.max_message_bytes)
        big = {id(x) for x in parts.oversized
               if packet_size(m.topic, m.receipt_topic, x) > limit}
        if big:
            await self._set_aside({x.first: "too_large" for x in parts.oversized
                                   if id(x) in big},
                                  f"larger than {limit} bytes on its own")
        messages = [x for x in parts.messages if id(x) not in big]
        window = Window(messages, tag=tag, cap=cap, receipt_timeout=m.receipt_timeout,
                        broker_acks=m.ack_level == "broker")
        link.published.clear()  # PUBACKs of an abandoned window
        while not window.finished:
            await self._publish_window(link, window)
            wake = link.wake
            deadline = window.deadline(trio.current_time(), IDLE_POLL)
            if not self._settle(link, window):
                with trio.move_on_at(deadline):
                    await wake.wait()
            if link.disconnected.is_set() and window.flights:
                self._maybe_too_big(link, window)
            link.check()
            self._settle(link, window)
            if not await self._apply(window.step(trio.current_time())):
                return

    async def _publish_window(self, link: MqttLink, window: Window) -> None:
        """Publish what the window has room for (paho's thread sends it)."""
        m = self._settings
        try:
            while (index := window.next_to_publish()) is not None:
                message = window.messages[index]
                mid = link.publish(m.topic, message.encode(),
                                   user_properties=message.user_properties(),
                                   response_topic=m.receipt_topic,
                                   correlation=message.correlation)
                window.published(index, mid, trio.current_time())
                self.messages += 1
        except LinkError:
            # paho knew of the disconnect before its callback reached us: wait for
            # the reason (a size limit shows only there).
            with trio.move_on_after(2.0):
                await link.disconnected.wait()
            if window.flights:
                self._maybe_too_big(link, window)
            raise

    async def _apply(self, step: Step) -> bool:
        """Do what the window's step says; False when the window ends (go back)."""
        m = self._settings
        if step.gap:
            self.gaps += 1
        if step.unacknowledged:
            raise LinkError(f"the broker did not acknowledge a message within "
                            f"{m.receipt_timeout:g}s")
        if step.overdue is not None:
            logger.info("relay: no receipt for events %d-%d within %gs; sending "
                        "again from there, in order", step.overdue.first,
                        step.overdue.last, m.receipt_timeout)
        if step.refused:
            await self._set_aside(step.refused, "refused by the consumer")
        if step.relayed:
            last = step.relayed[-1].last
            await self._journal.call(self._journal.journal.mark_relayed, last)
            self.sent_events += sum(len(x.events) for x in step.relayed)
            self.last_ack = trio.current_time()
            self._unreported_shed = (0, 0)
            self._link_works()
            self._go_backs_in_a_row = 0
            if self._lone_suspect and self._lone_suspect[0] <= last:
                self._lone_suspect = None  # it went through after all
        if not step.go_back:
            return True
        self.go_backs += 1
        self._go_backs_in_a_row += 1
        if self._go_backs_in_a_row == _GO_BACKS_WARNING:
            logger.warning(
                "relay: sent again from event %d %d times without a receipt for "
                "it; is another consumer (perhaps offline) in the consumer's shared "
                "subscription while it keeps the order (ingest.mqtt.ordered)?",
                step.resend_from, self._go_backs_in_a_row)
        self.republished += step.republished
        return False

    async def _set_aside(self, reasons: dict[int, str], why: str) -> None:
        """Take events out of the outbox for good (kept in the journal): counted, and
        one WARNING with ids and reasons, never content."""
        count = await self._journal.call(self._journal.journal.set_aside, reasons)
        if not count:
            return
        self.set_aside_events += count
        self.set_aside_waiting = await self._journal.call(
            self._journal.journal.set_aside_count)
        codes = sorted(set(reasons.values()))
        self.set_aside_reason = codes[-1] if len(codes) == 1 else ", ".join(codes)
        ids = sorted(reasons)
        logger.warning("relay: set aside %d event(s) (ids %d-%d, %s: %s); they stay in the "
                       "journal and are not sent again ('edge relay set-aside' lists them, "
                       "'edge relay requeue' sends them again)", count, ids[0], ids[-1],
                       why, self.set_aside_reason)

    def _settle(self, link: MqttLink, window: Window) -> bool:
        """Feed the PUBACKs and receipts that arrived into ``window``; whether any did."""
        changed = False
        for mid in [mid for mid in window.flights if mid in link.published]:
            rc = link.published.pop(mid)
            changed = True
            if rc.is_failure:
                self._refused(window.flights[mid].message, rc)
                window.refused_by_broker(mid)
                continue
            if rc.value == _RC_NO_MATCHING_SUBSCRIBERS:
                raise LinkError(f"the broker has no subscriber for {self._settings.topic}: "
                                f"{describe_reason(rc)}; not delivered")
            window.acknowledged(mid)
        while self._receipts:
            receipt, receipt_tag = self._receipts.popleft()
            changed = True
            window.received(receipt, receipt_tag)
        return changed

    def _maybe_too_big(self, link: MqttLink, window: Window) -> None:
        """Mosquitto answers a message over its ``message_size_limit`` with PUBACK 0x95,
        which MQTT 5 does not allow there: paho calls it a protocol error and drops
        the connection without reporting the publish. So a protocol error with a
        message of several events in flight halves the size cap (down to 4 KiB); with
        one event alone in the largest message, the same event three times in a row,
        that event is set aside as too large (it cannot be split)."""
        if "Protocol error" not in (link.error or ""):
            return
        largest = max((f.message for f in window.flights.values()),
                      key=lambda x: len(x.encode()))
        size = len(largest.encode())
        if len(largest.events) > 1 and self._max_bytes > _MIN_MESSAGE_BYTES:
            self._max_bytes = max(_MIN_MESSAGE_BYTES, min(self._max_bytes, size) // 2)
            logger.warning("relay: the broker dropped the connection with a message of %d "
                           "bytes in flight (its size limit?); sending at most %d bytes "
                           "per message", size, self._max_bytes)
        elif len(largest.events) == 1:
            suspect = self._lone_suspect
            times = suspect[1] + 1 if suspect and suspect[0] == largest.first else 1
            self._lone_suspect = (largest.first, times)
            if times >= _LONE_DROPS:
                self._lone_suspect = None
                self._held[largest.first] = "too_large"
                logger.warning("relay: the broker dropped the connection %d times with event "
                               "%d (%d bytes) alone in the largest message in flight; "
                               "taking it as over the broker's size limit", times,
                               largest.first, size)

    def _refused(self, message: EventsMessage, rc: ReasonCode) -> None:
        """A PUBACK with a failure for ``message``: returns if its one event is to be
        set aside as too large (the broker says so of a message that cannot be split);
        otherwise raises _Resplit (split smaller) or LinkError."""
        code = rc.value
        size = len(message.encode())
        if (code in (_RC_PACKET_TOO_LARGE, _RC_IMPLEMENTATION_SPECIFIC, _RC_QUOTA_EXCEEDED)
                and len(message.events) > 1 and self._max_bytes > _MIN_MESSAGE_BYTES):
            self._max_bytes = max(_MIN_MESSAGE_BYTES, min(self._max_bytes, size) // 2)
            logger.warning("relay: the broker refused a message of %d bytes (%s); sending "
                           "at most %d bytes per message", size, describe_reason(rc),
                           self._max_bytes)
            raise _Resplit
        if code == _RC_PACKET_TOO_LARGE and len(message.events) == 1:
            return
        raise LinkError(f"the broker refused a message of {size} bytes: "
                        f"{describe_reason(rc)}")


def mqtt_relay_settings(config: Any) -> MqttRelaySettings:
    """The MQTT relay's settings from the config (``[relay]`` and ``[relay.mqtt]``)."""
    from edge.core.keys import device_id
    from edge.protocols.mqtt_relay import topic

    r, m = config.relay, config.relay.mqtt
    device = device_id(config)
    return MqttRelaySettings(
        client=client_settings("relay.mqtt", m, device),
        topic=topic(m.topic, site=m.site, device=device),
        receipt_topic=topic(m.receipt_topic, site=m.site, device=device),
        ack_level=m.ack_level, receipt_timeout=m.receipt_timeout,
        max_inflight=m.max_inflight, max_message_bytes=m.max_message_bytes,
        batch_events=r.batch_events, max_backlog_bytes=r.max_backlog_bytes,
        backoff_max=r.backoff_max)
