"""Drain rate after an outage: 100,000 journaled events relayed over MQTT next to /ws/relay.

A device journal holding ``--events`` pending events (sessions of a start, finals of
about ten words, an end; written straight into a fresh journal file in one transaction,
as an outage leaves them) is drained, once per transport, from a copy of the same file:

* ``websocket``: :class:`edge.relay.sender.Relay` to a real ``edge serve`` (``/ws/relay``);
* ``mqtt-receipt``: :class:`edge.relay.mqtt.MqttRelay` (``ack_level = "receipt"``) into
  a real Mosquitto on loopback, consumed by a real ``edge serve`` with ``[ingest.mqtt]``;
* ``mqtt-broker``: the same with ``ack_level = "broker"`` (marked sent on the PUBACK).

The clock runs from the relay's start until the device's backlog is 0 and the upstream's
journal holds every event (the receipts already imply it for ``mqtt-receipt``). One run
each, on loopback: no WAN latency, so it measures the ends' costs, not the link.

    .venv/bin/python bench/mqtt_drain.py [--events 100000]
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import common
from test_mqtt_broker import Broker

from edge.core.auth import mint
from edge.journal.db import Journal
from edge.journal.db import connect as connect_journal
from edge.journal.service import JournalService
from edge.relay.mqtt import MqttClientSettings, MqttRelay, MqttRelaySettings
from edge.relay.outbox import OutboxRelay
from edge.relay.sender import Relay, RelaySettings
from tools.daemon import Daemon

SECRET = "bench-secret-that-is-long-enough-for-hs256!"
DEVICE = "room-drain"
TEXT = "머리가 아프고 어제부터 열이 조금 있습니다 약은 먹지 않았어요"
RESULT = common.RESULTS / "mqtt_drain.json"


def build_journal(path: Path, events: int) -> int:
    """A fresh journal with ``events`` pending events (sessions of 100); their bytes."""
    Journal.open(path, key=common.BENCH_KEY, device_id=DEVICE).close()
    db = connect_journal(path, common.BENCH_KEY)
    db.execute("BEGIN")
    total = 0
    with db:
        n = 0
        session = 0
        while n < events:
            sid = f"s{session:06d}"
            db.execute("INSERT INTO sessions (session_id, device_id, source, sub, started_at,"
                       " dialect) VALUES (?, ?, 'client', 'dr-lee', 1.0, 'live')",
                       (sid, DEVICE))
            count = min(100, events - n)
            for seq in range(count):
                kind = "start" if seq == 0 else "end" if seq == count - 1 else "final"
                if kind == "start":
                    payload: dict[str, Any] = {
                        "source": "client", "sub": "dr-lee", "organization": None,
                        "department": None, "model": "m", "started_at": 1.0,
                        "dialect": "live"}
                elif kind == "end":
                    payload = {"reason": "end", "ended_at": 2.0}
                else:
                    payload = {"type": "transcription", "session_id": sid, "seq": seq,
                               "is_final": True, "text": TEXT, "start_ms": seq * 1000,
                               "end_ms": seq * 1000 + 900, "words": [], "speaker": None}
                text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
                size = len(text.encode())
                total += size
                db.execute("INSERT INTO events (device_id, session_id, seq, kind, created_at,"
                           " payload, size) VALUES (?, ?, ?, ?, 1.5, ?, ?)",
                           (DEVICE, sid, seq, kind, text, size))
            n += count
            session += 1
    db.close()
    return total


def upstream_count(daemon: Daemon) -> int:
    with Journal.open(daemon.state / "journal.db", key=daemon.data_key, device_id="reader",
                      readonly=True) as journal:
        db = journal._conn
        assert db is not None
        (count,) = db.execute("SELECT COUNT(*) FROM events WHERE device_id = ?",
                              (DEVICE,)).fetchone()
    return int(count)


async def drain(relay: OutboxRelay, service: JournalService, upstream: Daemon, events: int
                ) -> float:
    async with trio.open_nursery() as nursery:
        started = time.monotonic()
        await nursery.start(relay.run)
        while (await service.backlog()).events:
            await trio.sleep(0.05)
        while await trio.to_thread.run_sync(upstream_count, upstream) < events:
            await trio.sleep(0.05)
        elapsed = time.monotonic() - started
        nursery.cancel_scope.cancel()
    return elapsed


async def run_one(name: str, work: Path, source: Path, events: int) -> dict[str, Any]:
    path = work / name / "journal.db"
    path.parent.mkdir(parents=True)
    shutil.copy(source, path)
    journal = Journal.open(path, key=common.BENCH_KEY, device_id=DEVICE)
    service = JournalService(journal, retention_days=30, purge_interval=3600,
                             keep_unrelayed=True)
    broker = None
    sections: dict[str, dict[str, Any]] = {"log": {"level": "warning"}}
    if name != "websocket":
        broker = Broker(work / name / "broker").start()
        sections["ingest.mqtt"] = {"enabled": True, "url": broker.url}
    upstream = Daemon(work / name, "upstream", secret=SECRET, sections=sections,
                      env={"EDGE_DEVICE_ID": "clinic", **common.KEY_ENV})
    try:
        await trio.to_thread.run_sync(upstream.start, 120)
        relay: OutboxRelay
        if name == "websocket":
            token = mint(algorithm="HS256", key=SECRET, sub=DEVICE, scope="relay:write",
                         user_type="device", ttl=3600, now=time.time(), extra={})
            relay = Relay(RelaySettings(url=f"ws://127.0.0.1:{upstream.port}/ws/relay",
                                        token=token), service)
        else:
            assert broker is not None
            relay = MqttRelay(MqttRelaySettings(
                client=MqttClientSettings(url=broker.url, client_id=DEVICE),
                topic=f"edge/v1/bench/{DEVICE}/events",
                receipt_topic=f"edge/v1/bench/{DEVICE}/receipts",
                ack_level=name.removeprefix("mqtt-")), service)
        elapsed = await drain(relay, service, upstream, events)
        return {"transport": name, "events": events, "seconds": round(elapsed, 2),
                "events_per_second": round(events / elapsed),
                "republished": getattr(relay, "republished", 0),
                "messages": getattr(relay, "messages", None)}
    finally:
        upstream.stop()
        if broker is not None:
            broker.stop()
        journal.close()


async def main(events: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mqtt-drain-") as tmp:
        work = Path(tmp)
        source = work / "source.db"
        nbytes = await trio.to_thread.run_sync(build_journal, source, events)
        results = []
        for name in ("websocket", "mqtt-receipt", "mqtt-broker"):
            result = await run_one(name, work, source, events)
            result["payload_mb_per_second"] = round(nbytes / result["seconds"] / 1e6, 2)
            print(json.dumps(result), flush=True)
            results.append(result)
    RESULT.write_text(json.dumps({"events": events, "payload_bytes": nbytes,
                                  "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    trio.run(functools.partial(main, args.events))
