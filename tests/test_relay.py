"""Store and forward between two real servers on 127.0.0.1, each with its own SQLite
journal: A (a room device) relays to B (the clinic server's ingest endpoint)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from edge.journal.db import Journal
from edge.journal.service import JournalService
from edge.relay.sender import Relay, RelaySettings
from helpers import FIXTURES, connect, free_port, make_token, receive_json, stream

SPEECH = (FIXTURES / "speech_ko.wav").read_bytes()


class Node:
    """A journal on disk and the service around it, for one daemon of the pair."""

    def __init__(self, path: Path, device_id: str, *, keep_unrelayed: bool) -> None:
        self.path = path
        self.journal = Journal.open(path, device_id=device_id)
        self.service = JournalService(self.journal, retention_days=30, purge_interval=3600,
                                      keep_unrelayed=keep_unrelayed)

    def events(self, device_id: str) -> list[tuple[str, int, str]]:
        """(session, seq, kind) of a device's events in this journal, in arrival order."""
        with Journal.open(self.path, device_id="reader", readonly=True) as reader:
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
    server_b = await start_server(journal=b.service)
    server_a = await start_server(journal=a.service)
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
    server_a = await start_server(journal=a.service)
    relay = relay_to(port_b, a)
    await nursery.start(relay.run)
    server_a.relay = relay

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

    await start_server(journal=b.service, server={"port": port_b})
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
    server_a = await start_server(journal=a.service)
    relay = relay_to(port_b, a, max_backlog_bytes=1500)
    await nursery.start(relay.run)
    server_a.relay = relay

    first, received = await run_session(server_a, grammar_of(phrases))
    second, _ = await run_session(server_a, grammar_of(phrases))
    with trio.fail_after(10):
        while not relay.shed_events:
            await trio.sleep(0.05)
    assert any("will not be relayed" in r.getMessage() for r in caplog.records)
    assert a.journal.finals(first) == received  # nothing lost locally
    assert server_a.health()[1]["relay"]["shed_events"] == relay.shed_events
    assert "edge_relay_shed_events_total" in server_a.metrics()

    await start_server(journal=b.service, server={"port": port_b})
    await drained(a, relay)
    relayed = b.events("room-a")
    assert relayed and relayed == [e for e in a.events("room-a") if e in relayed]
    assert relayed[-1] == (second, relayed[-1][1], "end")  # the newest made it
    assert len(relayed) + relay.shed_events == len(a.events("room-a"))
    assert any("could not keep queued" in r.getMessage() for r in caplog.records)


async def test_ingest_refuses_bad_batches_and_foreign_devices(
    start_server: Any, pair: tuple[Node, Node],
) -> None:
    _, b = pair
    server_b = await start_server(journal=b.service)
    url = f"ws://127.0.0.1:{server_b.port}/ws/relay"

    try:
        async with open_websocket_url(url, extra_headers=[
                (b"authorization", f"Bearer {make_token(sub='room-a')}".encode())]):
            raise AssertionError("a token without relay:write was accepted")
    except ConnectionRejected as exc:
        assert exc.status_code == 403

    token = make_token(sub="room-a", scope="relay:write")
    event = {"id": 1, "device_id": "room-b", "session_id": "s", "seq": 0, "kind": "start",
             "created_at": 1.0, "payload": {"source": "client", "sub": None,
                                            "organization": None, "department": None,
                                            "model": None, "started_at": 1.0}}
    for batch, code in [("garbage", "bad_batch"),
                        (json.dumps({"type": "relay_batch", "batch": 1, "events": [event]}),
                         "bad_batch")]:
        async with open_websocket_url(url, extra_headers=[
                (b"authorization", f"Bearer {token}".encode())]) as ws:
            assert json.loads(await ws.get_message())["type"] == "relay_init"
            await ws.send_message(batch)
            reply = json.loads(await ws.get_message())
            assert reply["type"] == "error" and reply["code"] == code
    assert b.events("room-b") == []


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
    server_b = await start_server(journal=b.service, server={"max_frame_bytes": 24576})
    relay = relay_to(server_b.port, a, batch_bytes=131072)
    await nursery.start(relay.run)
    await drained(a, relay)
    assert b.events("room-a") == a.events("room-a")
    assert any("too big" in r.getMessage() for r in caplog.records)
