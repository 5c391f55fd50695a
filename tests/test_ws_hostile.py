"""Hostile clients at the frame level, with frames written by hand over real sockets.

Each bad client gets a close frame with the right code, then TCP closes; a session
running beside it is not disturbed.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from trio_websocket import WebSocketConnection

from edge.net.server import Server
from helpers import connect, make_token, receive_json

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
          mask: bool = True, length: int | None = None) -> bytes:
    """One client frame; ``length`` announces a length other than the payload's."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    masked = 0x80 if mask else 0
    if n < 126:
        header = struct.pack("!BB", first, masked | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", first, masked | 126, n)
    else:
        header = struct.pack("!BBQ", first, masked | 127, n)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def upgrade_head(server: Server, token: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {server.config.server.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n").encode()


class RawPeer:
    """A client socket past the 101, reading the server's (unmasked) frames."""

    def __init__(self, stream: trio.SocketStream, buffer: bytes) -> None:
        self.stream = stream
        self.buffer = buffer

    async def receive_session_init(self) -> None:
        opcode, payload = await self.receive_frame()
        assert (opcode, json.loads(payload)["type"]) == (OP_TEXT, "session_init")

    async def _fill(self, n: int) -> None:
        while len(self.buffer) < n:
            chunk = await self.stream.receive_some(65536)
            assert chunk, "the server closed TCP before a complete frame"
            self.buffer += chunk

    async def receive_frame(self) -> tuple[int, bytes]:
        await self._fill(2)
        opcode, n = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
        start = 2
        if n == 126:
            await self._fill(4)
            (n,) = struct.unpack("!H", self.buffer[2:4])
            start = 4
        elif n == 127:
            await self._fill(10)
            (n,) = struct.unpack("!Q", self.buffer[2:10])
            start = 10
        await self._fill(start + n)
        payload, self.buffer = self.buffer[start:start + n], self.buffer[start + n:]
        return opcode, payload

    async def frames_until_close(self) -> tuple[list[tuple[int, bytes]], int]:
        """The frames before the server's close frame, and the close code."""
        frames: list[tuple[int, bytes]] = []
        while True:
            opcode, payload = await self.receive_frame()
            if opcode == OP_CLOSE:
                assert len(payload) >= 2, payload
                return frames, struct.unpack("!H", payload[:2])[0]
            frames.append((opcode, payload))

    async def assert_tcp_closed(self) -> None:
        assert self.buffer == b""
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:  # a reset counts as closed too
            data = b""
        assert data == b"", data


@asynccontextmanager
async def raw_peer(server: Server, after_head: bytes = b"") -> AsyncIterator[RawPeer]:
    """Upgrade by hand (``after_head`` goes in the same write as the head)."""
    assert server.port is not None
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(upgrade_head(server, make_token(sub="hostile")) + after_head)
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = await stream.receive_some(4096)
            assert chunk, "the server closed during the handshake"
            response += chunk
        head, _, rest = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        yield RawPeer(stream, rest)


async def assert_session_works(ws: WebSocketConnection) -> None:
    """The bystander session still answers: an end gets its session_end."""
    await ws.send_message(json.dumps({"type": "end"}))
    while (message := await receive_json(ws, timeout=10))["type"] != "session_end":
        pass
    assert message["reason"] == "end"


@asynccontextmanager
async def bystander(server: Server) -> AsyncIterator[WebSocketConnection]:
    async with connect(server, make_token(sub="bystander")) as ws:
        assert (await receive_json(ws))["type"] == "session_init"
        yield ws


async def test_a_frame_announced_over_the_limit_is_closed_1009_at_once(
        start_server: Any) -> None:
    server = await start_server(server={"max_frame_bytes": 65536, "idle_timeout": 60.0})
    with trio.fail_after(10):
        async with bystander(server) as ws:
            async with raw_peer(server) as peer:
                await peer.receive_session_init()
                # The header only: 2**62 bytes announced, none sent.
                await peer.stream.send_all(frame(OP_BINARY, length=1 << 62))
                _, code = await peer.frames_until_close()
                assert code == 1009
                await peer.assert_tcp_closed()
            await assert_session_works(ws)
        # Counted when the session has ended on the server's side (its end journaled).
        while server.admission.current:
            await trio.sleep(0.01)
    assert server.stats.closes["frame_too_big"] == 1


async def test_a_frame_at_the_limit_is_accepted(start_server: Any) -> None:
    server = await start_server(server={"max_frame_bytes": 65536, "idle_timeout": 60.0})
    with trio.fail_after(10):
        async with raw_peer(server) as peer:
            await peer.stream.send_all(frame(OP_BINARY, bytes(65536))
                                       + frame(OP_PING, b"after")
                                       + frame(OP_TEXT, b'{"type": "end"}'))
            frames, code = await peer.frames_until_close()
    assert (OP_PONG, b"after") in frames
    assert code == 1000


@pytest.mark.parametrize(("data", "expected"), [
    pytest.param(frame(OP_BINARY, b"abc", mask=False), 1002, id="unmasked"),
    pytest.param(frame(0x3, b"abc"), 1002, id="reserved-data-opcode"),
    pytest.param(frame(0xB, b"abc"), 1002, id="reserved-control-opcode"),
    pytest.param(frame(OP_BINARY, b"abc", rsv=0b100), 1002, id="rsv1"),
    pytest.param(frame(OP_BINARY, b"abc", rsv=0b001), 1002, id="rsv3"),
    pytest.param(frame(OP_PING, b"abc", fin=False), 1002, id="fragmented-ping"),
    pytest.param(frame(OP_CONT, b"abc"), 1002, id="continuation-first"),
    pytest.param(frame(OP_CLOSE, b"\x03"), 1002, id="close-1-byte"),
    pytest.param(frame(OP_TEXT, b'{"type": "\xff\xfe"}'), 1007, id="invalid-utf8"),
    pytest.param(frame(OP_TEXT, b"\xce", fin=False) + frame(OP_CONT, b"\x28"), 1007,
                 id="invalid-utf8-across-fragments"),
])
async def test_a_frame_breaking_rfc6455_gets_a_close_frame_first(
        start_server: Any, data: bytes, expected: int) -> None:
    server = await start_server(server={"idle_timeout": 60.0})
    with trio.fail_after(10):
        async with bystander(server) as ws:
            async with raw_peer(server) as peer:
                await peer.receive_session_init()
                await peer.stream.send_all(data)
                _, code = await peer.frames_until_close()
                assert code == expected
                await peer.assert_tcp_closed()
            await assert_session_works(ws)


async def test_a_first_frame_pipelined_after_the_head_is_not_lost(start_server: Any) -> None:
    # RFC 6455 says a client waits for the 101; some do not. Their first frames came
    # in the same read as the head and used to be dropped.
    server = await start_server(server={"idle_timeout": 60.0})
    early = frame(OP_PING, b"early") + frame(OP_TEXT, b'{"type": "end"}')
    with trio.fail_after(10):
        async with raw_peer(server, after_head=early) as peer:
            frames, code = await peer.frames_until_close()
            await peer.assert_tcp_closed()
    assert (OP_PONG, b"early") in frames
    texts = [json.loads(payload) for opcode, payload in frames if opcode == OP_TEXT]
    assert texts[0]["type"] == "session_init"
    assert texts[-1]["type"] == "session_end"
    assert code == 1000


async def test_a_pipelined_bad_frame_is_refused_like_a_late_one(start_server: Any) -> None:
    server = await start_server(server={"idle_timeout": 60.0})
    with trio.fail_after(10):
        async with raw_peer(server, after_head=frame(OP_BINARY, b"x", mask=False)) as peer:
            _, code = await peer.frames_until_close()
            await peer.assert_tcp_closed()
    assert code == 1002
