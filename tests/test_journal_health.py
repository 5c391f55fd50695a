"""The journal's health, pure and with real SQLite: the failing/ok rule, errors told
without transcript text, the /healthz body and reasons, the /metrics names, the config;
and, in a running server (real model, real sockets, SQLite refusing writes through
``PRAGMA query_only``), a session and a room segment whose start could not be
journaled, whose later finals are kept once writes go through again.

The whole story on a real daemon with a full disk is in test_journal_disk_full.py.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families
from test_room import PlayedSource, first_phrase_end

from edge.audio.source import Chunk, MicEvent
from edge.core.config import load_config
from edge.core.errors import ConfigError
from edge.core.stats import Stats
from edge.journal.db import Journal, JournalError
from edge.journal.health import FAILING, OK, WriteHealth, describe, free_bytes
from edge.journal.service import JournalService
from edge.ops.health import ClockStatus, health, render_metrics
from helpers import FIXTURES, TEST_KEY, connect, make_token, receive_json, stream

CLOCK = ClockStatus(synchronized=True, sane=True)
MIB = 1048576
SPEECH = (FIXTURES / "speech_ko.raw").read_bytes()
TEXT = "환자는 어제부터 머리가 아프다고 합니다"  # a final's text: must never show


def journal_status(**overrides: Any) -> dict[str, Any]:
    status = {"state": OK, "failures": 0, "last_error": None, "last_failure_at": None,
              "free_bytes": 500 * MIB, "encrypted": False, "key_source": None}
    return {**status, **overrides}


def finals(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == "transcription" and m["is_final"]]


def body_for(journal: dict[str, Any] | None, min_free_bytes: int = 200 * MIB,
             **kwargs: Any) -> tuple[int, dict[str, Any]]:
    return health(version="1", model="m", sessions=0, max_sessions=1, clock=CLOCK,
                  journal=journal, min_free_bytes=min_free_bytes, **kwargs)


# --- the rule ---------------------------------------------------------------------------

def test_failing_holds_for_the_window_and_until_a_write_goes_through() -> None:
    h = WriteHealth(failing_seconds=60)
    assert h.state(0) == OK and h.failures == 0 and h.last_error is None
    h.failed("SQLITE_FULL: the disk is full", now=100, wall=1_800_000_000)
    assert h.state(100) == FAILING
    # A write went through at once: still failing for the rest of the minute, so a
    # health poll a minute apart cannot miss the episode.
    h.succeeded()
    assert h.state(159.9) == FAILING
    assert h.state(160) == OK
    # No write since the last failure: nothing has shown the journal recovered.
    h.failed("SQLITE_FULL: the disk is full", now=200, wall=1_800_000_100)
    assert h.state(10_000) == FAILING
    h.succeeded()
    assert h.state(10_000) == OK
    # The record of what happened stays after recovery.
    assert h.failures == 2 and h.last_error == "SQLITE_FULL: the disk is full"
    assert h.last_failure_wall == 1_800_000_100


def test_a_disk_that_lets_every_other_write_through_stays_failing() -> None:
    h = WriteHealth(failing_seconds=60)
    for t in range(0, 300, 10):
        (h.failed("x", now=t, wall=t) if t % 20 else h.succeeded())
        assert t < 10 or h.state(t + 5) == FAILING
    assert h.failures == 15


# --- what an error may say --------------------------------------------------------------

def _journal_error(cause: BaseException, message: str) -> JournalError:
    try:
        try:
            raise cause
        except BaseException as exc:
            raise JournalError(message) from exc
    except JournalError as wrapped:
        return wrapped


def test_describe_gives_sqlite_codes_never_sqlite_text() -> None:
    full = sqlite3.OperationalError(f"database or disk is full near '{TEXT}'")
    full.sqlite_errorname = "SQLITE_FULL"
    line = describe(_journal_error(full, f"journal write failed: {full}"))
    assert line == "SQLITE_FULL: the disk is full"
    io = sqlite3.OperationalError(TEXT)
    io.sqlite_errorname = "SQLITE_IOERR_WRITE"
    assert describe(_journal_error(io, str(io))) == "SQLITE_IOERR_WRITE: disk I/O error"
    odd = sqlite3.DatabaseError(TEXT)
    odd.sqlite_errorname = "SQLITE_SOMETHING_NEW"
    assert describe(_journal_error(odd, str(odd))) == "SQLITE_SOMETHING_NEW"
    bare = sqlite3.OperationalError(TEXT)  # a driver error without a result code
    assert TEXT not in describe(_journal_error(bare, str(bare)))


def test_describe_leaves_session_ids_out_of_our_own_messages() -> None:
    assert describe(JournalError("unknown session 3f2a-11")) == "unknown session <id>"
    assert describe(JournalError("the journal is closed")) == "the journal is closed"
    try:
        try:
            raise sqlite3.IntegrityError("UNIQUE constraint failed")
        except sqlite3.IntegrityError:
            raise JournalError("session ab-12 is already journaled") from None
    except JournalError as exc:
        assert describe(exc) == "session <id> is already journaled"


def test_a_real_sqlite_failure_is_described_by_its_code(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "journal.db", key=TEST_KEY, device_id="dev") as journal:
        assert journal._hot.conn is not None
        journal._hot.conn.execute("PRAGMA query_only = ON")  # writes now fail in SQLite
        with pytest.raises(JournalError) as caught:
            journal.start_session("s1", source="client", sub=None, organization=None,
                                  department=None, model=None, started_at=time.time(),
                                  dialect="live")
    assert describe(caught.value).startswith("SQLITE_READONLY")


def test_free_bytes_is_what_statvfs_says(tmp_path: Path) -> None:
    import os

    st = os.statvfs(tmp_path)
    assert abs(free_bytes(tmp_path) - st.f_bavail * st.f_frsize) < 64 * MIB
    with pytest.raises(OSError):
        free_bytes(tmp_path / "gone")


# --- /healthz ---------------------------------------------------------------------------

def test_a_healthy_journal_is_shown_and_leaves_the_device_ok() -> None:
    status, body = body_for(journal_status(encrypted=True, key_source="credential"))
    assert status == 200 and body["status"] == "ok" and "reasons" not in body
    assert body["journal"] == {**journal_status(encrypted=True, key_source="credential"),
                               "min_free_bytes": 200 * MIB, "low_space": False}


def test_a_failing_journal_degrades_the_device_and_says_so() -> None:
    status, body = body_for(journal_status(
        state=FAILING, failures=3, last_error="SQLITE_FULL: the disk is full",
        last_failure_at="2026-12-07T10:00:00Z"))
    assert status == 503 and body["status"] == "degraded"
    assert body["journal"]["state"] == FAILING and body["journal"]["failures"] == 3
    [reason] = body["reasons"]
    assert "cannot save finals" in reason and "SQLITE_FULL" in reason and "3 failed" in reason


def test_low_free_space_degrades_the_device_and_names_the_key() -> None:
    status, body = body_for(journal_status(free_bytes=150 * MIB))
    assert status == 503 and body["status"] == "degraded" and body["journal"]["low_space"]
    [reason] = body["reasons"]
    assert "150 MiB free" in reason and "journal.min_free_mb (200 MiB)" in reason
    # Both at once: one reason each, so that an operator knows which.
    status, body = body_for(journal_status(free_bytes=0, state=FAILING, failures=1,
                                           last_error="SQLITE_FULL: the disk is full"))
    assert status == 503 and len(body["reasons"]) == 2
    # 0 turns the check off; an unread free space (None) is not a problem either.
    assert body_for(journal_status(free_bytes=0), min_free_bytes=0)[0] == 200
    assert body_for(journal_status(free_bytes=None))[0] == 200


def test_without_a_journal_health_says_not_configured() -> None:
    status, body = body_for(None)
    assert status == 200 and body["journal"] == {"state": "not_configured"}


def test_a_stopping_daemon_stays_stopping_with_a_failing_journal() -> None:
    status, body = body_for(journal_status(state=FAILING, failures=1, last_error="x"),
                            stopping=True)
    assert status == 503 and body["status"] == "stopping" and len(body["reasons"]) == 2


# --- /metrics ---------------------------------------------------------------------------

def metrics(journal: dict[str, Any] | None) -> dict[str, float]:
    text = render_metrics(Stats(), version="1", model="m", sessions_current=0,
                          max_sessions=1, clock=CLOCK, journal=journal,
                          min_free_bytes=200 * MIB)
    return {s.name: s.value for family in text_string_to_metric_families(text)
            for s in family.samples}


def test_journal_metrics() -> None:
    got = metrics(journal_status(state=FAILING, failures=4, free_bytes=123,
                                 encrypted=True, key_source="file"))
    assert got["edge_journal_write_failures_total"] == 4
    assert got["edge_journal_failing"] == 1
    assert got["edge_journal_free_bytes"] == 123
    assert got["edge_journal_min_free_bytes"] == 200 * MIB
    assert got["edge_journal_encrypted"] == 1
    assert "edge_journal_free_bytes" not in metrics(journal_status(free_bytes=None))
    assert not any(name.startswith("edge_journal_") for name in metrics(None))


# --- config -----------------------------------------------------------------------------

def test_config_keys_and_their_checks() -> None:
    default = load_config(None, environ={}).journal
    assert default.min_free_mb == 200 and default.failing_seconds == 60.0
    for key, value in [("journal.min_free_mb", -1), ("journal.min_free_mb", 1.5),
                       ("journal.failing_seconds", 0)]:
        with pytest.raises(ConfigError) as caught:
            load_config(None, environ={}, overrides={key: value})
        assert key in str(caught.value)
    assert load_config(None, environ={},
                       overrides={"journal.min_free_mb": 0}).journal.min_free_mb == 0


# --- the service, with real SQLite and a fault -------------------------------------------

async def test_the_service_reports_a_real_failure_then_recovery(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # The service's background tasks are not started: with the clock jumping whenever
    # every task waits, their timers would move time on while a write is in its thread.
    journal = Journal.open(tmp_path / "journal.db", key=TEST_KEY, device_id="dev")
    try:
        service = JournalService(journal, retention_days=30, purge_interval=3600,
                                 keep_unrelayed=False, key_source="file", failing_seconds=60)
        assert journal._hot.conn is not None
        status = service.status()
        assert status["state"] == OK and status["failures"] == 0
        assert status["free_bytes"] is None  # not read yet
        assert status["encrypted"] and status["key_source"] == "file"
        await service._read_free_space()
        assert service.status()["free_bytes"] == pytest.approx(
            free_bytes(journal.path.parent), abs=64 * MIB)

        assert await service.start_session("s1", None, source="client")
        journal._hot.conn.execute("PRAGMA query_only = ON")
        message = {"type": "transcription", "session_id": "s1", "seq": 1,
                   "is_final": True, "text": TEXT, "start_ms": 0, "end_ms": 900,
                   "speaker": None, "words": []}
        assert not await service.append_final("s1", message)
        status = service.status()
        assert status["state"] == FAILING and status["failures"] == 1
        assert status["last_error"].startswith("SQLITE_READONLY")
        assert TEXT not in repr(status) and status["last_failure_at"].endswith("Z")

        journal._hot.conn.execute("PRAGMA query_only = OFF")
        assert await service.append_final("s1", message)
        assert service.status()["state"] == FAILING  # within the minute
        await trio.sleep(61)
        assert service.status()["state"] == OK and service.status()["failures"] == 1
        assert journal.finals("s1") == [message]
    finally:
        journal.close()


# --- in a running server: a start that failed is journaled at the next final ------------

def set_writable(journal: Journal, writable: bool) -> None:
    """Make SQLite refuse (or accept again) the hot connection's writes."""
    link = journal._hot
    with link._lock:  # between two writes, never inside one
        assert link.conn is not None
        link.conn.execute(f"PRAGMA query_only = {'OFF' if writable else 'ON'}")


