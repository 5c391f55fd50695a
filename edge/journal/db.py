"""The transcript journal: every session and every final transcription, durably, in SQLite.

This module is the journal's face and its file: the schema and its migrations, opening
(with recovery from a damaged file) and closing, and :class:`Journal`, whose methods
are implemented by one module per concern: :mod:`~edge.journal.local` (local
sessions), :mod:`~edge.journal.outbox` (the relay outbox), :mod:`~edge.journal.ingest`
(events relayed from downstream), :mod:`~edge.journal.retention` (purging) and
:mod:`~edge.journal.reading`. Its values are in :mod:`~edge.journal.records`.

Plain blocking code (SQLCipher through ``sqlcipher3``, the ``sqlite3`` API); no trio.
Every method blocks on disk I/O.
A read-write journal holds two connections (see :mod:`edge.journal.connection`): the
*hot* one for :meth:`~Journal.start_session`, :meth:`~Journal.append_final` and
:meth:`~Journal.end_session`, and the *bulk* one for every other method. The two may be
used from two threads at once (the daemon runs each in its own worker thread, see
:mod:`edge.journal.service`); calls on one connection are serialised by its lock.
Writes by local sessions and ingest are each one transaction, committed and (WAL with
``synchronous=FULL``) fsynced before the method returns: a caller that journals a final
before sending it never sends what a power cut could lose. The relay's bookkeeping and
retention write in short transactions without an fsync of their own (their loss only
repeats work).

Files. The journal lives where the caller says (normally ``<state dir>/journal.db``).
Its directory is created 0700, the database 0600; SQLite gives its ``-wal`` and ``-shm``
files the database's mode (and owner, when run as root).

Encryption. The file is a SQLCipher 4 database: every page (the WAL's too, and any
temporary file, though temporary tables are kept in memory) is encrypted with AES-256
and authenticated with HMAC-SHA512, under the ``journal`` subkey of the device's data
key (:class:`~edge.crypto.datakey.DataKey`; a raw key, so no KDF runs at open). Nothing
is in the clear but the file's size: not table names, session ids or times. A journal
that exists and does not open with the key raises :class:`JournalKeyError`; it is never
set aside or replaced, and no plaintext file is ever created beside it. A plaintext
journal (an edge from before encryption) is encrypted in place at the first read-write
open with a key: exported to ``<name>.encrypting``, which then replaces it; the
plaintext file is kept as ``<name>.plaintext`` until the encrypted one is in place,
then overwritten with zeros and removed. A crash at any point leaves either the
plaintext journal (encrypted again at the next open) or the encrypted one.

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

* ``start``: ``{"source", "sub", "organization", "department", "model", "started_at",
  "dialect"}``; ``dialect`` is the wire protocol a client session spoke (``live``,
  ``assemblyai``, ...), left out for the room, and absent from the events of devices
  older than schema version 2
* ``final``: the whole ``transcription`` message (text, words, times, speaker)
* ``end``: ``{"reason", "ended_at"}``

Dialects. ``sessions.dialect`` (schema version 2) says which wire protocol a session
spoke; ``NULL`` for the room (it speaks none) and for a relayed session whose start
never came or did not say. Before dialects a client could speak only the Live API, so
a client session journaled without one spoke ``live``: opening a version-1 file adds
the column and fills it in so (from the start event's payload for relayed sessions),
and a read-only look at a version-1 file (``edge transcripts`` before the daemon has
opened it) reads it so without writing.

Epoch (schema version 3): a ``meta`` row ``epoch``, random, written in the transaction
that creates the file (or migrates an older one); see :attr:`Journal.epoch`.

Relay state per event: pending (``0``), acknowledged by the upstream (``1``), or shed
from a full outbox by :meth:`Journal.shed_backlog` (``2``: kept here, never sent).

Set aside (schema version 4): a ``set_aside`` row per event taken out of the outbox
because a consumer refused it or it cannot be sent (``relayed`` is ``2`` for it, as for
shed events), with the reason; :meth:`Journal.requeue` puts it back.

Nothing here logs transcript text or payloads; log lines carry counts, paths and ids.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlcipher3 import dbapi2 as sqlite3

from edge.core.fs import create_private, fsync_dir, shred
from edge.crypto.datakey import DataKey
from edge.journal import ingest as _ingest
from edge.journal import local, outbox, reading, retention
from edge.journal.connection import Link, WriteGate
from edge.journal.outbox import SetAside
from edge.journal.records import (
    PENDING,
    RELAYED,
    SHED,
    Backlog,
    JournalError,
    JournalKeyError,
    RelayEvent,
    SessionRow,
)
from edge.protocols.relay import check_id

__all__ = ["PENDING", "RELAYED", "SCHEMA_VERSION", "SHED", "Backlog", "Journal",
           "JournalError", "JournalKeyError", "RelayEvent", "SessionRow", "SetAside"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 4
_OLDEST_READABLE = 1  # read-only opening reads files of this version and later

# SQLite primary result codes that mean "this file is damaged", not "the world is busy".
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

_PLAINTEXT_HEADER = b"SQLite format 3\x00"
_PLAINTEXT_SUFFIX = ".plaintext"  # a plaintext journal while its encrypted copy goes in
_ENCRYPTING_SUFFIX = ".encrypting"  # the encrypted copy being written

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
    2: (
        "ALTER TABLE sessions ADD COLUMN dialect TEXT",
        f"UPDATE sessions SET dialect = {reading.LEGACY_DIALECT}",
    ),
    # The journal's epoch, set once when the file is created (or first opened by an
    # edge with version 3): event ids restart only in a new file, so (device, epoch,
    # id) names an event for good (the MQTT relay's idempotency key).
    3: (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO meta (key, value) VALUES ('epoch', lower(hex(randomblob(8))))",
    ),
    # Events set aside from the outbox (refused by a consumer, or too large to send):
    # why and when, until an operator re-queues them or retention purges them.
    4: (
        """CREATE TABLE set_aside (
            event_id INTEGER PRIMARY KEY REFERENCES events (id) ON DELETE CASCADE,
            reason TEXT NOT NULL,
            at REAL NOT NULL
        )""",
    ),
}


class Journal:
    """The SQLite journal. Open with :meth:`Journal.open`; close with :meth:`close`
    (or use it as a context manager). See the module doc for which calls may run
    at the same time."""

    def __init__(self, bulk: Link, hot: Link | None, path: Path, device_id: str, *,
                 readonly: bool, schema: int = SCHEMA_VERSION) -> None:
        self._bulk = bulk
        self._schema = schema  # the file's; older than ours only when read-only
        self._hot = hot if hot is not None else bulk
        self.path = path
        self.device_id = device_id
        self.readonly = readonly

    @property
    def _conn(self) -> sqlite3.Connection | None:
        """The bulk connection (for tests and tools that inspect the file)."""
        return self._bulk.conn

    # --- opening and closing ---------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, device_id: str, key: DataKey,
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

        ``key`` encrypts the file (see the module doc). A journal that exists and does
        not open with it raises :class:`JournalKeyError`; a plaintext journal is
        encrypted in place (read-write only: read-only raises JournalError).
        """
        check_id("device_id", device_id)
        path = Path(path)
        gate = WriteGate()
        secret = _key_pragma(key)
        if readonly:
            conn, version = _connect_readonly(path, secret, key)
            return cls(Link(conn, gate, hot=False, readonly=True), None, path, device_id,
                       readonly=True, schema=version)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"cannot create the journal's directory {path.parent}: "
                               f"{exc.strerror}") from exc
        _recover_encryption(path)
        if _is_plaintext(path):
            _encrypt_plaintext(path, secret)
            logger.warning("journal %s was not encrypted: encrypted it in place with the "
                           "%s, and overwrote and removed the plaintext file", path,
                           key.describe())
        try:
            conn = _connect(path, secret, key)
        except _Unusable as exc:
            aside = _set_aside(path)
            logger.warning("journal %s is unusable (%s): moved it aside to %s and started "
                           "a fresh journal", path, exc, aside)
            try:
                conn = _connect(path, secret, key)
            except _Unusable as again:
                raise JournalError(f"a fresh journal at {path} is unusable too: {again}"
                                   ) from again
        try:
            hot = _connect_hot(path, secret)
        except BaseException:
            conn.close()
            raise
        return cls(Link(conn, gate, hot=False), Link(hot, gate, hot=True), path, device_id,
                   readonly=False)

    @property
    def epoch(self) -> str:
        """The journal's epoch: 16 hex digits chosen when the file was created; ""
        for a read-only look at a file older than schema version 3."""
        if self._schema < 3:
            return ""
        with self._bulk.read() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        return str(row[0]) if row else ""

    def close(self) -> None:
        """Close both connections (idempotent). Later calls raise :class:`JournalError`."""
        self._hot.close()
        self._bulk.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- local sessions (the hot connection) -----------------------------------------

    def start_session(
        self, session_id: str, *, source: str, sub: str | None,
        organization: str | None = None, department: str | None = None,
        model: str | None = None, started_at: float, dialect: str | None = None,
    ) -> None:
        """Journal a new local session and its ``start`` event (seq 0).

        ``source`` is ``client`` or ``room`` (``relay`` is for :meth:`ingest`).
        ``dialect`` is the wire protocol a client speaks (``None``: ``live``, the Live
        API); the room speaks none and must not be given one. Raises ValueError for a
        dialect that is not a short lower-case identifier, :class:`JournalError` if
        this device already journaled ``session_id``.
        """
        local.start_session(self._writable(self._hot), self.device_id, session_id,
                            source=source, sub=sub, organization=organization,
                            department=department, model=model, started_at=started_at,
                            dialect=dialect)

    def append_final(self, session_id: str, message: Mapping[str, Any], *,
                     created_at: float | None = None) -> int:
        """Journal one final ``transcription`` message, whole; returns its event id.

        ``message`` must be a final (``is_final`` true) with ``text``, ``start_ms`` and
        ``end_ms``. Raises :class:`JournalError` for an unknown or ended session.
        Returns once the final is on disk (committed and fsynced).
        """
        return local.append_final(self._writable(self._hot), self.device_id, session_id,
                                  message, created_at)

    def end_session(self, session_id: str, *, reason: str, ended_at: float) -> None:
        """Mark a local session ended and journal its ``end`` event.

        Idempotent: ending an ended session does nothing (sessions can end on more than
        one path). Raises :class:`JournalError` for an unknown session.
        """
        local.end_session(self._writable(self._hot), self.device_id, session_id,
                          reason=reason, ended_at=ended_at)

    def end_open_sessions(self, *, reason: str = "interrupted") -> int:
        """End every local session left open by a previous run (a crash, a power cut),
        dated at its last event; returns how many. Call at start-up, before serving:
        a session live in this process would be ended too."""
        ended = local.end_open_sessions(self._writable(self._bulk), self.device_id,
                                        reason=reason)
        if ended:
            logger.info("journal: ended %d session(s) left open by the previous run", ended)
        return ended

    # --- relaying (the bulk connection) ----------------------------------------------

    def ingest(self, events: Sequence[RelayEvent]) -> int:
        """Store events relayed from a downstream device, in order, in one durable
        transaction; returns how many were new. Duplicates by ``(device_id,
        session_id, seq)`` are ignored, so at-least-once delivery stores each event once.

        A ``start`` event fills in the session's row (its dialect too: one left out by
        an older device is ``live`` for a client session), an ``end`` event ends it; a final
        whose ``start`` never came (shed downstream) gets a placeholder row. Ingested
        events are pending here in turn, for a relay further upstream. Raises
        ValueError (and stores nothing) for an invalid event or one claiming this
        device's own id.
        """
        return _ingest.ingest(self._writable(self._bulk), self.device_id, events)

    def pending(self, limit: int, max_bytes: int) -> list[RelayEvent]:
        """Events not yet relayed, oldest first: at most ``limit`` events and
        ``max_bytes`` payload bytes, but always at least one if any is pending (an
        event larger than ``max_bytes`` must not block the outbox)."""
        return outbox.pending(self._bulk, limit, max_bytes)

    def mark_relayed(self, up_to_id: int) -> int:
        """Mark pending events with ``id <= up_to_id`` acknowledged; returns how many.
        Not fsynced by itself: a power cut may undo it, and the events are sent again."""
        return outbox.mark_relayed(self._writable(self._bulk), up_to_id)

    def backlog(self) -> Backlog:
        """The outbox: events pending relay and their payload bytes."""
        return outbox.backlog(self._bulk)

    def set_aside(self, reasons: Mapping[int, str]) -> int:
        """Take pending events (id -> reason code) out of the outbox for good: kept
        here, never sent until :meth:`requeue`; returns how many. Durable."""
        return outbox.set_aside(self._writable(self._bulk), reasons)

    def set_aside_events(self, limit: int = 1000) -> list[SetAside]:
        """The events set aside, oldest first (ids, sessions, reasons; no payloads)."""
        return outbox.set_aside_events(self._bulk, limit, schema=self._schema)

    def set_aside_count(self) -> int:
        return outbox.set_aside_count(self._bulk, schema=self._schema)

    def requeue(self, ids: Sequence[int] | None = None) -> int:
        """Put set-aside events (these ids, or all) back in the outbox; returns how many."""
        return outbox.requeue(self._writable(self._bulk), ids)

    def shed_backlog(self, max_bytes: int) -> Backlog:
        """Bound the outbox: drop the oldest pending events from it until the rest
        fits in ``max_bytes``; returns what was dropped. Dropped events stay in this
        journal (until retention) but are never relayed. One read finds the cut; the
        writes go in short chunks."""
        return outbox.shed_backlog(self._writable(self._bulk), max_bytes)

    # --- retention -------------------------------------------------------------------

    def purge(self, older_than: float, *, keep_unrelayed: bool) -> int:
        """Delete sessions that ended before ``older_than`` (a Unix time) with their
        events; returns how many sessions. With ``keep_unrelayed`` (relaying is on) a
        session with an event still pending relay is kept until it is sent. Sessions
        never ended are kept (see :meth:`end_open_sessions`). Deletes in chunks of at
        most a few thousand rows per transaction (see :mod:`edge.journal.retention`).

        Deleted content is overwritten (``secure_delete``) and the WAL is truncated
        afterwards, so purged transcripts do not linger in free pages or old frames.
        """
        deleted = retention.purge(self._writable(self._bulk), older_than,
                                  keep_unrelayed=keep_unrelayed)
        if deleted:
            logger.info("journal: purged %d session(s) past retention", deleted)
        return deleted

    def checkpoint(self) -> None:
        """Copy what the WAL holds into the database, beside any writer (``PASSIVE``):
        the hot connection leaves this to the bulk side, so that no final waits for it."""
        with self._bulk.read() as db:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    # --- reading (the bulk connection) -----------------------------------------------

    def sessions(self, since: float | None = None, *, limit: int = 1000,
                 device_id: str | None = None) -> list[SessionRow]:
        """The ``limit`` most recent sessions started at or after ``since`` (all if
        ``None``), local and relayed (or only ``device_id``'s), oldest first."""
        return reading.sessions(self._bulk, since, limit, device_id, schema=self._schema)

    def session(self, session_id: str, device_id: str | None = None) -> SessionRow | None:
        """One session: this device's if it has one by that id, else another device's
        (the most recent, should ids collide). ``device_id`` picks one explicitly."""
        return reading.session(self._bulk, self.device_id, session_id, device_id,
                               schema=self._schema)

    def finals(self, session_id: str, device_id: str | None = None) -> list[dict[str, Any]]:
        """The session's final transcription messages in order (resolved like
        :meth:`session`); empty for an unknown session."""
        return reading.finals(self._bulk, self.device_id, session_id, device_id,
                              schema=self._schema)

    def _writable(self, link: Link) -> Link:
        if self.readonly:
            raise JournalError("the journal is open read-only")
        return link


