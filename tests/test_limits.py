"""Limits and faults of live sessions, over real sockets to a server on 127.0.0.1.

Each test drives one or more clients against the in-process server and checks what
the client is told (warnings, the final ``error``, the close code) and that the
server goes on serving. The real Vosk model decodes the audio except where a test
injects a fault through ``recognizer_factory``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request, TextMessage

from edge.asr.recognizer import Recognizer, RecognizerFactory
from edge.asr.vosk import LoadedModel
from edge.net import session as session_module
from edge.net.pacing import MessageRate, RecognitionLag
from edge.net.server import Server
from edge.protocols.events import Utterance
from helpers import FIXTURES, connect, make_token, receive_json, receive_until_closed

RATE = 16000
CHUNK_MS = 100
CHUNK_BYTES = 2 * RATE * CHUNK_MS // 1000
END = {"type": "end"}

# --- audio ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech() -> bytes:
    """The three Korean phrases as raw s16le mono PCM at 16 kHz."""
    return (FIXTURES / "speech_ko.raw").read_bytes()


@pytest.fixture(scope="module")
def grammar(phrases: Mapping[str, Any]) -> list[str]:
    return [p for p in phrases["grammar"] if p != "[unk]"]


def chunks(pcm: bytes, size: int = CHUNK_BYTES) -> list[bytes]:
    return [pcm[i:i + size] for i in range(0, len(pcm), size)]


def silence(seconds: float) -> bytes:
    return bytes(2 * round(RATE * seconds))


def square_wave(seconds: float, hz: int = 500) -> bytes:
    t = np.arange(round(RATE * seconds))
    return np.where((t * 2 * hz // RATE) % 2 == 0, 32767, -32767).astype("<i2").tobytes()


def wav_header(*, tag: int = 1, channels: int = 1, rate: int = RATE, bits: int = 16,
               data_size: int = 0, subformat: int | None = None) -> bytes:
    """A RIFF/WAVE header; ``subformat`` makes it WAVE_FORMAT_EXTENSIBLE with that tag."""
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    if subformat is not None:
        guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", subformat) + guid_tail
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", data_size)
    return b"RIFF" + struct.pack("<I", len(body) + data_size) + body


# --- sessions ------------------------------------------------------------------------

#: What a client sends: binary frames, raw text, JSON objects, events to wait for,
#: and callables to run at that point of the conversation.
Outgoing = bytes | str | Mapping[str, Any] | trio.Event | Callable[[], object]


@dataclass
class Outcome:
    """Everything the server sent a client, and how it closed the connection."""

    messages: list[dict[str, Any]]
    close_code: int | None

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    def codes(self, kind: str) -> list[str]:
        return [m["code"] for m in self.of_type(kind)]

    @property
    def finals(self) -> list[str]:
        return [m["text"] for m in self.of_type("transcription") if m["is_final"]]

    @property
    def last(self) -> dict[str, Any]:
        return self.messages[-1]

    def index(self, kind: str, code: str) -> int:
        return next(i for i, m in enumerate(self.messages)
                    if m["type"] == kind and m.get("code") == code)


async def send_items(ws: WebSocketConnection, items: Iterable[Outgoing], pace: float) -> None:
    """Send ``items`` in order, sleeping ``pace`` after each binary frame; stops quietly
    when the server has closed the connection."""
    with contextlib.suppress(ConnectionClosed):
        for item in items:
            if isinstance(item, trio.Event):
                await item.wait()
            elif isinstance(item, bytes):
                await ws.send_message(item)
                await trio.sleep(pace)
            elif isinstance(item, str):
                await ws.send_message(item)
            elif isinstance(item, Mapping):
                await ws.send_message(json.dumps(item))
            else:
                item()


async def exchange(ws: WebSocketConnection, items: Iterable[Outgoing], *, pace: float = 0.0,
                   timeout: float = 60) -> Outcome:
    """Send ``items`` while reading every message until the server closes."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_items, ws, items, pace)
        messages = await receive_until_closed(ws, timeout)
        nursery.cancel_scope.cancel()
    assert ws.closed is not None
    return Outcome(messages, ws.closed.code)


async def run_session(server: Server, items: Iterable[Outgoing], *, token: str | None = None,
                      query: str = "", pace: float = 0.0, timeout: float = 60) -> Outcome:
    """One client from connect to the server's close; the first message is session_init."""
    async with connect(server, token or make_token(), query) as ws:
        outcome = await exchange(ws, items, pace=pace, timeout=timeout)
    assert outcome.messages[0]["type"] == "session_init", outcome.messages
    return outcome


