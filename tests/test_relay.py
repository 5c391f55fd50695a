"""Store and forward between two real servers on 127.0.0.1, each with its own SQLite
journal: A (a room device) relays to B (the clinic server's ingest endpoint)."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)

from edge.journal.db import Journal
from edge.journal.service import JournalService
from edge.relay.sender import Relay, RelaySettings
from helpers import FIXTURES, TEST_KEY, connect, free_port, make_token, receive_json, stream

SPEECH = (FIXTURES / "speech_ko.wav").read_bytes()


class Node:
    """A journal on disk and the service around it, for one daemon of the pair."""

    def __init__(self, path: Path, device_id: str, *, keep_unrelayed: bool) -> None:
        self.path = path
        self.journal = Journal.open(path, key=TEST_KEY, device_id=device_id)
        self.service = JournalService(self.journal, retention_days=30, purge_interval=3600,
                                      keep_unrelayed=keep_unrelayed)

    def events(self, device_id: str) -> list[tuple[str, int, str]]:
        """(session, seq, kind) of a device's events in this journal, in arrival order."""
        with Journal.open(self.path, key=TEST_KEY, device_id="reader", readonly=True) as reader:
            db = reader._conn
            assert db is not None
            rows = db.execute("SELECT session_id, seq, kind FROM events WHERE device_id = ?"
                              " ORDER BY id", (device_id,)).fetchall()
        return [(s, q, k) for s, q, k in rows]


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    a = Node(tmp_path / "a" / "journal.db", "room-a", keep_unrelayed=True)
    b = Node(tmp_path / "b" / "journal.db", "clinic", keep_unrelayed=False)
    yield a, b
    a.journal.close()
    b.journal.close()


def relay_to(port: int, a: Node, **settings: Any) -> Relay:
    token = make_token(sub="room-a", scope="relay:write", ttl=3600)
    values = {"backoff_base": 0.05, "backoff_max": 0.3, "ack_timeout": 5.0, **settings}
    return Relay(RelaySettings(url=f"ws://127.0.0.1:{port}/ws/relay", token=token,
                               **values), a.service)


