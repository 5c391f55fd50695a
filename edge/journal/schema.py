"""The journal's schema: its tables by version, the migration from older files, and
each connection's settings.

Events. Each session is a sequence of events numbered by ``seq`` within the session:
``0`` for ``start``, then ``1, 2, ...`` for each ``final`` and one last number for
``end``. The journal keeps this counter itself (dense, so a gap upstream means lost
events); a transcription's own ``seq`` stays in its payload. ``(device_id, session_id,
seq)`` is unique, which is what lets an upstream journal drop duplicates of events
relayed at least once. Payloads:

* ``start``: ``{"source", "sub", "organization", "department", "model", "started_at",
  "dialect", "language"}``; ``dialect`` is the wire protocol a client session spoke
  (``live``, ``assemblyai``, ...), left out for the room, and absent from the events of
  devices older than schema version 2; ``language`` is the language tag of the model
  the session was transcribed by (``ko``, ``en-US``; null when not known), absent from
  the events of devices older than schema version 6
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
that creates the file (or migrates an older one); see
:attr:`~edge.journal.db.Journal.epoch`.

Relay state per event: pending (``0``), acknowledged by the upstream (``1``), or shed
from a full outbox by :meth:`~edge.journal.db.Journal.shed_backlog` (``2``: kept here,
never sent).

Set aside (schema version 4): a ``set_aside`` row per event taken out of the outbox
because a consumer refused it or it cannot be sent (``relayed`` is ``2`` for it, as for
shed events), with the reason; :meth:`~edge.journal.db.Journal.requeue` puts it back.

Audit trail (schema version 5): ``audit`` holds this device's records, numbered by
``seq`` from 1 without gaps, each with the SHA-256 of the one before (``prev``) and its
own (``hash``; see :mod:`edge.protocols.audit`); ``meta`` rows ``audit_head`` (the last
record's ``seq`` and hash) and ``audit_anchor`` (the last purged one's) let a verifier
tell a deleted tail and a purge apart. ``audit_ingested`` holds records relayed from
downstream devices, by (``device_id``, ``seq``), with what failed their check (``broken``,
NULL when the chain holds). See :mod:`edge.journal.audit`.

Languages (schema version 6): ``sessions.language`` is the language tag of the model
that transcribed the session (``[recognizer.models]``; the room's is
``microphone.language``'s). Opening an older file adds the column and fills it in where
it can tell: a local session from its model's name, when the daemon's config maps that
name to one language (:func:`prepare`'s ``model_languages``); a relayed one from its
start event's payload (a newer device may have relayed into an older upstream); NULL
otherwise. A read-only look at an older file reads NULL for local sessions.

Plain blocking code (``sqlcipher3``); no trio.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlcipher3 import dbapi2 as sqlite3

from edge.journal import reading
from edge.journal.records import JournalError

SCHEMA_VERSION = 6
OLDEST_READABLE = 1  # read-only opening reads files of this version and later


# An audit record's columns after its seq, in this device's table and the ingested one.
_AUDIT_COLUMNS = """\
            time REAL NOT NULL,
            sub TEXT,
            organization TEXT,
            department TEXT,
            action TEXT NOT NULL,
            object TEXT,
            outcome TEXT NOT NULL,
            reason TEXT,
            peer TEXT,
            detail TEXT NOT NULL,
            prev TEXT NOT NULL,
            hash TEXT NOT NULL,"""


class Unusable(Exception):
    """The file is damaged or not ours: set it aside."""


SCHEMA: dict[int, tuple[str, ...]] = {
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
    # The audit trail: this device's hash-chained records, and those relayed to it.
    5: (
        f"""CREATE TABLE audit (
            seq INTEGER PRIMARY KEY CHECK (seq >= 1),
{_AUDIT_COLUMNS}
            relayed INTEGER NOT NULL DEFAULT 0 CHECK (relayed IN (0, 1))
        )""",
        "CREATE INDEX audit_pending ON audit (seq) WHERE relayed = 0",
        "CREATE INDEX audit_time ON audit (time)",
        # Append-only: a record's content never changes (retention deletes whole
        # records from the oldest, keeping an anchor; see edge.journal.audit).
        """CREATE TRIGGER audit_append_only BEFORE UPDATE OF seq, time, sub,
            organization, department, action, object, outcome, reason, peer, detail,
            prev, hash ON audit BEGIN
            SELECT RAISE(ABORT, 'audit records are append-only');
        END""",
        f"""CREATE TABLE audit_ingested (
            device_id TEXT NOT NULL,
            seq INTEGER NOT NULL CHECK (seq >= 1),
{_AUDIT_COLUMNS}
            received_at REAL NOT NULL,
            broken TEXT,
            PRIMARY KEY (device_id, seq)
        )""",
        "CREATE INDEX audit_ingested_time ON audit_ingested (time)",
    ),
    # Each session's language; a local session's is filled in by prepare() from the
    # daemon's config, which this table cannot know.
    6: (
        "ALTER TABLE sessions ADD COLUMN language TEXT",
        f"UPDATE sessions SET language = {reading.LEGACY_RELAYED_LANGUAGE}"
        " WHERE source = 'relay'",
    ),
}


def prepare(conn: sqlite3.Connection, model_languages: Mapping[str, str] | None = None
            ) -> None:
    """Check, configure and migrate a read-write connection to the journal (raises
    :class:`Unusable` for a file to set aside). ``model_languages`` (a model's name ->
    its language tag, as the daemon's config says) fills in the language of the local
    sessions of a file older than version 6."""
    check = conn.execute("PRAGMA quick_check").fetchall()
    if check != [("ok",)]:
        first = str(check[0][0]) if check else "no result"
        raise Unusable(f"integrity check failed: {first[:200]}")
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise Unusable(f"schema version {version} is newer than this edge's "
                       f"({SCHEMA_VERSION})")
    if version == 0 and conn.execute("SELECT COUNT(*) FROM sqlite_schema").fetchone()[0]:
        raise Unusable("a database that is not an edge journal")
    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":
        raise JournalError(f"the filesystem does not support WAL mode (got {mode!r})")
    configure(conn)
    if version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in SCHEMA[step]:
                    conn.execute(statement)
            if version < 6:
                conn.executemany(
                    "UPDATE sessions SET language = ? WHERE model = ?"
                    " AND source IN ('client', 'room') AND language IS NULL",
                    [(tag, name) for name, tag in (model_languages or {}).items()])
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def configure(conn: sqlite3.Connection, *, autocheckpoint: int = 1000) -> None:
    """Per-connection settings (WAL itself is a property of the file)."""
    conn.execute("PRAGMA synchronous = FULL")  # WAL + FULL: fsync at every commit
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA secure_delete = ON")  # purged transcripts are overwritten
    conn.execute("PRAGMA trusted_schema = OFF")
    conn.execute("PRAGMA temp_store = MEMORY")  # no temporary files beside the journal
    conn.execute(f"PRAGMA wal_autocheckpoint = {autocheckpoint}")
