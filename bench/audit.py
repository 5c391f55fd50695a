"""The audit trail: what a record costs, how fast a trail verifies, and what an access
flood does to a final's journal write.

In one run, side by side, on real encrypted journals (SQLCipher, WAL,
``synchronous=FULL``):

* (a) **append.** ``Journal.audit_append`` one record per transaction (as a command
  records itself) and 256 per transaction (as the daemon's Auditor batches them):
  records per second.
* (b) **verify.** ``Journal.audit_verify`` over the trail written in (a): records per
  second (the whole chain is re-hashed).
* (c) **a final's write during an access flood.** ``JournalService.append_final``
  latency (p50, p99, max) for finals journaled one after another, first with the
  Auditor idle, then while it receives ``--flood`` accesses per second (every one a
  ``transcript.read``, the worst case: refused handshakes are aggregated instead).

    .venv/bin/python bench/audit.py            # about a minute
    .venv/bin/python bench/audit.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.core.audit import Access
from edge.crypto.datakey import FILE, DataKey, KeySource
from edge.journal.auditor import Auditor
from edge.journal.db import Journal
from edge.journal.service import JournalService

KEY = DataKey(bytes(range(32)), KeySource(FILE, Path("/dev/null"), "journal.key_file"))


def access(i: int) -> Access:
    return Access("transcript.read", sub=f"dr-{i % 40}", organization="clinic-3",
                  department="cardiology", object=f"3f0c2a1b-{i:08d}",
                  peer=f"10.2.0.{i % 250}:5{i % 1000:04d}", detail={"format": "json"})


def appends(path: Path, total: int, per_transaction: int) -> float:
    with Journal.open(path, device_id="room-bench", key=KEY) as journal:
        start = time.perf_counter()
        for first in range(0, total, per_transaction):
            journal.audit_append([(access(i), time.time())
                                  for i in range(first, min(total, first + per_transaction))])
        return total / (time.perf_counter() - start)


def verify(path: Path) -> tuple[int, float]:
    with Journal.open(path, device_id="room-bench", key=KEY, readonly=True) as journal:
        start = time.perf_counter()
        count, fault = journal.audit_verify()
        assert fault is None, fault
        return count, count / (time.perf_counter() - start)


FINAL = {"type": "transcription", "is_final": True, "text": "머리가 아픕니다 " * 5,
         "start_ms": 0, "end_ms": 2400, "speaker": "Speaker 1",
         "words": [{"word": "머리가", "start_ms": i * 200, "end_ms": i * 200 + 180,
                    "conf": 0.93} for i in range(10)]}


async def finals_during(path: Path, finals: int, flood: int) -> list[float]:
    """Latencies (ms) of ``finals`` final writes while ``flood`` accesses/s arrive."""
    journal = Journal.open(path, device_id="room-bench", key=KEY)
    service = JournalService(journal, retention_days=30, purge_interval=3600,
                             keep_unrelayed=False)
    auditor = Auditor(service, retention_days=2190, purge_interval=3600,
                      keep_unrelayed=False)
    latencies: list[float] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(auditor.run)

            async def flooding() -> None:
                i = 0
                while True:
                    for _ in range(flood // 100):
                        auditor(access(i))
                        i += 1
                    await trio.sleep(0.01)

            if flood:
                nursery.start_soon(flooding)
            await service.start_session("s-1", None, source="client")
            for _ in range(finals):
                start = time.perf_counter()
                assert await service.append_final("s-1", FINAL)
                latencies.append((time.perf_counter() - start) * 1000)
            nursery.cancel_scope.cancel()
    finally:
        journal.close()
    if flood:
        print(f"    (the Auditor wrote {auditor.records} records, dropped {auditor.dropped})")
    return latencies


def summary(ms: list[float]) -> str:
    ordered = sorted(ms)
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)]
    return (f"p50 {statistics.median(ordered):6.2f} ms   p99 {p99:6.2f} ms   "
            f"max {ordered[-1]:6.2f} ms   (n={len(ordered)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--flood", type=int, default=2000, help="accesses per second in (c)")
    args = parser.parse_args()
    single, batched, finals = (200, 20000, 150) if args.quick else (1000, 100000, 400)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print("(a) append")
        one = appends(root / "one.db", single, 1)
        many = appends(root / "many.db", batched, 256)
        print(f"    1 per transaction:   {one:9.0f} records/s")
        print(f"    256 per transaction: {many:9.0f} records/s   ({many / one:.0f}x)")
        count, rate = verify(root / "many.db")
        print(f"(b) verify: {count} records at {rate:.0f} records/s")
        print("(c) a final's journal write")
        quiet = trio.run(finals_during, root / "quiet.db", finals, 0)
        print(f"    auditor idle:               {summary(quiet)}")
        loud = trio.run(finals_during, root / "loud.db", finals, args.flood)
        print(f"    {args.flood} accesses/s audited: {summary(loud)}")


if __name__ == "__main__":
    main()
