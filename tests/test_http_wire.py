"""The request head on the wire: one parse (h11), its limits and its refusals."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest
import trio

from edge.net.http import MAX_HEAD_BYTES, BadRequest, HeadReader


async def exchange(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """``request`` over a raw socket; the status line, headers and body up to EOF."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return status, headers, body


UPGRADE = (b"GET /ws/transcribe?x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\n\r\n")


def test_head_reader_byte_by_byte_keeps_what_follows_the_head() -> None:
    reader = HeadReader()
    data = UPGRADE + b"\x81\x85abcd"
    heads = [reader.feed(data[i:i + 1]) for i in range(len(UPGRADE))]
    assert heads[:-1] == [None] * (len(UPGRADE) - 1)
    head = heads[-1]
    assert head is not None and head.is_websocket_upgrade
    assert head.target == "/ws/transcribe?x=1"
    assert reader.trailing == b""

    reader = HeadReader()
    assert reader.feed(data) == head
    assert reader.trailing == b"\x81\x85abcd"


def test_head_reader_limit_is_exact() -> None:
    head = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    assert HeadReader(limit=len(head)).feed(head) is not None
    with pytest.raises(BadRequest) as caught:
        HeadReader(limit=len(head) - 1).feed(head)
    assert caught.value.status == 431
    with pytest.raises(BadRequest) as caught:
        HeadReader(limit=10).feed(b"GET / HTTP/1.1\r\nHost")
    assert caught.value.status == 431


def key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


async def test_a_head_over_the_limit_gets_431(start_server: Any) -> None:
    server = await start_server()
    filler = b"X-Filler: " + b"a" * (MAX_HEAD_BYTES + 1) + b"\r\n"
    status, headers, _ = await exchange(
        server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + filler + b"\r\n")
    assert status.startswith("HTTP/1.1 431")
    assert headers["connection"] == "close"


@pytest.mark.parametrize("request_", [
    pytest.param(b"GET /healthz HTTP/1.1 extra\r\nHost: x\r\n\r\n", id="request-line"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: a\r\n folded\r\n\r\n", id="obs-fold"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n", id="space-before-colon"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", id="two-hosts"),
    pytest.param(b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", id="http-2"),
])
async def test_a_malformed_head_gets_400(start_server: Any, request_: bytes) -> None:
    server = await start_server()
    status, headers, _ = await exchange(server.port, request_)
    assert status.startswith("HTTP/1.1 400")
    assert headers["connection"] == "close"


async def test_a_request_without_host_is_served_as_before(start_server: Any) -> None:
    server = await start_server()
    status, _, body = await exchange(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")
    assert status.startswith("HTTP/1.1 200")
    assert json.loads(body)["status"] == "ok"


async def test_head_gets_headers_without_a_body(start_server: Any) -> None:
    server = await start_server()
    status, headers, body = await exchange(server.port,
                                           b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status.startswith("HTTP/1.1 200")
    assert int(headers["content-length"]) > 0
    assert headers["cache-control"] == "no-store"
    assert body == b""


@pytest.mark.parametrize(("extra", "status", "header"), [
    pytest.param("Sec-WebSocket-Version: 13\r\n", "400", None, id="no-key"),
    pytest.param(f"Sec-WebSocket-Key: {key()}\r\nSec-WebSocket-Version: 8\r\n", "426",
                 ("sec-websocket-version", "13"), id="old-version"),
])
async def test_an_upgrade_wsproto_refuses_is_answered_at_once(
        start_server: Any, extra: str, status: str, header: tuple[str, str] | None) -> None:
    # Answered when the head is parsed, not left to the handshake deadline.
    server = await start_server(server={"handshake_timeout": 30.0})
    request = (f"GET /ws/transcribe HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\n{extra}\r\n").encode()
    with trio.fail_after(5):
        got, headers, _ = await exchange(server.port, request)
    assert got.startswith(f"HTTP/1.1 {status}")
    if header is not None:
        assert headers[header[0]] == header[1]
    assert server.stats.refused["handshake_timeout"] == 0
