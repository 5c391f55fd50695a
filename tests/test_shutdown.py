"""A graceful stop: SIGTERM finalises the utterance in progress for every client, journals
it, tells the client ``server_shutdown`` and closes with 1012, then exits 0 within the
grace. Real daemons (a subprocess for the signal), real model, real sockets."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from edge import app
from helpers import FIXTURES, SECRET, connect, http_get, make_token, receive_json
from tools.daemon import Daemon

SPEECH = (FIXTURES / "speech_ko.wav").read_bytes()
PCM = SPEECH[44:]
GRACE = 5.0


def first_phrase_end(pcm: bytes, rate: int = 16000) -> int:
    """Byte offset where the recording's first phrase stops: the first run of 0.5 s of
    quiet (10 ms frames, by energy) after speech has begun."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    frame = rate // 100
    energy = np.sqrt(np.mean(samples[:len(samples) // frame * frame]
                             .reshape(-1, frame) ** 2, axis=1))
    loud = energy > 0.05 * energy.max()
    start = int(np.argmax(loud))
    quiet = 0
    for i in range(start, len(loud)):
        quiet = 0 if loud[i] else quiet + 1
        if quiet == 50:
            return (i - quiet + 1) * frame * 2
    raise AssertionError("no pause after the first phrase")


async def closing_messages(ws: Any, timeout: float = 30) -> tuple[list[dict[str, Any]], int]:
    """Every message up to the close, and the close code."""
    messages = []
    with trio.fail_after(timeout):
        while True:
            try:
                messages.append(json.loads(await ws.get_message()))
            except ConnectionClosed as exc:
                assert exc.reason is not None
                return messages, exc.reason.code


async def test_sigterm_finalises_the_utterance_in_progress(
    tmp_path: Path, phrases: dict[str, Any]
) -> None:
    daemon = Daemon(tmp_path, secret=SECRET,
                    sections={"server": {"shutdown_grace": GRACE}, "log": {"level": "info"}})
    await trio.to_thread.run_sync(daemon.start)
    try:
        token = make_token()
        headers = [(b"authorization", f"Bearer {token}".encode())]
        async with open_websocket_url(daemon.url, extra_headers=headers) as ws:
            init = await receive_json(ws)
            await ws.send_message(json.dumps({"type": "config",
                                              "phrases": phrases["grammar"]}))
            # The first phrase and 0.1 s of its silence: too little for the endpointer,
            # so the utterance is still in progress when the signal comes.
            cut = first_phrase_end(PCM) + 3200
            for i in range(0, cut, 3200):
                await ws.send_message(PCM[i:min(i + 3200, cut)])
            with trio.fail_after(30):
                while True:
                    message = await receive_json(ws)
                    assert not (message["type"] == "transcription" and message["is_final"])
                    if message["type"] == "transcription" and message["text"]:
                        break
            signalled = time.monotonic()
            daemon.signal(signal.SIGTERM)
            messages, code = await closing_messages(ws)
        finals = [m for m in messages if m["type"] == "transcription" and m["is_final"]]
        assert [f["text"] for f in finals] == [phrases["utterances"][0]]
        assert messages[-1]["type"] == "error"
        assert messages[-1]["code"] == "server_shutdown"
        assert code == 1012
        exit_code = await trio.to_thread.run_sync(daemon.wait, GRACE + 5)
        assert exit_code == 0, daemon.log_tail()
        assert time.monotonic() - signalled < GRACE + 2
    finally:
        daemon.stop()

    listing = subprocess.run(
        [sys.executable, "-m", "edge", "transcripts", "list", "--config",
         str(daemon.config_path)], capture_output=True, text=True, timeout=60,
        env=daemon.env)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if init["session_id"][:8] in line)
    assert "shutdown" in row
    shown = subprocess.run(
        [sys.executable, "-m", "edge", "transcripts", "show", init["session_id"],
         "--format", "json", "--config", str(daemon.config_path)],
        capture_output=True, text=True, timeout=60, env=daemon.env)
    assert shown.returncode == 0, shown.stderr
    journaled = json.loads(shown.stdout)
    assert [f["text"] for f in journaled["finals"]] == [phrases["utterances"][0]]
    assert journaled["session"]["end_reason"] == "shutdown"
    assert "Traceback" not in daemon.log_tail(100_000)


