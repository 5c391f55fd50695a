"""The MQTT relay and its ingest against a real Mosquitto (one per test, on a free port,
persisting into the test's directory), in this process: real paho, real SQLite."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from test_mqtt_broker import Broker, needs_mosquitto

from edge.journal.db import Journal
from edge.journal.service import JournalService
from edge.relay.mqtt import MqttClientSettings, MqttRelay, MqttRelaySettings
from edge.relay.mqtt_ingest import MqttIngest
from helpers import TEST_KEY

pytestmark = needs_mosquitto

TOPIC = "edge/v1/test/room-a/events"
RECEIPTS = "edge/v1/test/room-a/receipts"
SHARED = "$share/edge/edge/v1/+/+/events"


class Node:
    def __init__(self, path: Path, device_id: str) -> None:
        self.path = path
        self.journal = Journal.open(path, key=TEST_KEY, device_id=device_id)
        self.service = JournalService(self.journal, retention_days=30, purge_interval=3600,
                                      keep_unrelayed=True)

    def events(self, device_id: str = "room-a") -> list[tuple[str, int, str]]:
        db = self.journal._conn
        assert db is not None
        rows = db.execute("SELECT session_id, seq, kind FROM events WHERE device_id = ?"
                          " ORDER BY id", (device_id,)).fetchall()
        return [(s, q, k) for s, q, k in rows]


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    a = Node(tmp_path / "a" / "journal.db", "room-a")
    b = Node(tmp_path / "b" / "journal.db", "clinic")
    yield a, b
    a.journal.close()
    b.journal.close()


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    with Broker(tmp_path / "broker") as running:
        yield running


def journal_sessions(node: Node, sessions: int = 3, finals: int = 5, *, text: str = "안녕",
                     prefix: str = "s") -> None:
    for n in range(sessions):
        sid = f"{prefix}{n}"
        node.journal.start_session(sid, source="client", sub="dr-lee", started_at=1.0)
        for seq in range(1, finals + 1):
            node.journal.append_final(sid, {
                "type": "transcription", "session_id": sid, "seq": seq, "is_final": True,
                "text": text, "start_ms": seq * 1000, "end_ms": seq * 1000 + 900,
                "words": [], "speaker": None})
        node.journal.end_session(sid, reason="end", ended_at=2.0)


def client(url: str, client_id: str, **kw: Any) -> MqttClientSettings:
    return MqttClientSettings(url=url, client_id=client_id, connect_timeout=5.0, **kw)


def relay_of(a: Node, url: str, **kw: Any) -> MqttRelay:
    client_kw = {k: kw.pop(k) for k in ("username", "password", "keepalive") if k in kw}
    values: dict[str, Any] = {"receipt_timeout": 3.0, "backoff_base": 0.05,
                              "backoff_max": 0.3, **kw}
    return MqttRelay(MqttRelaySettings(client=client(url, "room-a", **client_kw),
                                       topic=TOPIC, receipt_topic=RECEIPTS, **values),
                     a.service)


def ingest_of(b: Node, url: str, client_id: str = "clinic-ingest", **kw: Any) -> MqttIngest:
    return MqttIngest(client(url, client_id), b.service, subscription=SHARED,
                      backoff_max=0.3, **kw)


async def drained(a: Node, relay: MqttRelay, timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while (await a.service.backlog()).events or relay.state != "idle":
            await trio.sleep(0.05)


async def test_events_arrive_once_in_order_and_are_marked_sent_on_receipts(
    nursery: trio.Nursery, nodes: tuple[Node, Node], broker: Broker,
) -> None:
    a, b = nodes
    journal_sessions(a)
    ingest = ingest_of(b, broker.url)
    await nursery.start(ingest.run)
    await ingest.subscribed.wait()
    relay = relay_of(a, broker.url, batch_events=4, max_inflight=3)
    await nursery.start(relay.run)
    await drained(a, relay)
    assert b.events() == a.events() and len(a.events()) == 21
    assert ingest.receipts >= 6 and ingest.duplicates == 0
    assert relay.status()["transport"] == "mqtt" and relay.last_error is None
    assert len(b.journal.sessions(device_id="room-a")) == 3
    assert [f["seq"] for f in b.journal.finals("s1", "room-a")] == [1, 2, 3, 4, 5]
    # More arrives later: the relay wakes on the journal's change.
    journal_sessions(a, 1, 2, prefix="late")
    a.service.changed.set()
    await drained(a, relay)
    assert b.events() == a.events()


async def test_broker_ack_level_marks_sent_on_a_successful_puback(
    nursery: trio.Nursery, nodes: tuple[Node, Node], broker: Broker,
) -> None:
    a, b = nodes
    journal_sessions(a, 2, 3)
    ingest = ingest_of(b, broker.url)
    await nursery.start(ingest.run)
    await ingest.subscribed.wait()
    relay = relay_of(a, broker.url, ack_level="broker")
    await nursery.start(relay.run)
    await drained(a, relay)
    with trio.fail_after(10):
        while len(b.events()) < len(a.events()):
            await trio.sleep(0.05)
    assert b.events() == a.events()


async def test_no_subscriber_is_not_delivered(
    nursery: trio.Nursery, nodes: tuple[Node, Node], broker: Broker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = nodes
    journal_sessions(a, 1, 2)
    relay = relay_of(a, broker.url, ack_level="broker")
    await nursery.start(relay.run)
    with trio.fail_after(20):
        while relay.failures < 3:
            await trio.sleep(0.05)
    assert "No matching subscribers (0x10)" in (relay.last_error or "")
    assert relay.circuit_open and relay.sent_events == 0
    assert (await a.service.backlog()).events == 4  # nothing marked sent
    assert any("No matching subscribers" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    ingest = ingest_of(b, broker.url)
    await nursery.start(ingest.run)
    await ingest.subscribed.wait()
    await drained(a, relay)
    assert b.events() == a.events() and not relay.circuit_open


async def test_bad_credentials_warn_with_the_reason_back_off_and_open_the_circuit(
    nursery: trio.Nursery, nodes: tuple[Node, Node], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, _ = nodes
    journal_sessions(a, 1, 2)
    with Broker(tmp_path / "auth", passwords={"room-a": "right"}) as broker:
        relay = relay_of(a, broker.url, username="room-a", password="wrong-secret")
        await nursery.start(relay.run)
        with trio.fail_after(20):
            while not relay.circuit_open:
                await trio.sleep(0.05)
        assert "Not authorized (0x87)" in (relay.last_error or "")
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert sum("Not authorized (0x87)" in w for w in warnings) == 3
        assert any("circuit open" in w for w in warnings)
        assert not any("wrong-secret" in r.getMessage() for r in caplog.records)
        assert (await a.service.backlog()).events == 4


async def test_a_small_message_size_limit_splits_the_batches(
    nursery: trio.Nursery, nodes: tuple[Node, Node], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = nodes
    journal_sessions(a, 1, 60, text="머리가 아픕니다 " * 20)
    with Broker(tmp_path / "small", extra="message_size_limit 12000\n") as broker:
        ingest = ingest_of(b, broker.url)
        await nursery.start(ingest.run)
        await ingest.subscribed.wait()
        relay = relay_of(a, broker.url)
        await nursery.start(relay.run)
        await drained(a, relay, timeout=60)
    # The message the broker dropped is sent again before anything after it is stored.
    assert b.events() == a.events() and len(b.events()) == 62
    assert [f["seq"] for f in b.journal.finals("s0", "room-a")] == list(range(1, 61))
    assert relay.status()["max_message_bytes"] <= 12000
    assert any("size limit" in r.getMessage() for r in caplog.records)


async def test_two_consumers_on_the_shared_subscription_store_each_event_once(
    nursery: trio.Nursery, nodes: tuple[Node, Node], broker: Broker, tmp_path: Path,
) -> None:
    a, b = nodes
    c = Node(tmp_path / "c" / "journal.db", "clinic-2")
    try:
        journal_sessions(a, 10, 5)
        # Each journal gets part of the stream: no one of them can keep its order.
        first = ingest_of(b, broker.url, "ingest-1", ordered=False)
        second = ingest_of(c, broker.url, "ingest-2", ordered=False)
        await nursery.start(first.run)
        await nursery.start(second.run)
        await first.subscribed.wait()
        await second.subscribed.wait()
        relay = relay_of(a, broker.url, batch_events=3)
        await nursery.start(relay.run)
        await drained(a, relay)
        in_b, in_c = set(b.events()), set(c.events())
        assert in_b | in_c == set(a.events())
        assert not in_b & in_c  # each event stored by one consumer only
        assert in_b and in_c  # and the load was split
    finally:
        c.journal.close()


class Blackhole:
    """A TCP proxy to the broker that can stop forwarding without closing anything."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.forwarding = True
        self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, down: trio.SocketStream) -> None:
        up = await trio.open_tcp_stream("127.0.0.1", self.target)

        async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
            while data := await src.receive_some(65536):
                if not self.forwarding:
                    await trio.sleep_forever()  # swallow: the link hangs, open
                await dst.send_all(data)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, down, up)
                nursery.start_soon(pump, up, down)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