async def test_a_session_started_while_writes_fail_keeps_its_later_finals(
    start_server: Any, tmp_path: Path, phrases: dict[str, Any]
) -> None:
    journal = Journal.open(tmp_path / "journal.db", key=TEST_KEY, device_id="dev")
    service = JournalService(journal, retention_days=30, purge_interval=3600,
                             keep_unrelayed=False, failing_seconds=60)
    first = first_phrase_end() + 16000 * 2  # the first phrase and 1 s of its pause
    try:
        server = await start_server(journal_service=service)
        set_writable(journal, False)
        before = time.time()
        async with connect(server, make_token(sub="dr-kim")) as ws:
            session_id = (await receive_json(ws))["session_id"]
            await ws.send_message(json.dumps({"type": "config",
                                              "phrases": phrases["grammar"]}))
            await stream(ws, SPEECH[:first])
            messages = [await receive_json(ws)]
            while not finals(messages):
                messages.append(await receive_json(ws))
            first_final_at = time.time()
            set_writable(journal, True)
            await stream(ws, SPEECH[first:])
            await ws.send_message(json.dumps({"type": "end"}))
            while messages[-1]["type"] != "session_end":
                messages.append(await receive_json(ws))
        assert [f["text"] for f in finals(messages)] == phrases["utterances"]
        assert [m["code"] for m in messages if m["type"] == "warning"] == ["journal_error"]
        with trio.fail_after(10):  # the end is journaled after session_end is sent
            while (row := journal.session(session_id)) is None or row.ended_at is None:
                await trio.sleep(0.05)
        assert row.sub == "dr-kim" and row.end_reason == "end"
        # Its own start, not the moment the start was journaled (at the second final).
        assert before <= row.started_at <= first_final_at
        assert journal.finals(session_id) == finals(messages)[1:]
        # Two failures: the start, then the start again at the first final.
        assert service.failures == 2
        assert server.health()[1]["journal"]["state"] == "failing"  # within the minute
    finally:
        journal.close()


