"""The room stream over real sockets: listeners, fan-out, resume, pause, microphone faults.

The recogniser is the real Korean model. The capture source is a stand-in that plays
the speech fixture at real-time pace and can be told to fail (fault injection); real
ALSA capture is tested in test_room_alsa.py and test_capture.py.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
from typing import Any

import numpy as np
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection

from edge.audio.source import Chunk, MicEvent, MicStatistics
from edge.core.auth import SCOPE_READ
from edge.protocols.events import Notice
from helpers import FIXTURES, connect, make_token, receive_json

SPEECH = (FIXTURES / "speech_ko.raw").read_bytes()
CHUNK = 3200  # 100 ms at 16 kHz


class PlayedSource:
    """Plays the speech fixture then silence, in 100 ms chunks every ``period`` seconds."""

    def __init__(self, period: float = 0.1) -> None:
        self.period = period
        self.paused = False
        self.chunks = 0
        self._send: trio.MemorySendChannel[Chunk | MicEvent] | None = None
        self._wake = trio.Event()
        self._pending: list[MicEvent] = []  # events wait for room; audio is dropped

    def _flush_events(self) -> bool:
        assert self._send is not None
        while self._pending:
            try:
                self._send.send_nowait(self._pending[0])
            except trio.WouldBlock:
                return False
            self._pending.pop(0)
        return True

    async def run(self, send: trio.MemorySendChannel[Chunk | MicEvent], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._send = send
        task_status.started()
        position = 0
        async with send:
            while True:
                if self.paused:
                    await self._wake.wait()
                    continue
                pcm = SPEECH[position:position + CHUNK].ljust(CHUNK, b"\0")
                position += CHUNK
                self.chunks += 1
                # Like the real microphone: never wait for the room; drop when it lags.
                if self._flush_events():
                    with contextlib.suppress(trio.WouldBlock):
                        send.send_nowait(Chunk(pcm, 16000, trio.current_time()))
                await trio.sleep(self.period)

    def event(self, code: str) -> None:
        """Report ``code``; a lost microphone sends nothing until it is restored."""
        self._pending.append(MicEvent(code, f"test: {code}"))
        self._flush_events()
        if code in ("mic_lost", "mic_restored"):
            self.paused = code == "mic_lost"
            if not self.paused:
                self._wake.set()
                self._wake = trio.Event()

    def pause(self) -> None:
        self.paused = True
        self.event("mic_paused")

    def resume(self) -> None:
        self.paused = False
        self._wake.set()
        self._wake = trio.Event()
        self.event("mic_resumed")

    def statistics(self) -> MicStatistics:
        return MicStatistics(state="paused" if self.paused else "running", device="played",
                             sample_rate=16000, channels=1, chunks=self.chunks,
                             dropped_chunks=0, overruns=0, restarts=0, failures=0,
                             last_error=None, stream_open=not self.paused)


async def start_room(nursery: trio.Nursery, start_server: Any, model: Any,
                     source: PlayedSource, **microphone: Any) -> Any:
    server = await start_server(microphone={"enabled": True, **microphone}, mic=source,
                                recognizer_factory=model.recognizer)
    return server


async def messages_until(ws: WebSocketConnection, done: Any, timeout: float = 30
                         ) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with trio.fail_after(timeout):
        while not done(out):
            out.append(await receive_json(ws, timeout))
    return out


def finals(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == "transcription" and m["is_final"]]


def has_finals(n: int) -> Any:
    return lambda out: len(finals(out)) >= n


async def test_two_listeners_get_the_same_room_transcripts(
    nursery: trio.Nursery, start_server: Any, model: Any
) -> None:
    server = await start_room(nursery, start_server, model, PlayedSource(period=0.05))
    results = []

    async def listen() -> None:
        async with connect(server, make_token(scope=SCOPE_READ), "?source=room") as ws:
            init = await receive_json(ws)
            assert init["type"] == "session_init" and init["source"] == "room"
            assert init["room_id"] == server.room.id and not init["can_pause"]
            results.append((init, await messages_until(ws, has_finals(2))))

    async with trio.open_nursery() as listeners:
        listeners.start_soon(listen)
        listeners.start_soon(listen)
    (init_a, a), (init_b, b) = results
    assert init_a["session_id"] != init_b["session_id"]
    seen_a = [(m["seq"], m["text"]) for m in finals(a)]
    seen_b = [(m["seq"], m["text"]) for m in finals(b)]
    shared = min(len(seen_a), len(seen_b))
    assert shared >= 2 and seen_a[:shared] == seen_b[:shared]
    assert all(m["session_id"] == init_a["session_id"] for m in a)
    assert all(m["room_id"] == server.room.id for m in a + b)
    assert all(text for _, text in seen_a)
    starts = [m["start_ms"] for m in finals(a)]
    assert starts == sorted(starts)


async def test_a_listener_that_never_reads_does_not_delay_another(
    nursery: trio.Nursery, start_server: Any, model: Any
) -> None:
    server = await start_room(nursery, start_server, model, PlayedSource(period=0.05),
                              listener_queue=8)
    stalled = await raw_listener(server.port, make_token(scope=SCOPE_READ))
    async with connect(server, make_token(scope=SCOPE_READ), "?source=room") as ws:
        await receive_json(ws)
        assert server.listeners.current == 2
        # Bulky room messages fill the stalled client's socket buffers quickly, while
        # this client keeps reading.
        bulk = "x" * 65536

        async def publish() -> None:
            for n in range(200):
                server.room.hub.publish(Notice(server.room.id, "test_bulk", bulk, {"n": n}))
                await trio.sleep(0.01)

        nursery.start_soon(publish)
        got = await messages_until(
            ws, lambda out: sum(m.get("code") == "test_bulk" for m in out) == 200, timeout=30)
        with trio.fail_after(20):
            while server.listeners.current != 1:
                await trio.sleep(0.05)
    assert [m["n"] for m in got if m.get("code") == "test_bulk"] == list(range(200))
    assert server.room.hub.statistics().dropped_slow == 1
    await stalled.aclose()


async def raw_listener(port: int, token: str) -> trio.SocketStream:
    """Completes the WebSocket upgrade for ?source=room, then never reads again."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all(
        (f"GET /ws/transcribe?source=room HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
         f"Authorization: Bearer {token}\r\n\r\n").encode())
    reply = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in reply:
            reply += await stream.receive_some(4096)
    assert reply.startswith(b"HTTP/1.1 101")
    return stream


