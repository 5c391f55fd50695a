"""The audit trail relayed upstream over /ws/relay: two real servers on 127.0.0.1, each
with its own encrypted journal; A (a room device) relays to B, which stores and checks
A's trail."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import test_relay
import trio
from test_relay import Node, relay_to

from edge.core.audit import Access
from edge.journal.audit import Filter
from edge.journal.auditor import Auditor
from edge.journal.db import connect as connect_journal
from edge.protocols.audit import GENESIS, AuditBatch, AuditRecord
from edge.protocols.relay import (
    RelayInit,
    RelayProtocolError,
    encode,
    parse_downstream_any,
    parse_upstream,
)
from helpers import TEST_KEY

pair = test_relay.pair  # the fixture: a relaying device and its upstream


async def relayed(a: Node, up_to: int, timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        while a.journal.audit_relayed_seq() < up_to:
            await trio.sleep(0.05)


async def test_a_relays_its_trail_and_b_verifies_it(
        nursery: trio.Nursery, start_server: Any, pair: tuple[Node, Node]) -> None:
    a, b = pair
    auditor = Auditor(a.service, retention_days=2190, purge_interval=3600,
                      keep_unrelayed=True)
    await nursery.start(auditor.run)
    for i in range(250):
        auditor(Access("transcript.read", sub="dr-lee", object=f"s-{i}", peer="10.1.1.1:9"))
    server_b = await start_server(journal_service=b.service)
    relay = relay_to(server_b.port, a, batch_events=100)
    await nursery.start(relay.run)
    await relayed(a, 250)
    mine = a.journal.audit_records()
    theirs = b.journal.audit_records(Filter(device_id="room-a"))
    assert theirs == mine and len(mine) == 250
    assert b.journal.audit_verify("room-a") == (250, None)
    # B's own trail is apart: it holds the relay's connection to it, none of A's records
    assert {r.action for r in b.journal.audit_records()} <= {"relay.ingest"}
    assert relay.sent_audit == 250
    # More later, on the same link.
    auditor(Access("relay.requeue", sub="unix:root", peer="cli"))
    await relayed(a, 251)
    assert b.journal.audit_verify("room-a") == (251, None)
    with trio.fail_after(10):
        while auditor.status()["relayed_seq"] < 251:
            await trio.sleep(0.1)


async def test_a_broken_chain_is_stored_flagged_and_logged(
        nursery: trio.Nursery, start_server: Any, pair: tuple[Node, Node],
        caplog: pytest.LogCaptureFixture) -> None:
    a, b = pair
    a.journal.audit_append([(Access("session.start", sub=f"dr-{i}", object=f"s-{i}"),
                             1000.0 + i) for i in range(5)])
    conn = connect_journal(a.path, TEST_KEY)
    conn.execute("DROP TRIGGER audit_append_only")
    conn.execute("UPDATE audit SET sub = 'someone-else' WHERE seq = 3")
    conn.close()
    server_b = await start_server(journal_service=b.service)
    with caplog.at_level(logging.WARNING, "edge.relay.ingest"):
        await nursery.start(relay_to(server_b.port, a).run)
        await relayed(a, 5)
    assert len(b.journal.audit_records(Filter(device_id="room-a"))) == 5
    assert b.journal.audit_verify("room-a") == (
        5, "record 3: its hash does not match its content")
    assert "the audit trail is broken: record 3" in caplog.text
    assert "someone-else" not in caplog.text


async def test_an_upstream_without_audit_gets_events_only(nursery: trio.Nursery,
                                                          pair: tuple[Node, Node]) -> None:
    """An older upstream (no ``"audit": true``) is never sent a relay_audit message,
    which it would refuse as a bad batch."""
    from trio_websocket import WebSocketRequest, serve_websocket

    a, _ = pair
    a.journal.audit_append([(Access("key.rotate", peer="cli"), 1000.0)])
    frames: list[str] = []

    async def old_upstream(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message(encode(RelayInit("edge", "0.0.9", "room-a", 1000)))
        while True:
            frames.append(str(await ws.get_message()))

    server = await nursery.start(serve_websocket, old_upstream, "127.0.0.1", 0, None)
    relay = relay_to(server.port, a)
    await nursery.start(relay.run)
    with trio.fail_after(10):
        while relay.state != "idle":
            await trio.sleep(0.05)
    assert frames == [] and a.journal.audit_relayed_seq() == 0


def test_relay_audit_frames() -> None:
    record = AuditRecord(seq=1, time=1.0, action="session.start", outcome="ok",
                         prev=GENESIS, hash="0" * 64)
    frame = encode(AuditBatch(7, "room-a", (record,)))
    parsed = parse_downstream_any(frame)
    assert isinstance(parsed, AuditBatch) and parsed.records == (record,) and \
        parsed.up_to == 1
    assert parse_upstream(encode(RelayInit("edge", "1", audit=True))) == RelayInit(
        "edge", "1", audit=True)
    older = parse_upstream('{"type":"relay_init","server":"x","version":"1"}')
    assert isinstance(older, RelayInit) and older.audit is False
    good = json.loads(frame)
    for bad in ({**good, "records": []}, {**good, "batch": 0},
                {**good, "records": [record.to_wire(), record.to_wire()]},
                {**good, "records": [{**record.to_wire(), "peer": 5}]},
                {**good, "device_id": ""}):
        with pytest.raises(RelayProtocolError) as caught:
            parse_downstream_any(json.dumps(bad))
        assert caught.value.code == "bad_batch" and caught.value.close_code == 1008