async def run_session(server: Any, grammar: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """One client session on ``server``; returns its id and the finals it received."""
    async with connect(server, make_token()) as ws:
        session_id = (await receive_json(ws))["session_id"]
        await ws.send_message(json.dumps({"type": "config", "phrases": grammar}))
        await stream(ws, SPEECH)
        await ws.send_message(json.dumps({"type": "end"}))
        received = []
        while (message := await receive_json(ws))["type"] != "session_end":
            if message["type"] == "transcription" and message["is_final"]:
                received.append(message)
    return session_id, received


async def drained(a: Node, relay: Relay, timeout: float = 30) -> None:
    """Every session on A has ended (its end is journaled just after the client is
    told), and everything A journaled has been acknowledged upstream."""
    with trio.fail_after(timeout):
        while any(row.ended_at is None for row in a.journal.sessions()):
            await trio.sleep(0.05)
        while (await a.service.backlog()).events or relay.state not in ("idle",):
            await trio.sleep(0.05)


def grammar_of(phrases: dict[str, Any]) -> list[str]:
    return [p for p in phrases["grammar"] if p != "[unk]"]


async def test_a_relays_to_b_in_order_once(
    nursery: trio.Nursery, start_server: Any, pair: tuple[Node, Node],
    phrases: dict[str, Any],
) -> None:
    a, b = pair
    server_b = await start_server(journal_service=b.service)
    server_a = await start_server(journal_service=a.service)
    relay = relay_to(server_b.port, a)
    await nursery.start(relay.run)

    sessions = [await run_session(server_a, grammar_of(phrases)) for _ in range(2)]
    await drained(a, relay)

    in_a = a.events("room-a")
    assert b.events("room-a") == in_a  # same events, same order, each once
    for session_id, received in sessions:
        assert next(e for e in in_a if e[0] == session_id)[2] == "start"
        assert b.journal.finals(session_id, "room-a") == received
        row = b.journal.session(session_id, "room-a")
        assert row is not None and row.source == "relay" and row.end_reason == "end"
    assert relay.sent_events == len(in_a) and not relay.circuit_open


async def test_b_down_a_keeps_serving_then_drains_in_order(
    nursery: trio.Nursery, start_server: Any, pair: tuple[Node, Node],
    phrases: dict[str, Any],
) -> None:
    a, b = pair
    port_b = free_port()
    server_a = await start_server(journal_service=a.service)
    relay = relay_to(port_b, a)
    await nursery.start(relay.run)
    server_a.services = dataclasses.replace(server_a.services, relay=relay)

    _, received = await run_session(server_a, grammar_of(phrases))
    assert [m["text"] for m in received] == phrases["utterances"]  # A unaffected
    with trio.fail_after(10):
        while not relay.circuit_open or any(row.ended_at is None
                                            for row in a.journal.sessions()):
            await trio.sleep(0.05)
    backlog = await a.service.backlog()
    assert backlog.events == len(received) + 2  # start, finals, end
    status, body = server_a.health()
    assert status == 200 and body["relay"]["circuit_open"] and body["notes"]

    await start_server(journal_service=b.service, server={"port": port_b})
    await drained(a, relay)
    assert b.events("room-a") == a.events("room-a")
    assert not relay.circuit_open


async def test_a_full_outbox_sheds_visibly_and_keeps_everything_locally(
    nursery: trio.Nursery, start_server: Any, pair: tuple[Node, Node],
    phrases: dict[str, Any], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    a, b = pair
    port_b = free_port()
    server_a = await start_server(journal_service=a.service)
    relay = relay_to(port_b, a, max_backlog_bytes=1500)
    await nursery.start(relay.run)
    server_a.services = dataclasses.replace(server_a.services, relay=relay)

    first, received = await run_session(server_a, grammar_of(phrases))
    second, _ = await run_session(server_a, grammar_of(phrases))
    with trio.fail_after(10):
        while not relay.shed_events:
            await trio.sleep(0.05)
    assert any("will not be relayed" in r.getMessage() for r in caplog.records)
    assert a.journal.finals(first) == received  # nothing lost locally
    assert server_a.health()[1]["relay"]["shed_events"] == relay.shed_events
    assert "edge_relay_shed_events_total" in server_a.metrics()

    await start_server(journal_service=b.service, server={"port": port_b})
    await drained(a, relay)
    relayed = b.events("room-a")
    assert relayed and relayed == [e for e in a.events("room-a") if e in relayed]
    assert relayed[-1] == (second, relayed[-1][1], "end")  # the newest made it
    assert len(relayed) + relay.shed_events == len(a.events("room-a"))
    assert any("could not keep queued" in r.getMessage() for r in caplog.records)


EVENT: dict[str, Any] = {
    "id": 1, "device_id": "room-a", "session_id": "s", "seq": 0, "kind": "start",
    "created_at": 1.0, "payload": {"source": "client", "sub": None, "organization": None,
                                   "department": None, "model": None, "started_at": 1.0}}


def batch_of(*events: dict[str, Any], **fields: Any) -> str:
    return json.dumps({"type": "relay_batch", "batch": 1, "device_id": "room-a",
                       "events": list(events), **fields})


async def test_ingest_refuses_bad_batches_and_foreign_devices(
    start_server: Any, pair: tuple[Node, Node],
) -> None:
    _, b = pair
    server_b = await start_server(journal_service=b.service, server={"max_frame_bytes": 65536})
    url = f"ws://127.0.0.1:{server_b.port}/ws/relay"

    try:
        async with open_websocket_url(url, extra_headers=[
                (b"authorization", f"Bearer {make_token(sub='room-a')}".encode())]):
            raise AssertionError("a token without relay:write was accepted")
    except ConnectionRejected as exc:
        assert exc.status_code == 403

    cases: list[tuple[str | bytes, str, int]] = [
        ("garbage", "bad_batch", 1008),
        ("[]", "bad_batch", 1008),
        ("42", "bad_batch", 1008),
        (b"\x00\x01", "bad_batch", 1003),
        ('{"type": "relay_batch", "batch": ' + "9" * 5000 + "}", "bad_batch", 1008),
        (batch_of(EVENT, batch="1"), "bad_batch", 1008),
        (batch_of(EVENT, batch=True), "bad_batch", 1008),
        (batch_of({**EVENT, "seq": True}), "bad_batch", 1008),
        (batch_of({**EVENT, "session_id": "s" * 20000}), "bad_batch", 1008),
        (batch_of({**EVENT, "device_id": "room-b"}), "bad_batch", 1008),  # not its own
        (batch_of(EVENT, device_id="room-b"), "bad_batch", 1008),
        (json.dumps({"type": "relay_batch", "batch": 1, "events": [EVENT]}), "bad_batch",
         1008),
        (batch_of(EVENT, EVENT), "bad_batch", 1008),  # not in id order
        ("x" * 70000, "", 1009),  # over server.max_frame_bytes: closed by the socket layer
    ]
    token = make_token(sub="room-a", scope="relay:write")
    for frame, code, close_code in cases:
        async with open_websocket_url(url, extra_headers=[
                (b"authorization", f"Bearer {token}".encode())]) as ws:
            assert json.loads(await ws.get_message())["type"] == "relay_init"
            await ws.send_message(frame)
            if code:
                reply = json.loads(await ws.get_message())
                assert reply["type"] == "error" and reply["code"] == code, (frame, reply)
            with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason is not None
            assert closed.value.reason.code == close_code, frame[:80]
    assert b.events("room-a") == b.events("room-b") == []


async def test_ingest_refuses_a_device_using_the_servers_own_id(
    start_server: Any, pair: tuple[Node, Node],
) -> None:
    _, b = pair
    server_b = await start_server(journal_service=b.service)
    token = make_token(sub="clinic", scope="relay:write")
    async with open_websocket_url(f"ws://127.0.0.1:{server_b.port}/ws/relay", extra_headers=[
            (b"authorization", f"Bearer {token}".encode())]) as ws:
        await ws.get_message()
        await ws.send_message(batch_of({**EVENT, "device_id": "clinic"}, device_id="clinic"))
        reply = json.loads(await ws.get_message())
        assert (reply["type"], reply["code"]) == ("error", "bad_batch")
    assert b.events("clinic") == []


async def test_a_batch_too_big_for_the_upstream_is_split(
    nursery: trio.Nursery, start_server: Any, pair: tuple[Node, Node],
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = pair
    a.journal.start_session("long", source="client", sub="dr-lee", started_at=1.0)
    for seq in range(1, 61):
        a.journal.append_final("long", {
            "type": "transcription", "session_id": "long", "seq": seq, "is_final": True,
            "text": "머리가 아픕니다 " * 20, "start_ms": seq * 1000, "end_ms": seq * 1000 + 900,
            "words": [], "speaker": None})
    a.journal.end_session("long", reason="end", ended_at=2.0)
    server_b = await start_server(journal_service=b.service, server={"max_frame_bytes": 24576})
    relay = relay_to(server_b.port, a, batch_bytes=131072)
    await nursery.start(relay.run)
    await drained(a, relay)
    assert b.events("room-a") == a.events("room-a")
    assert any("too big" in r.getMessage() for r in caplog.records)


# --- a misbehaving upstream -------------------------------------------------------------

Behaviour = Callable[[WebSocketConnection], Awaitable[None]]
INIT = json.dumps({"type": "relay_init", "server": "fake", "version": "0"})


def answers(reply: str | bytes, *, greeting: str | bytes = INIT) -> Behaviour:
    """Greet, read one batch, answer ``reply``, close."""

    async def behave(ws: WebSocketConnection) -> None:
        await ws.send_message(greeting)
        if greeting is INIT:
            await ws.get_message()
            await ws.send_message(reply)

    return behave


async def closes(ws: WebSocketConnection) -> None:
    await ws.send_message(INIT)
    await ws.get_message()
    await ws.aclose(1011, "going down")


async def acks_another_batch(ws: WebSocketConnection) -> None:
    await ws.send_message(INIT)
    batch = json.loads(await ws.get_message())
    await ws.send_message(json.dumps({"type": "relay_ack", "batch": batch["batch"] + 1,
                                      "up_to": batch["events"][-1]["id"], "stored": 1}))


class FakeUpstream:
    """An upstream on 127.0.0.1 that, for each connection, takes the next behaviour
    from :attr:`script` and acts it out."""

    def __init__(self) -> None:
        self.script, self._next = trio.open_memory_channel[Behaviour](0)
        self.port = 0
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                server = await nursery.start(serve_websocket, self._handle, "127.0.0.1", 0,
                                             None)
                self.port = server.port
                task_status.started()
        self._stopped.set()

    async def stop(self) -> None:
        """Stop listening; returns when the port is free."""
        self._scope.cancel()
        await self._stopped.wait()

    async def _handle(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        behave = await self._next.receive()
        await behave(ws)


@pytest.fixture
async def misbehaving_upstream(nursery: trio.Nursery) -> FakeUpstream:
    upstream = FakeUpstream()
    await nursery.start(upstream.run)
    return upstream


async def test_a_misbehaving_upstream_is_a_link_failure_never_a_crash(
    nursery: trio.Nursery, start_server: Any, pair: tuple[Node, Node],
    misbehaving_upstream: FakeUpstream,
) -> None:
    a, b = pair
    upstream = misbehaving_upstream
    port = upstream.port
    a.journal.start_session("s1", source="client", sub="dr-lee", started_at=1.0)
    a.journal.end_session("s1", reason="end", ended_at=2.0)
    relay = relay_to(port, a)
    await nursery.start(relay.run)

    cases: list[tuple[Behaviour, str]] = [
        (answers("[]"), "bad_reply: relay messages are JSON objects, got list"),
        (answers("42"), "JSON objects, got int"),
        (answers("not json"), "not JSON"),
        (answers('{"type":"relay_ack","batch":"1","up_to":true}'), "relay_ack.batch"),
        (answers('{"type":"relay_ack","batch":1,"up_to":' + "9" * 5000 + ',"stored":1}'),
         "not JSON"),
        (answers('{"type":"error","code":"store_failed","message":"disk full"}'),
         "refused batch"),
        (acks_another_batch, "does not match batch"),
        (closes, "closed the connection (1011"),
        (answers("", greeting="[]"), "got list"),
        (answers("", greeting='{"type":"relay_ack","batch":1,"up_to":1,"stored":1}'),
         "expected relay_init"),
        (answers("", greeting=b"\x00binary"), "binary frame"),
    ]
    with trio.fail_after(60):
        for n, (behave, says) in enumerate(cases, start=1):
            await upstream.script.send(behave)
            while relay.failures < n:
                await trio.sleep(0.01)
            status = relay.status()
            assert status["failures"] == n and says in status["last_error"], status
            assert (await a.service.backlog()).events == 2  # nothing marked relayed
    assert relay.circuit_open

    await upstream.stop()  # replaced by a well-behaved upstream on the same port
    await start_server(journal_service=b.service, server={"port": port})
    await drained(a, relay)
    assert b.events("room-a") == a.events("room-a") == [("s1", 0, "start"), ("s1", 1, "end")]
    assert relay.status()["last_error"] is None and not relay.circuit_open