# --- files -----------------------------------------------------------------------------

class _Unusable(Exception):
    """The file is damaged or not ours: set it aside."""


def _make_private(path: Path) -> None:
    # Created 0600 before SQLite opens it: SQLite creates -wal and -shm with the
    # database's mode. Files of an older edge may be looser: tightened.
    create_private(path)
    for name in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(FileNotFoundError):
            if name.stat().st_mode & 0o077:
                name.chmod(0o600)


def _damaged(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def _key_pragma(key: DataKey) -> str:
    """SQLCipher's form of a raw 256-bit key (no KDF runs at open)."""
    return f"x'{key.subkey('journal').hex()}'"


def _keyed(target: str | Path, secret: str, *, uri: bool = False) -> sqlite3.Connection:
    """A SQLCipher connection with the key set and its error log off (it would print
    to stderr). Raises sqlite3.Error."""
    conn = sqlite3.connect(target, uri=uri, timeout=10.0, isolation_level=None,
                           check_same_thread=False)
    try:
        conn.execute("PRAGMA cipher_log_level = NONE")
        conn.execute(f'PRAGMA key = "{secret}"')
    except BaseException:
        conn.close()
        raise
    return conn


def _check_key(conn: sqlite3.Connection, path: Path, key: DataKey) -> None:
    """Read the first page, the one place a wrong key shows. Raises JournalKeyError."""
    try:
        conn.execute("PRAGMA user_version").fetchone()  # decrypts page 1, no more
    except sqlite3.Error as exc:
        # SQLCipher reports a page that fails its HMAC as "not a database"; a file cut
        # short or otherwise malformed past its first page is damage, not a key problem.
        code = getattr(exc, "sqlite_errorcode", None)
        if code is None or code & 0xFF != _SQLITE_NOTADB:
            raise
        raise JournalKeyError(
            f"the journal {path} does not open with the {key.describe()}: a wrong key, or "
            "a damaged file (it is not set aside: move it away yourself if the key is "
            "right and the data is lost)") from None


def _connect(path: Path, secret: str, key: DataKey) -> sqlite3.Connection:
    """Open, check, configure and migrate. Raises _Unusable, JournalKeyError or
    JournalError."""
    try:
        _make_private(path)
    except OSError as exc:
        raise JournalError(f"cannot create the journal {path}: {exc.strerror}") from exc
    try:
        conn = _keyed(path, secret)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open the journal {path}: {exc}") from exc
    try:
        _check_key(conn, path, key)
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
    _configure(conn)
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


def _configure(conn: sqlite3.Connection, *, autocheckpoint: int = 1000) -> None:
    """Per-connection settings (WAL itself is a property of the file)."""
    conn.execute("PRAGMA synchronous = FULL")  # WAL + FULL: fsync at every commit
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA secure_delete = ON")  # purged transcripts are overwritten
    conn.execute("PRAGMA trusted_schema = OFF")
    conn.execute("PRAGMA temp_store = MEMORY")  # no temporary files beside the journal
    conn.execute(f"PRAGMA wal_autocheckpoint = {autocheckpoint}")


def _connect_hot(path: Path, secret: str) -> sqlite3.Connection:
    """A second connection to a journal :func:`_connect` just checked and migrated.

    Its commits hardly ever checkpoint (which would make a final wait for the WAL to be
    copied into the database): the bulk link's commits and
    :meth:`Journal.checkpoint` do that; 10,000 pages is a bound for a journal whose
    service never runs one."""
    try:
        conn = _keyed(path, secret)
        try:
            _configure(conn, autocheckpoint=10000)
        except BaseException:
            conn.close()
            raise
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open the journal {path}: {exc}") from exc
    return conn


def _connect_readonly(path: Path, secret: str, key: DataKey
                      ) -> tuple[sqlite3.Connection, int]:
    if not path.is_file():
        raise JournalError(f"no journal at {path}")
    if _is_plaintext(path):
        raise JournalError(f"the journal {path} is not encrypted yet: the daemon encrypts "
                           "it at its next start")
    uri = path.resolve().as_uri() + "?mode=ro"
    try:
        conn = _keyed(uri, secret, uri=True)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open the journal {path}: {exc}") from exc
    try:
        _check_key(conn, path, key)
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        conn.execute("PRAGMA trusted_schema = OFF")
    except JournalKeyError:
        conn.close()
        raise
    except sqlite3.Error as exc:
        conn.close()
        hint = "; the daemon sets it aside at its next start" if _damaged(exc) else ""
        raise JournalError(f"cannot read the journal {path}: {exc}{hint}") from exc
    if not _OLDEST_READABLE <= version <= SCHEMA_VERSION:
        conn.close()
        raise JournalError(f"{path} is not an edge journal of schema version "
                           f"{_OLDEST_READABLE} to {SCHEMA_VERSION} (found {version})")
    return conn, version


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
        fsync_dir(path.parent)
    except OSError as exc:
        raise JournalError(f"journal {path} is unusable and cannot be moved aside: "
                           f"{exc.strerror}") from exc
    return target


# --- encryption ------------------------------------------------------------------------

def _is_plaintext(path: Path) -> bool:
    """Whether ``path`` is a plaintext SQLite database (SQLCipher's first 16 bytes are
    a random salt; SQLite's are its magic string)."""
    try:
        with path.open("rb") as f:
            return f.read(len(_PLAINTEXT_HEADER)) == _PLAINTEXT_HEADER
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise JournalError(f"cannot read the journal {path}: {exc.strerror}") from exc


def _sidecars(path: Path) -> list[Path]:
    return [Path(f"{path}{suffix}") for suffix in ("-wal", "-shm", "-journal")]


def _recover_encryption(path: Path) -> None:
    """Finish or undo an encryption in place that a crash interrupted."""
    plain = path.with_name(path.name + _PLAINTEXT_SUFFIX)
    partial = path.with_name(path.name + _ENCRYPTING_SUFFIX)
    try:
        if plain.exists():
            if path.exists() and path.stat().st_size and not _is_plaintext(path):
                for leftover in (plain, *_sidecars(plain)):
                    shred(leftover)  # the encrypted journal is in place: this is stale
            else:
                os.replace(plain, path)  # the swap never happened: start again
                for sidecar, original in zip(_sidecars(plain), _sidecars(path), strict=True):
                    if sidecar.exists():
                        os.replace(sidecar, original)
                fsync_dir(path.parent)
        for leftover in (partial, *_sidecars(partial)):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    except OSError as exc:
        raise JournalError(f"cannot finish encrypting the journal {path}: "
                           f"{exc.strerror}") from exc


def export(source: sqlite3.Connection, target: Path, secret: str) -> None:
    """Copy the database open on ``source`` into a new file ``target`` keyed by
    ``secret`` (``sqlcipher_export``): same schema, rows and ``user_version``, WAL mode,
    0600, fsynced. Raises sqlite3.Error or OSError; ``target`` must not exist."""
    create_private(target)
    (version,) = source.execute("PRAGMA user_version").fetchone()
    source.execute("ATTACH DATABASE ? AS rekeyed KEY ?", (str(target), secret))
    try:
        source.execute("SELECT sqlcipher_export('rekeyed')").fetchall()
        source.execute(f"PRAGMA rekeyed.user_version = {int(version)}")
    finally:
        source.execute("DETACH DATABASE rekeyed")
    check = _keyed(target, secret)
    try:
        (mode,) = check.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise JournalError(f"the filesystem does not support WAL mode (got {mode!r})")
    finally:
        check.close()  # the last connection: its WAL is checkpointed and removed
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encrypt_plaintext(path: Path, secret: str) -> None:
    """Encrypt a plaintext journal in place (see the module doc). Raises JournalError."""
    partial = path.with_name(path.name + _ENCRYPTING_SUFFIX)
    plain = path.with_name(path.name + _PLAINTEXT_SUFFIX)
    try:
        source = sqlite3.connect(path, timeout=10.0, isolation_level=None,
                                 check_same_thread=False)
        try:
            source.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            export(source, partial, secret)
        finally:
            source.close()
        os.replace(path, plain)
        for sidecar in _sidecars(path):  # normally gone with the last connection
            if sidecar.exists():
                os.replace(sidecar, Path(f"{plain}{sidecar.name[len(path.name):]}"))
        os.replace(partial, path)
        fsync_dir(path.parent)
        for leftover in (plain, *_sidecars(plain)):
            shred(leftover)
    except (OSError, sqlite3.Error) as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        detail = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise JournalError(f"cannot encrypt the plaintext journal {path}: {detail}"
                           ) from exc


def key_opens(path: str | os.PathLike[str], key: DataKey) -> bool | None:
    """Whether ``key`` opens the journal at ``path`` (None: there is no journal, or it
    is plaintext). Reads the first page only; blocking."""
    path = Path(path)
    if not path.is_file() or not path.stat().st_size or _is_plaintext(path):
        return None
    try:
        # immutable: no locks, no -wal or -shm made beside the file; the first page,
        # all this reads, is in the main file once the journal has been opened.
        conn = _keyed(path.resolve().as_uri() + "?mode=ro&immutable=1", _key_pragma(key),
                      uri=True)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open the journal {path}: {exc}") from exc
    try:
        _check_key(conn, path, key)
    except JournalKeyError:
        return False
    except sqlite3.Error as exc:
        raise JournalError(f"cannot read the journal {path}: {exc}") from exc
    finally:
        conn.close()
    return True


def export_rekeyed(path: str | os.PathLike[str], old: DataKey, new: DataKey,
                   target: str | os.PathLike[str]) -> None:
    """Write the journal at ``path`` (keyed by ``old``) to a new file ``target`` keyed by
    ``new``, holding an exclusive lock meanwhile: raises JournalError if another process
    (a running daemon, ``edge transcripts``) has the journal open. Leaves ``path`` as it
    was, with its WAL checkpointed and removed. Blocking."""
    path, target = Path(path), Path(target)
    for leftover in (target, *_sidecars(target)):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
    try:
        conn = _keyed(path, _key_pragma(old))
        conn.execute("PRAGMA busy_timeout = 100")
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open the journal {path}: {exc}") from exc
    try:
        _check_key(conn, path, old)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        try:
            conn.execute("BEGIN EXCLUSIVE")
            conn.execute("COMMIT")
        except sqlite3.OperationalError:
            raise JournalError(f"the journal {path} is in use by another process: stop "
                               "the daemon first (systemctl stop edge)") from None
        export(conn, target, _key_pragma(new))
    except sqlite3.Error as exc:
        raise JournalError(f"cannot re-encrypt the journal {path}: {exc}") from exc
    finally:
        conn.close()
    for sidecar in _sidecars(path):
        if sidecar.exists() and sidecar.name.endswith("-wal") and sidecar.stat().st_size:
            raise JournalError(f"the journal's WAL {sidecar} was not emptied")


def connect(path: str | os.PathLike[str], key: DataKey) -> sqlite3.Connection:
    """A bare connection to the journal at ``path``, keyed, for tools and tests that
    inspect the file (autocommit; the caller closes it). Raises JournalKeyError when
    the key does not open it."""
    path = Path(path)
    conn = _keyed(path, _key_pragma(key))
    try:
        _check_key(conn, path, key)
    except BaseException:
        conn.close()
        raise
    return conn
