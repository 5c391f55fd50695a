"""One SQLite connection of the journal, and how its transactions run.

Blocking, stdlib ``sqlite3``; no trio. A :class:`Link` is one connection with a lock of
its own (its calls are serialised; a mistake costs waiting, not corruption). The
journal has two read-write links on one file: the *hot* one, on which local sessions
journal their starts, finals and ends, and the *bulk* one for everything else (the relay
outbox, ingest, retention, reading). WAL lets either read while the other writes, but
SQLite lets one writer at a time: the two links share a :class:`WriteGate`, which
queues writers in this process (waking the next at once, where SQLite's busy handler
would poll with sleeps of 1 to 100 ms) and lets a waiting hot writer go before any
bulk writer.

Durability is chosen per transaction: ``durable=True`` commits with
``synchronous=FULL`` (the WAL is fsynced before :meth:`Link.write` returns); ``False``
with ``synchronous=NORMAL`` (no fsync of its own: such a commit becomes durable with the
next durable one, whose fsync covers every earlier frame of the WAL, and a power cut
before that rolls it back). Only writes whose loss is harmless are not durable.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from sqlcipher3 import dbapi2 as sqlite3

from edge.journal.records import JournalError

_FULL, _NORMAL = 2, 1


class WriteGate:
    """Serialises the journal's writers in this process; hot writers go first."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held = False
        self._hot_waiting = 0

    @contextlib.contextmanager
    def hold(self, *, hot: bool) -> Iterator[None]:
        """Block until no other writer holds the gate (and, for a bulk writer, until
        no hot writer waits for it); hold it for the ``with`` block."""
        with self._cond:
            if hot:
                self._hot_waiting += 1
            try:
                while self._held or (not hot and self._hot_waiting):
                    self._cond.wait()
            finally:
                if hot:
                    self._hot_waiting -= 1
            self._held = True
        try:
            yield
        finally:
            with self._cond:
                self._held = False
                self._cond.notify_all()


class Link:
    """One connection: :meth:`write` and :meth:`read` run its statements, one caller at
    a time. :meth:`close` closes it; later calls raise :class:`JournalError`."""

    def __init__(self, conn: sqlite3.Connection, gate: WriteGate, *, hot: bool,
                 readonly: bool = False) -> None:
        self.conn: sqlite3.Connection | None = conn
        self._gate = gate
        self._hot = hot
        self._readonly = readonly
        self._lock = threading.RLock()
        self._synchronous = _FULL  # as the connection was opened

    def close(self) -> None:
        with self._lock:
            conn, self.conn = self.conn, None
            if conn is not None:
                conn.close()

    def _connection(self) -> sqlite3.Connection:
        if self.conn is None:
            raise JournalError("the journal is closed")
        return self.conn

    @contextlib.contextmanager
    def write(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction, committed on success and rolled back otherwise;
        sqlite3 errors come out as JournalError. Blocks for the write gate, then for
        SQLite's lock (another process), then (``durable``) for an fsync at commit."""
        with self._lock:
            db = self._connection()
            if self._readonly:
                raise JournalError("the journal is open read-only")
            self._set_synchronous(db, _FULL if durable else _NORMAL)
            with self._gate.hold(hot=self._hot):
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
    def read(self) -> Iterator[sqlite3.Connection]:
        """Statements outside a write transaction (each its own snapshot): reads, and
        checkpoints. sqlite3 errors come out as JournalError."""
        with self._lock:
            db = self._connection()
            try:
                yield db
            except sqlite3.Error as exc:
                raise JournalError(f"journal read failed: {exc}") from exc

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[sqlite3.Connection]:
        """Like :meth:`read`, holding the write gate: for a blocking checkpoint, which
        would otherwise leave this process's writers polling SQLite's lock."""
        with self._lock, self._gate.hold(hot=self._hot), self.read() as db:
            yield db

    def _set_synchronous(self, db: sqlite3.Connection, level: int) -> None:
        if level != self._synchronous:
            try:
                db.execute(f"PRAGMA synchronous = {level}")
            except sqlite3.Error as exc:
                raise JournalError(f"journal: cannot set synchronous: {exc}") from exc
            self._synchronous = level
