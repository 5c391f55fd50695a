"""The relay wire protocol: the messages a device and its upstream exchange on ``/ws/relay``.

Pure (sans-IO): typed values in, JSON text out, and back; no trio, no sockets, no
SQLite. The device side (:mod:`edge.relay.sender`) and the upstream side
(:mod:`edge.relay.ingest`) build every frame with :func:`encode` and read every frame with
:func:`parse_upstream` (what a device receives) or :func:`parse_downstream` (what an
upstream receives). docs/journal-and-relay.md ("The relay") documents the messages:

* upstream -> device on accept: :class:`RelayInit`
* device -> upstream: :class:`RelayBatch` (numbered; its events in id order; ``shed``
  only when the device's outbox overflowed since its last batch)
* upstream -> device: :class:`RelayAck` for exactly that batch, or
  :class:`RelayErrorMessage` and a close.

Whatever the peer sends is untrusted: a frame that is not the message expected (not
text, not JSON, not an object, a field of the wrong type -- ``true`` is not an
integer --, a string or integer beyond its bound) raises :class:`RelayProtocolError`,
which carries a machine-readable ``code`` and the WebSocket ``close_code`` to answer with.
Error messages name fields and types, never their content: payloads are transcripts.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

# The WebSocket close codes this protocol answers with; its readers find them here too.
from edge.core.close_codes import CLOSE_NORMAL as CLOSE_NORMAL
from edge.core.close_codes import CLOSE_POLICY as CLOSE_POLICY
from edge.core.close_codes import CLOSE_TOO_BIG, CLOSE_UNSUPPORTED_DATA
from edge.core.errors import ProtocolError
from edge.core.languages import is_language_tag, normal_tag
from edge.protocols.audit import AUDIT_BATCH, AuditBatch, AuditRecordError, records_from_wire
from edge.protocols.text import JsonTextError, json_object

SOURCES = ("client", "room", "relay")
KINDS = ("start", "final", "end")

MAX_ID_LENGTH = 200  # device and session ids
MAX_TEXT_LENGTH = 200  # server names, versions, error codes and messages from a peer
# A dialect: the wire protocol a client session spoke (``live``, ``assemblyai``, ...).
DIALECT_PATTERN = r"[a-z][a-z0-9_]{0,31}"
_DIALECT = re.compile(DIALECT_PATTERN)
MAX_BATCH_EVENTS = 1000  # what an edge upstream accepts in one batch
MAX_FRAME_CHARS = 16 * 1024 * 1024  # beyond any batch a device sends (bounded in bytes)
_MAX_INT = 2**63 - 1  # SQLite's INTEGER


class RelayProtocolError(ProtocolError, ValueError):
    """A peer's frame is not the relay message expected.

    ``code`` is ``bad_batch`` for what a device sent (the upstream answers with an
    ``error`` message of that code) and ``bad_reply`` for what an upstream sent (the
    device closes and retries later); ``close_code`` is the WebSocket close code.
    It is a ValueError too: a malformed value.
    """


# --- events ---------------------------------------------------------------------------

@dataclass(frozen=True)
class RelayEvent:
    """One journaled event as the relay sends it.

    ``id`` is the sender's local event id (what its upstream acknowledges); the receiver
    assigns its own. Construct from untrusted data with :meth:`from_wire` only.
    """

    id: int
    device_id: str
    session_id: str
    seq: int
    kind: str
    created_at: float
    payload: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "device_id": self.device_id,
            "session_id": self.session_id,
            "seq": self.seq,
            "kind": self.kind,
            "created_at": self.created_at,
            "payload": self.payload,
        }

    @classmethod
    def from_wire(cls, data: Any) -> RelayEvent:
        """Validate and build an event from decoded JSON.

        Raises :class:`RelayProtocolError` (a ValueError) naming the bad field, never
        quoting payload content. Keys other than those :meth:`to_wire` writes are ignored.
        """
        if not isinstance(data, Mapping):
            raise _bad_batch(f"relay event: expected a JSON object, got {kind_of(data)}")
        for key in ("id", "device_id", "session_id", "seq", "kind", "created_at", "payload"):
            if key not in data:
                raise _bad_batch(f"relay event: missing {key!r}")
        event = cls(
            id=data["id"], device_id=data["device_id"], session_id=data["session_id"],
            seq=data["seq"], kind=data["kind"], created_at=data["created_at"],
            payload=data["payload"],
        )
        check_event(event)
        if isinstance(event.created_at, int):
            event = cls(event.id, event.device_id, event.session_id, event.seq, event.kind,
                        float(event.created_at), event.payload)
        return event


def check_event(e: RelayEvent) -> None:
    """Raise :class:`RelayProtocolError` unless ``e`` is an event the journal can store."""
    if not is_int(e.id) or not 1 <= e.id <= _MAX_INT:
        raise _bad_batch(f"relay event: id: expected a positive integer, got {kind_of(e.id)}")
    _check_event_id("relay event: device_id", e.device_id)
    _check_event_id("relay event: session_id", e.session_id)
    if not is_int(e.seq) or not 0 <= e.seq <= _MAX_INT:
        raise _bad_batch(f"relay event: seq: expected a non-negative integer, "
                         f"got {kind_of(e.seq)}")
    if not isinstance(e.kind, str) or e.kind not in KINDS:
        raise _bad_batch(f"relay event: kind: expected one of {', '.join(KINDS)}, "
                         f"got {e.kind!r:.40}")
    if not is_number(e.created_at) or e.created_at < 0:
        raise _bad_batch(f"relay event: created_at: expected a Unix time, "
                         f"got {kind_of(e.created_at)}")
    if not isinstance(e.payload, dict):
        raise _bad_batch(f"relay event: payload: expected an object, got "
                         f"{kind_of(e.payload)}")
    try:
        check_payload(e.kind, e.payload)
    except ValueError as exc:
        raise _bad_batch(str(exc)) from None
    try:
        encode_payload(e.payload)
    except (TypeError, ValueError, RecursionError):
        raise _bad_batch("relay event: payload is not plain JSON") from None


def check_payload(kind: str, p: Mapping[str, Any]) -> None:
    """The payload fields the journal and ``edge.journal.transcripts`` rely on, by type.

    Raises ValueError naming the field and its type, never its content (it may be
    patient data).
    """

    def bad(field: str, expected: str) -> ValueError:
        return ValueError(f"{kind} event: payload.{field}: expected {expected}, "
                          f"got {kind_of(p.get(field))}")

    if kind == "start":
        if p.get("source") not in SOURCES:
            raise bad("source", "one of " + ", ".join(SOURCES))
        for field in ("sub", "organization", "department", "model"):
            if not isinstance(p.get(field), str | None):
                raise bad(field, "a string or null")
        if not is_number(p.get("started_at")):
            raise bad("started_at", "a Unix time")
        # Absent from older devices' events (and from the room's): not required.
        if p.get("dialect") is not None and not is_dialect(p["dialect"]):
            raise ValueError(f"start event: payload.dialect: expected null or an "
                             f"identifier matching {DIALECT_PATTERN}, got "
                             f"{_shape(p['dialect'])}")
        # Absent from the events of devices older than schema version 6: not required.
        if p.get("language") is not None and not is_language(p["language"]):
            raise ValueError(f"start event: payload.language: expected null or a "
                             f"language tag such as ko or en-US, got "
                             f"{_shape(p['language'])}")
    elif kind == "end":
        if not isinstance(p.get("reason"), str):
            raise bad("reason", "a string")
        if not is_number(p.get("ended_at")):
            raise bad("ended_at", "a Unix time")
    else:
        if not isinstance(p.get("text"), str):
            raise bad("text", "a string")
        for field in ("start_ms", "end_ms"):
            if not is_int(p.get(field)):
                raise bad(field, "an integer")
        if not isinstance(p.get("speaker"), str | None):
            raise bad("speaker", "a string or null")
        if not isinstance(p.get("words", []), list):
            raise bad("words", "a list")
        if not isinstance(p.get("terms", []), list):
            raise bad("terms", "a list")


def is_dialect(value: Any) -> TypeGuard[str]:
    """Whether ``value`` is a dialect's name: a short lower-case identifier."""
    return isinstance(value, str) and _DIALECT.fullmatch(value) is not None