async def test_resume_with_since_seq_and_the_too_old_case(
    nursery: trio.Nursery, start_server: Any, model: Any
) -> None:
    server = await start_room(nursery, start_server, model, PlayedSource(period=0.1),
                              replay_size=2)
    token = make_token(scope=SCOPE_READ)
    async with connect(server, token, "?source=room") as ws:
        await receive_json(ws)
        first = await messages_until(ws, has_finals(3), timeout=60)
    seqs = [m["seq"] for m in finals(first)]

    # The last two replayable messages are still buffered: they come back first.
    last = server.room.hub.statistics().last_seq
    async with connect(server, token, f"?source=room&since_seq={seqs[-1] - 1}") as ws:
        init = await receive_json(ws)
        assert init["last_seq"] >= last
        replayed = await receive_json(ws)
        assert replayed["seq"] == seqs[-1] and replayed["text"] == finals(first)[-1]["text"]

    # From the start: most of it is gone, and the listener is told how much.
    async with connect(server, token, "?source=room&since_seq=0") as ws:
        await receive_json(ws)
        warning = await receive_json(ws)
        assert warning["type"] == "warning" and warning["code"] == "missed_messages"
        assert warning["lost"] >= len(seqs) - 2
        following = await receive_json(ws)
        assert following["seq"] > seqs[0]


async def test_pause_and_resume_need_write_scope(
    nursery: trio.Nursery, start_server: Any, model: Any
) -> None:
    source = PlayedSource(period=0.05)
    server = await start_room(nursery, start_server, model, source)
    async with connect(server, make_token(scope=SCOPE_READ), "?source=room") as reader, \
            connect(server, make_token(), "?source=room") as writer:
        assert not (await receive_json(reader))["can_pause"]
        assert (await receive_json(writer))["can_pause"]

        await reader.send_message(json.dumps({"type": "pause"}))
        refused = await messages_until(
            reader, lambda out: any(m.get("code") == "insufficient_scope" for m in out))
        assert not source.paused
        assert not [m for m in refused if m["type"] == "room_state" and m["state"] == "paused"]

        await writer.send_message(json.dumps({"type": "pause"}))
        await messages_until(reader, lambda out: any(
            m["type"] == "room_state" and m["state"] == "paused" for m in out))
        assert source.paused and server.room.state == "paused"
        chunks = source.chunks
        await trio.sleep(0.5)
        assert source.chunks == chunks  # nothing captured while paused

        await writer.send_message(json.dumps({"type": "resume"}))
        await messages_until(reader, lambda out: any(
            m["type"] == "room_state" and m["state"] == "listening" for m in out))
        assert not source.paused


