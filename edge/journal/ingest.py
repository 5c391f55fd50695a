"""Events relayed from a downstream device, stored in this journal.

A ``start`` event's payload fills in the session's row, its dialect and language
included; an older device's start event has no dialect (one of its client sessions
spoke ``live``) or no language (NULL: not known).

Blocking; runs on the journal's bulk link, in one durable transaction per call (the
upstream acknowledges a batch only after this returns, so it must be on disk). The
relay ingest (:mod:`edge.relay.ingest`) bounds a batch to
:data:`edge.protocols.relay.MAX_BATCH_EVENTS` events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edge.core.languages import normal_tag
from edge.journal.connection import Link
from edge.protocols.relay import RelayEvent, check_event, encode_payload, is_language


def ingest(link: Link, own_device_id: str, events: Sequence[RelayEvent]) -> int:
    for event in events:
        check_event(event)
        if event.device_id == own_device_id:
            raise ValueError(f"relay event: device_id {event.device_id!r} is this "
                             "device's own id")
    rows = [(e, *encode_payload(e.payload)) for e in events]
    new = 0
    with link.write() as db:
        for e, text, size in rows:
            db.execute(
                "INSERT OR IGNORE INTO sessions (session_id, device_id, source,"
                " started_at) VALUES (?, ?, 'relay', ?)",
                (e.session_id, e.device_id, float(e.created_at)))
            cursor = db.execute(
                "INSERT OR IGNORE INTO events (device_id, session_id, seq, kind,"
                " created_at, payload, size) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (e.device_id, e.session_id, e.seq, e.kind, float(e.created_at), text, size))
            if cursor.rowcount != 1:
                continue
            new += 1
            p = e.payload
            if e.kind == "start":
                db.execute(
                    "UPDATE sessions SET sub = ?, organization = ?, department = ?,"
                    " model = ?, started_at = ?, dialect = ?, language = ?"
                    " WHERE device_id = ? AND session_id = ?",
                    (p.get("sub"), p.get("organization"), p.get("department"),
                     p.get("model"), float(p["started_at"]), _dialect(p), _language(p),
                     e.device_id, e.session_id))
            elif e.kind == "end":
                db.execute(
                    "UPDATE sessions SET ended_at = ?, end_reason = ?"
                    " WHERE device_id = ? AND session_id = ?",
                    (float(p["ended_at"]), p["reason"], e.device_id, e.session_id))
    return new


def _dialect(start: Mapping[str, Any]) -> str | None:
    """The dialect a relayed start payload (checked) says, or the one it implies: a
    device older than dialects leaves it out, and its clients could speak only ``live``
    (see :data:`edge.journal.reading.LEGACY_DIALECT`, the same rule for older files)."""
    dialect = start.get("dialect")
    if dialect is None and start.get("source") == "client":
        return "live"
    return None if dialect is None else str(dialect)


def _language(start: Mapping[str, Any]) -> str | None:
    """The language a relayed start payload (checked) says, in its usual case; None
    when it says none (a device older than languages)."""
    language = start.get("language")
    return normal_tag(language) if is_language(language) else None