def is_language(value: Any) -> TypeGuard[str]:
    """Whether ``value`` is a session's language: a BCP 47 tag as the device names its
    models (``ko``, ``en-US``; ``und`` when a model's name says none)."""
    return isinstance(value, str) and is_language_tag(value)


def check_language(value: Any) -> str:
    """``value`` in its usual case (``en-US``) if it is a language tag; ValueError
    (naming its type, not its content) otherwise."""
    if not is_language(value):
        raise ValueError(f"language: expected a language tag such as ko or en-US, got "
                         f"{_shape(value)}")
    return normal_tag(value)


def check_dialect(value: Any) -> str:
    """``value`` if it is a dialect's name; ValueError (naming its type, not its
    content) otherwise."""
    if not is_dialect(value):
        raise ValueError(f"dialect: expected an identifier matching {DIALECT_PATTERN}, "
                         f"got {_shape(value)}")
    return value


def encode_payload(payload: Mapping[str, Any]) -> tuple[str, int]:
    """The payload as the journal stores it: compact JSON text and its size in bytes.
    Raises ValueError (or TypeError) for what is not plain JSON (NaN, sets, ...)."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text, len(text.encode())


def check_id(name: str, value: Any) -> None:
    """Raise ValueError unless ``value`` is a device or session id."""
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{name}: expected a non-empty string of at most {MAX_ID_LENGTH} "
                         f"characters, got {kind_of(value)}")


def _check_event_id(name: str, value: Any) -> None:
    try:
        check_id(name, value)
    except ValueError as exc:
        raise _bad_batch(str(exc)) from None


# --- messages -------------------------------------------------------------------------

@dataclass(frozen=True)
class RelayInit:
    """The upstream's greeting on accept. ``device_id`` and ``max_batch_events`` are
    what an edge upstream says; other upstreams may leave them out. ``audit``: the
    upstream takes ``relay_audit`` messages (:class:`~edge.protocols.audit.AuditBatch`);
    a device sends its audit trail only to one that says so."""

    server: str
    version: str
    device_id: str | None = None
    max_batch_events: int | None = None
    audit: bool = False

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "relay_init", "server": self.server,
                                "version": self.version}
        if self.device_id is not None:
            body["device_id"] = self.device_id
        if self.max_batch_events is not None:
            body["max_batch_events"] = self.max_batch_events
        if self.audit:
            body["audit"] = True
        return body


@dataclass(frozen=True)
class Shed:
    """Events (and their payload bytes) the device's full outbox stopped queueing."""

    events: int
    bytes: int