def assert_ended_normally(outcome: Outcome) -> None:
    assert outcome.of_type("error") == []
    assert outcome.last["type"] == "session_end", outcome.messages
    assert outcome.last["reason"] == "end"
    assert outcome.close_code == 1000


async def assert_still_serving(server: Server) -> None:
    assert_ended_normally(await run_session(server, [END]))


def assert_closed_with_error(outcome: Outcome, code: str, close_code: int) -> None:
    assert outcome.last["type"] == "error", outcome.messages
    assert outcome.last["code"] == code
    assert outcome.close_code == close_code
    assert outcome.of_type("session_end") == []


async def wait_until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


def session_ends_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The server's "session ... ended: <reason> (close <code>)" lines."""
    return [r.getMessage() for r in caplog.records
            if r.name == "edge.net.boundary" and " ended: " in r.getMessage()]


def speech_session(grammar: Sequence[str], speech: bytes) -> list[Outgoing]:
    return [{"type": "config", "phrases": list(grammar)}, *chunks(speech), END]


# --- recogniser stand-ins ------------------------------------------------------------


class FaultyRecognizer:
    """Raises from ``accept`` or ``flush``, as a broken decoder would."""

    def __init__(self, where: str) -> None:
        self.where = where

    def accept(self, pcm: bytes) -> list[Utterance]:
        if self.where == "accept":
            raise RuntimeError("injected fault in accept")
        return []

    def flush(self) -> Utterance | None:
        if self.where == "flush":
            raise RuntimeError("injected fault in flush")
        return None

    def close(self) -> None:
        pass


class FloodRecognizer:
    """Answers every chunk with a new, large partial: plenty for the server to send."""

    def __init__(self) -> None:
        self.calls = itertools.count()

    def accept(self, pcm: bytes) -> list[Utterance]:
        n = next(self.calls)
        text = f"{n} " + "가" * 16_000
        return [Utterance(is_final=False, text=text, start_ms=0, end_ms=n)]

    def flush(self) -> Utterance | None:
        return None

    def close(self) -> None:
        pass


def routing_factory(model: LoadedModel,
                    stand_ins: Mapping[str, Callable[[], Recognizer]]) -> RecognizerFactory:
    """The real recogniser, except for sessions whose config names one magic phrase."""

    def factory(rate: int, phrases: Sequence[str] | None) -> Recognizer:
        if phrases and len(phrases) == 1 and phrases[0] in stand_ins:
            return stand_ins[phrases[0]]()
        return model.recognizer(rate, phrases)

    return factory


# --- a raw client ----------------------------------------------------------------------


@dataclass
class RawClient:
    """A WebSocket client that reads nothing after the handshake reply."""

    stream: trio.SocketStream
    conn: WSConnection

    async def send(self, item: bytes | Mapping[str, Any]) -> None:
        if isinstance(item, bytes):
            event: BytesMessage | TextMessage = BytesMessage(data=item)
        else:
            event = TextMessage(data=json.dumps(item))
        await self.stream.send_all(self.conn.send(event))

    async def abort(self) -> None:
        """Drop the TCP connection without a close frame."""
        await trio.aclose_forcefully(self.stream)


@contextlib.asynccontextmanager
async def raw_client(server: Server, token: str, *, receive_buffer: int | None = None
                     ) -> AsyncIterator[RawClient]:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:  # before connect, so the window stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.connect(("127.0.0.1", server.port))
    stream = trio.SocketStream(sock)
    conn = WSConnection(ConnectionType.CLIENT)
    request = Request(host=f"127.0.0.1:{server.port}", target=server.config.server.path,
                      extra_headers=[(b"authorization", f"Bearer {token}".encode())])
    async with stream:
        await stream.send_all(conn.send(request))
        with trio.fail_after(10):
            while not any(isinstance(e, AcceptConnection) for e in conn.events()):
                data = await stream.receive_some()
                assert data, "the server closed the connection during the handshake"
                conn.receive_data(data)
        yield RawClient(stream, conn)


# --- 1. a failing session does not disturb the others --------------------------------