async def test_microphone_loss_reaches_listeners_and_the_daemon_goes_on(
    nursery: trio.Nursery, start_server: Any, model: Any
) -> None:
    source = PlayedSource(period=0.05)
    server = await start_room(nursery, start_server, model, source)
    async with connect(server, make_token(scope=SCOPE_READ), "?source=room") as ws:
        await receive_json(ws)
        source.event("mic_lost")
        lost = await messages_until(ws, lambda out: any(
            m["type"] == "room_state" and m["state"] == "mic_lost" for m in out))
        assert any(m["type"] == "warning" and m["code"] == "mic_lost" for m in lost)
        status, body = server.health()
        assert status == 200 and body["microphone"]["state"] == "mic_lost"
        source.event("mic_restored")
        await messages_until(ws, lambda out: any(
            m["type"] == "room_state" and m["state"] == "listening" for m in out))
        assert server.health()[1]["microphone"]["state"] == "listening"


async def test_room_needs_read_scope_and_a_microphone(start_server: Any) -> None:
    server = await start_server()
    for token, status, code in [(make_token(scope="transcription:write"), 403,
                                 "insufficient_scope"),
                                (make_token(scope=SCOPE_READ), 404, "no_room")]:
        try:
            async with connect(server, token, "?source=room"):
                raise AssertionError("accepted")
        except ConnectionRejected as exc:
            assert exc.status_code == status
            assert exc.body is not None and json.loads(exc.body)["code"] == code


async def test_listener_end_closes_normally(
    nursery: trio.Nursery, start_server: Any, model: Any
) -> None:
    server = await start_room(nursery, start_server, model, PlayedSource())
    async with connect(server, make_token(scope=SCOPE_READ), "?source=room") as ws:
        await receive_json(ws)
        await ws.send_message(json.dumps({"type": "end"}))
        with trio.fail_after(10):
            try:
                while True:
                    message = await receive_json(ws)
                    last = message
            except ConnectionClosed:
                pass
        assert last["type"] == "session_end" and last["room_id"] == server.room.id
        assert ws.closed is not None and ws.closed.code == 1000


class OnceSource(PlayedSource):
    """Plays ``pcm`` once at real-time pace, then sends nothing more (a quiet line)."""

    def __init__(self, pcm: bytes) -> None:
        super().__init__()
        self.pcm = pcm

    async def run(self, send: trio.MemorySendChannel[Chunk | MicEvent], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with send:
            for i in range(0, len(self.pcm), CHUNK):
                await send.send(Chunk(self.pcm[i:i + CHUNK], 16000, trio.current_time()))
                self.chunks += 1
                await trio.sleep(self.period)
            await trio.sleep_forever()


def first_phrase_end() -> int:
    """Byte offset where the fixture's first phrase ends (its samples fall to zero for
    the 2.2 s gap)."""
    samples = np.frombuffer(SPEECH, "<i2")
    frames = np.abs(samples[:len(samples) // 160 * 160].reshape(-1, 160)).max(axis=1)
    voiced = np.flatnonzero(frames > 0)
    gaps = np.flatnonzero(np.diff(voiced) > 100)  # over a second without a sample
    return int(voiced[gaps[0]] + 1) * 160 * 2


async def test_the_room_closes_a_turn_at_a_pause(
    nursery: trio.Nursery, start_server: Any, model: Any, tmp_path: Any
) -> None:
    """The room uses recognizer.endpoint_silence_ms: the first phrase and 700 ms of
    silence, then no more audio. With a 400 ms pause rule its final comes; with Vosk's
    endpointer alone (over a second of trailing silence) it does not."""
    pcm = SPEECH[:first_phrase_end() + 2 * 16000 * 7 // 10]

    async def first_final(silence_ms: int) -> list[dict[str, Any]]:
        server = await start_server(
            microphone={"enabled": True}, mic=OnceSource(pcm),
            recognizer_factory=model.recognizer,
            recognizer={"endpoint_silence_ms": silence_ms},
            server={"state_dir": str(tmp_path / f"state-{silence_ms}")})
        out: list[dict[str, Any]] = []
        async with connect(server, make_token(scope=SCOPE_READ), "?source=room") as ws:
            # the audio takes about 3 s to play; then give recognition ample time
            with trio.move_on_after(len(pcm) / 32000 + 5):
                while not finals(out):
                    out.append(await receive_json(ws, 60))
        return finals(out)

    by_pause = await first_final(400)
    assert len(by_pause) == 1 and by_pause[0]["text"], by_pause  # free dictation
    assert await first_final(0) == []
