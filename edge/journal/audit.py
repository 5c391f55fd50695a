"""The audit trail's store: this device's hash-chained records, and those relayed to it.

Blocking; runs on the journal's bulk link (the daemon's :class:`~edge.audit.Auditor`
calls it through the journal service's bulk lane; the commands call it directly).
Records are appended in durable transactions (fsynced before :func:`append` returns),
each numbered after the ``audit_head`` meta row, which the same transaction moves on:
two processes appending (the daemon, and a command run beside it) take SQLite's write
lock in turn, so the chain has one order. A trigger refuses any change to a record's
content (see :mod:`edge.journal.schema`).

Retention deletes the oldest records only, a prefix of the chain: those older than the
cut-off and, with a relay, already relayed. The last deleted record's ``seq`` and
hash become ``audit_anchor``, from which :func:`verify` starts, so a purged trail still
verifies. A relay marks records relayed when its upstream acknowledges them.

Relayed records (:func:`ingest`) are stored per device as they came, checked on the way
in: a record whose hash does not match its content, whose ``prev`` is not the stored
hash of its predecessor, or which differs from one already stored under its ``seq``
is stored with the fault in ``broken`` (and the earlier record kept), logged by the
caller, and shown by ``edge audit verify --device``. Nothing here holds transcript text.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlcipher3 import dbapi2 as sqlite3

from edge.core.audit import Access
from edge.journal.connection import Link
from edge.protocols.audit import GENESIS, Anchor, AuditRecord, chain, verify_chain

_COLUMNS = ("seq, time, action, outcome, prev, hash, sub, organization, department, "
            "object, reason, peer, detail")
_HEAD, _ANCHOR = "audit_head", "audit_anchor"


@dataclass(frozen=True)
class Filter:
    """Which records :func:`records` returns: from ``since`` (a Unix time), by ``sub``,
    about ``object`` (a session id, a speaker name), of ``device_id`` (None: this
    device's own; another id: the records relayed from that device)."""

    since: float | None = None
    sub: str | None = None
    object: str | None = None
    device_id: str | None = None
    limit: int = 10000


@dataclass(frozen=True)
class Ingested:
    """What :func:`ingest` did with a relayed batch."""

    stored: int  # new records
    faults: tuple[str, ...]  # the broken ones, in words (no content)


def _row(row: tuple[Any, ...]) -> AuditRecord:
    seq, when, action, outcome, prev, hash_, sub, org, dept, obj, reason, peer, detail = row
    return AuditRecord(seq=int(seq), time=float(when), action=str(action),
                       outcome=str(outcome), prev=str(prev), hash=str(hash_),
                       sub=sub, organization=org, department=dept, object=obj,
                       reason=reason, peer=peer, detail=json.loads(str(detail)))


def _meta(db: sqlite3.Connection, key: str) -> Anchor | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    if row is None:
        return None
    seq, hash_ = str(row[0]).split(" ", 1)
    return Anchor(int(seq), hash_)


def _set_meta(db: sqlite3.Connection, key: str, where: Anchor) -> None:
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
               (key, f"{where.seq} {where.hash}"))


