"""The small HTTP layer: request heads in, responses out."""

from __future__ import annotations

import json

import pytest

from edge.net.http import BadRequest, RequestHead, head_complete, parse_head, response

UPGRADE = (
    b"GET /ws/transcribe?sample_rate=8000&token=abc HTTP/1.1\r\n"
    b"Host: edge.local:8000\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)


def split_response(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        headers[name.lower()] = value
    return lines[0], headers, body


# --- head_complete ------------------------------------------------------------------------

def test_head_complete() -> None:
    assert head_complete(b"") == 0
    assert head_complete(b"GET / HTTP/1.1\r\nHost: x\r\n") == 0
    assert head_complete(b"GET / HTTP/1.1\r\nHost: x\r\n\r") == 0
    assert head_complete(b"GET / HTTP/1.1\n\n") == 0
    assert head_complete(UPGRADE) == len(UPGRADE)
    assert head_complete(UPGRADE + b"\x81\x05hello") == len(UPGRADE)
    assert head_complete(b"\r\n\r\n") == 4


def test_head_complete_byte_by_byte() -> None:
    seen = [head_complete(UPGRADE[:n]) for n in range(len(UPGRADE) + 1)]
    assert seen[:-1] == [0] * len(UPGRADE)
    assert seen[-1] == len(UPGRADE)


# --- parse_head ---------------------------------------------------------------------------

def test_parse_upgrade_request() -> None:
    head = parse_head(UPGRADE)
    assert head.method == "GET"
    assert head.target == "/ws/transcribe?sample_rate=8000&token=abc"
    assert head.path == "/ws/transcribe"
    assert head.query == {"sample_rate": ["8000"], "token": ["abc"]}
    assert head.headers[0] == (b"host", b"edge.local:8000")
    assert head.header(b"upgrade") == b"websocket"
    assert head.header(b"sec-websocket-version") == b"13"
    assert head.header(b"Upgrade") is None  # names are stored lower-case
    assert head.header(b"origin") is None
    assert head.is_websocket_upgrade


def test_header_names_are_lower_cased_and_values_trimmed() -> None:
    head = parse_head(b"GET / HTTP/1.1\r\nX-Custom-HEADER:   Mixed Case Value \t\r\n"
                      b"Empty:\r\n\r\n")
    assert head.headers == ((b"x-custom-header", b"Mixed Case Value"), (b"empty", b""))


def test_header_value_may_contain_colons() -> None:
    head = parse_head(b"GET / HTTP/1.1\r\nHost: [::1]:8000\r\n\r\n")
    assert head.header(b"host") == b"[::1]:8000"


def test_repeated_headers_are_kept_in_order() -> None:
    head = parse_head(b"GET / HTTP/1.1\r\nAuthorization: Bearer a\r\n"
                      b"authorization: Bearer b\r\n\r\n")
    assert [v for k, v in head.headers if k == b"authorization"] == [b"Bearer a", b"Bearer b"]
    assert head.header(b"authorization") == b"Bearer a"


def test_head_without_trailing_blank_line() -> None:
    head = parse_head(b"HEAD /healthz HTTP/1.0")
    assert head.method == "HEAD"
    assert head.path == "/healthz"
    assert head.headers == ()


def test_non_ascii_bytes_survive() -> None:
    head = parse_head(b"GET /x HTTP/1.1\r\nX-Name: \xed\x98\x88\r\n\r\n")
    assert head.header(b"x-name") == b"\xed\x98\x88"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET / SPDY/3\r\n\r\n",
        b"GET / HTTP/2\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\n: empty name\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        b"GET / HTTP/1.1\r\n Host: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n folded continuation\r\n\r\n",
    ],
)
def test_malformed_heads(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_head(raw)


# --- RequestHead ----------------------------------------------------------------------------

def head_for(target: str, *headers: tuple[bytes, bytes]) -> RequestHead:
    return RequestHead(method="GET", target=target, headers=tuple(headers))


def test_path_and_query() -> None:
    head = head_for("/ws/transcribe?sample_rate=16000&sample_rate=8000&errors=&x=%ED%98%88")
    assert head.path == "/ws/transcribe"
    assert head.query == {"sample_rate": ["16000", "8000"], "errors": [""], "x": ["혈"]}
    assert head_for("/healthz").query == {}
    assert head_for("/healthz").path == "/healthz"
    assert head_for("/a?b=1#frag").path == "/a"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (((b"upgrade", b"websocket"),), True),
        (((b"upgrade", b"WebSocket"),), True),
        (((b"connection", b"Upgrade"), (b"upgrade", b"websocket")), True),
        (((b"upgrade", b"h2c"),), False),
        (((b"connection", b"Upgrade"),), False),
        ((), False),
    ],
)
def test_is_websocket_upgrade(headers: tuple[tuple[bytes, bytes], ...], expected: bool) -> None:
    assert head_for("/", *headers).is_websocket_upgrade is expected