async def test_a_blackholed_link_fails_and_recovers(
    nursery: trio.Nursery, nodes: tuple[Node, Node], broker: Broker,
) -> None:
    a, b = nodes
    ingest = ingest_of(b, broker.url)
    await nursery.start(ingest.run)
    await ingest.subscribed.wait()
    proxy = Blackhole(broker.port)
    await nursery.start(proxy.run)
    relay = relay_of(a, f"mqtt://127.0.0.1:{proxy.port}", receipt_timeout=1.5, keepalive=5)
    await nursery.start(relay.run)
    journal_sessions(a, 1, 2, prefix="before")
    a.service.changed.set()
    await drained(a, relay)
    proxy.forwarding = False
    journal_sessions(a, 1, 2, prefix="during")
    a.service.changed.set()
    with trio.fail_after(20):
        while relay.failures == 0:
            await trio.sleep(0.05)
    assert "did not" in (relay.last_error or "") or "no answer" in (relay.last_error or "")
    assert (await a.service.backlog()).events == 4
    proxy.forwarding = True
    await drained(a, relay, timeout=30)
    assert b.events() == a.events()


async def test_broker_killed_and_restarted_on_its_directory_loses_nothing(
    nursery: trio.Nursery, nodes: tuple[Node, Node], broker: Broker,
) -> None:
    a, b = nodes
    ingest = ingest_of(b, broker.url)
    await nursery.start(ingest.run)
    await ingest.subscribed.wait()
    relay = relay_of(a, broker.url, batch_events=2, receipt_timeout=2.0)
    await nursery.start(relay.run)
    for round_ in range(3):
        journal_sessions(a, 2, 4, prefix=f"r{round_}-")
        a.service.changed.set()
        with trio.fail_after(20):
            while relay.sent_events == 0 or relay.state == "idle":
                if (await a.service.backlog()).events == 0:
                    break
                await trio.sleep(0)
        await trio.to_thread.run_sync(broker.kill9)
        await trio.to_thread.run_sync(broker.start)
    await drained(a, relay, timeout=60)
    assert set(b.events()) == set(a.events())
    assert len(b.events()) == len(a.events())  # re-sends collapsed


