"""Dead letters: events a consumer refuses, or too large to send, are set aside on the
device (kept in its journal, not sent again, counted) and the outbox moves on; an
operator lists and re-queues them with ``edge relay``. The journal's schema 4 and its
migration from 3. Real SQLite, a real Mosquitto, real paho."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import trio
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from test_mqtt_broker import Broker, needs_mosquitto
from test_mqtt_relay import (  # noqa: F401 (broker, nodes: fixtures)
    TOPIC,
    Node,
    broker,
    drained,
    ingest_of,
    journal_sessions,
    nodes,
    relay_of,
)

from edge.cli import main
from edge.journal.db import PENDING, SCHEMA_VERSION, Journal
from edge.journal.db import connect as connect_journal
from edge.protocols.mqtt_relay import decode_receipt
from helpers import TEST_KEY

TEXT = "머리가 아픕니다"


def ids(journal: Journal, state: int | None = None) -> list[int]:
    db = journal._conn
    assert db is not None
    where = "" if state is None else f" WHERE relayed = {state}"
    return [i for (i,) in db.execute(f"SELECT id FROM events{where} ORDER BY id")]


# --- the journal ----------------------------------------------------------------------

def test_set_aside_leaves_the_outbox_and_requeue_puts_it_back(tmp_path: Path) -> None:
    node = Node(tmp_path / "journal.db", "room-a")
    try:
        journal_sessions(node, 1, 4)  # ids 1..6
        j = node.journal
        assert j.set_aside({2: "invalid", 3: "too_large"}) == 2
        assert j.set_aside({2: "invalid"}) == 0  # no longer pending: left as it is
        assert [e.id for e in j.pending(100, 10**6)] == [1, 4, 5, 6]
        assert j.backlog().events == 4
        j.mark_relayed(6)
        assert ids(j, PENDING) == []
        listed = j.set_aside_events()
        assert [(e.id, e.kind, e.seq, e.reason) for e in listed] == [
            (2, "final", 1, "invalid"), (3, "final", 2, "too_large")]
        assert all(e.session_id == "s0" and e.size > 0 and e.at <= time.time()
                   for e in listed)
        assert j.set_aside_count() == 2
        assert j.requeue([3, 99]) == 1
        assert [e.id for e in j.pending(100, 10**6)] == [3]
        assert j.requeue() == 1 and j.set_aside_count() == 0
        assert [e.id for e in j.pending(100, 10**6)] == [2, 3]
    finally:
        node.journal.close()


def test_retention_purges_set_aside_events_as_it_does_shed_ones(tmp_path: Path) -> None:
    node = Node(tmp_path / "journal.db", "room-a")
    try:
        journal_sessions(node, 2, 1)  # ids 1..3 (s0) and 4..6 (s1), ended long ago
        j = node.journal
        j.set_aside({1: "invalid", 2: "invalid", 3: "invalid", 5: "invalid"})
        assert j.purge(time.time(), keep_unrelayed=True) == 1  # s1 still has pending
        assert [e.id for e in j.set_aside_events()] == [5]
        db = j._conn
        assert db is not None
        assert db.execute("SELECT COUNT(*) FROM set_aside").fetchone() == (1,)
    finally:
        node.journal.close()


def test_schema_4_migrates_a_version_3_file(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    node = Node(path, "room-a")
    journal_sessions(node, 1, 2)
    epoch = node.journal.epoch
    node.journal.mark_relayed(2)
    node.journal.close()
    conn = connect_journal(path, TEST_KEY)
    conn.execute("DROP TABLE set_aside")
    conn.execute("DROP TABLE audit")  # version 5's
    conn.execute("DROP TABLE audit_ingested")
    conn.execute("ALTER TABLE sessions DROP COLUMN language")  # version 6's
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    with Journal.open(path, key=TEST_KEY, device_id="room-a", readonly=True) as old:
        assert old.set_aside_events() == [] and old.set_aside_count() == 0
    with Journal.open(path, key=TEST_KEY, device_id="room-a") as journal:
        db = journal._conn
        assert db is not None
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (6,)
        assert journal.epoch == epoch  # kept: the idempotency keys stay the same
        assert ids(journal, PENDING) == [3, 4]
        assert journal.set_aside({3: "invalid"}) == 1
        assert [e.id for e in journal.set_aside_events()] == [3]
    with Journal.open(path, key=TEST_KEY,
                      device_id="room-a") as again:  # reopening migrates nothing
        assert [e.reason for e in again.set_aside_events()] == ["invalid"]


# --- against a broker -----------------------------------------------------------------

def _config(tmp_path: Path, journal: Path) -> str:
    path = tmp_path / "edge.toml"
    path.write_text(f'[journal]\nenabled = true\npath = "{journal}"\n'
                    '[relay]\ndevice_id = "room-a"\n')
    return str(path)


@needs_mosquitto
async def test_refused_events_are_set_aside_and_the_outbox_moves_on(
    nursery: trio.Nursery, nodes: tuple[Node, Node], broker: Broker,  # noqa: F811
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = nodes
    caplog.set_level(logging.DEBUG)
    journal_sessions(a, 2, 3, text=TEXT)
    relay = relay_of(a, broker.url, batch_events=3)
    async with trio.open_nursery() as refusing:
        ingest = ingest_of(b, broker.url, allow_devices=frozenset({"room-b"}))
        await refusing.start(ingest.run)
        await ingest.subscribed.wait()
        await nursery.start(relay.run)
        await drained(a, relay)
        # More later: not stuck behind what was refused.
        journal_sessions(a, 1, 2, text=TEXT, prefix="late")
        a.service.changed.set()
        await drained(a, relay)
        refusing.cancel_scope.cancel()
    assert b.events() == [] and ingest.refused == 14 and ingest.stored == 0
    assert a.journal.set_aside_count() == 14 and relay.set_aside_events == 14
    status = relay.status()
    assert status["set_aside"] == 14 and status["set_aside_reason"] == "device_not_allowed"
    assert status["set_aside_waiting"] == 14 and relay.failures == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("set aside" in w and "device_not_allowed" in w for w in warnings)
    assert any("refused events" in w and "allow_devices" in w for w in warnings)
    assert not any(TEXT in r.getMessage() for r in caplog.records)

    # The operator looks, then re-queues once the consumer takes the device.
    config = _config(tmp_path, a.path)
    assert main(["relay", "set-aside", "--json", "--config", config]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["id"] for e in listed] == list(range(1, 15))
    assert {e["reason"] for e in listed} == {"device_not_allowed"}
    assert not any(TEXT in json.dumps(e, ensure_ascii=False) for e in listed)
    assert main(["relay", "set-aside", "--config", config]) == 0
    assert "device_not_allowed" in capsys.readouterr().out
    assert main(["relay", "requeue", "--config", config]) == 2  # ids or --all
    capsys.readouterr()
    # The same consumer, restarted with the device allowed (the same session: another
    # one in the share group would take part of the stream).
    taking = ingest_of(b, broker.url, allow_devices=frozenset({"room-a"}))
    await nursery.start(taking.run)
    await taking.subscribed.wait()
    assert main(["relay", "requeue", "--all", "--config", config]) == 0
    assert "re-queued 14 event(s)" in capsys.readouterr().out
    with trio.fail_after(20):
        while len(b.events()) < 14:
            await trio.sleep(0.05)
    await drained(a, relay)
    assert b.events() == a.events() and a.journal.set_aside_count() == 0


@needs_mosquitto
async def test_an_event_over_the_size_cap_on_its_own_is_set_aside_without_sending(
    nursery: trio.Nursery, nodes: tuple[Node, Node], broker: Broker,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = nodes
    journal_sessions(a, 1, 2, prefix="before")
    journal_sessions(a, 1, 1, text="가" * 3000, prefix="big")  # a 9 KB final
    journal_sessions(a, 1, 2, prefix="after")
    big = [i for i, (s, _, k) in zip(ids(a.journal), a.events(), strict=True)
           if s == "big0" and k == "final"]
    ingest = ingest_of(b, broker.url)
    await nursery.start(ingest.run)
    await ingest.subscribed.wait()
    relay = relay_of(a, broker.url, max_message_bytes=4096)
    await nursery.start(relay.run)
    await drained(a, relay)
    assert b.events() == [e for e in a.events() if e != ("big0", 1, "final")]
    assert [(e.id, e.reason) for e in a.journal.set_aside_events()] == [(big[0], "too_large")]
    assert relay.status()["set_aside_reason"] == "too_large" and relay.failures == 0
    assert any("set aside 1 event(s)" in r.getMessage() and "larger than 4096" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)


def _publish_raw(broker: Broker, payload: bytes,  # noqa: F811
                 keys: list[str], wait: float = 5.0) -> dict[str, object]:
    """Publish ``payload`` as a device would, with ``keys`` as idempotency-key user
    properties, and return the receipt the consumer answers (or {} after ``wait``)."""
    got: list[bytes] = []
    subscribed = threading.Event()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"raw-{len(keys)}",
                    protocol=paho.MQTTv5)
    c.on_message = lambda client, userdata, message: got.append(bytes(message.payload))
    c.on_subscribe = lambda client, userdata, mid, codes, props: subscribed.set()
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        c.subscribe("raw/receipts", qos=1)
        assert subscribed.wait(5)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "raw/receipts"
        props.CorrelationData = b"1-2/1"
        if keys:
            props.UserProperty = [("idempotency-key", k) for k in keys]
        c.publish(TOPIC, payload, qos=1, properties=props).wait_for_publish(5)
        deadline = time.monotonic() + wait
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        c.disconnect()
        c.loop_stop()
    return json.loads(got[0]) if got else {}


@needs_mosquitto
async def test_an_unreadable_message_is_refused_by_its_keys_or_dropped_without(
    nursery: trio.Nursery, nodes: tuple[Node, Node], broker: Broker,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, b = nodes
    ingest = ingest_of(b, broker.url)
    await nursery.start(ingest.run)
    await ingest.subscribed.wait()
    epoch = "0a1b2c3d4e5f6071"
    keys = [f"room-a/{epoch}/7", f"room-a/{epoch}/8"]
    receipt = await trio.to_thread.run_sync(_publish_raw, broker, b"{not json", keys)
    assert receipt["refused"] == [{"key": k, "reason": "invalid"} for k in keys]
    parsed = decode_receipt(json.dumps(receipt).encode())
    assert (parsed.first, parsed.last, parsed.gap) == (7, 8, None)
    assert ingest.refused == 2 and ingest.dropped == 0
    assert await trio.to_thread.run_sync(_publish_raw, broker, b"[]", [], 1.0) == {}
    with trio.fail_after(5):
        while ingest.dropped < 1:
            await trio.sleep(0.02)
    assert any("names no event keys" in r.getMessage() for r in caplog.records)
    assert b.events() == [] and ingest.state == "consuming"


@needs_mosquitto
async def test_an_event_over_the_brokers_size_limit_is_set_aside_after_three_drops(
    nursery: trio.Nursery, nodes: tuple[Node, Node], tmp_path: Path,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Under our cap, over Mosquitto's ``message_size_limit``: the broker drops the
    connection (paho: a protocol error) and the event cannot be split; after the third
    time with it alone in the largest message it is set aside and the rest goes on.
    An 11 KB event, over the cap halved to 10 KB but under the broker's limit, still
    goes through (only the configured cap sets aside unsent)."""
    a, b = nodes
    journal_sessions(a, 1, 2, prefix="before")
    journal_sessions(a, 1, 1, text="가" * 6000, prefix="big")  # an 18 KB final
    journal_sessions(a, 1, 1, text="가" * 3600, prefix="mid")  # an 11 KB final
    journal_sessions(a, 1, 2, prefix="after")
    with Broker(tmp_path / "small", extra="message_size_limit 12000\n") as small:
        ingest = ingest_of(b, small.url)
        await nursery.start(ingest.run)
        await ingest.subscribed.wait()
        relay = relay_of(a, small.url, batch_events=3)
        await nursery.start(relay.run)
        await drained(a, relay, timeout=60)
    assert b.events() == [e for e in a.events() if e != ("big0", 1, "final")]
    assert ("mid0", 1, "final") in b.events()
    assert [e.reason for e in a.journal.set_aside_events()] == ["too_large"]
    assert relay.failures == 0 and relay.set_aside_events == 1
    assert any("dropped the connection 3 times" in r.getMessage() for r in caplog.records)
