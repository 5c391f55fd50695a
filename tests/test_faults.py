"""Background services that fail never stop the listener or a client session.

Each test injects a fault into one supervised service of a real daemon (built by
``edge.app.run``, real model, real sockets, real SQLite) while a client session runs,
and checks that the session finishes normally and that ``/healthz`` shows the service.
The room's own fault test, over a real ALSA device, is in test_room_alsa.py.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import WebSocketRequest, serve_websocket

from edge.net.server import Server
from helpers import FIXTURES, connect, http_get, make_token, receive_json, stream

SPEECH = (FIXTURES / "speech_ko.wav").read_bytes()
BAD_REPLIES = ["[]", "42", "not json", '{"type": "relay_ack", "batch": "1", "up_to": true}',
               '{"type": "relay_init", "server": 7}', '"relay_init"', "9" * 5000]


async def session_ends_normally(server: Server, phrases: dict[str, Any]) -> None:
    async with connect(server, make_token()) as ws:
        assert (await receive_json(ws))["type"] == "session_init"
        await ws.send_message(json.dumps({"type": "config", "phrases": phrases["grammar"]}))
        await stream(ws, SPEECH)
        await ws.send_message(json.dumps({"type": "end"}))
        finals = []
        with trio.fail_after(60):
            while (message := await receive_json(ws))["type"] != "session_end":
                if message["type"] == "transcription" and message["is_final"]:
                    finals.append(message["text"])
        assert message["reason"] == "end"
        assert finals == phrases["utterances"]


async def health(server: Server) -> dict[str, Any]:
    assert server.port is not None
    status, _, body = await http_get(server.port, "/healthz")
    assert status == 200, body
    data: dict[str, Any] = json.loads(body)
    return data


async def wait_for(predicate: Callable[[], bool], timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


@pytest.fixture
async def bad_upstream(nursery: trio.Nursery) -> AsyncIterator[tuple[int, list[str]]]:
    """A WebSocket upstream that answers each connection with the next bad reply (after
    a proper relay_init for the replies that come later), then closes."""
    served: list[str] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        reply = BAD_REPLIES[len(served) % len(BAD_REPLIES)]
        served.append(reply)
        if reply.startswith('{"type": "relay_ack"'):
            await ws.send_message('{"type": "relay_init", "server": "up", "version": "1"}')
            await ws.get_message()  # the device's batch
        await ws.send_message(reply)
        await ws.aclose()

    server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
    yield server.port, served


async def test_an_upstream_answering_nonsense_never_stops_the_daemon(
    start_server: Any, bad_upstream: tuple[int, list[str]], phrases: dict[str, Any]
) -> None:
    port, served = bad_upstream
    server = await start_server(relay={
        "enabled": True, "url": f"ws://127.0.0.1:{port}/ws/relay", "token": "t" * 40,
        "device_id": "room-a", "backoff_max": 0.2, "ack_timeout": 5.0})
    assert server.services.relay is not None
    # The session journals finals, so the relay has batches to send to the bad upstream.
    await session_ends_normally(server, phrases)
    await wait_for(lambda: len(served) >= len(BAD_REPLIES) + 1)
    await session_ends_normally(server, phrases)
    body = await health(server)
    assert body["services"]["relay"]["state"] == "running"
    assert body["relay"]["failures"] >= len(BAD_REPLIES)
    assert body["relay"]["last_error"]
    assert (await server.journal.backlog()).events > 0  # nothing was marked sent


async def test_an_unreadable_revocation_file_that_becomes_readable(
    start_server: Any, tmp_path: Path, phrases: dict[str, Any]
) -> None:
    path = tmp_path / "revoked.txt"
    path.mkdir()  # a directory where the file should be: every read fails
    server = await start_server(revocation_file=path)
    revoked = make_token(sub="revoked-user")
    await session_ends_normally(server, phrases)
    body = await health(server)
    assert body["services"]["revocations"]["state"] == "running"
    async with connect(server, revoked) as ws:
        assert (await receive_json(ws))["type"] == "session_init"
        path.rmdir()
        path.write_text("sub:revoked-user\n")
        with trio.fail_after(30):
            while (message := await receive_json(ws))["type"] != "error":
                pass
        assert message["code"] == "token_revoked"


async def test_a_purge_that_hits_a_sqlite_error_is_restarted(
    start_server: Any, phrases: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(journal={"purge_interval": 0.2})
    assert server.journal is not None and server.services.supervisor is not None
    journal = server.journal.journal
    purge = journal.purge
    failures: list[int] = []

    def failing_purge(*args: Any, **kwargs: Any) -> Any:
        if len(failures) < 2:
            failures.append(1)
            raise sqlite3.DatabaseError("database disk image is malformed")
        return purge(*args, **kwargs)

    journal.purge = failing_purge
    retention = server.services.supervisor.services["retention"]
    await wait_for(lambda: retention.restarts >= 1)
    body = await health(server)
    assert body["services"]["retention"]["restarts"] >= 1
    assert "DatabaseError" in body["services"]["retention"]["last_error"]
    await session_ends_normally(server, phrases)
    # the second failure counted (not only raised) and the service running again
    await wait_for(lambda: retention.restarts >= 2 and retention.state == "running", 60)
    assert len(failures) == 2
    assert sum("service retention failed" in r.getMessage() for r in caplog.records) == 2