@pytest.mark.parametrize("where", ["factory", "accept", "flush"])
async def test_recognizer_failure_ends_only_its_session(
    start_server: Any, model: LoadedModel, grammar: list[str], speech: bytes,
    phrases: Mapping[str, Any], where: str,
) -> None:
    def broken() -> Recognizer:
        if where == "factory":
            raise RuntimeError("injected fault in the factory")
        return FaultyRecognizer(where)

    server = await start_server(recognizer_factory=routing_factory(model, {"boom": broken}))
    bad_done = trio.Event()
    outcomes: dict[str, Outcome] = {}

    async def good() -> None:
        items = speech_session(grammar, speech)
        items.insert(len(items) // 2, bad_done)  # the bad session fails mid-stream
        outcomes["good"] = await run_session(server, items)

    async def bad() -> None:
        # skip_silence false: the silence is given to the recogniser, to fail on
        items: list[Outgoing] = [{"type": "config", "phrases": ["boom"],
                                  "skip_silence": False}, *chunks(silence(0.5)), END]
        outcomes["bad"] = await run_session(server, items)
        bad_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(good)
        nursery.start_soon(bad)

    assert_closed_with_error(outcomes["bad"], "internal_error", 1011)
    assert_ended_normally(outcomes["good"])
    assert outcomes["good"].finals == phrases["utterances"]
    await assert_still_serving(server)


# --- 2. frames over the size limit -------------------------------------------------------


async def oversized_frame_session(server: Server) -> Outcome:
    """A frame over the limit, sent once the session is open (the server closes with
    1009 as soon as the frame's header arrives, whatever it was about to send)."""
    async with connect(server, make_token()) as ws:
        assert (await receive_json(ws))["type"] == "session_init"
        return await exchange(ws, [bytes(100_000)])


async def test_oversized_frame_closes_1009_and_server_keeps_serving(start_server: Any) -> None:
    server = await start_server(server={"max_frame_bytes": 65536})
    outcome = await oversized_frame_session(server)
    assert outcome.close_code == 1009
    assert outcome.of_type("session_end") == []
    await assert_still_serving(server)


async def test_oversized_frame_is_not_counted_as_client_closed(
    start_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.net.boundary")
    server = await start_server(server={"max_frame_bytes": 65536})
    await oversized_frame_session(server)
    await wait_until(lambda: server.admission.current == 0)
    [ended] = session_ends_logged(caplog)
    assert "frame_too_big" in ended
    assert "client_closed" not in ended
    assert server.stats.closes["client_closed"] == 0


# --- 3. idle timeout -------------------------------------------------------------------


async def test_idle_session_is_closed(start_server: Any) -> None:
    server = await start_server(server={"idle_timeout": 1.0})
    started = trio.current_time()
    outcome = await run_session(server, [], timeout=10)
    assert_closed_with_error(outcome, "idle_timeout", 1001)
    assert trio.current_time() - started >= 1.0


async def test_steady_audio_keeps_session_open_past_idle_timeout(start_server: Any) -> None:
    server = await start_server(server={"idle_timeout": 1.0})
    outcome = await run_session(server, [*chunks(silence(2.5)), END], pace=CHUNK_MS / 1000)
    assert_ended_normally(outcome)
    assert outcome.last["audio_ms"] == 2500


# --- 4. session length -----------------------------------------------------------------


async def test_session_longer_than_max_is_closed(start_server: Any) -> None:
    server = await start_server(server={"max_session_seconds": 1.5})
    started = trio.current_time()
    outcome = await run_session(server, itertools.repeat(silence(CHUNK_MS / 1000)),
                                pace=CHUNK_MS / 1000, timeout=10)
    assert_closed_with_error(outcome, "session_too_long", 1008)
    assert trio.current_time() - started >= 1.5


# --- 5. the rate_limit claim -----------------------------------------------------------


@pytest.mark.parametrize(("rate_limit", "keepalives", "limited"), [
    (5, 6, True),
    (5, 4, False),  # four keepalives and the end: exactly the limit
    (100, 6, False),
])
async def test_rate_limit_claim(start_server: Any, rate_limit: int, keepalives: int,
                                limited: bool) -> None:
    server = await start_server()
    items: list[Outgoing] = [*[{"type": "keepalive"}] * keepalives, END]
    outcome = await run_session(server, items, token=make_token(rate_limit=rate_limit))
    assert outcome.messages[0]["rate_limit"] == rate_limit
    if limited:
        assert_closed_with_error(outcome, "rate_limited", 1013)
    else:
        assert_ended_normally(outcome)


# --- 6. a token that expires during the session ----------------------------------------


async def test_token_expiring_mid_session(start_server: Any, grammar: list[str],
                                          speech: bytes) -> None:
    server = await start_server(auth={"leeway": 0, "expiry_warning": 1.0})
    # Start on a whole second so that exp (whole seconds) is a full ttl away.
    await trio.sleep(1 - time.time() % 1)
    token = make_token(ttl=3)
    items = speech_session(grammar, speech)  # 7.4 s at real-time pace: outlives the token
    outcome = await run_session(server, items, token=token, pace=CHUNK_MS / 1000, timeout=20)

    assert_closed_with_error(outcome, "token_expired", 1002)
    assert outcome.codes("warning") == ["token_expiring"]
    assert outcome.index("warning", "token_expiring") < outcome.index("error", "token_expired")
    assert outcome.of_type("transcription"), "speech before the expiry was transcribed"
    # The speech is 7.4 s long; nothing sent after the expiry, 3 s in, is transcribed.
    assert outcome.of_type("transcription")[-1]["end_ms"] < 3500


# --- 7. malformed and misplaced text messages ------------------------------------------


async def test_bad_text_messages_are_warned_and_ignored(start_server: Any) -> None:
    server = await start_server()
    items: list[Outgoing] = [
        {"type": "config", "phrases": ["물 좀 주세요"]},  # valid
        "not json",
        {"type": "bogus"},
        {"type": "keepalive"},  # valid
        "[1,2]",
        {"type": "config", "phrases": "x"},
        END,
    ]
    outcome = await run_session(server, items)
    assert outcome.codes("warning") == ["bad_message"] * 4
    assert_ended_normally(outcome)


async def test_config_after_audio_is_warned_and_ignored(start_server: Any) -> None:
    server = await start_server()
    items: list[Outgoing] = [*chunks(silence(0.3)), {"type": "config", "partial_results": False},
                             END]
    outcome = await run_session(server, items)
    assert outcome.codes("warning") == ["bad_message"]
    assert "first audio" in outcome.of_type("warning")[0]["message"]
    assert_ended_normally(outcome)


# --- 8. clients that go away without "end" ---------------------------------------------


async def test_client_closing_mid_stream_is_logged_and_released(
    start_server: Any, speech: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.net.boundary")
    server = await start_server()
    async with connect(server, make_token()) as ws:
        assert (await receive_json(ws))["type"] == "session_init"
        for piece in chunks(speech)[:10]:
            await ws.send_message(piece)
        assert server.admission.current == 1
    await wait_until(lambda: server.admission.current == 0)
    [ended] = session_ends_logged(caplog)
    assert "ended: client_closed" in ended
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_client_dropping_tcp_mid_stream_is_logged_and_released(
    start_server: Any, speech: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.net.boundary")
    server = await start_server()
    async with raw_client(server, make_token()) as client:
        for piece in chunks(speech)[:10]:
            await client.send(piece)
        await wait_until(lambda: server.admission.current == 1)
        await client.abort()
    await wait_until(lambda: server.admission.current == 0)
    [ended] = session_ends_logged(caplog)
    assert "ended: client_closed" in ended
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- 9. a client that never reads ------------------------------------------------------


async def test_client_that_never_reads_is_dropped(
    start_server: Any, model: LoadedModel, grammar: list[str], speech: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="edge")
    factory = routing_factory(model, {"flood": FloodRecognizer})
    server = await start_server(server={"send_timeout": 1.0}, recognizer_factory=factory)
    live_during_normal: list[int] = []
    stalled_dropped = trio.Event()

    async def stalled_client() -> None:
        # 20 large partials a second: the send blocks long before the outbox (64) is full.
        async with raw_client(server, make_token(sub="stalled"), receive_buffer=4096) as client:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                # no pause rule: its gate would drop what the stand-in "hears" in silence;
                # and the silence is given to the stand-in (not skipped)
                await client.send({"type": "config", "phrases": ["flood"],
                                   "max_turn_silence_ms": 0, "skip_silence": False})
                for piece in itertools.cycle(chunks(silence(1.0))):
                    await client.send(piece)
                    await trio.sleep(0.05)
        stalled_dropped.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stalled_client)
        await wait_until(lambda: server.admission.current == 1)
        items = speech_session(grammar, speech)
        items.insert(1, lambda: live_during_normal.append(server.admission.current))
        normal = await run_session(server, items)
        await wait_until(lambda: server.admission.current == 0, timeout=30)
        with trio.fail_after(10):
            await stalled_dropped.wait()  # the server closed the stalled client's socket

    assert live_during_normal == [2]
    assert_ended_normally(normal)
    assert normal.finals, normal.messages
    assert [m for m in session_ends_logged(caplog) if m.endswith("ended: client_stalled")]
    assert any("a send took over 1s" in r.getMessage() for r in caplog.records
               if r.name == "edge.net.connection")


# --- 10-12. audio formats and levels ---------------------------------------------------


@pytest.mark.parametrize("header", [
    wav_header(bits=8),
    wav_header(tag=3, bits=32),
    wav_header(tag=0xFFFE, bits=32, subformat=3),
], ids=["pcm8", "float32", "extensible-float32"])
async def test_unsupported_wav_is_refused(start_server: Any, header: bytes) -> None:
    server = await start_server()
    outcome = await run_session(server, [header + bytes(3200), END])
    assert_closed_with_error(outcome, "unsupported_audio", 1003)


async def test_stereo_44k_wav_is_downmixed_and_transcribed(
    start_server: Any, grammar: list[str], phrases: Mapping[str, Any]
) -> None:
    server = await start_server()
    wav = (FIXTURES / "speech_ko_44k_stereo.wav").read_bytes()
    outcome = await run_session(server, speech_session(grammar, wav))
    assert outcome.codes("warning") == ["audio_format"]
    assert outcome.finals == phrases["utterances"]
    assert_ended_normally(outcome)


async def test_wav_rate_differing_from_url_rate_is_warned(
    start_server: Any, grammar: list[str], phrases: Mapping[str, Any]
) -> None:
    server = await start_server()
    wav = (FIXTURES / "speech_ko.wav").read_bytes()
    outcome = await run_session(server, speech_session(grammar, wav), query="?sample_rate=8000")
    assert outcome.codes("warning") == ["sample_rate_mismatch"]
    assert outcome.finals == phrases["utterances"]
    assert_ended_normally(outcome)


@pytest.mark.parametrize(("pcm", "audio", "expected"), [
    (square_wave(1.0), {}, ["clipping"]),
    (silence(2.0), {"silence_seconds": 1.0}, ["silence"]),
], ids=["clipping", "silence"])
async def test_level_warnings(start_server: Any, pcm: bytes, audio: dict[str, Any],
                              expected: list[str]) -> None:
    server = await start_server(audio=audio)
    outcome = await run_session(server, [*chunks(pcm), END])
    # (the audio is sent as fast as the socket takes it: on a busy machine the server
    # may also say, rightly, that it lags behind; that is not what this test is about)
    assert [c for c in outcome.codes("warning") if c != "realtime_lag"] == expected
    assert_ended_normally(outcome)


class SlowRecognizer:
    """Takes longer than real time: recognition falls behind the audio."""

    def __init__(self, slowness: float = 3.0) -> None:
        self.slowness = slowness

    def accept(self, pcm: bytes) -> list[Utterance]:
        time.sleep(len(pcm) / 2 / RATE * self.slowness)
        return []

    def flush(self) -> Utterance | None:
        return None

    def close(self) -> None:
        pass


async def test_recognition_falling_behind_is_warned_and_nothing_is_dropped(
    start_server: Any,
) -> None:
    # skip_silence off: the slow stand-in is given the silence it is sent
    server = await start_server(recognizer_factory=lambda rate, phrases: SlowRecognizer(),
                                recognizer={"lag_warning": 0.5, "skip_silence": False})
    audio = silence(2.0)
    outcome = await run_session(server, [*chunks(audio), END])
    assert_ended_normally(outcome)
    [lag] = [m for m in outcome.of_type("warning") if m["code"] == "realtime_lag"]
    assert lag["lag_ms"] > 500
    assert outcome.last["audio_ms"] == 2000  # every chunk was decoded, late


async def test_lag_beyond_the_servers_queue_is_warned_for_a_real_time_client(
    start_server: Any,
) -> None:
    """A real-time client and recognition 1.5x slower than real time: the lag grows by
    50 ms per chunk, past what the session's audio queue holds (16 chunks, 1.6 s; the
    rest waits in socket buffers), so counting queued audio would never reach 2 s."""
    server = await start_server(
        recognizer_factory=lambda rate, phrases: SlowRecognizer(1.5),
        recognizer={"lag_warning": 2.0, "skip_silence": False})
    outcome = await run_session(server, [*chunks(silence(5.0)), END], pace=0.1)
    assert_ended_normally(outcome)
    lags = [m for m in outcome.of_type("warning") if m["code"] == "realtime_lag"]
    assert lags and lags[0]["lag_ms"] > 2000


async def test_a_client_slower_than_real_time_is_not_a_lag(start_server: Any) -> None:
    """Chunks of 100 ms every 250 ms, decoded in 150 ms each: the recogniser keeps up
    although the transcript falls behind the wall clock (the client's doing)."""
    server = await start_server(
        recognizer_factory=lambda rate, phrases: SlowRecognizer(1.5),
        recognizer={"lag_warning": 1.0, "skip_silence": False})
    outcome = await run_session(server, [*chunks(silence(3.0)), END], pace=0.25)
    assert_ended_normally(outcome)
    assert [m for m in outcome.of_type("warning") if m["code"] == "realtime_lag"] == []


def test_recognition_lag_arithmetic() -> None:
    lag = RecognitionLag()
    # Chunks of 0.1 s arriving every 0.1 s from t=10, each decoded in 0.15 s.
    values = [lag.decoded(0.1, 10.0 + 0.1 * k, 10.0 + 0.15 * (k + 1)) for k in range(40)]
    assert values[0] == pytest.approx(0.05) and values[-1] == pytest.approx(2.0)
    lag.caught_up()  # the queue ran dry: the clock restarts at the next chunk's arrival
    assert lag.decoded(0.1, 30.0, 30.02) == pytest.approx(-0.08)


def test_message_rate_counts_the_last_minute() -> None:
    rate = MessageRate(3)
    assert [rate.allows(t) for t in (0.0, 1.0, 2.0, 3.0, 59.9)] == [True] * 3 + [False] * 2
    assert rate.allows(60.0)  # the message at 0.0 has left the window
    assert not rate.allows(60.5)
    assert all(MessageRate(None).allows(float(t)) for t in range(1000))


class RecordingRecognizer:
    """Keeps every call's audio; each call takes 50 ms, so audio queues up behind it."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def accept(self, pcm: bytes) -> list[Utterance]:
        time.sleep(0.05)
        self.calls.append(pcm)
        return []

    def flush(self) -> Utterance | None:
        return None

    def close(self) -> None:
        pass


async def test_audio_queued_behind_recognition_is_decoded_in_batches_in_order(
    start_server: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    batches: list[int] = []
    original = session_module.accept_each

    def accept_each(recognizer: Recognizer, parts: list[bytes], *turn: Any
                    ) -> list[Utterance]:
        batches.append(len(parts))
        return original(recognizer, parts, *turn)

    monkeypatch.setattr(session_module, "accept_each", accept_each)
    recorder = RecordingRecognizer()
    server = await start_server(recognizer_factory=lambda rate, phrases: recorder)
    audio = (np.arange(3 * RATE) % 30000).astype("<i2").tobytes()  # 3 s, every sample known
    outcome = await run_session(server, [*chunks(audio), END])
    assert_ended_normally(outcome)
    # Nothing lost or reordered, and cut where the client cut it (Vosk's results
    # depend on the cuts).
    assert recorder.calls == chunks(audio)
    assert max(batches) > 1  # queued chunks went to the worker thread together
    assert max(batches) <= 10  # at most one second of 100 ms chunks per hop
    assert sum(batches) == len(chunks(audio))


def test_accept_each_keeps_the_finals_and_the_last_partial() -> None:
    def u(text: str, final: bool) -> Utterance:
        return Utterance(is_final=final, text=text, start_ms=0, end_ms=0)

    class Scripted:
        def __init__(self, steps: list[list[Utterance]]) -> None:
            self.steps = iter(steps)

        def accept(self, pcm: bytes) -> list[Utterance]:
            return next(self.steps)

        def flush(self) -> Utterance | None:
            return None

        def close(self) -> None:
            pass

    steps = [[u("a", False)], [u("a b", True), u("c", False)], [u("c d", False)], []]
    got = session_module.accept_each(Scripted(steps), [b"x"] * 4)
    assert [(x.text, x.is_final) for x in got] == [("a b", True)]
    got = session_module.accept_each(Scripted(steps[:3]), [b"x"] * 3)
    assert [(x.text, x.is_final) for x in got] == [("a b", True), ("c d", False)]
    assert session_module.accept_each(Scripted([[u("a", False)]]), [b"x"]) == [u("a", False)]