class TwoPartSource(PlayedSource):
    """The fixture's first phrase and a pause, then the rest once :attr:`go` is set, at
    twice real time; then nothing (a quiet line)."""

    def __init__(self) -> None:
        super().__init__(period=0.05)
        self.go = trio.Event()

    async def run(self, send: trio.MemorySendChannel[Chunk | MicEvent], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        first = first_phrase_end() + 16000 * 2  # and 1 s of its pause
        async with send:
            for part in (SPEECH[:first], SPEECH[first:]):
                for i in range(0, len(part), 3200):
                    await send.send(Chunk(part[i:i + 3200], 16000, trio.current_time()))
                    await trio.sleep(self.period)
                await self.go.wait()
            await trio.sleep_forever()


async def test_a_room_segment_started_while_writes_fail_keeps_its_later_finals(
    start_server: Any, model: Any, tmp_path: Path
) -> None:
    journal = Journal.open(tmp_path / "journal.db", key=TEST_KEY, device_id="dev")
    service = JournalService(journal, retention_days=30, purge_interval=3600,
                             keep_unrelayed=False)
    source = TwoPartSource()
    try:
        set_writable(journal, False)
        server = await start_server(journal_service=service, mic=source,
                                    microphone={"enabled": True},
                                    recognizer_factory=model.recognizer)
        async with connect(server, make_token(), "?source=room") as ws:
            messages = [await receive_json(ws)]
            while not finals(messages):
                messages.append(await receive_json(ws))
            set_writable(journal, True)
            source.go.set()
            while len(finals(messages)) < 3:
                messages.append(await receive_json(ws))
        errors = [m for m in messages if m.get("code") == "journal_error"]
        assert len(errors) == 1 and errors[0]["room_id"] == server.room.id
        # The one final the journal refused comes right after its warning.
        after = messages[messages.index(errors[0]) + 1:]
        refused = next(m for m in after if m["type"] == "transcription")
        assert refused["is_final"] and refused == finals(messages)[0]
        [room] = [row for row in journal.sessions() if row.source == "room"]
        kept = [(f["text"], f["start_ms"]) for f in journal.finals(room.session_id)]
        assert kept[:2] == [(f["text"], f["start_ms"]) for f in finals(messages)[1:3]]
        assert server.stats.warnings["journal_error"] == 1
    finally:
        journal.close()