def append(link: Link, entries: Sequence[tuple[Access, float]]) -> list[AuditRecord]:
    """Chain and store ``entries`` (an access and its Unix time) in one durable
    transaction; returns the records. Raises JournalError."""
    out: list[AuditRecord] = []
    with link.write() as db:
        last = _meta(db, _HEAD) or _meta(db, _ANCHOR) or Anchor()
        for access, when in entries:
            record = chain(access, seq=last.seq + 1, time=when, prev=last.hash)
            db.execute(f"INSERT INTO audit ({_COLUMNS}) VALUES"
                       " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _values(record))
            last = Anchor(record.seq, record.hash)
            out.append(record)
        if out:
            _set_meta(db, _HEAD, last)
    return out


def _values(r: AuditRecord) -> tuple[object, ...]:
    return (r.seq, r.time, r.action, r.outcome, r.prev, r.hash, r.sub, r.organization,
            r.department, r.object, r.reason, r.peer,
            json.dumps(dict(r.detail), ensure_ascii=False, sort_keys=True))


def head(link: Link) -> Anchor:
    """The last record written (``seq`` 0 when none ever was)."""
    with link.read() as db:
        return _meta(db, _HEAD) or _meta(db, _ANCHOR) or Anchor()


def records(link: Link, which: Filter) -> list[AuditRecord]:
    """Records in ``seq`` order (the last ``which.limit`` of those that match)."""
    table = "audit"
    where: list[str] = ["1"]
    args: list[object] = []
    if which.device_id is not None:
        table = "audit_ingested"
        where.append("device_id = ?")
        args.append(which.device_id)
    for column, value in (("time >=", which.since), ("sub =", which.sub),
                          ("object =", which.object)):
        if value is not None:
            where.append(f"{column} ?")
            args.append(value)
    with link.read() as db:
        rows = db.execute(
            f"SELECT * FROM (SELECT {_COLUMNS} FROM {table} WHERE {' AND '.join(where)}"
            " ORDER BY seq DESC LIMIT ?) ORDER BY seq", (*args, which.limit)).fetchall()
    return [_row(r) for r in rows]


def _scan(db: sqlite3.Connection, table: str, where: str = "1",
          args: tuple[object, ...] = ()) -> Iterator[AuditRecord]:
    cursor = db.execute(f"SELECT {_COLUMNS} FROM {table} WHERE {where} ORDER BY seq", args)
    while rows := cursor.fetchmany(1000):
        yield from (_row(r) for r in rows)


def verify(link: Link, device_id: str | None = None) -> tuple[int, str | None]:
    """Check the chain: how many records were read, and the first fault (None: intact).
    ``device_id``: the records relayed from that device, from the first one stored,
    with the faults found when they arrived."""
    with link.read() as db:
        if device_id is None:
            anchor = _meta(db, _ANCHOR) or Anchor()
            last = _meta(db, _HEAD)
            count = 0

            def counted() -> Iterator[AuditRecord]:
                nonlocal count
                for record in _scan(db, "audit"):
                    count += 1
                    yield record

            fault = verify_chain(counted(), anchor, None if last is None else last.seq)
            return count, fault
        first = db.execute("SELECT seq, prev FROM audit_ingested WHERE device_id = ?"
                           " ORDER BY seq LIMIT 1", (device_id,)).fetchone()
        if first is None:
            return 0, None
        broken = db.execute("SELECT seq, broken FROM audit_ingested WHERE device_id = ?"
                            " AND broken IS NOT NULL ORDER BY seq LIMIT 1",
                            (device_id,)).fetchone()
        (count,) = db.execute("SELECT COUNT(*) FROM audit_ingested WHERE device_id = ?",
                              (device_id,)).fetchone()
        fault = verify_chain(_scan(db, "audit_ingested", "device_id = ?", (device_id,)),
                             Anchor(int(first[0]) - 1, str(first[1])))
    if broken is not None and (fault is None or int(broken[0]) <= _seq_of(fault)):
        fault = f"record {broken[0]}: {broken[1]}"
    return int(count), fault


def _seq_of(fault: str) -> int:
    return int(fault.split()[1])


def pending(link: Link, limit: int) -> list[AuditRecord]:
    """Records not yet relayed, oldest first."""
    with link.read() as db:
        return list(_scan(db, "audit", f"relayed = 0 AND seq IN (SELECT seq FROM audit"
                                       f" WHERE relayed = 0 ORDER BY seq LIMIT {int(limit)})"))


def mark_relayed(link: Link, up_to: int) -> int:
    """Mark records up to ``seq`` relayed (not durable by itself: a lost mark sends them
    again, and the upstream drops the duplicates)."""
    with link.write(durable=False) as db:
        return db.execute("UPDATE audit SET relayed = 1 WHERE relayed = 0 AND seq <= ?",
                          (up_to,)).rowcount


def relayed_seq(link: Link) -> int:
    """The highest ``seq`` the upstream has (0: none)."""
    with link.read() as db:
        # From the newest down: only the unrelayed tail is passed over.
        row = db.execute("SELECT seq FROM audit WHERE relayed = 1 ORDER BY seq DESC"
                         " LIMIT 1").fetchone()
        if row is None:
            anchor = _meta(db, _ANCHOR)
            return 0 if anchor is None else anchor.seq
    return int(row[0])


def purge(link: Link, older_than: float, *, keep_unrelayed: bool) -> int:
    """Delete the oldest records, older than ``older_than`` (and relayed, with
    ``keep_unrelayed``), moving the anchor; and relayed devices' records older than
    it. Returns how many of this device's records went."""
    keep = "time >= ?" + (" OR relayed = 0" if keep_unrelayed else "")
    with link.write() as db:
        (cut,) = db.execute(f"SELECT MIN(seq) FROM audit WHERE {keep}",
                            (older_than,)).fetchone()
        if cut is None:
            (cut,) = db.execute("SELECT MAX(seq) + 1 FROM audit").fetchone()
        gone = 0
        if cut is not None:
            last = db.execute("SELECT seq, hash FROM audit WHERE seq < ? ORDER BY seq DESC"
                              " LIMIT 1", (cut,)).fetchone()
            if last is not None:
                _set_meta(db, _ANCHOR, Anchor(int(last[0]), str(last[1])))
                gone = db.execute("DELETE FROM audit WHERE seq < ?", (cut,)).rowcount
        db.execute("DELETE FROM audit_ingested WHERE time < ?", (older_than,))
    return gone


def ingest(link: Link, device_id: str, batch: Sequence[AuditRecord],
           received_at: float | None = None) -> Ingested:
    """Store records relayed from ``device_id`` in one durable transaction, checked
    (see the module doc). Duplicates (same ``seq``, same hash) are ignored."""
    received_at = time.time() if received_at is None else received_at
    stored, faults = 0, []
    with link.write() as db:
        for record in batch:
            fault = _check(db, device_id, record)
            if fault == "duplicate":
                continue
            if fault is not None and fault.startswith("a second"):
                db.execute("UPDATE audit_ingested SET broken = COALESCE(broken, ?)"
                           " WHERE device_id = ? AND seq = ?", (fault, device_id, record.seq))
                faults.append(f"record {record.seq}: {fault}")
                continue
            db.execute(f"INSERT INTO audit_ingested (device_id, {_COLUMNS}, received_at,"
                       " broken) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (device_id, *_values(record), received_at, fault))
            stored += 1
            if fault is not None:
                faults.append(f"record {record.seq}: {fault}")
    return Ingested(stored, tuple(faults))


def _check(db: sqlite3.Connection, device_id: str, record: AuditRecord) -> str | None:
    same = db.execute("SELECT hash FROM audit_ingested WHERE device_id = ? AND seq = ?",
                      (device_id, record.seq)).fetchone()
    if same is not None:
        if same[0] == record.hash:
            return "duplicate"
        return "a second, different record arrived under this seq"
    if record.computed_hash() != record.hash:
        return "its hash does not match its content"
    before = db.execute("SELECT hash FROM audit_ingested WHERE device_id = ? AND seq = ?",
                        (device_id, record.seq - 1)).fetchone()
    expected = GENESIS if record.seq == 1 else (None if before is None else before[0])
    if expected is not None and record.prev != expected:
        return f"it does not follow record {record.seq - 1}"
    return None
