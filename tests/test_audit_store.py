"""The audit trail's store: a hash chain in the encrypted journal (real SQLCipher)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.core.audit import Access
from edge.journal.audit import Filter
from edge.journal.db import Journal, JournalError
from edge.journal.db import connect as connect_journal
from edge.protocols.audit import GENESIS, AuditRecord, AuditRecordError, canonical
from helpers import TEST_KEY

DEVICE = "room-1"


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal.open(tmp_path / "journal.db", key=TEST_KEY, device_id=DEVICE)
    yield j
    j.close()


def accesses(n: int, start: float = 1000.0) -> list[tuple[Access, float]]:
    return [(Access("transcript.read", sub=f"dr-{i % 2}", object=f"s-{i}",
                    peer="10.0.0.5:4000", detail={"format": "json"}), start + i)
            for i in range(n)]


def test_records_are_chained_and_numbered(journal: Journal) -> None:
    written = journal.audit_append(accesses(3))
    assert [r.seq for r in written] == [1, 2, 3]
    assert written[0].prev == GENESIS
    assert written[1].prev == written[0].hash and written[2].prev == written[1].hash
    # The hash is SHA-256 over the documented canonical encoding.
    body = {"seq": 1, "time_ms": 1000000, "sub": "dr-0", "organization": None,
            "department": None, "action": "transcript.read", "object": "s-0",
            "outcome": "ok", "reason": None, "peer": "10.0.0.5:4000",
            "detail": {"format": "json"}, "prev": GENESIS}
    assert written[0].hash == hashlib.sha256(canonical(body)).hexdigest()
    more = journal.audit_append(accesses(1, 2000.0))
    assert more[0].seq == 4 and more[0].prev == written[2].hash
    assert journal.audit_verify() == (4, None)
    assert journal.audit_head().seq == 4


def test_list_filters(journal: Journal) -> None:
    journal.audit_append(accesses(6))
    assert [r.object for r in journal.audit_records(Filter(sub="dr-1"))] == ["s-1", "s-3",
                                                                             "s-5"]
    assert [r.seq for r in journal.audit_records(Filter(since=1004.0))] == [5, 6]
    assert [r.seq for r in journal.audit_records(Filter(object="s-2"))] == [3]


def test_the_trigger_refuses_a_change(journal: Journal) -> None:
    journal.audit_append(accesses(2))
    conn = connect_journal(journal.path, TEST_KEY)
    try:
        with pytest.raises(Exception, match="append-only"):
            conn.execute("UPDATE audit SET sub = 'someone' WHERE seq = 1")
    finally:
        conn.close()


def tamper(path: Path, *statements: str) -> None:
    conn = connect_journal(path, TEST_KEY)
    try:
        conn.execute("DROP TRIGGER audit_append_only")  # what a tamperer with the key does
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


@pytest.mark.parametrize(("statements", "fault"), [
    (["DELETE FROM audit WHERE seq = 3"], "record 3 is missing"),
    (["UPDATE audit SET sub = 'nobody' WHERE seq = 2"], "record 2 was altered"),
    (["DELETE FROM audit WHERE seq >= 4"], "record 4 is missing (the trail was written up to 5)"),
])
def test_verify_names_the_first_broken_record(tmp_path: Path, statements: list[str],
                                              fault: str) -> None:
    path = tmp_path / "journal.db"
    with Journal.open(path, key=TEST_KEY, device_id=DEVICE) as j:
        j.audit_append(accesses(5))
    tamper(path, *statements)
    with Journal.open(path, key=TEST_KEY, device_id=DEVICE, readonly=True) as j:
        _count, found = j.audit_verify()
    assert found is not None and found.startswith(fault), found


def test_a_record_rehashed_after_a_change_breaks_the_next_link(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with Journal.open(path, key=TEST_KEY, device_id=DEVICE) as j:
        records = j.audit_append(accesses(4))
    changed = AuditRecord(**{**records[1].__dict__, "sub": "nobody"})
    tamper(path, f"UPDATE audit SET sub = 'nobody', hash = '{changed.computed_hash()}'"
                 " WHERE seq = 2")
    with Journal.open(path, key=TEST_KEY, device_id=DEVICE, readonly=True) as j:
        assert j.audit_verify()[1] == ("record 3 does not follow record 2 (its prev is not "
                                       "that record's hash)")


def test_purge_keeps_unrelayed_records_and_an_anchor(journal: Journal) -> None:
    journal.audit_append(accesses(6))  # times 1000..1005
    assert journal.audit_purge(1003.0, keep_unrelayed=True) == 0  # nothing relayed yet
    journal.audit_mark_relayed(2)
    assert journal.audit_purge(1003.0, keep_unrelayed=True) == 2  # 1, 2
    assert [r.seq for r in journal.audit_records()] == [3, 4, 5, 6]
    assert journal.audit_verify() == (4, None)  # verifies from the anchor
    assert journal.audit_purge(1004.5, keep_unrelayed=False) == 3  # 3, 4, 5
    assert journal.audit_verify() == (1, None)
    assert journal.audit_append(accesses(1, 3000.0))[0].seq == 7
    assert journal.audit_purge(9999.0, keep_unrelayed=False) == 2
    assert journal.audit_verify() == (0, None)
    assert journal.audit_relayed_seq() == 7  # the anchor: everything before it is gone
    assert journal.audit_append(accesses(1, 4000.0))[0].seq == 8
    assert journal.audit_verify() == (1, None)


def test_ingest_stores_per_device_and_flags_a_broken_chain(journal: Journal,
                                                           tmp_path: Path) -> None:
    with Journal.open(tmp_path / "device.db", key=TEST_KEY, device_id="room-2") as device:
        records = device.audit_append(accesses(4))
    assert journal.audit_ingest("room-2", records[:2]).stored == 2
    assert journal.audit_ingest("room-2", records[:3]).stored == 1  # duplicates ignored
    forged = AuditRecord(**{**records[3].__dict__, "sub": "nobody"})
    result = journal.audit_ingest("room-2", [forged])
    assert result.stored == 1
    assert result.faults == ("record 4: its hash does not match its content",)
    assert journal.audit_verify("room-2")[1] == ("record 4: its hash does not match "
                                                 "its content")
    assert journal.audit_verify() == (0, None)  # this device's own trail is apart
    assert [r.seq for r in journal.audit_records(Filter(device_id="room-2"))] == [1, 2, 3, 4]
    other = AuditRecord(**{**records[2].__dict__, "object": "x"})
    other = AuditRecord(**{**other.__dict__, "hash": other.computed_hash()})
    assert journal.audit_ingest("room-2", [other]).faults == (
        "record 3: a second, different record arrived under this seq",)


def test_wire_form_is_validated() -> None:
    good = {"seq": 1, "time": 1.5, "action": "session.start", "outcome": "ok",
            "prev": GENESIS, "hash": "a" * 64, "sub": "dr", "detail": {"dialect": "live"}}
    assert AuditRecord.from_wire(good).detail == {"dialect": "live"}
    for bad in ({**good, "seq": True}, {**good, "seq": 0}, {**good, "hash": "x"},
                {**good, "action": "Drop Table"}, {**good, "sub": 5},
                {**good, "detail": {"k": [1]}}, {**good, "time": "now"}, [1]):
        with pytest.raises(AuditRecordError):
            AuditRecord.from_wire(bad)
    json.dumps(AuditRecord.from_wire(good).to_wire())


def test_a_readonly_look_at_an_older_journal_lists_nothing(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with Journal.open(path, key=TEST_KEY, device_id=DEVICE):
        pass
    conn = connect_journal(path, TEST_KEY)
    conn.execute("DROP TABLE audit")
    conn.execute("PRAGMA user_version = 4")
    conn.close()
    with Journal.open(path, key=TEST_KEY, device_id=DEVICE, readonly=True) as j:
        assert j.audit_records() == [] and j.audit_verify() == (0, None)
        with pytest.raises(JournalError):
            j.audit_append(accesses(1))


def test_audit_into_writes_beside_an_open_journal_or_defers_an_older_file(
        tmp_path: Path) -> None:
    from edge.journal.db import audit_into

    path = tmp_path / "journal.db"
    with Journal.open(path, key=TEST_KEY, device_id=DEVICE) as running:
        running.audit_append(accesses(2))
        written = audit_into(path, TEST_KEY, accesses(1, 5000.0))  # another process's
        assert written is not None and written[0].seq == 3
        assert running.audit_append(accesses(1, 6000.0))[0].seq == 4
        assert running.audit_verify() == (4, None)
    conn = connect_journal(path, TEST_KEY)
    conn.execute("PRAGMA user_version = 4")
    conn.close()
    assert audit_into(path, TEST_KEY, accesses(1)) is None  # Journal.open migrates it
