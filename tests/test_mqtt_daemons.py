"""The MQTT relay between real ``edge serve`` processes: a device relaying into a real
Mosquitto, and an ingest daemon consuming from it; kill -9 of the broker and of the
device. Real daemons, real sockets, real SQLite."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import trio
from test_mqtt_broker import Broker, needs_mosquitto
from test_relay_crash import start, stream_until_killed

import helpers
from edge.journal.db import Journal
from helpers import SECRET, make_token, receive_json
from tools.daemon import Daemon, http_get

pytestmark = needs_mosquitto

# Kills per test: enough for kills before, during and after a final's journaling;
# bench/soak_kill.py runs a thousand rounds of the journal path outside the suite.
ROUNDS = 8


def device(tmp_path: Path, broker: Broker) -> Daemon:
    return Daemon(tmp_path, "device", secret=SECRET, env={"EDGE_DEVICE_ID": "room-a"},
                  sections={"log": {"level": "warning"},
                            "relay": {"enabled": True, "transport": "mqtt",
                                      "backoff_max": 0.5},
                            "relay.mqtt": {"url": broker.url, "site": "clinic",
                                           "receipt_timeout": 3.0}})


def ingest(tmp_path: Path, broker: Broker) -> Daemon:
    return Daemon(tmp_path, "ingest", secret=SECRET, env={"EDGE_DEVICE_ID": "clinic"},
                  sections={"log": {"level": "warning"}, "relay": {"backoff_max": 0.5},
                            "ingest.mqtt": {"enabled": True, "url": broker.url}})


def finals_at(daemon: Daemon, device_id: str = "room-a") -> dict[str, list[dict[str, Any]]]:
    """The device's sessions' finals in ``daemon``'s journal (read-only, beside it)."""
    path = daemon.state / "journal.db"
    if not path.exists():
        return {}
    with Journal.open(path, key=daemon.data_key, device_id="reader",
                      readonly=True) as journal:
        return {row.session_id: journal.finals(row.session_id, device_id)
                for row in journal.sessions(device_id=device_id, limit=100000)}


def events_at(daemon: Daemon, device_id: str = "room-a") -> list[tuple[str, int, str]]:
    with Journal.open(daemon.state / "journal.db", key=daemon.data_key, device_id="reader",
                      readonly=True) as journal:
        db = journal._conn
        assert db is not None
        rows = db.execute("SELECT session_id, seq, kind FROM events WHERE device_id = ?"
                          " ORDER BY id", (device_id,)).fetchall()
    return [(s, q, k) for s, q, k in rows]


async def one_session(port: int, grammar: list[str], audio: bytes) -> tuple[str, list[Any]]:
    headers = [(b"authorization", f"Bearer {make_token()}".encode())]
    from trio_websocket import open_websocket_url

    async with open_websocket_url(f"ws://127.0.0.1:{port}/ws/transcribe",
                                  extra_headers=headers) as ws:
        session_id = (await receive_json(ws))["session_id"]
        await ws.send_message(json.dumps({"type": "config", "phrases": grammar}))
        for i in range(44, len(audio), 6400):
            await ws.send_message(audio[i:i + 6400])
        await ws.send_message(json.dumps({"type": "end"}))
        finals = []
        while (message := await receive_json(ws, 60))["type"] != "session_end":
            if message["type"] == "transcription" and message["is_final"]:
                finals.append(message)
    return session_id, finals


async def wait_for(predicate: Any, timeout: float) -> None:
    with trio.fail_after(timeout):
        while not await trio.to_thread.run_sync(predicate):
            await trio.sleep(0.2)


def _grammar(phrases: dict[str, Any]) -> list[str]:
    return [p for p in phrases["grammar"] if p != "[unk]"]


