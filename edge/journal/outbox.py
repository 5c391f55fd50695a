"""The relay outbox: the journal's events not yet acknowledged by the upstream.

Blocking; runs on the journal's bulk link. Reading a batch is a read (beside any
writer, in WAL). Marking a batch relayed and shedding the oldest events of a full
outbox are short write transactions that are not durable by themselves (no fsync of
their own; see :mod:`edge.journal.connection`): lost to a power cut, a batch is sent
again and the upstream drops the duplicates, and a shed is computed again. Shedding
finds its cut with one read and writes in bounded chunks.
"""

from __future__ import annotations

import json

from edge.journal.connection import Link
from edge.journal.records import PENDING, RELAYED, SHED, Backlog, RelayEvent

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