async def test_a_burst_beyond_the_ingests_window_waits_and_loses_nothing(
    nursery: trio.Nursery, nodes: tuple[Node, Node], broker: Broker,
) -> None:
    """Broker acks: the device publishes as fast as PUBACKs come and Mosquitto pushes
    more than the ingest's Receive Maximum; paho's thread waits for room instead."""
    a, b = nodes
    journal_sessions(a, 10, 18)
    ingest = ingest_of(b, broker.url, max_inflight=2)
    await nursery.start(ingest.run)
    await ingest.subscribed.wait()
    relay = relay_of(a, broker.url, ack_level="broker", batch_events=1, max_inflight=64)
    await nursery.start(relay.run)
    await drained(a, relay)
    with trio.fail_after(20):
        while len(b.events()) < 200:
            await trio.sleep(0.05)
    assert b.events() == a.events() and ingest.dropped == 0


async def test_a_full_outbox_sheds_its_oldest_events_while_the_broker_is_away(
    nursery: trio.Nursery, nodes: tuple[Node, Node], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The journal's backlog cap (``relay.max_backlog_bytes``, the WebSocket relay's
    too): while the broker is unreachable the oldest pending events are shed (kept in
    the device's journal, never sent, not set aside); what is left arrives in order."""
    a, b = nodes
    journal_sessions(a, 4, 5, text="가" * 100)  # 28 events of about 400 bytes
    broker = Broker(tmp_path / "later")  # not started yet: connections are refused
    relay = relay_of(a, broker.url, max_backlog_bytes=4000)
    await nursery.start(relay.run)
    with trio.fail_after(20):
        while relay.shed_events == 0:
            await trio.sleep(0.05)
    assert relay.failures >= 1 and "refused" in (relay.last_error or "").lower()
    kept = (await a.service.backlog())
    assert 0 < kept.bytes <= 4000 and kept.events + relay.shed_events == 28
    assert relay.status()["shed_events"] == relay.shed_events
    assert any("outbox over 4000 bytes" in r.getMessage() for r in caplog.records)
    with broker:
        ingest = ingest_of(b, broker.url)
        await nursery.start(ingest.run)
        await ingest.subscribed.wait()
        await drained(a, relay)
    db = a.journal._conn
    assert db is not None
    sent = [(s, q, k) for s, q, k in db.execute(
        "SELECT session_id, seq, kind FROM events WHERE relayed = 1 ORDER BY id")]
    assert b.events() == sent and len(sent) == kept.events
    assert a.events()[-len(sent):] == sent  # the newest were kept
    assert a.journal.set_aside_count() == 0 and relay.set_aside_events == 0
    assert len(a.events()) == 28  # nothing shed left the device's journal
