"""The journal's two lanes on a real SQLite file: local sessions on their own connection
and thread, bulk work (outbox, retention) in short transactions beside them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from edge.journal import outbox, retention
from edge.journal.connection import WriteGate
from edge.journal.db import Backlog, Journal
from edge.journal.service import JournalService
from helpers import TEST_KEY

DEVICE = "room-3"
WAIT = 10.0  # seconds: a deadline for threads, never a pause


def final(seq: int, text: str = "안녕하세요") -> dict[str, Any]:
    return {"type": "transcription", "session_id": "s", "seq": seq, "is_final": True,
            "text": text, "start_ms": 0, "end_ms": 1000, "words": [], "speaker": None}


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal.open(tmp_path / "journal.db", key=TEST_KEY, device_id=DEVICE)
    yield j
    j.close()


def session(j: Journal, session_id: str, finals: int, *, ended_at: float = 2.0) -> None:
    j.start_session(session_id, source="client", sub="dr-kim", started_at=1.0)
    for seq in range(1, finals + 1):
        j.append_final(session_id, final(seq))
    j.end_session(session_id, reason="end", ended_at=ended_at)


def test_a_final_goes_before_waiting_bulk_writers() -> None:
    gate = WriteGate()
    order: list[str] = []
    holding = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with gate.hold(hot=False):
            holding.set()
            release.wait(WAIT)
        order.append("first bulk")

    def writer(name: str, hot: bool) -> None:
        with gate.hold(hot=hot):
            order.append(name)

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    assert holding.wait(WAIT)
    threads.append(threading.Thread(target=writer, args=("bulk", False)))
    threads[-1].start()
    threads.append(threading.Thread(target=writer, args=("final", True)))
    threads[-1].start()
    for _ in range(int(WAIT / 0.001)):
        if gate._hot_waiting == 1:
            break
        threading.Event().wait(0.001)
    release.set()
    for t in threads:
        t.join(WAIT)
    assert order.index("final") < order.index("bulk")


def test_a_final_is_journaled_while_a_bulk_read_is_open(journal: Journal) -> None:
    session(journal, "old", 3)
    journal.start_session("live", source="client", sub=None, started_at=3.0)
    with journal._bulk.read() as db:
        cursor = db.execute("SELECT id FROM events ORDER BY id")
        cursor.fetchone()  # a read transaction stays open on the bulk connection
        done = threading.Event()

        def append() -> None:
            journal.append_final("live", final(1))
            done.set()

        t = threading.Thread(target=append)
        t.start()
        assert done.wait(WAIT)  # the hot connection did not wait for the reader
        cursor.fetchall()
    t.join(WAIT)
    assert [f["seq"] for f in journal.finals("live")] == [1]


def test_purge_deletes_in_bounded_chunks(journal: Journal) -> None:
    for i in range(7):
        session(journal, f"small-{i}", 2)
    session(journal, "big", 25)
    session(journal, "kept", 1, ended_at=50.0)
    statements: list[str] = []
    assert journal._conn is not None
    journal._conn.set_trace_callback(statements.append)
    assert retention.purge(journal._bulk, 10.0, keep_unrelayed=False, chunk_rows=10) == 8
    journal._conn.set_trace_callback(None)
    commits = sum(1 for s in statements if s == "COMMIT")
    assert commits >= 1 + 27 // 10 + 7 * 4 // 10  # big in pieces, small ones in groups
    assert [r.session_id for r in journal.sessions()] == ["kept"]
    db = journal._conn
    assert db.execute("SELECT COUNT(*) FROM events").fetchone() == (3,)


def test_purge_in_chunks_keeps_unrelayed_sessions(journal: Journal) -> None:
    session(journal, "a", 30)
    session(journal, "b", 30)
    journal.mark_relayed(journal.pending(32, 10**6)[-1].id)  # "a" relayed, "b" not
    assert retention.purge(journal._bulk, 10.0, keep_unrelayed=True, chunk_rows=10) == 1
    assert [r.session_id for r in journal.sessions()] == ["b"]
    assert journal.backlog().events == 32


def test_shed_in_chunks_matches_one_cut(journal: Journal, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    session(journal, "s", 40)
    total = journal.backlog()
    assert total.events == 42
    monkeypatch.setattr(outbox, "_SHED_CHUNK_ROWS", 7)
    keep = total.bytes // 3
    shed = journal.shed_backlog(keep)
    left = journal.backlog()
    assert shed.events + left.events == total.events
    assert shed.bytes + left.bytes == total.bytes
    assert left.bytes <= keep and shed.events > 7  # more than one chunk
    assert journal.shed_backlog(keep) == Backlog(0, 0)
    assert journal.pending(1, 10**6)[0].id == journal.pending(100, 10**9)[0].id


async def test_the_service_runs_the_hot_path_beside_a_busy_bulk_lane(journal: Journal
                                                                    ) -> None:
    service = JournalService(journal, retention_days=30, purge_interval=3600,
                             keep_unrelayed=True)
    journal.start_session("live", source="client", sub=None, started_at=1.0)
    release = threading.Event()
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            # The bulk lane is occupied (a long relay read, say) until released.
            nursery.start_soon(service.call, release.wait, WAIT)
            assert await service.append_final("live", {**final(1)})
            assert await service.end_session("live", "end")
            release.set()
    assert [f["seq"] for f in journal.finals("live")] == [1]
    assert service.failures == 0
