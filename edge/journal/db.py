"""The transcript journal: every session and every final transcription, durably, in SQLite.

Plain blocking code (stdlib ``sqlite3``); no trio. One :class:`Journal` holds one
connection opened with ``check_same_thread=False`` so that worker threads may use it, but
its calls must be serialised: the daemon runs each one in ``trio.to_thread.run_sync``
under a ``CapacityLimiter(1)`` (an internal lock also serialises them, so a mistake costs
waiting, not corruption). Every method blocks on disk I/O; every writing method is one
transaction, committed (and, with ``synchronous=FULL`` in WAL mode, fsynced) before it
returns. A caller that journals a final before sending it therefore never sends what a
power cut could lose.

Files. The journal lives where the caller says (normally ``<state dir>/journal.db``).
Its directory is created 0700, the database 0600; SQLite gives its ``-wal`` and ``-shm``
files the database's mode (and owner, when run as root).

Recovery. :meth:`Journal.open` runs ``PRAGMA quick_check``. A file that is not a
database, is malformed, fails the check, or carries a schema from a newer edge is moved
aside to ``<name>.corrupt-<UTC time>`` (with its ``-wal``/``-shm``) and a fresh journal
is started, with one WARNING naming the moved file; the daemon keeps running. A WAL cut
mid-write needs nothing from us: SQLite replays the frames up to the last intact commit.

Events. Each session is a sequence of events numbered by ``seq`` within the session:
``0`` for ``start``, then ``1, 2, ...`` for each ``final`` and one last number for
``end``. The journal keeps this counter itself (dense, so a gap upstream means lost
events); a transcription's own ``seq`` stays in its payload. ``(device_id, session_id,
seq)`` is unique, which is what lets an upstream journal drop duplicates of events
relayed at least once. Payloads:

* ``start``: ``{"source", "sub", "organization", "department", "model", "started_at"}``
* ``final``: the whole ``transcription`` message (text, words, times, speaker)
* ``end``: ``{"reason", "ended_at"}``

Relay state per event: pending (``0``), acknowledged by the upstream (``1``), or shed
from a full outbox by :meth:`Journal.shed_backlog` (``2``: kept here, never sent).

Nothing here logs transcript text or payloads; log lines carry counts, paths and ids.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.core.errors import EdgeError
from edge.protocols.relay import (
    RelayEvent,
    check_event,
    check_id,
    check_payload,
    encode_payload,
)

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

PENDING, RELAYED, SHED = 0, 1, 2


# SQLite primary result codes that mean "this file is damaged", not "the world is busy".
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

_SCHEMA: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE sessions (
            session_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            source TEXT NOT NULL CHECK (source IN ('client', 'room', 'relay')),
            sub TEXT,
            organization TEXT,
            department TEXT,
            model TEXT,
            started_at REAL NOT NULL,
            ended_at REAL,
            end_reason TEXT,
            PRIMARY KEY (device_id, session_id)
        )""",
        "CREATE INDEX sessions_started ON sessions (started_at)",
        "CREATE INDEX sessions_ended ON sessions (ended_at) WHERE ended_at IS NOT NULL",
        # AUTOINCREMENT: ids are never reused after a purge, so an upstream's
        # acknowledgement "up to id N" can never cover a later event.
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            device_id TEXT NOT NULL,
            session_id TEXT NOT NULL,
            seq INTEGER NOT NULL CHECK (seq >= 0),
            kind TEXT NOT NULL CHECK (kind IN ('start', 'final', 'end')),
            created_at REAL NOT NULL,
            payload TEXT NOT NULL,
            size INTEGER NOT NULL,
            relayed INTEGER NOT NULL DEFAULT 0 CHECK (relayed IN (0, 1, 2)),
            UNIQUE (device_id, session_id, seq),
            FOREIGN KEY (device_id, session_id)
                REFERENCES sessions (device_id, session_id) ON DELETE CASCADE
        )""",
        "CREATE INDEX events_pending ON events (id) WHERE relayed = 0",
    ),
}


class JournalError(EdgeError):
    """The journal cannot do what was asked: closed, unknown or ended session, a disk
    or permission problem, or (read-only) a missing or damaged file."""


@dataclass(frozen=True)
class Backlog:
    """Events not yet acknowledged by the upstream and their payload bytes."""

    events: int
    bytes: int


@dataclass(frozen=True)
class SessionRow:
    session_id: str
    device_id: str
    source: str
    sub: str | None
    organization: str | None
    department: str | None
    model: str | None
    started_at: float
    ended_at: float | None
    end_reason: str | None
    finals: int = 0


class Journal:
    """The SQLite journal. Open with :meth:`Journal.open`; close with :meth:`close`
    (or use it as a context manager). Calls must be serialised (see the module doc)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, device_id: str, *,
                 readonly: bool) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.RLock()
        self.path = path
        self.device_id = device_id
        self.readonly = readonly

    # --- opening and closing ---------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, device_id: str,
             readonly: bool = False) -> Journal:
        """Open (creating if needed) the journal at ``path``. Blocks on disk I/O,
        including an integrity check that reads the whole file.

        A damaged or foreign file is set aside and replaced by a fresh journal (one
        WARNING); this never raises for corruption. It raises :class:`JournalError` for
        what a fresh file cannot fix: permissions, a full disk, a filesystem without
        WAL support. ``readonly=True`` (for ``edge transcripts``) never writes, creates
        or moves anything, and raises :class:`JournalError` when there is no usable
        journal. ``device_id`` is this device's id: local sessions are journaled under
        it and preferred when a session id is ambiguous.
        """
        check_id("device_id", device_id)
        path = Path(path)
        if readonly:
            return cls(_connect_readonly(path), path, device_id, readonly=True)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"cannot create the journal's directory {path.parent}: "
                               f"{exc.strerror}") from exc
        try:
            conn = _connect(path)
        except _Unusable as exc:
            aside = _set_aside(path)
            logger.warning("journal %s is unusable (%s): moved it aside to %s and started "
                           "a fresh journal", path, exc, aside)
            try:
                conn = _connect(path)
            except _Unusable as again:
                raise JournalError(f"a fresh journal at {path} is unusable too: {again}"
                                   ) from again
        return cls(conn, path, device_id, readonly=False)

    def close(self) -> None:
        """Close the connection (idempotent). Later calls raise :class:`JournalError`."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- local sessions --------------------------------------------------------------

    def start_session(
        self, session_id: str, *, source: str, sub: str | None,
        organization: str | None = None, department: str | None = None,
        model: str | None = None, started_at: float,
    ) -> None:
        """Journal a new local session and its ``start`` event (seq 0).

        ``source`` is ``client`` or ``room`` (``relay`` is for :meth:`ingest`). Raises
        :class:`JournalError` if this device already journaled ``session_id``.
        """
        check_id("session_id", session_id)
        if source not in ("client", "room"):
            raise ValueError(f"source: expected 'client' or 'room', got {source!r}")
        payload: dict[str, Any] = {
            "source": source, "sub": sub, "organization": organization,
            "department": department, "model": model, "started_at": started_at,
        }
        check_payload("start", payload)
        with self._write() as db:
            try:
                db.execute(
                    "INSERT INTO sessions (session_id, device_id, source, sub, organization,"
                    " department, model, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (session_id, self.device_id, source, sub, organization, department,
                     model, started_at))
            except sqlite3.IntegrityError:
                raise JournalError(f"session {session_id} is already journaled") from None
            _insert_event(db, self.device_id, session_id, 0, "start", started_at, payload)

    def append_final(self, session_id: str, message: Mapping[str, Any], *,
                     created_at: float | None = None) -> int:
        """Journal one final ``transcription`` message, whole; returns its event id.

        ``message`` must be a final (``is_final`` true) with ``text``, ``start_ms`` and
        ``end_ms``. Raises :class:`JournalError` for an unknown or ended session.
        """
        if not isinstance(message, Mapping) or message.get("is_final") is not True:
            raise ValueError("append_final takes a final transcription message")
        payload = dict(message)
        check_payload("final", payload)
        at = time.time() if created_at is None else created_at
        with self._write() as db:
            seq = self._next_seq(db, session_id)
            return _insert_event(db, self.device_id, session_id, seq, "final", at, payload)

    def end_session(self, session_id: str, *, reason: str, ended_at: float) -> None:
        """Mark a local session ended and journal its ``end`` event.

        Idempotent: ending an ended session does nothing (sessions can end on more than
        one path). Raises :class:`JournalError` for an unknown session.
        """
        payload: dict[str, Any] = {"reason": reason, "ended_at": ended_at}
        check_payload("end", payload)
        with self._write() as db:
            row = db.execute(
                "SELECT ended_at FROM sessions WHERE device_id = ? AND session_id = ?",
                (self.device_id, session_id)).fetchone()
            if row is None:
                raise JournalError(f"unknown session {session_id}")
            if row[0] is not None:
                return
            seq = _last_seq(db, self.device_id, session_id) + 1
            db.execute("UPDATE sessions SET ended_at = ?, end_reason = ? "
                       "WHERE device_id = ? AND session_id = ?",
                       (ended_at, reason, self.device_id, session_id))
            _insert_event(db, self.device_id, session_id, seq, "end", ended_at, payload)

    def end_open_sessions(self, *, reason: str = "interrupted") -> int:
        """End every local session left open by a previous run (a crash, a power cut),
        dated at its last event; returns how many. Call at start-up, before serving:
        a session live in this process would be ended too."""
        with self._write() as db:
            rows = db.execute(
                "SELECT s.session_id, MAX(e.created_at) FROM sessions s JOIN events e"
                " ON e.device_id = s.device_id AND e.session_id = s.session_id"
                " WHERE s.device_id = ? AND s.ended_at IS NULL GROUP BY s.session_id",
                (self.device_id,)).fetchall()
            for session_id, last in rows:
                payload = {"reason": reason, "ended_at": last}
                db.execute("UPDATE sessions SET ended_at = ?, end_reason = ? "
                           "WHERE device_id = ? AND session_id = ?",
                           (last, reason, self.device_id, session_id))
                seq = _last_seq(db, self.device_id, session_id) + 1
                _insert_event(db, self.device_id, session_id, seq, "end", last, payload)
        if rows:
            logger.info("journal: ended %d session(s) left open by the previous run",
                        len(rows))
        return len(rows)

    # --- relaying --------------------------------------------------------------------

    def ingest(self, events: Sequence[RelayEvent]) -> int:
        """Store events relayed from a downstream device, in order, in one transaction;
        returns how many were new. Duplicates by ``(device_id, session_id, seq)`` are
        ignored, so at-least-once delivery stores each event once.

        A ``start`` event fills in the session's row, an ``end`` event ends it; a final
        whose ``start`` never came (shed downstream) gets a placeholder row. Ingested
        events are pending here in turn, for a relay further upstream. Raises
        ValueError (and stores nothing) for an invalid event or one claiming this
        device's own id.
        """
        for event in events:
            check_event(event)
            if event.device_id == self.device_id:
                raise ValueError(f"relay event: device_id {event.device_id!r} is this "
                                 "device's own id")
        new = 0
        with self._write() as db:
            for e in events:
                db.execute(
                    "INSERT OR IGNORE INTO sessions (session_id, device_id, source,"
                    " started_at) VALUES (?, ?, 'relay', ?)",
                    (e.session_id, e.device_id, float(e.created_at)))
                cursor = db.execute(
                    "INSERT OR IGNORE INTO events (device_id, session_id, seq, kind,"
                    " created_at, payload, size) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (e.device_id, e.session_id, e.seq, e.kind, float(e.created_at),
                     *encode_payload(e.payload)))
                if cursor.rowcount != 1:
                    continue
                new += 1
                p = e.payload
                if e.kind == "start":
                    db.execute(
                        "UPDATE sessions SET sub = ?, organization = ?, department = ?,"
                        " model = ?, started_at = ? WHERE device_id = ? AND session_id = ?",
                        (p.get("sub"), p.get("organization"), p.get("department"),
                         p.get("model"), float(p["started_at"]), e.device_id, e.session_id))
                elif e.kind == "end":
                    db.execute(
                        "UPDATE sessions SET ended_at = ?, end_reason = ?"
                        " WHERE device_id = ? AND session_id = ?",
                        (float(p["ended_at"]), p["reason"], e.device_id, e.session_id))
        return new

    def pending(self, limit: int, max_bytes: int) -> list[RelayEvent]:
        """Events not yet relayed, oldest first: at most ``limit`` events and
        ``max_bytes`` payload bytes, but always at least one if any is pending (an
        event larger than ``max_bytes`` must not block the outbox)."""
        if limit < 1 or max_bytes < 1:
            raise ValueError("pending: limit and max_bytes must be at least 1")
        with self._read() as db:
            rows = db.execute(
                "SELECT id, device_id, session_id, seq, kind, created_at, payload, size"
                " FROM events WHERE relayed = 0 ORDER BY id LIMIT ?", (limit,)).fetchall()
        batch: list[RelayEvent] = []
        total = 0
        for id_, device_id, session_id, seq, kind, created_at, payload, size in rows:
            if batch and total + size > max_bytes:
                break
            total += size
            batch.append(RelayEvent(id_, device_id, session_id, seq, kind, created_at,
                                    json.loads(payload)))
        return batch

    def mark_relayed(self, up_to_id: int) -> int:
        """Mark pending events with ``id <= up_to_id`` acknowledged; returns how many."""
        with self._write() as db:
            cursor = db.execute("UPDATE events SET relayed = 1 WHERE relayed = 0 AND id <= ?",
                                (up_to_id,))
            return cursor.rowcount

    def backlog(self) -> Backlog:
        """The outbox: events pending relay and their payload bytes."""
        with self._read() as db:
            count, size = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events WHERE relayed = 0"
            ).fetchone()
        return Backlog(count, size)

    def shed_backlog(self, max_bytes: int) -> Backlog:
        """Bound the outbox: drop the oldest pending events from it until the rest
        fits in ``max_bytes``; returns what was dropped. Dropped events stay in this
        journal (until retention) but are never relayed."""
        with self._write() as db:
            rows = db.execute("SELECT id, size FROM events WHERE relayed = 0 ORDER BY id DESC"
                              ).fetchall()
            kept = 0
            cut: int | None = None
            for id_, size in rows:
                if kept + size > max_bytes:
                    cut = id_
                    break
                kept += size
            if cut is None:
                return Backlog(0, 0)
            count, size = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events"
                " WHERE relayed = 0 AND id <= ?", (cut,)).fetchone()
            db.execute("UPDATE events SET relayed = 2 WHERE relayed = 0 AND id <= ?", (cut,))
        return Backlog(count, size)

    # --- retention -------------------------------------------------------------------

    def purge(self, older_than: float, *, keep_unrelayed: bool) -> int:
        """Delete sessions that ended before ``older_than`` (a Unix time) with their
        events; returns how many sessions. With ``keep_unrelayed`` (relaying is on) a
        session with an event still pending relay is kept until it is sent. Sessions
        never ended are kept (see :meth:`end_open_sessions`).

        Deleted content is overwritten (``secure_delete``) and the WAL is truncated
        afterwards, so purged transcripts do not linger in free pages or old frames.
        """
        condition = "ended_at IS NOT NULL AND ended_at < ?"
        if keep_unrelayed:
            condition += (" AND NOT EXISTS (SELECT 1 FROM events e WHERE e.relayed = 0"
                          " AND e.device_id = sessions.device_id"
                          " AND e.session_id = sessions.session_id)")
        with self._write() as db:
            deleted = db.execute(f"DELETE FROM sessions WHERE {condition}",
                                 (older_than,)).rowcount
        if deleted:
            with self._read() as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            logger.info("journal: purged %d session(s) past retention", deleted)
        return deleted

    # --- reading ---------------------------------------------------------------------

    def sessions(self, since: float | None = None, *, limit: int = 1000,
                 device_id: str | None = None) -> list[SessionRow]:
        """The ``limit`` most recent sessions started at or after ``since`` (all if
        ``None``), local and relayed (or only ``device_id``'s), oldest first."""
        where: list[str] = ["1"]
        args: list[Any] = []
        if since is not None:
            where.append("started_at >= ?")
            args.append(since)
        if device_id is not None:
            where.append("device_id = ?")
            args.append(device_id)
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE {' AND '.join(where)}"
                " ORDER BY started_at DESC, rowid DESC LIMIT ?", (*args, limit)).fetchall()
        return [SessionRow(*row) for row in reversed(rows)]

    def session(self, session_id: str, device_id: str | None = None) -> SessionRow | None:
        """One session: this device's if it has one by that id, else another device's
        (the most recent, should ids collide). ``device_id`` picks one explicitly."""
        with self._read() as db:
            return self._resolve(db, session_id, device_id)

    def finals(self, session_id: str, device_id: str | None = None) -> list[dict[str, Any]]:
        """The session's final transcription messages in order (resolved like
        :meth:`session`); empty for an unknown session."""
        with self._read() as db:
            row = self._resolve(db, session_id, device_id)
            if row is None:
                return []
            payloads = db.execute(
                "SELECT payload FROM events WHERE device_id = ? AND session_id = ?"
                " AND kind = 'final' ORDER BY seq", (row.device_id, session_id)).fetchall()
        return [json.loads(p) for (p,) in payloads]

    # --- internals -------------------------------------------------------------------

    def _resolve(self, db: sqlite3.Connection, session_id: str,
                 device_id: str | None) -> SessionRow | None:
        if device_id is not None:
            row = db.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions"
                             " WHERE session_id = ? AND device_id = ?",
                             (session_id, device_id)).fetchone()
        else:
            row = db.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id = ?"
                             " ORDER BY device_id = ? DESC, started_at DESC LIMIT 1",
                             (session_id, self.device_id)).fetchone()
        return None if row is None else SessionRow(*row)

    def _next_seq(self, db: sqlite3.Connection, session_id: str) -> int:
        row = db.execute("SELECT ended_at FROM sessions WHERE device_id = ? AND session_id = ?",
                         (self.device_id, session_id)).fetchone()
        if row is None:
            raise JournalError(f"unknown session {session_id}")
        if row[0] is not None:
            raise JournalError(f"session {session_id} has ended")
        return _last_seq(db, self.device_id, session_id) + 1

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise JournalError("the journal is closed")
        return self._conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction, committed on success and rolled back otherwise;
        sqlite3 errors come out as JournalError."""
        with self._lock:
            db = self._connection()
            if self.readonly:
                raise JournalError("the journal is open read-only")
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise JournalError(f"journal: cannot begin a write: {exc}") from exc
            try:
                yield db
                db.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise JournalError(f"journal write failed: {exc}") from exc
                raise

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._connection()
            try:
                yield db
            except sqlite3.Error as exc:
                raise JournalError(f"journal read failed: {exc}") from exc


_SESSION_COLUMNS = (
    "session_id, device_id, source, sub, organization, department, model, started_at,"
    " ended_at, end_reason, (SELECT COUNT(*) FROM events e WHERE e.device_id ="
    " sessions.device_id AND e.session_id = sessions.session_id AND e.kind = 'final')"
)


# --- events ----------------------------------------------------------------------------

def _insert_event(db: sqlite3.Connection, device_id: str, session_id: str, seq: int,
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


def _last_seq(db: sqlite3.Connection, device_id: str, session_id: str) -> int:
    (seq,) = db.execute("SELECT COALESCE(MAX(seq), -1) FROM events"
                        " WHERE device_id = ? AND session_id = ?",
                        (device_id, session_id)).fetchone()
    return int(seq)


# --- files -----------------------------------------------------------------------------

class _Unusable(Exception):
    """The file is damaged or not ours: set it aside."""


def _make_private(path: Path) -> None:
    # Created here 0600 before SQLite opens it: SQLite creates -wal and -shm with the
    # database's mode. No umask games: the umask is process-wide and threads race it.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.close(fd)
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(FileNotFoundError):
            if name.stat().st_mode & 0o077:
                name.chmod(0o600)


def _damaged(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def _connect(path: Path) -> sqlite3.Connection:
    """Open, check, configure and migrate. Raises _Unusable or JournalError."""
    try:
        _make_private(path)
    except OSError as exc:
        raise JournalError(f"cannot create the journal {path}: {exc.strerror}") from exc
    try:
        conn = sqlite3.connect(path, timeout=10.0, isolation_level=None,
                               check_same_thread=False)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open the journal {path}: {exc}") from exc
    try:
        _prepare(conn)
    except sqlite3.Error as exc:
        conn.close()
        if _damaged(exc):
            raise _Unusable(str(exc)) from exc
        raise JournalError(f"cannot open the journal {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection) -> None:
    check = conn.execute("PRAGMA quick_check").fetchall()
    if check != [("ok",)]:
        first = str(check[0][0]) if check else "no result"
        raise _Unusable(f"integrity check failed: {first[:200]}")
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise _Unusable(f"schema version {version} is newer than this edge's "
                        f"({SCHEMA_VERSION})")
    if version == 0 and conn.execute("SELECT COUNT(*) FROM sqlite_schema").fetchone()[0]:
        raise _Unusable("a database that is not an edge journal")
    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":
        raise JournalError(f"the filesystem does not support WAL mode (got {mode!r})")
    conn.execute("PRAGMA synchronous = FULL")  # WAL + FULL: fsync at every commit
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA secure_delete = ON")  # purged transcripts are overwritten
    conn.execute("PRAGMA trusted_schema = OFF")
    if version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _SCHEMA[step]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _connect_readonly(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise JournalError(f"no journal at {path}")
    uri = path.resolve().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=10.0, isolation_level=None,
                               check_same_thread=False)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open the journal {path}: {exc}") from exc
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        conn.execute("PRAGMA trusted_schema = OFF")
    except sqlite3.Error as exc:
        conn.close()
        hint = "; the daemon sets it aside at its next start" if _damaged(exc) else ""
        raise JournalError(f"cannot read the journal {path}: {exc}{hint}") from exc
    if version != SCHEMA_VERSION:
        conn.close()
        raise JournalError(f"{path} is not an edge journal of schema version "
                           f"{SCHEMA_VERSION} (found {version})")
    return conn


def _set_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    try:
        os.replace(path, target)
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{path}{suffix}", f"{target}{suffix}")
        _fsync_dir(path.parent)
    except OSError as exc:
        raise JournalError(f"journal {path} is unusable and cannot be moved aside: "
                           f"{exc.strerror}") from exc
    return target


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
