"""Retention: sessions past ``journal.retention_days`` leave the journal, and their text
leaves the files.

Blocking; runs on the journal's bulk link. The sessions to delete are found with one
read, then deleted in transactions of at most a few thousand event rows each (a session
larger than that loses its events in several), so that a local final never waits behind
more than one such chunk. Chunks are not durable by themselves (a purge cut by a power
cut is simply done again). Deleted content is overwritten (``secure_delete``) and the
WAL is checkpointed and truncated at the end, so purged transcripts do not linger in
free pages or old frames.
"""

from __future__ import annotations

from edge.journal.connection import Link
from edge.journal.records import PENDING

CHUNK_ROWS = 2000  # event rows per deleting transaction


def purge(link: Link, older_than: float, *, keep_unrelayed: bool,
          chunk_rows: int = CHUNK_ROWS) -> int:
    condition = "s.ended_at IS NOT NULL AND s.ended_at < ?"
    if keep_unrelayed:
        condition += (f" AND NOT EXISTS (SELECT 1 FROM events e WHERE e.relayed = {PENDING}"
                      " AND e.device_id = s.device_id AND e.session_id = s.session_id)")
    with link.read() as db:
        expired = db.execute(
            "SELECT s.device_id, s.session_id, (SELECT COUNT(*) FROM events e"
            " WHERE e.device_id = s.device_id AND e.session_id = s.session_id)"
            f" FROM sessions s WHERE {condition} ORDER BY s.ended_at", (older_than,)
        ).fetchall()
    deleted = 0
    chunk: list[tuple[str, str]] = []
    rows = 0
    for device_id, session_id, events in expired:
        if events > chunk_rows:  # too big for one transaction: its events go in pieces
            _trim(link, device_id, session_id, older_than, condition, chunk_rows)
            events = 0
        if chunk and rows + events > chunk_rows:
            deleted += _delete(link, chunk, older_than, condition)
            chunk, rows = [], 0
        chunk.append((device_id, session_id))
        rows += events
    if chunk:
        deleted += _delete(link, chunk, older_than, condition)
    if deleted:
        with link.read() as db:  # most of the WAL, beside the writers
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        with link.exclusive() as db:  # the rest, and the WAL truncated
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return deleted


def _delete(link: Link, keys: list[tuple[str, str]], older_than: float,
            condition: str) -> int:
    """Delete these sessions (and, by cascade, their events) if still expired."""
    deleted = 0
    with link.write(durable=False) as db:
        for device_id, session_id in keys:
            deleted += db.execute(
                "DELETE FROM sessions WHERE device_id = ? AND session_id = ? AND"
                " EXISTS (SELECT 1 FROM sessions s WHERE s.device_id = sessions.device_id"
                f" AND s.session_id = sessions.session_id AND {condition})",
                (device_id, session_id, older_than)).rowcount
    return deleted


def _trim(link: Link, device_id: str, session_id: str, older_than: float, condition: str,
          chunk_rows: int) -> None:
    """Delete an expired session's events, ``chunk_rows`` per transaction."""
    while True:
        with link.write(durable=False) as db:
            gone = db.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events"
                " WHERE device_id = ? AND session_id = ? ORDER BY id LIMIT ?) AND EXISTS"
                " (SELECT 1 FROM sessions s WHERE s.device_id = ? AND s.session_id = ?"
                f" AND {condition})",
                (device_id, session_id, chunk_rows, device_id, session_id, older_than)
            ).rowcount
        if gone < chunk_rows:
            return
