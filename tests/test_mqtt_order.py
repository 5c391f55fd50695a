"""Order after a failure with several messages in flight: a proxy that speaks enough
MQTT to drop one PUBLISH (from the device to the broker, or from the broker to the
ingest) between real paho clients and a real Mosquitto; the ingest's journal must
still hold the device's events in the device's order."""

from __future__ import annotations

import logging

import pytest
import trio
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

pytestmark = needs_mosquitto

_PUBLISH = 3


class DropOnePublish:
    """A TCP proxy to the broker that drops the ``nth`` PUBLISH on ``topic`` going one
    way (``upstream``: client to broker) and forwards every other byte unchanged."""

    def __init__(self, target: int, *, upstream: bool, nth: int, topic: str) -> None:
        self.target = target
        self.upstream = upstream
        self.nth = nth
        self.topic = topic.encode()
        self.seen = 0
        self.dropped = 0
        self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, down: trio.SocketStream) -> None:
        up = await trio.open_tcp_stream("127.0.0.1", self.target)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, down, up, self.upstream)
                nursery.start_soon(self._pump, up, down, not self.upstream)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream,
                    filtered: bool) -> None:
        buffer = b""
        while data := await src.receive_some(65536):
            if not filtered:
                await dst.send_all(data)
                continue
            buffer += data
            out = b""
            while (packet := _take_packet(buffer)) is not None:
                length, kind, topic = packet
                chunk, buffer = buffer[:length], buffer[length:]
                if kind == _PUBLISH and topic == self.topic:
                    self.seen += 1
                    if self.seen == self.nth:
                        self.dropped += 1
                        continue
                out += chunk
            if out:
                await dst.send_all(out)


def _take_packet(buffer: bytes) -> tuple[int, int, bytes] | None:
    """(packet length, packet type, topic for a PUBLISH) of the first whole packet."""
    if len(buffer) < 2:
        return None
    remaining, multiplier, i = 0, 1, 1
    while True:
        if i >= len(buffer):
            return None
        byte = buffer[i]
        remaining += (byte & 0x7F) * multiplier
        multiplier *= 128
        i += 1
        if not byte & 0x80:
            break
    total = i + remaining
    if len(buffer) < total:
        return None
    kind = buffer[0] >> 4
    topic = b""
    if kind == _PUBLISH:
        size = int.from_bytes(buffer[i:i + 2], "big")
        topic = buffer[i + 2:i + 2 + size]
    return total, kind, topic


@pytest.mark.parametrize("upstream", [True, False], ids=["device-to-broker",
                                                         "broker-to-ingest"])
async def test_one_dropped_publish_with_several_in_flight_keeps_the_order(
    nursery: trio.Nursery, nodes: tuple[Node, Node], broker: Broker,  # noqa: F811
    upstream: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The dropped message's successors reach the ingest first: it answers gaps (they
    name an ``after`` it lacks), the device abandons its window and sends again from
    the dropped one, and the ingest stores every event once, in the device's order."""
    a, b = nodes
    caplog.set_level(logging.INFO)
    journal_sessions(a, 3, 5)
    proxy = DropOnePublish(broker.port, upstream=upstream, nth=3, topic=TOPIC)
    await nursery.start(proxy.run)
    proxied = f"mqtt://127.0.0.1:{proxy.port}"
    ingest = ingest_of(b, broker.url if upstream else proxied)
    await nursery.start(ingest.run)
    await ingest.subscribed.wait()
    relay = relay_of(a, proxied if upstream else broker.url, batch_events=2,
                     max_inflight=4, receipt_timeout=20.0)
    await nursery.start(relay.run)
    await drained(a, relay, timeout=15)  # well before a receipt timeout: the gap did it
    assert proxy.dropped == 1
    assert b.events() == a.events() and len(a.events()) == 21
    assert ingest.gaps >= 1 and relay.go_backs >= 1 and relay.failures == 0
    assert any("came before event" in r.getMessage() for r in caplog.records)


async def test_without_the_order_the_dropped_message_lands_after_later_ones(
    nursery: trio.Nursery, nodes: tuple[Node, Node], broker: Broker,  # noqa: F811
) -> None:
    """The same drop with an ingest that stores as messages come (``ordered = false``,
    for several daemons in one share group): the events all arrive, once, but the
    dropped message's come after later ones (what the ordered ingest prevents)."""
    a, b = nodes
    journal_sessions(a, 3, 5)
    proxy = DropOnePublish(broker.port, upstream=False, nth=3, topic=TOPIC)
    await nursery.start(proxy.run)
    ingest = ingest_of(b, f"mqtt://127.0.0.1:{proxy.port}", ordered=False)
    await nursery.start(ingest.run)
    await ingest.subscribed.wait()
    relay = relay_of(a, broker.url, batch_events=2, max_inflight=4, receipt_timeout=1.5)
    await nursery.start(relay.run)
    await drained(a, relay, timeout=30)
    assert proxy.dropped == 1 and ingest.gaps == 0
    assert sorted(b.events()) == sorted(a.events()) and len(b.events()) == 21
    assert b.events() != a.events()
