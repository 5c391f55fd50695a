"""Wyoming events on the wire: a JSON header line ``{"type", "version", "data_length",
"payload_length"}\\n``, then ``data_length`` bytes of JSON data (merged over any
``data`` the header carries itself, as older writers put it there), then
``payload_length`` bytes of payload (audio). :class:`EventReader` turns bytes into
:class:`WyomingEvent` values, bounding every size it reads (a violation is a
:class:`Malformed` or a :class:`~edge.core.errors.ProtocolError`); :func:`encode_event`
does the reverse. Pure (sans-IO); the protocol above the framing is
:mod:`edge.protocols.wyoming`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edge.core.close_codes import CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, CLOSE_UNSUPPORTED_DATA
from edge.core.errors import ProtocolError

#: The wyoming release whose events this module reads and writes (the header's version).
WYOMING_VERSION = "1.10.2"

MAX_NAME = 64  # event types and codes quoted in an error


@dataclass(frozen=True)
class Limits:
    """The largest parts of an event read from a peer. A header line is a few dozen
    bytes (more only when an old writer inlines its data); data is a small JSON object;
    a payload is one chunk of audio."""

    max_header_bytes: int = 64 * 1024
    max_data_bytes: int = 1024 * 1024
    max_payload_bytes: int = 1024 * 1024


# --- events on the wire ----------------------------------------------------------------


@dataclass(frozen=True)
class WyomingEvent:
    type: str
    data: Mapping[str, Any] = field(default_factory=dict)
    payload: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class Malformed:
    """What :class:`EventReader` yields for bytes that are not a Wyoming event: the
    stream cannot be read past it. ``code``/``message`` go into the ``error`` event."""

    code: str
    message: str
    close_code: int = CLOSE_PROTOCOL_ERROR

    def error(self) -> ProtocolError:
        return ProtocolError(self.code, self.message, close_code=self.close_code)


def encode_event(kind: str, data: Mapping[str, Any] | None = None,
                 payload: bytes = b"") -> bytes:
    """One event as bytes: the header line, the data, the payload."""
    header: dict[str, Any] = {"type": kind, "version": WYOMING_VERSION}
    body = b""
    if data:
        body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
        header["data_length"] = len(body)
    if payload:
        header["payload_length"] = len(payload)
    line = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    return line + b"\n" + body + payload


def error_event(code: str, message: str) -> bytes:
    """wyoming's ``error`` event (``wyoming.error.Error``)."""
    return encode_event("error", {"text": message, "code": code})


@dataclass
class _Header:
    type: str
    data: dict[str, Any]
    data_length: int
    payload_length: int


class EventReader:
    """Sans-IO: :meth:`feed` bytes as they arrive, then take events with
    :meth:`next_event` until it returns None (more bytes needed).

    After a :class:`Malformed` the stream is out of step; every later call returns
    the same :class:`Malformed`. No size is trusted before it is checked: a header
    line, data or payload over its :class:`Limits` is refused as soon as its length
    is known, without waiting for (or buffering) its bytes.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._buffer = bytearray()
        self._header: _Header | None = None
        self._failed: Malformed | None = None

    def feed(self, data: bytes | bytearray) -> None:
        if self._failed is None:
            self._buffer += data

    @property
    def in_event(self) -> bool:
        """True while part of an event has been received (EOF now cuts it short)."""
        return self._header is not None or bool(self._buffer)

    def next_event(self) -> WyomingEvent | Malformed | None:
        if self._failed is not None:
            return self._failed
        try:
            return self._next()
        except ProtocolError as exc:
            self._failed = Malformed(exc.code, exc.message, exc.close_code)
            self._buffer.clear()
            self._header = None
            return self._failed

    def _next(self) -> WyomingEvent | None:
        if self._header is None:
            limit = self.limits.max_header_bytes
            end = self._buffer.find(b"\n", 0, limit + 1)
            if end < 0:
                if len(self._buffer) > limit:
                    raise too_big(f"an event header line is longer than {limit} bytes")
                return None
            line = bytes(self._buffer[:end])
            del self._buffer[:end + 1]
            self._header = self._parse_header(line)
        header = self._header
        if len(self._buffer) < header.data_length + header.payload_length:
            return None
        data = header.data
        if header.data_length:
            data = {**data, **_json_object(bytes(self._buffer[:header.data_length]),
                                           "the event data")}
        start = header.data_length
        payload = bytes(self._buffer[start:start + header.payload_length])
        del self._buffer[:start + header.payload_length]
        self._header = None
        return WyomingEvent(header.type, data, payload)

    def _parse_header(self, line: bytes) -> _Header:
        header = _json_object(line, "an event header")
        kind = header.get("type")
        if not isinstance(kind, str) or not kind:
            raise bad_event('an event header needs "type", a non-empty string')
        inline = header.get("data", {})
        if inline is None:
            inline = {}
        if not isinstance(inline, dict):
            raise bad_event('an event header\'s "data" must be a JSON object')
        data_length = _length(header, "data_length", self.limits.max_data_bytes)
        payload_length = _length(header, "payload_length", self.limits.max_payload_bytes)
        return _Header(kind, inline, data_length, payload_length)


def _length(header: Mapping[str, Any], key: str, limit: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad_event(f'an event header\'s "{key}" must be a non-negative integer')
    if value > limit:
        raise too_big(f'an event header\'s "{key}" is over the limit of {limit} bytes')
    return value


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        # ValueError covers bad UTF-8, bad JSON and integers past Python's 4300 digits.
        raise bad_event(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise bad_event(f"{what} is not a JSON object")
    return value


def bad_event(message: str) -> ProtocolError:
    return ProtocolError("bad_event", message, close_code=CLOSE_PROTOCOL_ERROR)


def too_big(message: str) -> ProtocolError:
    return ProtocolError("event_too_big", message, close_code=CLOSE_TOO_BIG)


def unsupported(message: str) -> ProtocolError:
    return ProtocolError("unsupported_audio", message, close_code=CLOSE_UNSUPPORTED_DATA)
