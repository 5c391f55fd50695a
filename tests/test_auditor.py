"""The Auditor: the daemon's non-blocking access sink over the real journal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from edge.core.audit import REFUSED, Access
from edge.journal.auditor import Auditor
from edge.journal.db import Journal
from edge.journal.service import JournalService
from helpers import TEST_KEY


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[JournalService]:
    journal = Journal.open(tmp_path / "journal.db", key=TEST_KEY, device_id="room-1")
    yield JournalService(journal, retention_days=30, purge_interval=3600,
                         keep_unrelayed=False)
    journal.close()


async def wait_for(predicate: object, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():  # type: ignore[operator]
            await trio.sleep(0.01)


async def test_accesses_are_written_in_order(service: JournalService) -> None:
    auditor = Auditor(service, retention_days=2190, purge_interval=3600,
                      keep_unrelayed=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(auditor.run)
        for i in range(300):
            auditor(Access("transcript.read", sub="dr-lee", object=f"s-{i}",
                           peer="10.0.0.5:5000"))
        await wait_for(lambda: auditor.records == 300)
        nursery.cancel_scope.cancel()
    records = service.journal.audit_records()
    assert [r.object for r in records] == [f"s-{i}" for i in range(300)]
    assert service.journal.audit_verify() == (300, None)
    assert auditor.status() == {"records": 300, "last_seq": 300, "relayed_seq": 0,
                                "errors": 0, "dropped": 0, "last_error": None}
    assert auditor.by_action == {"transcript.read": 300}


async def test_a_flood_of_refused_handshakes_is_counted_per_reason_and_host(
        service: JournalService) -> None:
    auditor = Auditor(service, retention_days=2190, purge_interval=3600,
                      keep_unrelayed=False, window=3600)
    async with trio.open_nursery() as nursery:
        await nursery.start(auditor.run)
        for i in range(5000):
            auditor(Access("handshake.refused", outcome=REFUSED, reason="auth_failed",
                           peer=f"10.0.0.9:{1024 + i}"))
        for i in range(7):
            auditor(Access("handshake.refused", outcome=REFUSED, reason="rate_limited",
                           peer=f"[fe80::1]:{2000 + i}"))
        auditor(Access("session.start", sub="dr-lee", object="s-1", peer="10.0.0.5:1"))
        await wait_for(lambda: auditor.records == 1)
        auditor.flush_refusals()
        await wait_for(lambda: auditor.records == 3)
        nursery.cancel_scope.cancel()
    refused = [r for r in service.journal.audit_records()
               if r.action == "handshake.refused"]
    assert sorted((r.reason, r.peer, r.detail["count"]) for r in refused) == [
        ("auth_failed", "10.0.0.9", 5000), ("rate_limited", "[fe80::1]", 7)]
    assert all(r.outcome == "refused" and r.detail["window_s"] == 3600 for r in refused)


async def test_a_failing_store_is_counted_and_never_raises(service: JournalService) -> None:
    auditor = Auditor(service, retention_days=2190, purge_interval=3600,
                      keep_unrelayed=False, queue=8)
    async with trio.open_nursery() as nursery:
        await nursery.start(auditor.run)
        service.journal.close()  # every write now fails
        for i in range(20):
            auditor(Access("transcript.list", sub="dr-lee", object=str(i)))  # never raises
        await wait_for(lambda: auditor.errors >= 1)
        nursery.cancel_scope.cancel()
    status = auditor.status()
    assert status["errors"] >= 1 and "closed" in status["last_error"]
    assert status["dropped"] >= 11  # a queue of 8 (and one batch in hand) holds the rest
    assert status["records"] == 0


async def test_retention_purges_relayed_records(service: JournalService) -> None:
    journal = service.journal
    journal.audit_append([(Access("key.rotate", peer="cli"), 1000.0 + i) for i in range(3)])
    journal.audit_mark_relayed(2)
    auditor = Auditor(service, retention_days=1, purge_interval=3600, keep_unrelayed=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(auditor.run)
        await wait_for(lambda: [r.seq for r in journal.audit_records()] == [3])
        nursery.cancel_scope.cancel()
    assert auditor.relayed_seq == 2 and auditor.last_seq == 3
    assert journal.audit_verify() == (1, None)


def test_health_shows_the_audit_object_and_metrics_count_by_action() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from edge.core.stats import Stats
    from edge.ops import health

    clock = health.ClockStatus(True, True)
    status = {"records": 3, "last_seq": 9, "relayed_seq": 6, "errors": 0, "dropped": 0,
              "last_error": None}
    code, body = health.health(version="t", model="m", sessions=0, max_sessions=8,
                               clock=clock, audit=status)
    assert code == 200 and body["audit"] == status and "notes" not in body
    failing = {**status, "errors": 2, "last_error": "journal write failed: disk I/O error"}
    code, body = health.health(version="t", model="m", sessions=0, max_sessions=8,
                               clock=clock, audit=failing)
    assert code == 200 and any("audit trail cannot be stored" in n for n in body["notes"])
    text = health.render_metrics(Stats(), version="1", model="m", sessions_current=0,
                                 max_sessions=1, clock=clock,
                                 audit_records={"transcript.read": 4, "session.start": 2})
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("edge_audit_records_total", (("action", "transcript.read"),))] == 4
    assert samples[("edge_audit_records_total", (("action", "session.start"),))] == 2


def test_the_retention_is_six_years_and_a_bad_one_names_its_key() -> None:
    from edge.core.config import load_config
    from edge.core.errors import ConfigError

    assert load_config(None, environ={}).audit.retention_days == 2190
    for bad in (0, -1, "long"):
        with pytest.raises(ConfigError, match=r"audit\.retention_days"):
            load_config(None, environ={}, overrides={"audit.retention_days": bad})
