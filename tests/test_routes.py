"""The front door's table: every endpoint is a row, rows that read patient data say
what they are audited as, and the one admit-and-run path tells the audit trail of
every session, read and refusal (over real sockets, with the real model)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionRejected

from edge.audio.source import Chunk, MicEvent, MicStatistics
from edge.core.audit import FAILED, OK, REFUSED, Access
from edge.core.auth import SCOPE_READ, SCOPE_WRITE
from edge.net.routes import HttpRoute, Route, Table
from edge.net.server import Server
from helpers import FIXTURES, connect, http_get, make_token, receive_json, stream

SPEECH = (FIXTURES / "speech_ko.wav").read_bytes()

EVERY_ENDPOINT = {
    # path: (kind, reads or writes patient data)
    "/ws/transcribe": (Route, True),  # and ?source=room
    "/ws/relay": (Route, True),
    "/transcripts/": (HttpRoute, True),
    "/api/transcripts": (HttpRoute, True),
    "/healthz": (HttpRoute, False),
    "/metrics": (HttpRoute, False),
    "/": (HttpRoute, False),
    "/mic": (HttpRoute, False),
    "/transcripts": (HttpRoute, False),  # the page; its data comes from the listing
    "/static/": (HttpRoute, False),
    "/v3/ws": (Route, True),  # AssemblyAI
    "/v3/token": (HttpRoute, False),
    "/v2/realtime": (Route, True),  # Scriptix
    "/v2/client/": (Route, False),  # Scriptix stream mode: always refused
    "/v2/client/ ": (HttpRoute, False),  # the same refusal as a plain request
}


class QuietSource:
    """A room microphone that is on and hears nothing."""

    async def run(self, send: trio.MemorySendChannel[Chunk | MicEvent], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with send:
            await trio.sleep_forever()

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def statistics(self) -> MicStatistics:
        return MicStatistics("running", "quiet", 16000, 1, 0, 0, 0, 0)


def test_lookup_by_path_and_prefix() -> None:
    def row(path: str, prefix: bool = False) -> HttpRoute:
        return HttpRoute(path, endpoint=None, prefix=prefix)  # type: ignore[arg-type]

    rt, stream_mode, a, ab, root = (row("/v2/realtime"), row("/v2/client/", True),
                                    row("/a/", True), row("/a/b/", True), row("/"))
    table = Table([rt, stream_mode, a, ab, root])
    assert table.http("/v2/realtime") is rt
    assert table.http("/v2/realtime/x") is None
    assert table.http("/v2/client/TOKEN") is stream_mode
    assert table.http("/v2/client/") is stream_mode
    assert table.http("/v2/client") is None
    assert table.http("/a/b/c") is ab
    assert table.http("/a/c") is a
    assert table.http("/") is root and table.http("/x") is None  # "/" is not a prefix
    assert table.websocket("/v2/realtime") is None  # another kind of row
    with pytest.raises(ValueError, match="/a/"):
        Table([a, row("/a/", True)])


async def test_the_table_names_every_endpoint(start_server: Any) -> None:
    server: Server = await start_server(assemblyai={"enabled": True},
                                        scriptix={"enabled": True})
    rows = {(type(row), row.path): row for row in server.table.rows}
    assert len(rows) == len(server.table.rows)
    assert set(rows) == {(kind, path.strip()) for path, (kind, _) in EVERY_ENDPOINT.items()}
    for path, (kind, patient_data) in EVERY_ENDPOINT.items():
        row = rows[kind, path.strip()]
        assert (row.action is not None) == patient_data, path
        if isinstance(row, HttpRoute) and row.need is not None:
            assert row.action is not None, path  # a token-guarded read is audited
    assert rows[HttpRoute, "/transcripts/"].action == "transcript.read"
    assert rows[HttpRoute, "/api/transcripts"].action == "transcript.list"


async def transcribe(server: Server, token: str) -> tuple[str, list[str]]:
    """A Live API session of the speech fixture to its end: its id and the texts sent."""
    async with connect(server, token) as ws:
        session_id = (await receive_json(ws))["session_id"]
        await stream(ws, SPEECH)
        await ws.send_message(json.dumps({"type": "end"}))
        texts = []
        while (message := await receive_json(ws, 60))["type"] != "session_end":
            texts += [message["text"]] if message.get("text") else []
    return session_id, texts


def no_secrets(accesses: list[Access], *secrets: str) -> None:
    text = repr(accesses)
    for secret in secrets:
        assert secret not in text


async def test_every_access_is_told_once_through_the_one_path(start_server: Any) -> None:
    server: Server = await start_server(microphone={"enabled": True}, mic=QuietSource())
    seen: list[Access] = []
    server.audit = seen.append
    owner = make_token(sub="dr-audit", scope=f"{SCOPE_READ} {SCOPE_WRITE}")

    session_id, _ = await transcribe(server, owner)
    with trio.fail_after(10):
        while not any(a.action == "session.end" for a in seen):
            await trio.sleep(0.02)
    start, end = seen
    assert (start.action, start.outcome, start.object, start.sub) == (
        "session.start", OK, session_id, "dr-audit")
    assert start.detail == {"dialect": "live", "route": "/ws/transcribe", "language": "ko"}
    assert start.peer is not None and start.peer.startswith("127.0.0.1:")
    assert (end.action, end.outcome, end.object) == ("session.end", OK, session_id)
    assert end.detail["audio_seconds"] == round(len(SPEECH) / 32000)

    seen.clear()
    with trio.fail_after(30):
        while (await http_get(server.port, f"/transcripts/{session_id}", owner))[0] != 200:
            await trio.sleep(0.05)
    read = seen[-1]
    assert (read.action, read.outcome, read.object, read.sub) == (
        "transcript.read", OK, session_id, "dr-audit")
    stranger = make_token(sub="someone-else", scope=SCOPE_READ)
    assert (await http_get(server.port, f"/transcripts/{session_id}", stranger))[0] == 404
    probe = seen[-1]
    assert (probe.action, probe.outcome, probe.reason, probe.object, probe.sub) == (
        "transcript.read", REFUSED, "not_found", session_id, "someone-else")
    assert (await http_get(server.port, "/api/transcripts", owner))[0] == 200
    assert (seen[-1].action, seen[-1].outcome, seen[-1].object) == (
        "transcript.list", OK, None)

    seen.clear()
    assert (await http_get(server.port, "/api/transcripts"))[0] == 401
    assert (await http_get(server.port, f"/transcripts/{session_id}",
                           make_token(scope=SCOPE_WRITE)))[0] == 403
    assert [(a.action, a.outcome, a.reason, a.detail["action"]) for a in seen] == [
        ("handshake.refused", REFUSED, "missing_token", "transcript.list"),
        ("handshake.refused", REFUSED, "insufficient_scope", "transcript.read")]
    assert all(a.peer and a.peer.startswith("127.0.0.1:") for a in seen)

    seen.clear()
    async with connect(server, make_token(sub="nurse", scope=SCOPE_READ),
                       "?source=room") as ws:
        assert "room_id" in await receive_json(ws)
        listen = seen[-1]
    assert (listen.action, listen.outcome, listen.sub) == ("room.listen", OK, "nurse")
    assert listen.object is not None

    seen.clear()
    with pytest.raises(ConnectionRejected):
        async with connect(server, make_token(scope=SCOPE_READ)):
            pass  # a session needs the write scope
    with pytest.raises(ConnectionRejected):
        async with connect(server, "not-a-token"):
            pass
    assert [(a.action, a.outcome, a.reason) for a in seen] == [
        ("handshake.refused", REFUSED, "insufficient_scope"),
        ("handshake.refused", REFUSED, "invalid_token")]
    no_secrets(seen, "not-a-token")


async def test_no_token_or_text_reaches_the_audit_trail(start_server: Any) -> None:
    server: Server = await start_server()
    seen: list[Access] = []
    server.audit = seen.append
    owner = make_token(sub="dr-audit", scope=f"{SCOPE_READ} {SCOPE_WRITE}")
    session_id, texts = await transcribe(server, owner)
    with trio.fail_after(30):
        while (await http_get(server.port, f"/transcripts/{session_id}?format=text",
                              owner))[0] != 200:
            await trio.sleep(0.05)
    assert texts and {a.action for a in seen} >= {"session.start", "session.end",
                                                  "transcript.read"}
    assert FAILED not in {a.outcome for a in seen}
    no_secrets(seen, owner, *texts)


async def test_the_daemons_accesses_land_in_its_audit_trail(start_server: Any,
                                                             tmp_path: Any) -> None:
    """As built by edge serve, the server's sink is the journal's Auditor: a session, a
    listing and a refusal end up as records in the encrypted journal, chained."""
    server: Server = await start_server()
    auditor = server.services.auditor
    assert auditor is not None and server.audit is auditor
    owner = make_token(sub="dr-trail", scope=f"{SCOPE_READ} {SCOPE_WRITE}")
    session_id, _ = await transcribe(server, owner)
    assert (await http_get(server.port, "/api/transcripts", owner))[0] == 200
    with trio.fail_after(30):
        while auditor.records < 3:
            await trio.sleep(0.05)
    from edge.journal.db import Journal
    from helpers import TEST_KEY

    with Journal.open(tmp_path / "state" / "journal.db", key=TEST_KEY, device_id="reader",
                      readonly=True) as journal:
        records = journal.audit_records()
        assert journal.audit_verify() == (len(records), None)
    # (the session's end may be told after the listing: it is told once the
    # connection has closed)
    assert {(r.action, r.sub, r.object) for r in records} == {
        ("session.start", "dr-trail", session_id), ("session.end", "dr-trail", session_id),
        ("transcript.list", "dr-trail", None)}
