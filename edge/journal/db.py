"""The transcript journal: every session and every final transcription, durably, in SQLite.

This module is the journal's face: :class:`Journal`, opened with :meth:`Journal.open`
and closed with :meth:`Journal.close`, whose methods are implemented by one module per
concern: :mod:`~edge.journal.local` (local
sessions), :mod:`~edge.journal.outbox` (the relay outbox), :mod:`~edge.journal.ingest`
(events relayed from downstream), :mod:`~edge.journal.retention` (purging) and
:mod:`~edge.journal.reading`, :mod:`~edge.journal.audit` (the audit trail). Its values
are in :mod:`~edge.journal.records`. The file itself is handled apart: its schema and
migrations in :mod:`~edge.journal.schema`, opening and recovery from a damaged file in
:mod:`~edge.journal.opening`, SQLCipher (keys, encrypting a plaintext journal in place,
re-keying) in :mod:`~edge.journal.sqlcipher`.

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

Nothing here logs transcript text or payloads; log lines carry counts, paths and ids.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlcipher3 import dbapi2 as sqlite3

from edge.core.audit import Access
from edge.crypto.datakey import DataKey
from edge.journal import audit, local, opening, outbox, reading, retention
from edge.journal import ingest as _ingest
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
from edge.journal.schema import SCHEMA_VERSION, Unusable, configure
from edge.journal.sqlcipher import (
    connect,
    encrypt_plaintext,
    export,
    export_rekeyed,
    is_plaintext,
    key_opens,
    key_pragma,
    recover_encryption,
)
from edge.protocols.audit import Anchor, AuditRecord
from edge.protocols.relay import check_id

__all__ = ["PENDING", "RELAYED", "SCHEMA_VERSION", "SHED", "Backlog", "Journal",
           "JournalError", "JournalKeyError", "RelayEvent", "SessionRow", "SetAside",
           "audit_into", "connect", "export", "export_rekeyed", "key_opens"]

logger = logging.getLogger(__name__)


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
             readonly: bool = False, model_languages: Mapping[str, str] | None = None
             ) -> Journal:
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

        ``model_languages`` (a model's name -> its language tag, from the config) gives
        the sessions of a file older than schema version 6 their language when it is
        migrated (see :mod:`edge.journal.schema`).
        """
        check_id("device_id", device_id)
        path = Path(path)
        gate = WriteGate()
        secret = key_pragma(key)
        if readonly:
            conn, version = opening.connect_readonly(path, secret, key)
            return cls(Link(conn, gate, hot=False, readonly=True), None, path, device_id,
                       readonly=True, schema=version)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"cannot create the journal's directory {path.parent}: "
                               f"{exc.strerror}") from exc
        recover_encryption(path)
        if is_plaintext(path):
            encrypt_plaintext(path, secret)
            logger.warning("journal %s was not encrypted: encrypted it in place with the "
                           "%s, and overwrote and removed the plaintext file", path,
                           key.describe())
        try:
            conn = opening.connect(path, secret, key, model_languages)
        except Unusable as exc:
            aside = opening.set_aside(path)
            logger.warning("journal %s is unusable (%s): moved it aside to %s and started "
                           "a fresh journal", path, exc, aside)
            try:
                conn = opening.connect(path, secret, key)
            except Unusable as again:
                raise JournalError(f"a fresh journal at {path} is unusable too: {again}"
                                   ) from again
        try:
            hot = opening.connect_hot(path, secret)
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
        language: str | None = None,
    ) -> None:
        """Journal a new local session and its ``start`` event (seq 0).

        ``source`` is ``client`` or ``room`` (``relay`` is for :meth:`ingest`).
        ``dialect`` is the wire protocol a client speaks (``None``: ``live``, the Live
        API); the room speaks none and must not be given one. ``language`` is the
        language tag of the session's model (``None`` or empty: not known). Raises
        ValueError for a dialect that is not a short lower-case identifier or a
        language that is not a tag, :class:`JournalError` if this device already
        journaled ``session_id``.
        """
        local.start_session(self._writable(self._hot), self.device_id, session_id,
                            source=source, sub=sub, organization=organization,
                            department=department, model=model, started_at=started_at,
                            dialect=dialect, language=language)

    def describe_session(self, session_id: str, *, model: str | None,
                         language: str | None) -> bool:
        """Record the model and language a local session chose after its start (see
        :func:`edge.journal.local.describe_session`); False if its start was relayed
        before. Raises :class:`JournalError` for an unknown session."""
        return local.describe_session(self._writable(self._hot), self.device_id,
                                      session_id, model=model, language=language)

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
        an older device is ``live`` for a client session; and its language, NULL when
        left out), an ``end`` event ends it; a final
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

    # --- the audit trail (the bulk connection) ---------------------------------------

    def audit_append(self, entries: Sequence[tuple[Access, float]]) -> list[AuditRecord]:
        """Chain and store audit records (an access and its Unix time each), durably;
        returns them. See :mod:`edge.journal.audit`."""
        return audit.append(self._writable(self._bulk), entries)

    def audit_head(self) -> Anchor:
        """The last audit record written (``seq`` 0: none)."""
        return audit.head(self._bulk) if self._schema >= 5 else Anchor()

    def audit_records(self, which: audit.Filter | None = None) -> list[AuditRecord]:
        """Audit records in ``seq`` order, this device's or a relaying device's."""
        if self._schema < 5:
            return []
        return audit.records(self._bulk, which or audit.Filter())

    def audit_verify(self, device_id: str | None = None) -> tuple[int, str | None]:
        """Check the audit chain (this device's, or the records relayed from
        ``device_id``): the records read and the first fault, or None."""
        return audit.verify(self._bulk, device_id) if self._schema >= 5 else (0, None)

    def audit_pending(self, limit: int) -> list[AuditRecord]:
        """Audit records not yet relayed, oldest first."""
        return audit.pending(self._bulk, limit)

    def audit_mark_relayed(self, up_to: int) -> int:
        return audit.mark_relayed(self._writable(self._bulk), up_to)

    def audit_relayed_seq(self) -> int:
        return audit.relayed_seq(self._bulk)

    def audit_ingest(self, device_id: str, records: Sequence[AuditRecord]
                     ) -> audit.Ingested:
        """Store audit records relayed from ``device_id``, checking their chain."""
        return audit.ingest(self._writable(self._bulk), device_id, records)

    def audit_purge(self, older_than: float, *, keep_unrelayed: bool) -> int:
        """Delete audit records past retention (see :func:`edge.journal.audit.purge`)."""
        gone = audit.purge(self._writable(self._bulk), older_than,
                           keep_unrelayed=keep_unrelayed)
        if gone:
            logger.info("journal: purged %d audit record(s) past retention", gone)
        return gone

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


def audit_into(path: str | os.PathLike[str], key: DataKey,
               entries: Sequence[tuple[Access, float]]) -> list[AuditRecord] | None:
    """Append audit records to the existing journal at ``path`` without
    :meth:`Journal.open`'s integrity check of the whole file (for a command recording
    itself beside a running daemon); None when the file is of an older schema (open it
    with :meth:`Journal.open`, which migrates it, instead). Raises JournalKeyError,
    JournalError. Blocking, one durable transaction."""
    conn = connect(path, key)
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version != SCHEMA_VERSION:
            return None
        configure(conn)
        return audit.append(Link(conn, WriteGate(), hot=False), entries)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot write the audit trail into {path}: {exc}") from exc
    finally:
        conn.close()
