"""The relay over MQTT 5: the messages a device publishes and the receipts it expects.

Pure (sans-IO): typed values in, bytes out, and back; no paho, no trio, no sockets.
The device side (:mod:`edge.relay.mqtt`) and the reference consumer
(:mod:`edge.relay.mqtt_ingest`) build and read every payload here.

An *events message* (JSON, UTF-8) is published with QoS 1 to the device's topic
(:func:`topic`, default ``edge/v1/{site}/{device}/events``)::

    {"schema": "edge.events/1", "device_id": "room-a", "epoch": "9f2c...",
     "events": [{"key": "room-a/9f2c.../41", "id": 41, "device_id": "room-a",
                 "session_id": "...", "seq": 0, "kind": "start", "created_at": ...,
                 "payload": {...}}, ...]}

Its events are :class:`~edge.protocols.relay.RelayEvent` as ``/ws/relay`` carries them,
in id order, each with its idempotency key (:func:`idempotency_key`: device id, journal
epoch, event id), which is also an MQTT 5 user property ``idempotency-key`` of the
PUBLISH, one per event. The PUBLISH carries the MQTT 5 *Response Topic* (the device's
receipt topic) and *Correlation Data* (:attr:`EventsMessage.correlation`: ``"41-57"``,
or ``"41-57/3"`` with the device's window number, opaque to a consumer, which echoes it).

``after`` (optional) is the id of the event the device sent just before this message's
first, in the same stream: a consumer that keeps a device's order stores the message
only once it has stored (or refused) that event, and otherwise answers a *gap* (below);
a message without ``after`` starts a stream (everything before it is acknowledged).

A *receipt* is what a consumer publishes (QoS 1) to that response topic once it has
stored the message's events durably::

    {"schema": "edge.receipt/1", "device_id": "room-a", "epoch": "9f2c...",
     "first": 41, "last": 57, "stored": 17}

``first`` and ``last`` are the ids of the message's first and last events (the
correlation data says the same). The device marks events sent only when a receipt
covers them (``ack_level = "receipt"``). Two optional fields:

* ``refused``: ``[{"key": "room-a/9f2c.../41", "reason": "device_not_allowed"}, ...]``,
  events the consumer will never store (reason: a short code, see :data:`REASONS`).
  The receipt still covers the message: the device sets those events aside (kept in
  its journal, not sent again until an operator re-queues them) and moves on.
* ``gap``: the consumer stored nothing, because it lacks the event named by the
  message's ``after``; the value is the highest id of this device and epoch that it
  has (0: none). Such a receipt covers nothing: the device sends again from its
  earliest unacknowledged event, in order.

Whatever arrives is untrusted: a payload that is not the message expected raises
:class:`MqttRelayError`, whose message names fields and types, never their content.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edge.core.errors import ProtocolError
from edge.core.mqtt_topics import check_topic
from edge.protocols.relay import RelayEvent, RelayProtocolError, is_int, kind_of

EVENTS_SCHEMA = "edge.events/1"
RECEIPT_SCHEMA = "edge.receipt/1"
DEFAULT_TOPIC = "edge/v1/{site}/{device}/events"
DEFAULT_RECEIPT_TOPIC = "edge/v1/{site}/{device}/receipts"
KEY_PROPERTY = "idempotency-key"
SCHEMA_PROPERTY = "schema"
MAX_EPOCH_LENGTH = 64
# What a PUBLISH costs beyond its payload and topic: fixed header, packet id,
# property lengths, response topic and correlation data are bounded by this plus the
# lengths counted in :func:`packet_size`.
_PACKET_OVERHEAD = 32
_MAX_INT = 2**63 - 1
_EPOCH = re.compile(r"[0-9A-Za-z_-]{1,64}")
_REASON = re.compile(r"[a-z][a-z0-9_]{0,39}")
MAX_REFUSED = 10000

# Why events are set aside: refused by a consumer (its receipt says) or on the device.
REASONS = {
    "invalid": "the consumer found the message or an event invalid",
    "device_not_allowed": "the device is not in the consumer's allow_devices",
    "own_device_id": "the events claim the consumer's own device id",
    "too_large": "the event does not fit the message size cap on its own",
}


class MqttRelayError(ProtocolError, ValueError):
    """A payload is not the message expected (``code``: ``bad_message`` or ``bad_receipt``)."""


def _error(code: str, message: str) -> MqttRelayError:
    return MqttRelayError(code, message)


# --- topics and keys ------------------------------------------------------------------

def topic(template: str, *, site: str, device: str) -> str:
    """The topic for ``device`` at ``site``; ValueError if a value would make a level
    empty or a wildcard (an id with ``/``, ``+`` or ``#``)."""
    for name, value in (("site", site), ("device", device)):
        if not value or any(c in value for c in "/+#\0"):
            raise ValueError(f"{name}: a topic level must be non-empty and contain no "
                             f"'/', '+' or '#', got {value!r:.60}")
    result = template.format(site=site, device=device)
    check_topic(result)
    return result


def check_epoch(epoch: Any) -> str:
    if not isinstance(epoch, str) or not _EPOCH.fullmatch(epoch):
        raise ValueError(f"epoch: expected 1 to {MAX_EPOCH_LENGTH} letters, digits, '-' or "
                         f"'_', got {kind_of(epoch)}")
    return epoch


def idempotency_key(device_id: str, epoch: str, event_id: int) -> str:
    """``device/epoch/id``: unique per event for the journal's life (ids are never
    reused; the epoch changes when the journal is created afresh)."""
    return f"{device_id}/{epoch}/{event_id}"


# --- events messages ------------------------------------------------------------------

@dataclass(frozen=True)
class EventsMessage:
    device_id: str
    epoch: str
    events: tuple[RelayEvent, ...]
    after: int | None = None  # the id sent just before this message's first
    tag: str = ""  # the device's window, in the correlation data

    @property
    def first(self) -> int:
        return self.events[0].id

    @property
    def last(self) -> int:
        return self.events[-1].id

    @property
    def correlation(self) -> bytes:
        tag = f"/{self.tag}" if self.tag else ""
        return f"{self.first}-{self.last}{tag}".encode()

    def keys(self) -> list[str]:
        return [idempotency_key(self.device_id, self.epoch, e.id) for e in self.events]

    def user_properties(self) -> list[tuple[str, str]]:
        return [(SCHEMA_PROPERTY, EVENTS_SCHEMA),
                *((KEY_PROPERTY, key) for key in self.keys())]

    def encode(self) -> bytes:
        return _envelope(self.device_id, self.epoch,
                         [_event_bytes(self.device_id, self.epoch, e) for e in self.events],
                         self.after)

    def receipt(self, stored: int | None = None, *, refused: str | None = None,
                gap: int | None = None) -> Receipt:
        """The receipt for this message: stored (``stored`` new), every event refused
        for ``refused`` (a reason code), or a ``gap`` (the consumer's highest id)."""
        keys = tuple((key, refused) for key in self.keys()) if refused else ()
        return Receipt(self.device_id, self.epoch, self.first, self.last, stored, keys, gap)


def _event_bytes(device_id: str, epoch: str, event: RelayEvent) -> bytes:
    wire = {"key": idempotency_key(device_id, epoch, event.id), **event.to_wire()}
    return json.dumps(wire, ensure_ascii=False, separators=(",", ":")).encode()


def _envelope(device_id: str, epoch: str, events: Sequence[bytes],
              after: int | None = None) -> bytes:
    wire: dict[str, Any] = {"schema": EVENTS_SCHEMA, "device_id": device_id,
                            "epoch": epoch}
    if after is not None:
        wire["after"] = after
    head = json.dumps(wire, ensure_ascii=False, separators=(",", ":")).encode()
    return head[:-1] + b',"events":[' + b",".join(events) + b"]}"


def packet_size(topic_name: str, response_topic: str, message: EventsMessage) -> int:
    """An upper bound on the PUBLISH packet's size for ``message``."""
    props = sum(4 + len(k.encode()) + len(v.encode()) + 1
                for k, v in message.user_properties())
    return (_PACKET_OVERHEAD + 2 + len(topic_name.encode()) + 3 + len(response_topic.encode())
            + 3 + len(message.correlation) + props + len(message.encode()))


@dataclass(frozen=True)
class Split:
    messages: list[EventsMessage]
    oversized: list[EventsMessage]  # one event each, over the cap on its own


def split(device_id: str, epoch: str, events: Sequence[RelayEvent], *, max_bytes: int,
          max_events: int, topic_name: str = "", response_topic: str = "",
          chain: bool = False, tag: str = "") -> Split:
    """Cut ``events`` (in id order) into messages of at most ``max_events`` events whose
    PUBLISH packets (:func:`packet_size`) fit in ``max_bytes``, keeping the order. An
    event too big for the cap on its own is a message of its own in ``oversized``
    (the caller decides: a broker may still take it, or it must be set aside).

    ``chain``: every message but the first carries ``after``, the last id of the one
    before it (an oversized one left out: it is not sent). ``tag`` goes into each
    message's correlation data."""
    if max_events < 1 or max_bytes < 1:
        raise ValueError("split: max_bytes and max_events must be at least 1")
    widest = EventsMessage(device_id, epoch, (_PLACEHOLDER,), _MAX_INT if chain else None,
                           tag)
    fixed = packet_size(topic_name, response_topic, widest) - len(
        _event_bytes(device_id, epoch, _PLACEHOLDER)) - _key_property_size(
        device_id, epoch, _PLACEHOLDER.id)
    messages: list[EventsMessage] = []
    oversized: list[EventsMessage] = []
    current: list[RelayEvent] = []
    size = fixed
    for event in events:
        cost = (len(_event_bytes(device_id, epoch, event)) + 1
                + _key_property_size(device_id, epoch, event.id)
                + 2 * len(str(event.id)))  # the correlation data grows with the ids
        if current and (size + cost > max_bytes or len(current) >= max_events):
            messages.append(EventsMessage(device_id, epoch, tuple(current)))
            current, size = [], fixed
        if not current and fixed + cost > max_bytes:
            lone = EventsMessage(device_id, epoch, (event,))
            messages.append(lone)
            oversized.append(lone)
            continue
        current.append(event)
        size += cost
    if current:
        messages.append(EventsMessage(device_id, epoch, tuple(current)))
    if chain or tag:
        messages, oversized = _chained(messages, oversized, chain, tag)
    return Split(messages, oversized)


def _chained(messages: list[EventsMessage], oversized: list[EventsMessage], chain: bool,
             tag: str) -> tuple[list[EventsMessage], list[EventsMessage]]:
    out: list[EventsMessage] = []
    big: list[EventsMessage] = []
    after: int | None = None
    for message in messages:
        lone = message in oversized
        message = EventsMessage(message.device_id, message.epoch, message.events,
                                after if chain else None, tag)
        if lone:
            big.append(message)
        else:
            after = message.last
        out.append(message)
    return out, big


def _key_property_size(device_id: str, epoch: str, event_id: int) -> int:
    return 5 + len(KEY_PROPERTY) + len(idempotency_key(device_id, epoch, event_id).encode())


_PLACEHOLDER = RelayEvent(1, "d", "s", 0, "start", 0.0, {})


def decode_events(payload: bytes, *, max_bytes: int = 16 * 1024 * 1024) -> EventsMessage:
    """An events message from a PUBLISH payload, or :class:`MqttRelayError`
    (``bad_message``): not JSON, another schema, a key that is not the event's,
    events not in strictly increasing id order. ``device_id`` is the publisher's; an
    event's own ``device_id`` may be another's (a tier passing on what it ingested)."""
    data = _decode(payload, max_bytes, "bad_message")
    if data.get("schema") != EVENTS_SCHEMA:
        raise _error("bad_message", f"schema: expected {EVENTS_SCHEMA!r}")
    device = _id(data, "device_id", "bad_message")
    epoch = _epoch(data, "bad_message")
    raw = data.get("events")
    if not isinstance(raw, list) or not raw:
        raise _error("bad_message", f"events: expected a non-empty list, got {kind_of(raw)}")
    events: list[RelayEvent] = []
    for item in raw:
        try:
            event = RelayEvent.from_wire(item)
        except RelayProtocolError as exc:
            raise _error("bad_message", exc.message) from None
        if item.get("key") != idempotency_key(device, epoch, event.id):
            raise _error("bad_message", "events: key: not device_id/epoch/id")
        if events and events[-1].id >= event.id:
            raise _error("bad_message", "events: expected strictly increasing ids")
        events.append(event)
    after = data.get("after")
    if after is not None and not (is_int(after) and 1 <= after < events[0].id):
        raise _error("bad_message", "after: expected an id below the first event's")
    return EventsMessage(device, epoch, tuple(events), after)


def keys_of(user_properties: Sequence[tuple[str, str]]) -> tuple[str, str, list[int]] | None:
    """The device, epoch and event ids a PUBLISH names in its ``idempotency-key`` user
    properties (what a consumer can still answer for when the payload is unreadable),
    or None if they are missing or not one device's and epoch's."""
    found: set[tuple[str, str]] = set()
    ids: list[int] = []
    for name, value in user_properties:
        if name != KEY_PROPERTY:
            continue
        parsed = parse_key(value)
        if parsed is None:
            return None
        found.add(parsed[:2])
        ids.append(parsed[2])
        if len(ids) > MAX_REFUSED or len(found) > 1:
            return None
    if not found:
        return None
    (device, epoch), = found
    return device, epoch, sorted(ids)


def parse_key(key: str) -> tuple[str, str, int] | None:
    """``device/epoch/id`` as its parts, or None."""
    device, _, rest = key.rpartition("/")
    device, _, epoch = device.rpartition("/")
    if not device or len(device) > 200 or not _EPOCH.fullmatch(epoch):
        return None
    if not rest.isascii() or not rest.isdigit() or len(rest) > 19:
        return None
    event_id = int(rest)
    return (device, epoch, event_id) if 1 <= event_id <= _MAX_INT else None


# --- receipts -------------------------------------------------------------------------

@dataclass(frozen=True)
class Receipt:
    device_id: str
    epoch: str
    first: int
    last: int
    stored: int | None = None  # how many of the events were new (informative)
    refused: tuple[tuple[str, str], ...] = ()  # (key, reason): never to be stored
    gap: int | None = None  # nothing stored: the consumer lacks the message's ``after``

    def encode(self) -> bytes:
        wire: dict[str, Any] = {"schema": RECEIPT_SCHEMA, "device_id": self.device_id,
                                "epoch": self.epoch, "first": self.first, "last": self.last}
        if self.stored is not None:
            wire["stored"] = self.stored
        if self.refused:
            wire["refused"] = [{"key": k, "reason": r} for k, r in self.refused]
        if self.gap is not None:
            wire["gap"] = self.gap
        return json.dumps(wire, separators=(",", ":")).encode()

    def covers(self, message: EventsMessage) -> bool:
        """Whether this receipt accounts for every event of ``message`` (a gap
        receipt accounts for none)."""
        return (self.gap is None and self.device_id == message.device_id
                and self.epoch == message.epoch
                and self.first <= message.first and message.last <= self.last)

    def refused_ids(self, message: EventsMessage) -> dict[int, str]:
        """The ids of ``message``'s events this receipt refuses, with the reason."""
        by_key = dict(zip(message.keys(), (e.id for e in message.events), strict=True))
        return {by_key[key]: reason for key, reason in self.refused if key in by_key}


def decode_receipt(payload: bytes) -> Receipt:
    """A receipt, or :class:`MqttRelayError` (``bad_receipt``)."""
    data = _decode(payload, 4096 + 200 * MAX_REFUSED, "bad_receipt")
    if data.get("schema") != RECEIPT_SCHEMA:
        raise _error("bad_receipt", f"schema: expected {RECEIPT_SCHEMA!r}")
    device = _id(data, "device_id", "bad_receipt")
    epoch = _epoch(data, "bad_receipt")
    first, last = data.get("first"), data.get("last")
    if not (is_int(first) and is_int(last) and 1 <= first <= last <= _MAX_INT):
        raise _error("bad_receipt", "first, last: expected integers with 1 <= first <= last")
    stored = data.get("stored")
    if stored is not None and not (is_int(stored) and stored >= 0):
        raise _error("bad_receipt", f"stored: expected a non-negative integer, got "
                     f"{kind_of(stored)}")
    gap = data.get("gap")
    if gap is not None and not (is_int(gap) and 0 <= gap <= _MAX_INT):
        raise _error("bad_receipt", f"gap: expected a non-negative integer, got "
                     f"{kind_of(gap)}")
    return Receipt(device, epoch, first, last, stored, _refused(data.get("refused")), gap)


def _refused(raw: Any) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_REFUSED:
        raise _error("bad_receipt", f"refused: expected a list of at most {MAX_REFUSED} "
                     f"items, got {kind_of(raw)}")
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise _error("bad_receipt", f"refused: expected objects, got {kind_of(item)}")
        key, reason = item.get("key"), item.get("reason")
        if not isinstance(key, str) or parse_key(key) is None:
            raise _error("bad_receipt", "refused: key: expected device/epoch/id")
        if not isinstance(reason, str) or not _REASON.fullmatch(reason):
            raise _error("bad_receipt", "refused: reason: expected a short lower-case code")
        out.append((key, reason))
    return tuple(out)


# --- decoding -------------------------------------------------------------------------

def _decode(payload: bytes, max_bytes: int, code: str) -> dict[str, Any]:
    if not isinstance(payload, bytes | bytearray):
        raise _error(code, f"expected bytes, got {kind_of(payload)}")
    if len(payload) > max_bytes:
        raise _error(code, f"a payload larger than {max_bytes} bytes")
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        raise _error(code, "a payload that is not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise _error(code, f"expected a JSON object, got {kind_of(data)}")
    return data


def _id(data: dict[str, Any], key: str, code: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value or len(value) > 200:
        raise _error(code, f"{key}: expected a non-empty string of at most 200 characters, "
                     f"got {kind_of(value)}")
    return value


def _epoch(data: dict[str, Any], code: str) -> str:
    try:
        return check_epoch(data.get("epoch"))
    except ValueError as exc:
        raise _error(code, str(exc)) from None
