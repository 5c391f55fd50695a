"""Just enough HTTP/1.1 to share port 8000 between the WebSocket and plain GETs.

Pure (sans-IO). :class:`HeadReader` collects bytes up to the end of a request head;
:func:`parse_head` parses the head once, with h11 (the parser wsproto itself uses), into
a :class:`RequestHead`. Plain requests are answered with :func:`response`; WebSocket
upgrades go on to :mod:`edge.net.ws` already parsed (wsproto would answer a plain GET
with 400), with the bytes read past the head.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11

MAX_HEAD_BYTES = 16384
_HOST_FIELD = re.compile(rb"\r\nhost[ \t]*:", re.IGNORECASE)
_OBS_FOLD = re.compile(rb"\r\n[ \t]")


class BadRequest(Exception):
    """The request head cannot be served; answer ``status`` (400, 431 or 501) and close.

    ``status`` is a hint in the manner of h11's ``error_status_hint``.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str
    headers: tuple[tuple[bytes, bytes], ...]  # lower-case names, as trio-websocket gives them

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def is_websocket_upgrade(self) -> bool:
        upgrade = (self.header(b"upgrade") or b"").lower()
        return b"websocket" in (token.strip() for token in upgrade.split(b","))


def head_complete(buffer: bytes) -> int:
    """Length of the head in ``buffer`` (through the blank line), or 0 if not all there."""
    end = buffer.find(b"\r\n\r\n")
    return 0 if end < 0 else end + 4


class HeadReader:
    """Bytes in, one :class:`RequestHead` out; what came after the head is :attr:`trailing`.

    :meth:`feed` raises :class:`BadRequest` with status 431 for a head longer than
    ``limit`` (as soon as that many bytes arrived without its end), and 400 (or h11's
    hint) when the head does not parse.
    """

    def __init__(self, limit: int = MAX_HEAD_BYTES) -> None:
        self._limit = limit
        self._buffer = b""
        self.trailing = b""

    def feed(self, data: bytes | bytearray) -> RequestHead | None:
        """The head once complete, else None (feed more)."""
        self._buffer += data
        end = head_complete(self._buffer)
        if (end or len(self._buffer)) > self._limit:
            raise BadRequest("request head too large", status=431)
        if not end:
            return None
        head, self.trailing = self._buffer[:end], self._buffer[end:]
        return parse_head(head)


def parse_head(head: bytes) -> RequestHead:
    """Parse one request head with h11; a missing final blank line is supplied.

    Stricter than h11 in one way and laxer in another, to keep what edge has always
    answered: a folded header line (obs-fold, which RFC 9112 lets a server refuse) is
    refused, and an HTTP/1.1 request without ``Host`` is served (edge serves one origin
    and never reads Host; wsproto still refuses an upgrade without it).
    """
    if not head_complete(head):
        head += b"\r\n" if head.endswith(b"\r\n") else b"\r\n\r\n"
    if _OBS_FOLD.search(head):
        raise BadRequest("folded header line")
    no_host = _HOST_FIELD.search(head) is None
    if no_host:  # an empty Host for h11 only, dropped again below
        head = head.replace(b"\r\n", b"\r\nhost: \r\n", 1)
    parser = h11.Connection(h11.SERVER)
    parser.receive_data(head)
    try:
        event = parser.next_event()
    except h11.RemoteProtocolError as exc:
        raise BadRequest(str(exc), status=exc.error_status_hint) from None
    if not isinstance(event, h11.Request):
        raise BadRequest("incomplete request head")
    if event.http_version not in (b"1.0", b"1.1"):
        raise BadRequest("unsupported HTTP version")
    headers = tuple((bytes(name), bytes(value)) for name, value in event.headers)
    return RequestHead(method=event.method.decode("ascii"),
                       target=event.target.decode("ascii"),
                       headers=headers[1:] if no_host else headers)


def response(
    status: int,
    body: bytes | str | Mapping[str, Any] = b"",
    *,
    content_type: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    head_only: bool = False,
) -> bytes:
    """A complete ``Connection: close`` response.

    Written here rather than by h11, which writes a response only inside a connection
    that has read its request; every answer here is whole, closes, and carries only
    values of ours.
    """
    if isinstance(body, Mapping):
        body = json.dumps(body, separators=(",", ":")).encode()
        content_type = content_type or "application/json"
    elif isinstance(body, str):
        body = body.encode()
        content_type = content_type or "text/plain; charset=utf-8"
    reason = HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {reason}"]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    lines.append("Cache-Control: no-store")
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)