@dataclass(frozen=True)
class RelayBatch:
    """Events for the upstream to store, then acknowledge with a :class:`RelayAck`."""

    batch: int
    device_id: str
    events: tuple[RelayEvent, ...]
    shed: Shed | None = None

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "relay_batch", "batch": self.batch,
                                "device_id": self.device_id,
                                "events": [e.to_wire() for e in self.events]}
        if self.shed is not None:
            body["shed"] = {"events": self.shed.events, "bytes": self.shed.bytes}
        return body

    @property
    def up_to(self) -> int:
        """The id an ack of this batch must name: its last event's."""
        return self.events[-1].id


@dataclass(frozen=True)
class RelayAck:
    """The upstream stored batch ``batch`` durably: events up to id ``up_to``,
    ``stored`` of them new (the rest were duplicates)."""

    batch: int
    up_to: int
    stored: int

    def to_wire(self) -> dict[str, Any]:
        return {"type": "relay_ack", "batch": self.batch, "up_to": self.up_to,
                "stored": self.stored}


@dataclass(frozen=True)
class RelayErrorMessage:
    """The upstream refuses (``bad_batch``, ``store_failed``, ...); a close follows."""

    code: str
    message: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": "error", "code": self.code, "message": self.message}


RelayMessage = RelayInit | RelayBatch | AuditBatch | RelayAck | RelayErrorMessage
UpstreamMessage = RelayInit | RelayAck | RelayErrorMessage