async def test_a_session_arrives_once_in_order_at_the_ingest(
    tmp_path: Path, phrases: dict[str, Any],
) -> None:
    from test_relay_crash import SPEECH

    with Broker(tmp_path / "broker") as broker:
        b, a = ingest(tmp_path, broker), device(tmp_path, broker)
        try:
            await start(b)
            await start(a)
            session_id, finals = await one_session(a.port, _grammar(phrases), SPEECH)
            assert finals
            await wait_for(lambda: any(k == "end" for _, _, k in events_at(b)), 60)
            assert events_at(b) == events_at(a)  # start, finals, end: once, in order
            assert [(f["seq"], f["text"]) for f in finals_at(b)[session_id]] == [
                (f["seq"], f["text"]) for f in finals]
            status, health = await trio.to_thread.run_sync(http_get, a.port)
            relay = health["relay"]
            assert relay["transport"] == "mqtt" and relay["backlog"] == 0
            assert not relay["circuit_open"] and relay["last_error"] is None
            status, _, body = await helpers.http_get(a.port, "/metrics")
            assert status == 200
            assert "edge_relay_backlog_events 0" in body.decode()
            assert "edge_relay_circuit_open 0" in body.decode()
            assert "edge_relay_set_aside_total 0" in body.decode()
            assert relay["set_aside"] == 0 and relay["set_aside_waiting"] == 0
            # The ingest's own state, consuming and then with its broker gone.
            stored = len(events_at(b))
            status, health = await trio.to_thread.run_sync(http_get, b.port)
            assert status == 200
            ingest_state = health["ingest"]
            assert ingest_state["connected"] and ingest_state["state"] == "consuming"
            assert ingest_state["subscription"] == "$share/edge/edge/v1/+/+/events"
            assert ingest_state["stored"] == stored and ingest_state["refused"] == 0
            assert ingest_state["gaps"] == 0 and ingest_state["last_error"] is None
            assert ingest_state["messages"] >= 1 and ingest_state["receipts"] >= 1
            _, _, body = await helpers.http_get(b.port, "/metrics")
            text = body.decode()
            assert "edge_ingest_mqtt_connected 1" in text
            assert f'edge_ingest_mqtt_events_total{{result="stored"}} {stored}' in text
            assert 'edge_ingest_mqtt_events_total{result="refused"} 0' in text
            await trio.to_thread.run_sync(broker.stop)

            def ingest_down() -> bool:
                health = http_get(b.port)[1]["ingest"]
                return bool(health["failures"] >= 3 and not health["connected"])

            await wait_for(ingest_down, 30)
            status, health = await trio.to_thread.run_sync(http_get, b.port)
            assert "refused" in health["ingest"]["last_error"].lower()
            assert any("MQTT ingest cannot reach" in n for n in health.get("notes", []))
            _, _, body = await helpers.http_get(b.port, "/metrics")
            assert "edge_ingest_mqtt_connected 0" in body.decode()
        finally:
            a.stop()
            b.stop()


async def test_the_broker_killed_mid_session_and_restarted_loses_nothing(
    tmp_path: Path, phrases: dict[str, Any],
) -> None:
    with Broker(tmp_path / "broker") as broker:
        b, a = ingest(tmp_path, broker), device(tmp_path, broker)
        try:
            await start(b)
            await start(a)
            received: list[dict[str, Any]] = []
            started = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream_until_killed, a.port, _grammar(phrases), received,
                                   started)
                await started.wait()
                await wait_for(lambda: bool(events_at(b)), 30)  # relaying has begun
                await trio.to_thread.run_sync(broker.kill9)
                await trio.sleep(1.0)  # the outage (not synchronisation)
                await trio.to_thread.run_sync(broker.start)
            assert received
            await wait_for(lambda: set(events_at(a)) <= set(events_at(b)), 90)
            at_b = events_at(b)
            assert len(at_b) == len(set(at_b))  # duplicates collapsed
            texts = {(f["session_id"], f["seq"], f["text"]) for fs in finals_at(b).values()
                     for f in fs}
            assert {(m["session_id"], m["seq"], m["text"]) for m in received} <= texts
        finally:
            a.stop()
            b.stop()


async def test_kill_9_of_the_device_while_it_relays_loses_no_final_a_client_saw(
    tmp_path: Path, phrases: dict[str, Any],
) -> None:
    rng = random.Random(20261202)
    with Broker(tmp_path / "broker") as broker:
        b, a = ingest(tmp_path, broker), device(tmp_path, broker)
        seen: list[dict[str, Any]] = []
        try:
            await start(b)
            for _ in range(ROUNDS):
                await start(a)
                received: list[dict[str, Any]] = []
                started = trio.Event()
                async with trio.open_nursery() as round_:
                    round_.start_soon(stream_until_killed, a.port, _grammar(phrases),
                                      received, started)
                    await started.wait()
                    await trio.sleep(rng.uniform(0.0, 3.0))
                    a.kill9()
                seen.extend(received)
            await start(a)  # the last start drains what the kills left behind
            expected = {(m["session_id"], m["seq"], m["text"]) for m in seen}
            assert len(expected) >= ROUNDS // 2, "the kills came too early to test anything"

            def relayed() -> bool:
                got = {(f["session_id"], f["seq"], f["text"])
                       for fs in finals_at(b).values() for f in fs}
                return expected <= got

            await wait_for(relayed, 120)
            at_b = events_at(b)
            assert len(at_b) == len(set(at_b))
        finally:
            a.stop()
            b.stop()