def test_plain_get_is_not_an_upgrade() -> None:
    head = parse_head(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not head.is_websocket_upgrade


# --- response -------------------------------------------------------------------------------

def test_json_response() -> None:
    raw = response(200, {"status": "ok", "sessions": 0})
    status, headers, body = split_response(raw)
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == str(len(body))
    assert headers["connection"] == "close"
    assert headers["cache-control"] == "no-store"
    assert json.loads(body) == {"status": "ok", "sessions": 0}


def test_text_response_counts_bytes_not_characters() -> None:
    raw = response(404, "없음")
    status, headers, body = split_response(raw)
    assert status == "HTTP/1.1 404 Not Found"
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert body == "없음".encode()
    assert headers["content-length"] == "6"


def test_bytes_response_without_content_type() -> None:
    status, headers, body = split_response(response(400, b"bad"))
    assert status == "HTTP/1.1 400 Bad Request"
    assert "content-type" not in headers
    assert headers["content-length"] == "3"
    assert body == b"bad"


def test_empty_response() -> None:
    raw = response(204)
    assert raw.endswith(b"\r\n\r\n")
    status, headers, body = split_response(raw)
    assert status == "HTTP/1.1 204 No Content"
    assert headers["content-length"] == "0"
    assert body == b""


def test_explicit_content_type_and_extra_headers() -> None:
    raw = response(429, "busy", content_type="text/plain",
                   headers=[("Retry-After", "30"), ("Allow", "GET, HEAD")])
    status, headers, _ = split_response(raw)
    assert status == "HTTP/1.1 429 Too Many Requests"
    assert headers["content-type"] == "text/plain"
    assert headers["retry-after"] == "30"
    assert headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(("status", "reason"),
                         [(426, "Upgrade Required"), (431, "Request Header Fields Too Large"),
                          (405, "Method Not Allowed"), (503, "Service Unavailable")])
def test_status_lines(status: int, reason: str) -> None:
    assert response(status).startswith(f"HTTP/1.1 {status} {reason}\r\n".encode())


def test_head_only_omits_body_but_keeps_length() -> None:
    full = response(200, {"status": "ok"})
    head = response(200, {"status": "ok"}, head_only=True)
    assert head.endswith(b"\r\n\r\n")
    _, headers, body = split_response(head)
    assert body == b""
    assert headers["content-length"] == str(len(b'{"status":"ok"}'))
    assert full.startswith(head)
    assert full[len(head):] == b'{"status":"ok"}'


def test_response_round_trips_through_head_complete() -> None:
    raw = response(200, {"a": 1})
    assert raw[head_complete(raw):] == b'{"a":1}'


def test_upgrade_must_be_the_websocket_token() -> None:
    def upgrade(value: bytes) -> bool:
        return parse_head(b"GET / HTTP/1.1\r\nUpgrade: " + value + b"\r\n\r\n"
                          ).is_websocket_upgrade

    assert upgrade(b"websocket") and upgrade(b"WebSocket") and upgrade(b"h2c, websocket")
    assert not upgrade(b"notwebsocket")


def test_header_names_with_spaces_are_refused() -> None:
    with pytest.raises(BadRequest):
        parse_head(b"GET / HTTP/1.1\r\nX Bad: 1\r\n\r\n")