def encode(message: RelayMessage) -> str:
    """One JSON text frame. Raises ValueError for a payload that is not plain JSON."""
    return json.dumps(message.to_wire(), ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False)


def parse_upstream(frame: str | bytes, *, max_chars: int = MAX_FRAME_CHARS
                   ) -> UpstreamMessage:
    """What a device receives: a :class:`RelayInit`, :class:`RelayAck` or
    :class:`RelayErrorMessage`. Raises :class:`RelayProtocolError` (code ``bad_reply``)."""
    data = _decode(frame, max_chars, "bad_reply")
    kind = data.get("type")
    if kind == "relay_init":
        max_events = data.get("max_batch_events")
        if max_events is not None and not (is_int(max_events) and 1 <= max_events <= _MAX_INT):
            raise _bad_reply("relay_init.max_batch_events: expected a positive integer, "
                             f"got {kind_of(max_events)}")
        device = data.get("device_id")
        if device is not None and not isinstance(device, str):
            raise _bad_reply(f"relay_init.device_id: expected a string, got {kind_of(device)}")
        return RelayInit(server=_text(data, "relay_init", "server"),
                         version=_text(data, "relay_init", "version"),
                         device_id=None if device is None else device[:MAX_ID_LENGTH],
                         max_batch_events=max_events, audit=data.get("audit") is True)
    if kind == "relay_ack":
        return RelayAck(batch=_count(data, "relay_ack", "batch", 1),
                        up_to=_count(data, "relay_ack", "up_to", 1),
                        stored=_count(data, "relay_ack", "stored", 0))
    if kind == "error":
        return RelayErrorMessage(code=_text(data, "error", "code"),
                                 message=_text(data, "error", "message"))
    raise _bad_reply(f"expected relay_init, relay_ack or error, got {_type_name(kind)}")


def parse_downstream(frame: str | bytes, *, max_chars: int = MAX_FRAME_CHARS,
                     max_events: int = MAX_BATCH_EVENTS) -> RelayBatch:
    """What an upstream receives: a :class:`RelayBatch` of 1 to ``max_events`` valid
    events in strictly increasing id order. Raises :class:`RelayProtocolError` (code
    ``bad_batch``). Whether the events are the sender's own is the caller's check."""
    data = _decode(frame, max_chars, "bad_batch")
    return _batch(data, max_events)


def parse_downstream_any(frame: str | bytes, *, max_chars: int = MAX_FRAME_CHARS,
                         max_events: int = MAX_BATCH_EVENTS) -> RelayBatch | AuditBatch:
    """What an edge upstream receives: a :class:`RelayBatch` (as
    :func:`parse_downstream`) or an :class:`~edge.protocols.audit.AuditBatch` of 1 to
    ``max_events`` well-formed records (whether their chain holds is the store's
    check). Raises :class:`RelayProtocolError` (code ``bad_batch``)."""
    data = _decode(frame, max_chars, "bad_batch")
    if data.get("type") != AUDIT_BATCH:
        return _batch(data, max_events)
    batch, device = _batch_head(data)
    try:
        records = records_from_wire(data.get("records"), max_events)
    except AuditRecordError as exc:
        raise _bad_batch(f"relay_audit.{exc}".replace("audit record: ", "")) from None
    return AuditBatch(batch=batch, device_id=device, records=records)


def _batch_head(data: dict[str, Any]) -> tuple[int, str]:
    kind = data.get("type")
    batch = data.get("batch")
    if not (is_int(batch) and 1 <= batch <= _MAX_INT):
        raise _bad_batch(f"{kind}.batch: expected a positive integer, got {kind_of(batch)}")
    device = data.get("device_id")
    if not isinstance(device, str):
        raise _bad_batch(f"{kind}.device_id: expected a string, got {kind_of(device)}")
    _check_event_id(f"{kind}.device_id", device)
    return batch, device


