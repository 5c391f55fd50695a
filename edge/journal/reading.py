"""Reading the journal: sessions and their finals, for ``edge transcripts`` and
``/transcripts/<id>``.

Blocking reads on whichever link the journal gives (the bulk link; the only one of a
read-only journal). In WAL they never wait for a writer.
"""

from __future__ import annotations

import json
from typing import Any

from sqlcipher3 import dbapi2 as sqlite3

from edge.journal.connection import Link
from edge.journal.records import SessionRow

# The dialect of a session journaled before there were dialects (schema version 1):
# ``live`` for a client session, the only protocol a client could speak; for a relayed
# one, what its start event says (a newer device may have relayed into an older
# upstream) or else ``live`` if the downstream's session was a client's; otherwise NULL.
# The GLOBs are DIALECT_PATTERN, as SQLite can say it without a regexp function.
LEGACY_DIALECT = """CASE sessions.source
    WHEN 'client' THEN 'live'
    WHEN 'relay' THEN (
        SELECT CASE
            WHEN d GLOB '[a-z]*' AND d NOT GLOB '*[^a-z0-9_]*' AND length(d) <= 32 THEN d
            WHEN src = 'client' THEN 'live'
        END
        FROM (SELECT json_extract(e.payload, '$.dialect') AS d,
                     json_extract(e.payload, '$.source') AS src
              FROM events e WHERE e.device_id = sessions.device_id
              AND e.session_id = sessions.session_id AND e.kind = 'start'))
END"""

# The language of a relayed session in a file older than schema version 6: what its
# start event says (a newer device may have relayed into an older upstream, which stored
# the payload without looking), if it has the shape of a language tag; else NULL.
LEGACY_RELAYED_LANGUAGE = """(SELECT CASE
        WHEN typeof(l) = 'text' AND length(l) BETWEEN 2 AND 35
             AND l GLOB '[A-Za-z][A-Za-z]*' AND l NOT GLOB '*[^A-Za-z0-9_-]*' THEN l
    END
    FROM (SELECT json_extract(e.payload, '$.language') AS l
          FROM events e WHERE e.device_id = sessions.device_id
          AND e.session_id = sessions.session_id AND e.kind = 'start'))"""

_FINALS = ("(SELECT COUNT(*) FROM events e WHERE e.device_id = sessions.device_id"
           " AND e.session_id = sessions.session_id AND e.kind = 'final')")


def _columns(schema: int) -> str:
    # In SessionRow's field order. A file older than ours is only ever read here
    # read-only (opening it read-write migrates it): what it lacks is worked out.
    dialect = "dialect" if schema >= 2 else f"({LEGACY_DIALECT})"
    language = ("language" if schema >= 6 else
                f"CASE source WHEN 'relay' THEN {LEGACY_RELAYED_LANGUAGE} END")
    return ("session_id, device_id, source, sub, organization, department, model,"
            f" started_at, ended_at, end_reason, {_FINALS}, {dialect}, {language}")


def sessions(link: Link, since: float | None, limit: int, device_id: str | None, *,
             schema: int) -> list[SessionRow]:
    where: list[str] = ["1"]
    args: list[Any] = []
    if since is not None:
        where.append("started_at >= ?")
        args.append(since)
    if device_id is not None:
        where.append("device_id = ?")
        args.append(device_id)
    with link.read() as db:
        rows = db.execute(
            f"SELECT {_columns(schema)} FROM sessions WHERE {' AND '.join(where)}"
            " ORDER BY started_at DESC, rowid DESC LIMIT ?", (*args, limit)).fetchall()
    return [SessionRow(*row) for row in reversed(rows)]


def session(link: Link, own_device_id: str, session_id: str, device_id: str | None, *,
            schema: int) -> SessionRow | None:
    with link.read() as db:
        return _resolve(db, own_device_id, session_id, device_id, schema)


def finals(link: Link, own_device_id: str, session_id: str, device_id: str | None, *,
           schema: int) -> list[dict[str, Any]]:
    with link.read() as db:
        row = _resolve(db, own_device_id, session_id, device_id, schema)
        if row is None:
            return []
        payloads = db.execute(
            "SELECT payload FROM events WHERE device_id = ? AND session_id = ?"
            " AND kind = 'final' ORDER BY seq", (row.device_id, session_id)).fetchall()
    return [json.loads(p) for (p,) in payloads]


def _resolve(db: sqlite3.Connection, own_device_id: str, session_id: str,
             device_id: str | None, schema: int) -> SessionRow | None:
    columns = _columns(schema)
    if device_id is not None:
        row = db.execute(f"SELECT {columns} FROM sessions"
                         " WHERE session_id = ? AND device_id = ?",
                         (session_id, device_id)).fetchone()
    else:
        row = db.execute(f"SELECT {columns} FROM sessions WHERE session_id = ?"
                         " ORDER BY device_id = ? DESC, started_at DESC LIMIT 1",
                         (session_id, own_device_id)).fetchone()
    return None if row is None else SessionRow(*row)
