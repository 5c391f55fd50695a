"""Just enough HTTP/1.1 to share port 8000 between the WebSocket and plain GETs.

Pure (sans-IO): parses a request head from bytes and renders responses to bytes. The
server reads the head itself, hands WebSocket upgrades to trio-websocket (replaying
the bytes it read) and answers everything else here (wsproto would answer a plain
GET with 400).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

MAX_HEAD_BYTES = 16384
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field-name


class BadRequest(Exception):
    """The request head cannot be parsed; answer 400 and close."""


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


def parse_head(head: bytes) -> RequestHead:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes every byte
        raise BadRequest("undecodable request head") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest("malformed request line")
    method, target, _ = parts
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or not _TOKEN.fullmatch(name):
            raise BadRequest("malformed header line")
        headers.append((name.lower().encode("latin-1"), value.strip().encode("latin-1")))
    return RequestHead(method=method, target=target, headers=tuple(headers))


def response(
    status: int,
    body: bytes | str | Mapping[str, Any] = b"",
    *,
    content_type: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    head_only: bool = False,
) -> bytes:
    """A complete ``Connection: close`` response."""
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
