"""kill -9 while sessions and relaying run: nothing a client saw, and nothing the
upstream acknowledged, is lost. Real daemons (subprocesses), real SQLite, real sockets."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from edge.journal.db import Journal
from edge.journal.service import JournalService
from edge.relay.sender import Relay, RelaySettings
from helpers import FIXTURES, SECRET, TEST_KEY, make_token, receive_json
from tools.daemon import Daemon

SPEECH = (FIXTURES / "speech_ko.wav").read_bytes()
# Kills per test: enough for kills before, during and after a final's journaling;
# bench/soak_kill.py runs a thousand rounds of the journal path outside the suite.
ROUNDS = 8


def relay_daemon(tmp_path: Path, name: str, sections: dict[str, dict[str, Any]] | None = None,
                 env: dict[str, str] | None = None) -> Daemon:
    """``edge serve`` in a subprocess, its state directory kept across kills."""
    return Daemon(tmp_path, name, secret=SECRET, env=env,
                  sections={"log": {"level": "warning"}, **(sections or {})})


async def start(daemon: Daemon) -> None:
    await trio.to_thread.run_sync(daemon.start, 60)


def state_journal(daemon: Daemon, device_id: str) -> Journal:
    return Journal.open(daemon.state / "journal.db", key=daemon.data_key, device_id=device_id)


def events_of(journal: Journal, device_id: str, where: str = "") -> set[tuple[str, int]]:
    db = journal._conn
    assert db is not None
    rows = db.execute(f"SELECT session_id, seq FROM events WHERE device_id = ? {where}",
                      (device_id,)).fetchall()
    return {(s, q) for s, q in rows}


async def stream_until_killed(port: int, grammar: list[str], received: list[dict[str, Any]],
                              started: trio.Event) -> None:
    """A client streaming speech fast; keeps every final it receives."""
    headers = [(b"authorization", f"Bearer {make_token()}".encode())]
    url = f"ws://127.0.0.1:{port}/ws/transcribe"
    try:
        async with open_websocket_url(url, extra_headers=headers) as ws:
            await receive_json(ws)
            started.set()
            await ws.send_message(json.dumps({"type": "config", "phrases": grammar}))

            async def read() -> None:
                while True:
                    message = await receive_json(ws, 60)
                    if message["type"] == "transcription" and message["is_final"]:
                        received.append(message)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                for _ in range(3):  # a few utterances' worth, paced a little
                    for i in range(44, len(SPEECH), 6400):
                        await ws.send_message(SPEECH[i:i + 6400])
                        await trio.sleep(0.02)
                await ws.send_message(json.dumps({"type": "end"}))
    except (ConnectionClosed, OSError, trio.BrokenResourceError):
        pass  # killed under us: expected
    except BaseExceptionGroup as group:
        _, rest = group.split((ConnectionClosed, OSError, trio.BrokenResourceError))
        if rest is not None:
            raise
    finally:
        started.set()


async def test_kill_9_of_the_device_loses_no_final_a_client_saw(
    nursery: trio.Nursery, start_server: Any, tmp_path: Path, phrases: dict[str, Any],
) -> None:
    upstream = Journal.open(tmp_path / "b" / "journal.db", key=TEST_KEY, device_id="clinic")
    b = JournalService(upstream, retention_days=30, purge_interval=3600,
                       keep_unrelayed=False)
    server_b = await start_server(journal_service=b)
    relay_token = make_token(sub="room-a", scope="relay:write", ttl=3600)
    a = relay_daemon(tmp_path, "a", {"relay": {
        "enabled": True, "url": f"ws://127.0.0.1:{server_b.port}/ws/relay",
        "backoff_max": 0.5, "ack_timeout": 5.0}},
        env={"EDGE_DEVICE_ID": "room-a", "EDGE_RELAY_TOKEN": relay_token})
    grammar = [p for p in phrases["grammar"] if p != "[unk]"]
    rng = random.Random(20261121)
    seen: list[dict[str, Any]] = []
    try:
        for _ in range(ROUNDS):
            await start(a)
            received: list[dict[str, Any]] = []
            started = trio.Event()
            async with trio.open_nursery() as round_:
                round_.start_soon(stream_until_killed, a.port, grammar, received, started)
                await started.wait()
                await trio.sleep(rng.uniform(0.0, 3.0))
                a.kill9()
            seen.extend(received)
        await start(a)  # the last start drains what the kills left behind
        expected = {(m["session_id"], m["seq"], m["text"]) for m in seen}
        assert len(expected) >= ROUNDS // 2, "the kills came too early to test anything"
        with trio.fail_after(120):
            while True:
                relayed = {(m["session_id"], m["seq"], m["text"])
                           for m in _all_finals(upstream, "room-a")}
                if expected <= relayed:
                    break
                await trio.sleep(0.2)
        events = upstream._conn.execute(  # type: ignore[union-attr]
            "SELECT COUNT(*), COUNT(DISTINCT session_id || ':' || seq) FROM events"
            " WHERE device_id = 'room-a'").fetchone()
        assert events[0] == events[1]  # no duplicates upstream
    finally:
        a.stop()
        upstream.close()


def _all_finals(journal: Journal, device_id: str) -> list[dict[str, Any]]:
    return [final for row in journal.sessions(device_id=device_id, limit=100000)
            for final in journal.finals(row.session_id, device_id)]


async def test_kill_9_of_the_upstream_after_an_ack_loses_nothing_acknowledged(
    nursery: trio.Nursery, start_server: Any, tmp_path: Path, phrases: dict[str, Any],
) -> None:
    device = Journal.open(tmp_path / "a" / "journal.db", key=TEST_KEY, device_id="room-a")
    a = JournalService(device, retention_days=30, purge_interval=3600, keep_unrelayed=True)
    server_a = await start_server(journal_service=a)
    b = relay_daemon(tmp_path, "b")
    token = make_token(sub="room-a", scope="relay:write", ttl=3600)
    relay = Relay(RelaySettings(url=f"ws://127.0.0.1:{b.port}/ws/relay", token=token,
                                batch_events=3, backoff_base=0.05, backoff_max=0.3,
                                ack_timeout=5.0), a)
    grammar = [p for p in phrases["grammar"] if p != "[unk]"]
    try:
        await start(b)
        await nursery.start(relay.run)
        for _ in range(5):
            before = relay.sent_events
            started = trio.Event()
            nursery.start_soon(stream_until_killed, server_a.port, grammar, [], started)
            with trio.fail_after(60):
                while relay.sent_events == before:
                    await trio.sleep(0)  # react the moment an ack is counted
            b.kill9()
            acknowledged = events_of(device, "room-a", "AND relayed = 1")
            with state_journal(b, "clinic") as upstream:  # recovers the WAL like a restart
                assert acknowledged <= events_of(upstream, "room-a")
            await start(b)
        with trio.fail_after(60):
            while (await a.backlog()).events:
                await trio.sleep(0.1)
        b.stop()
        with state_journal(b, "clinic") as upstream:
            assert events_of(device, "room-a") == events_of(upstream, "room-a")
    finally:
        b.stop()
        device.close()
