"""Interoperability: the API documentation's JavaScript ``LiveAPIConnection``, run under
Node with the ``ws`` package (tests/js/live_api_client.js), against the real server."""

from __future__ import annotations

import json
import shutil
import time
import wave
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import StartServer

from edge.core.auth import mint
from helpers import FIXTURES, READ_WRITE, SECRET, make_token, url

JS_DIR = Path(__file__).parent / "js"
SCRIPT = JS_DIR / "live_api_client.js"
WAV = FIXTURES / "speech_ko.wav"
DEADLINE = 60


def wav_ms(path: Path) -> int:
    with wave.open(str(path)) as wav:
        return round(1000 * wav.getnframes() / wav.getframerate())


def node_command() -> list[str]:
    """``node live_api_client.js``; fails (never skips) when Node or ``ws`` is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: install Node.js 18 or later (.ci/setup does)")
    if not (JS_DIR / "node_modules" / "ws" / "package.json").is_file():
        pytest.fail(f"the ws package is not installed: run `npm ci` in {JS_DIR} "
                    "(.ci/setup does)")
    return [node, str(SCRIPT)]


async def run_client(ws_url: str, token: str, *extra: str) -> tuple[int, list[dict[str, Any]],
                                                                      str]:
    """Run the JS client to completion: (exit status, JSON lines from stdout, stderr)."""
    with trio.fail_after(DEADLINE):
        done = await trio.run_process(
            [*node_command(), ws_url, str(WAV), "--token", token, *extra],
            capture_stdout=True, capture_stderr=True, check=False)
    stdout = done.stdout.decode()
    stderr = done.stderr.decode()
    try:
        lines = [json.loads(line) for line in stdout.splitlines()]
    except json.JSONDecodeError:
        pytest.fail(f"the client printed a line that is not JSON:\n{stdout}\n{stderr}")
    return done.returncode, lines, stderr


async def test_streams_a_wav_file_and_gets_documented_messages(
        start_server: StartServer) -> None:
    server = await start_server()
    audio_ms = wav_ms(WAV)
    code, lines, stderr = await run_client(url(server), make_token())

    assert code == 0, stderr
    assert lines[-1] == {"close": 1000}, lines[-3:]
    messages = lines[:-1]
    init, *transcriptions, end = messages
    assert init["type"] == "session_init"
    session_id = init["session_id"]
    assert isinstance(session_id, str) and len(session_id) == 36
    assert "Session ID: " + session_id in stderr  # the class's handleMessage saw it

    assert transcriptions, "no transcription messages"
    seqs = []
    for message in transcriptions:
        assert message["type"] == "transcription", message
        assert message["session_id"] == session_id
        assert isinstance(message["is_final"], bool)
        assert isinstance(message["text"], str)
        assert isinstance(message["start_ms"], int) and isinstance(message["end_ms"], int)
        assert 0 <= message["start_ms"] <= message["end_ms"] <= audio_ms
        assert "speaker" in message
        for word in message["words"]:
            assert set(word) == {"word", "start_ms", "end_ms", "confidence"}, word
            assert word["word"]
            assert message["start_ms"] <= word["start_ms"] <= word["end_ms"] <= message["end_ms"]
            assert 0 <= word["confidence"] <= 1
        seqs.append(message["seq"])
    assert seqs == sorted(set(seqs)) and seqs[0] >= 1, seqs

    finals = [m for m in transcriptions if m["is_final"]]
    assert finals, "no final transcription"
    assert all(m["text"] and m["words"] for m in finals)
    assert [w["word"] for w in finals[0]["words"]] == finals[0]["text"].split()

    assert end["type"] == "session_end"
    assert end["session_id"] == session_id
    assert end["reason"] == "end"
    assert end["finals"] == len(finals)
    assert end["last_seq"] == seqs[-1]
    assert abs(end["audio_ms"] - audio_ms) <= 1  # every chunk arrived, header excluded


async def test_a_bad_token_is_refused_with_http_401(start_server: StartServer) -> None:
    server = await start_server()
    forged = make_token(secret="a-different-secret-that-is-long-enough!!")
    code, lines, stderr = await run_client(url(server), forged, "--fast")

    assert code == 1, stderr
    assert len(lines) == 1, lines
    response = lines[0]["unexpected_response"]
    assert response["status"] == 401
    assert response["headers"]["www-authenticate"].startswith("Bearer ")
    assert response["body"]["type"] == "error"
    assert response["body"]["code"] == "invalid_token"
    assert "Connected to Live API" not in stderr


async def test_errors_in_band_reach_the_documented_close_handler(
        start_server: StartServer) -> None:
    server = await start_server()
    expired = mint(algorithm="HS256", key=SECRET, sub="user-1", scope=READ_WRITE,
                   user_type="doctor", ttl=600, now=time.time() - 3600)
    code, lines, stderr = await run_client(url(server, "?errors=message"), expired, "--fast")

    assert code == 1, stderr
    assert lines == [
        {"type": "error", "code": "token_expired", "message": "token has expired"},
        {"close": 1002},
    ]
    # The documentation's handler branch for 1002 ran.
    assert "Authentication failed - check your JWT token" in stderr
