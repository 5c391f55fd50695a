"""The relay outbox: the journal's events not yet acknowledged by the upstream.

Blocking; runs on the journal's bulk link. Reading a batch is a read (beside any
writer, in WAL). Marking a batch relayed and shedding the oldest events of a full
outbox are short write transactions that are not durable by themselves (no fsync of
their own; see :mod:`edge.journal.connection`): lost to a power cut, a batch is sent
again and the upstream drops the duplicates, and a shed is computed again. Shedding
finds its cut with one read and writes in bounded chunks.

Set-aside events (schema version 4): events a consumer refused for good, or too large
to send, leave the outbox like shed ones (``relayed = 2``) with a row in ``set_aside``
saying why and when (durably: an operator looks for them). :func:`requeue` puts them
back in the outbox. They stay in the journal until retention purges their session,
like shed ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from edge.journal.connection import Link
from edge.journal.records import PENDING, RELAYED, SHED, Backlog, RelayEvent


@dataclass(frozen=True)
class SetAside:
    """An event set aside from the outbox (never its payload: it may hold patient data)."""

    id: int
    device_id: str
    session_id: str
    seq: int
    kind: str
    size: int
    reason: str
    at: float

_SHED_CHUNK_ROWS = 2000  # rows per shedding transaction


def pending(link: Link, limit: int, max_bytes: int) -> list[RelayEvent]:
    if limit < 1 or max_bytes < 1:
        raise ValueError("pending: limit and max_bytes must be at least 1")
    with link.read() as db:
        rows = db.execute(
            "SELECT id, device_id, session_id, seq, kind, created_at, payload, size"
            f" FROM events WHERE relayed = {PENDING} ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
    batch: list[RelayEvent] = []
    total = 0
    for id_, device_id, session_id, seq, kind, created_at, payload, size in rows:
        if batch and total + size > max_bytes:
            break
        total += size
        batch.append(RelayEvent(id_, device_id, session_id, seq, kind, created_at,
                                json.loads(payload)))
    return batch


def mark_relayed(link: Link, up_to_id: int) -> int:
    with link.write(durable=False) as db:
        cursor = db.execute(f"UPDATE events SET relayed = {RELAYED}"
                            f" WHERE relayed = {PENDING} AND id <= ?", (up_to_id,))
        return cursor.rowcount


def backlog(link: Link) -> Backlog:
    with link.read() as db:
        count, size = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events"
            f" WHERE relayed = {PENDING}").fetchone()
    return Backlog(count, size)


def shed_backlog(link: Link, max_bytes: int) -> Backlog:
    with link.read() as db:
        # The newest pending event whose running total (newest first) overflows: it
        # and everything pending before it go. SQL, so the GIL is free meanwhile.
        row = db.execute(
            "SELECT id FROM (SELECT id, SUM(size) OVER (ORDER BY id DESC) AS kept"
            f" FROM events WHERE relayed = {PENDING}) WHERE kept > ? LIMIT 1",
            (max_bytes,)).fetchone()
    if row is None:
        return Backlog(0, 0)
    cut = int(row[0])
    events = nbytes = 0
    while True:
        with link.write(durable=False) as db:
            ids = [i for (i,) in db.execute(
                f"SELECT id FROM events WHERE relayed = {PENDING} AND id <= ?"
                " ORDER BY id LIMIT ?", (cut, _SHED_CHUNK_ROWS)).fetchall()]
            if not ids:
                break
            count, size = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events"
                f" WHERE relayed = {PENDING} AND id BETWEEN ? AND ?",
                (ids[0], ids[-1])).fetchone()
            db.execute(f"UPDATE events SET relayed = {SHED}"
                       f" WHERE relayed = {PENDING} AND id BETWEEN ? AND ?",
                       (ids[0], ids[-1]))
        events += count
        nbytes += size
        if len(ids) < _SHED_CHUNK_ROWS:
            break
    return Backlog(events, nbytes)


def set_aside(link: Link, reasons: Mapping[int, str], at: float | None = None) -> int:
    """Take pending events out of the outbox for good, each with its reason; returns
    how many (events no longer pending are left as they are). Durable."""
    at = time.time() if at is None else at
    count = 0
    with link.write() as db:
        for event_id, reason in sorted(reasons.items()):
            cursor = db.execute(f"UPDATE events SET relayed = {SHED}"
                                f" WHERE id = ? AND relayed = {PENDING}", (event_id,))
            if cursor.rowcount == 1:
                db.execute("INSERT OR REPLACE INTO set_aside (event_id, reason, at)"
                           " VALUES (?, ?, ?)", (event_id, reason, at))
                count += 1
    return count


def set_aside_events(link: Link, limit: int, *, schema: int) -> list[SetAside]:
    """The set-aside events, oldest first (none in a file older than version 4)."""
    if schema < 4:
        return []
    with link.read() as db:
        rows = db.execute(
            "SELECT e.id, e.device_id, e.session_id, e.seq, e.kind, e.size, a.reason, a.at"
            " FROM set_aside a JOIN events e ON e.id = a.event_id ORDER BY e.id LIMIT ?",
            (limit,)).fetchall()
    return [SetAside(*row) for row in rows]


def set_aside_count(link: Link, *, schema: int) -> int:
    if schema < 4:
        return 0
    with link.read() as db:
        (count,) = db.execute("SELECT COUNT(*) FROM set_aside").fetchone()
    return int(count)


def requeue(link: Link, ids: Iterable[int] | None) -> int:
    """Put set-aside events (``ids``, or all of them for None) back in the outbox;
    returns how many. They are sent again before newer events (the outbox goes by id)."""
    total = 0
    with link.write() as db:
        if ids is None:
            chosen = [i for (i,) in db.execute("SELECT event_id FROM set_aside")]
        else:
            chosen = list(ids)
        for event_id in chosen:
            cursor = db.execute("DELETE FROM set_aside WHERE event_id = ?", (event_id,))
            if cursor.rowcount == 1:
                db.execute(f"UPDATE events SET relayed = {PENDING} WHERE id = ?",
                           (event_id,))
                total += 1
    return total
