"""The audit trail between real ``edge serve`` processes: a command run on the device
records itself beside the running daemon, and the device's relay carries the record to
an upstream daemon, over /ws/relay and through a real Mosquitto; the upstream stores
and verifies the device's trail (``edge audit verify --device``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_mqtt_broker import Broker, needs_mosquitto
from test_mqtt_daemons import device, ingest, wait_for
from test_relay_crash import relay_daemon, start

from edge.journal.audit import Filter
from edge.journal.db import Journal
from helpers import make_token
from tools.daemon import ROOT, Daemon


def edge(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge", *args, "--config",
                           str(daemon.config_path)], cwd=ROOT, env=daemon.env,
                          capture_output=True, text=True, timeout=60, check=False)


def trail_of(daemon: Daemon, device_id: str) -> list[str]:
    """The actions of ``device_id``'s records held in ``daemon``'s journal."""
    path = daemon.state / "journal.db"
    if not path.exists():
        return []
    with Journal.open(path, key=daemon.data_key, device_id="reader",
                      readonly=True) as journal:
        return [r.action for r in journal.audit_records(Filter(device_id=device_id))]


async def check_relayed(a: Daemon, b: Daemon) -> None:
    listed = edge(a, "transcripts", "list")
    assert listed.returncode == 0, listed.stderr
    await wait_for(lambda: trail_of(b, "room-a") == ["transcript.list"], 60)
    done = edge(b, "audit", "verify", "--device", "room-a")
    assert done.returncode == 0 and "1 record(s) intact" in done.stdout, done.stderr
    shown = edge(b, "audit", "list", "--device", "room-a", "--json")
    (record,) = [json.loads(line) for line in shown.stdout.splitlines()]
    assert record["action"] == "transcript.list" and record["peer"] == "cli"

    def acknowledged() -> bool:
        with Journal.open(a.state / "journal.db", key=a.data_key, device_id="room-a",
                          readonly=True) as journal:
            db = journal._conn
            assert db is not None
            return bool(db.execute("SELECT relayed FROM audit WHERE seq = 1").fetchone()[0])

    await wait_for(acknowledged, 30)


async def test_the_trail_is_relayed_over_the_websocket_relay(tmp_path: Path) -> None:
    b = relay_daemon(tmp_path, "b", env={"EDGE_DEVICE_ID": "clinic"})
    try:
        await start(b)
        token = make_token(sub="room-a", scope="relay:write", ttl=3600)
        a = relay_daemon(tmp_path, "a", {"relay": {
            "enabled": True, "url": f"ws://127.0.0.1:{b.port}/ws/relay",
            "backoff_max": 0.5, "ack_timeout": 5.0}},
            env={"EDGE_DEVICE_ID": "room-a", "EDGE_RELAY_TOKEN": token})
        try:
            await start(a)
            await check_relayed(a, b)
        finally:
            a.stop()
    finally:
        b.stop()


@needs_mosquitto
async def test_the_trail_is_relayed_through_mqtt(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker") as broker:
        b, a = ingest(tmp_path, broker), device(tmp_path, broker)
        try:
            await start(b)
            await start(a)
            await check_relayed(a, b)
        finally:
            a.stop()
            b.stop()