async def test_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    # A long grace, and a session with minutes of audio queued to decode before its
    # last final: only the second signal can end the daemon soon.
    daemon = Daemon(tmp_path, secret=SECRET, sections={"server": {"shutdown_grace": 600.0}})
    await trio.to_thread.run_sync(daemon.start)
    try:
        async with open_websocket_url(daemon.url, extra_headers=[
                (b"authorization", f"Bearer {make_token()}".encode())]) as ws:
            await receive_json(ws)
            frame = (PCM * 4)[:1_000_000]  # 31 s of audio in one frame
            with trio.move_on_after(5):
                for _ in range(12):
                    await ws.send_message(frame)
            daemon.signal(signal.SIGTERM)
            with trio.fail_after(30):
                while "stopping on SIGTERM" not in daemon.log_tail():
                    await trio.sleep(0.05)
            assert daemon.proc is not None and daemon.proc.poll() is None
            signalled = time.monotonic()
            daemon.signal(signal.SIGINT)
            exit_code = await trio.to_thread.run_sync(daemon.wait, 20)
        assert exit_code == 0, daemon.log_tail()
        assert time.monotonic() - signalled < 10
        assert "SIGINT again: stopping at once" in daemon.log_tail()
    finally:
        daemon.stop()


async def test_new_handshakes_are_refused_while_stopping(
    nursery: trio.Nursery, start_server: Any
) -> None:
    server = await start_server()
    async with connect(server, make_token()) as ws:
        await receive_json(ws)
        await ws.send_message(PCM[:16000])  # a live session holds the stop open
        async with trio.open_nursery() as stopping:
            stopping.start_soon(app.stop_gracefully, server, server.services.supervisor)
            with trio.fail_after(10):
                while not server.stopping:
                    await trio.sleep(0.01)
            with pytest.raises(ConnectionRejected) as refused:
                async with connect(server, make_token()):
                    pass
            assert refused.value.status_code == 503
            assert dict(refused.value.headers or [])[b"retry-after"] == b"30"
            assert json.loads(refused.value.body or b"{}")["code"] == "server_shutdown"
            async with connect(server, make_token(), "?errors=message") as late:
                messages, code = await closing_messages(late)
            assert [m["code"] for m in messages] == ["server_shutdown"]
            assert code == 1012
            status, _, body = await http_get(server.port, "/healthz")
            assert status == 503
            assert json.loads(body)["status"] == "stopping"
            messages, code = await closing_messages(ws)
        assert messages[-1]["code"] == "server_shutdown"
        assert code == 1012


async def test_room_listeners_get_the_room_s_last_final_then_1012(
    nursery: trio.Nursery, start_server: Any
) -> None:
    from test_room import PlayedSource

    server = await start_server(microphone={"enabled": True}, mic=PlayedSource(period=0.1))
    async with connect(server, make_token(scope="transcription:read"),
                       "?source=room") as ws:
        assert (await receive_json(ws))["type"] == "session_init"
        with trio.fail_after(60):
            while True:  # speech in progress: a partial with words, before its final
                message = await receive_json(ws)
                assert not (message["type"] == "transcription" and message["is_final"])
                if message["type"] == "transcription" and message["text"]:
                    break
        with trio.fail_after(GRACE + 5):
            await app.stop_gracefully(server, server.services.supervisor)
        messages, code = await closing_messages(ws)
    finals = [m for m in messages if m["type"] == "transcription" and m["is_final"]]
    assert len(finals) == 1 and finals[0]["text"], messages
    assert messages[-1]["type"] == "error" and messages[-1]["code"] == "server_shutdown"
    assert code == 1012
    assert server.journal is not None
    rows = await server.journal.call(server.journal.journal.sessions)
    [segment] = [row for row in rows if row.source == "room"]
    assert segment.end_reason == "shutdown" and segment.finals == 1


async def test_sigterm_while_the_pool_warms_up_exits_at_once(tmp_path: Path) -> None:
    # The warm-up decodes at idle priority: a stop must not wait for its slice.
    daemon = Daemon(tmp_path, secret=SECRET, sections={"recognizer": {"warm_at_start": True}})
    await trio.to_thread.run_sync(daemon.start)
    try:
        with trio.fail_after(30):
            while daemon.health().get("recognizers", {}).get("state") != "warming":
                await trio.sleep(0.05)
        signalled = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(daemon.wait, GRACE + 5) == 0
        assert time.monotonic() - signalled < GRACE
    finally:
        daemon.stop()
