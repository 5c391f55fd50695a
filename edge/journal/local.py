"""Local sessions into the journal: a session's start, its finals, its end.

Blocking; each function is one durable transaction on the link it is given (the
journal's hot link): committed and fsynced before it returns, so a final journaled
before it is sent is on disk before anyone sees it. Events of a session are numbered
densely by ``seq`` (0 for the start, then each final, then the end).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from sqlcipher3 import dbapi2 as sqlite3

from edge.journal.connection import Link
from edge.journal.records import JournalError
from edge.protocols.relay import (
    check_dialect,
    check_id,
    check_language,
    check_payload,
    encode_payload,
)


def start_session(link: Link, device_id: str, session_id: str, *, source: str,
                  sub: str | None, organization: str | None, department: str | None,
                  model: str | None, started_at: float, dialect: str | None,
                  language: str | None = None) -> None:
    check_id("session_id", session_id)
    if source not in ("client", "room"):
        raise ValueError(f"source: expected 'client' or 'room', got {source!r}")
    language = check_language(language) if language else None
    payload: dict[str, Any] = {
        "source": source, "sub": sub, "organization": organization,
        "department": department, "model": model, "started_at": started_at,
        "language": language,
    }
    if source == "room":
        # The room is the microphone, heard through the hub by listeners of whatever
        # protocol: its session speaks none.
        if dialect is not None:
            raise ValueError("dialect: the room's sessions have none")
    else:
        dialect = check_dialect("live" if dialect is None else dialect)
        payload["dialect"] = dialect
    check_payload("start", payload)
    with link.write() as db:
        try:
            db.execute(
                "INSERT INTO sessions (session_id, device_id, source, sub, organization,"
                " department, model, started_at, dialect, language)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, device_id, source, sub, organization, department, model,
                 started_at, dialect, language))
        except sqlite3.IntegrityError:
            raise JournalError(f"session {session_id} is already journaled") from None
        insert_event(db, device_id, session_id, 0, "start", started_at, payload)


def describe_session(link: Link, device_id: str, session_id: str, *, model: str | None,
                     language: str | None) -> bool:
    """A local session's model and language, chosen after its start was journaled (a
    client's config before its audio): its row, and its start event while that has not
    been relayed. False: the start had gone upstream already, which keeps the one it
    was given."""
    language = check_language(language) if language else None
    with link.write() as db:
        row = db.execute("SELECT ended_at FROM sessions WHERE device_id = ? AND"
                         " session_id = ? AND source != 'relay'",
                         (device_id, session_id)).fetchone()
        if row is None:
            raise JournalError(f"session {session_id} is not journaled")
        db.execute("UPDATE sessions SET model = ?, language = ? WHERE device_id = ? AND"
                   " session_id = ?", (model, language, device_id, session_id))
        start = db.execute("SELECT id, payload, relayed FROM events WHERE device_id = ?"
                           " AND session_id = ? AND seq = 0 AND kind = 'start'",
                           (device_id, session_id)).fetchone()
        if start is None or start[2] != 0:
            return False
        payload = {**json.loads(start[1]), "model": model, "language": language}
        text, size = encode_payload(payload)
        db.execute("UPDATE events SET payload = ?, size = ? WHERE id = ?",
                   (text, size, start[0]))
    return True


def append_final(link: Link, device_id: str, session_id: str, message: Mapping[str, Any],
                 created_at: float | None) -> int:
    if not isinstance(message, Mapping) or message.get("is_final") is not True:
        raise ValueError("append_final takes a final transcription message")
    payload = dict(message)
    check_payload("final", payload)
    at = time.time() if created_at is None else created_at
    with link.write() as db:
        row = db.execute("SELECT ended_at FROM sessions WHERE device_id = ? AND session_id = ?",
                         (device_id, session_id)).fetchone()
        if row is None:
            raise JournalError(f"unknown session {session_id}")
        if row[0] is not None:
            raise JournalError(f"session {session_id} has ended")
        seq = last_seq(db, device_id, session_id) + 1
        return insert_event(db, device_id, session_id, seq, "final", at, payload)


def end_session(link: Link, device_id: str, session_id: str, *, reason: str,
                ended_at: float) -> None:
    payload: dict[str, Any] = {"reason": reason, "ended_at": ended_at}
    check_payload("end", payload)
    with link.write() as db:
        row = db.execute(
            "SELECT ended_at FROM sessions WHERE device_id = ? AND session_id = ?",
            (device_id, session_id)).fetchone()
        if row is None:
            raise JournalError(f"unknown session {session_id}")
        if row[0] is not None:
            return
        seq = last_seq(db, device_id, session_id) + 1
        db.execute("UPDATE sessions SET ended_at = ?, end_reason = ? "
                   "WHERE device_id = ? AND session_id = ?",
                   (ended_at, reason, device_id, session_id))
        insert_event(db, device_id, session_id, seq, "end", ended_at, payload)


def end_open_sessions(link: Link, device_id: str, *, reason: str) -> int:
    with link.write() as db:
        rows = db.execute(
            "SELECT s.session_id, MAX(e.created_at) FROM sessions s JOIN events e"
            " ON e.device_id = s.device_id AND e.session_id = s.session_id"
            " WHERE s.device_id = ? AND s.ended_at IS NULL GROUP BY s.session_id",
            (device_id,)).fetchall()
        for session_id, last in rows:
            payload = {"reason": reason, "ended_at": last}
            db.execute("UPDATE sessions SET ended_at = ?, end_reason = ? "
                       "WHERE device_id = ? AND session_id = ?",
                       (last, reason, device_id, session_id))
            seq = last_seq(db, device_id, session_id) + 1
            insert_event(db, device_id, session_id, seq, "end", last, payload)
    return len(rows)


def insert_event(db: sqlite3.Connection, device_id: str, session_id: str, seq: int,
                 kind: str, created_at: float, payload: Mapping[str, Any]) -> int:
    try:
        text, size = encode_payload(payload)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{kind} event: payload is not plain JSON ({exc})") from None
    cursor = db.execute(
        "INSERT INTO events (device_id, session_id, seq, kind, created_at, payload, size)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (device_id, session_id, seq, kind, created_at, text, size))
    return int(cursor.lastrowid or 0)  # always set by an INSERT into a rowid table


def last_seq(db: sqlite3.Connection, device_id: str, session_id: str) -> int:
    (seq,) = db.execute("SELECT COALESCE(MAX(seq), -1) FROM events"
                        " WHERE device_id = ? AND session_id = ?",
                        (device_id, session_id)).fetchone()
    return int(seq)