def _batch(data: dict[str, Any], max_events: int) -> RelayBatch:
    if data.get("type") != "relay_batch":
        raise _bad_batch(f'expected {{"type": "relay_batch", ...}}, got '
                         f"{_type_name(data.get('type'))}")
    batch, device = _batch_head(data)
    raw = data.get("events")
    if not isinstance(raw, list) or not 1 <= len(raw) <= max_events:
        raise _bad_batch(f"relay_batch.events: expected a list of 1 to {max_events} events")
    events = tuple(RelayEvent.from_wire(item) for item in raw)
    if any(a.id >= b.id for a, b in itertools.pairwise(events)):
        raise _bad_batch("relay_batch.events: expected strictly increasing ids")
    shed: Shed | None = None
    if data.get("shed") is not None:
        raw_shed = data["shed"]
        if not isinstance(raw_shed, dict):
            raise _bad_batch(f"relay_batch.shed: expected an object, got {kind_of(raw_shed)}")
        shed = Shed(events=_count(raw_shed, "relay_batch.shed", "events", 0, bad=_bad_batch),
                    bytes=_count(raw_shed, "relay_batch.shed", "bytes", 0, bad=_bad_batch))
    return RelayBatch(batch=batch, device_id=device, events=events, shed=shed)


def expect_ack(message: UpstreamMessage, batch: RelayBatch | AuditBatch) -> RelayAck:
    """The reply to ``batch`` must be its ack, exactly (same batch number, same last
    id); anything else raises :class:`RelayProtocolError` (an error message included,
    with the upstream's code and message, clipped)."""
    if isinstance(message, RelayErrorMessage):
        raise RelayProtocolError("upstream_error", f"the upstream refused batch {batch.batch}:"
                                 f" {message.code}: {message.message}")
    if not isinstance(message, RelayAck):
        raise _bad_reply(f"expected relay_ack for batch {batch.batch}, got relay_init")
    if message.batch != batch.batch or message.up_to != batch.up_to:
        raise _bad_reply(f"the ack (batch {message.batch}, up to {message.up_to}) does not "
                         f"match batch {batch.batch} (up to {batch.up_to})")
    return message


# --- decoding -------------------------------------------------------------------------

def _decode(frame: str | bytes, max_chars: int, code: str) -> dict[str, Any]:
    if not isinstance(frame, str):
        raise RelayProtocolError(code, "relay messages are JSON text frames, got a binary "
                                 "frame", close_code=CLOSE_UNSUPPORTED_DATA)
    try:
        return json_object(frame, max_chars)
    except JsonTextError as exc:
        if exc.reason == "too_long":
            raise RelayProtocolError(code, f"a relay message longer than {max_chars} "
                                     "characters", close_code=CLOSE_TOO_BIG) from None
        if exc.reason == "not_json":
            raise RelayProtocolError(code, "a relay message that is not JSON") from None
        raise RelayProtocolError(code, "relay messages are JSON objects, got "
                                 f"{kind_of(exc.value)}") from None


def _text(data: Mapping[str, Any], message: str, key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise _bad_reply(f"{message}.{key}: expected a string, got {kind_of(value)}")
    return value[:MAX_TEXT_LENGTH]


def _count(data: Mapping[str, Any], message: str, key: str, least: int, *,
           bad: Callable[[str], RelayProtocolError] | None = None) -> int:
    value = data.get(key)
    if not (is_int(value) and least <= value <= _MAX_INT):
        raise (bad or _bad_reply)(f"{message}.{key}: expected an integer of at least {least},"
                                  f" got {kind_of(value)}")
    return value


def _type_name(kind: Any) -> str:
    return f"{kind[:40]!r}" if isinstance(kind, str) else f"type {kind_of(kind)}"


def _bad_batch(message: str) -> RelayProtocolError:
    return RelayProtocolError("bad_batch", message)


def _bad_reply(message: str) -> RelayProtocolError:
    return RelayProtocolError("bad_reply", message)


def _shape(value: Any) -> str:
    # For a value whose type was right but whose form was not: still no content.
    return "a str of another form" if isinstance(value, str) else kind_of(value)


def kind_of(value: Any) -> str:
    """A JSON type's name for error messages (never the value: it may be patient data)."""
    return "null" if value is None else type(value).__name__


def is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))
