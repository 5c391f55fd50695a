"""A Live API client: streams a WAV/PCM file or stdin, yields every server message.

Used by ``edge client`` (the smoke test an operator runs against a device) and by the
benchmarks. Real-time pacing sends one chunk per chunk duration against a monotonic
schedule, so a slow server shows up as latency, not as a slower sender.
"""

from __future__ import annotations

import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from edge.audio.frames import AudioFormat, is_wav, parse_wav_header
from edge.core.errors import AudioFormatError

CHUNK_MS = 100


@dataclass
class ClientResult:
    close_code: int | None
    close_reason: str | None
    messages: list[dict[str, Any]]


def bytes_per_second(first: bytes, default_rate: int) -> int:
    """How fast to send: from the WAV header when the stream starts with one."""
    if is_wav(first):
        try:
            fmt = parse_wav_header(first).format
        except AudioFormatError:
            fmt = AudioFormat(default_rate)
    else:
        fmt = AudioFormat(default_rate)
    return fmt.sample_rate * fmt.bytes_per_frame


async def stream_file(
    url: str,
    token: str,
    source: BinaryIO,
    *,
    realtime: bool = True,
    sample_rate: int = 16000,
    phrases: list[str] | None = None,
    chunk_ms: int = CHUNK_MS,
    on_message: Callable[[dict[str, Any]], None] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> ClientResult:
    """Connect, optionally configure, stream ``source``, send ``end``, collect replies.

    Reads ``source`` in a worker thread (it may be a pipe). Returns when the server
    closes the connection. Raises trio_websocket's ``HandshakeError`` subclasses when
    the server refuses the handshake.
    """
    messages: list[dict[str, Any]] = []
    headers = [(b"Authorization", f"Bearer {token}".encode())]
    if url.startswith("wss:") and ssl_context is None:
        ssl_context = ssl.create_default_context()
    async with open_websocket_url(url, extra_headers=headers, ssl_context=ssl_context,
                                  max_message_size=16 * 1024 * 1024) as ws:

        async def receive() -> None:
            while True:
                try:
                    text = await ws.get_message()
                except ConnectionClosed:
                    return
                message = json.loads(text)
                messages.append(message)
                if on_message is not None:
                    on_message(message)

        async def send() -> None:
            if phrases:
                await ws.send_message(json.dumps({"type": "config", "phrases": phrases}))
            async for chunk in _paced_chunks(source, realtime, sample_rate, chunk_ms):
                await ws.send_message(chunk)
            await ws.send_message(json.dumps({"type": "end"}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            with contextlib.suppress(ConnectionClosed):
                await send()
        reason = ws.closed
    return ClientResult(reason.code if reason else None, reason.reason if reason else None,
                        messages)


async def _paced_chunks(source: BinaryIO, realtime: bool, sample_rate: int,
                        chunk_ms: int) -> AsyncIterator[bytes]:
    first = await trio.to_thread.run_sync(source.read, 4096)
    if not first:
        return
    rate = bytes_per_second(first, sample_rate)
    chunk_bytes = max(2, rate * chunk_ms // 1000 // 2 * 2)
    pending = first
    start = trio.current_time()
    sent = 0
    header = 0
    if is_wav(first):
        try:
            header = parse_wav_header(first).data_offset
        except AudioFormatError:
            header = 0
    while True:
        want = chunk_bytes + (header if sent == 0 else 0)
        while len(pending) < want:
            more = await trio.to_thread.run_sync(source.read, want - len(pending))
            if not more:
                break
            pending += more
        chunk, pending = pending[:want], pending[want:]
        if not chunk:
            return
        if realtime:
            await trio.sleep_until(start + sent / rate)
        yield chunk
        sent += len(chunk) - (header if sent == 0 else 0)
