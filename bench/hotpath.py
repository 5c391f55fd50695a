"""Hot path under bulk work: how long a final waits for the journal while the relay
drains and retention purges.

Measured: the time from a final's arrival at the journal (``await
JournalService.append_final(...)``, what a session awaits before it sends the final) to
its return, one final every ``--interval`` seconds on a live session, as p50 / p99:

* (a) **idle**: nothing else runs;
* (b) **bulk**: at the same time, the real :class:`edge.relay.sender.Relay` drains a
  backlog of ``--events`` events (default 100,000) to an upstream on 127.0.0.1 (a small
  upstream in a process of its own, speaking :mod:`edge.protocols.relay` and storing
  every batch with ``Journal.ingest`` in its own journal before acking, as ``/ws/relay``
  does; no model loaded), and ``Journal.purge`` deletes ``--expired`` expired sessions (through
  ``JournalService.call``, as the service's retention loop does).

Both are run for the journal as shipped (two lanes: the hot path on its own connection
and worker thread) and, side by side in the same run, with ``separate_hot_path=False``
(the hot path queued in the bulk lane's one worker, as before the lanes were split; the
bulk work itself is the same chunked code). Journals live in a temporary directory on
the disk under ``--dir`` (fsyncs are real: not tmpfs). Prints numbers; asserts nothing
but that every event arrived upstream.

    .venv/bin/python bench/hotpath.py            # about 3 minutes
    .venv/bin/python bench/hotpath.py --quick    # 20,000 events, under a minute
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

DEVICE = "room-bench"
FINALS_PER_SESSION = 48  # + start + end: 50 events per session


def final_message(session_id: str, seq: int, rng: random.Random) -> dict[str, Any]:
    words: list[dict[str, Any]] = [
        {"word": f"w{rng.randint(0, 999)}", "start_ms": i * 300, "end_ms": i * 300 + 250,
         "confidence": 0.93} for i in range(10)]
    return {"type": "transcription", "session_id": session_id, "seq": seq, "is_final": True,
            "text": " ".join(w["word"] for w in words), "start_ms": 0, "end_ms": 3000,
            "words": words, "speaker": "Speaker 1", "speaker_id": "session:1",
            "speaker_confidence": 0.8, "speaker_role": None}


def prefill(path: Path, events: int, expired: int) -> dict[str, int]:
    """A device journal with ``events`` pending events (sessions of 50) and ``expired``
    relayed sessions that ended long ago (20 finals each), written fast (one
    transaction, no fsync): this is setup, not measurement."""
    from edge.journal import local
    from edge.journal.db import Journal
    from edge.journal.db import connect as connect_journal

    Journal.open(path, key=common.BENCH_KEY,
                 device_id=DEVICE).close()  # schema, settings, private file
    rng = random.Random(7)
    db = connect_journal(path, common.BENCH_KEY)
    db.execute("PRAGMA synchronous = OFF")
    db.execute("BEGIN")
    made = 0

    def session(session_id: str, finals: int, at: float, ended: bool) -> int:
        db.execute("INSERT INTO sessions (session_id, device_id, source, sub, started_at,"
                   " ended_at, end_reason) VALUES (?, ?, 'client', 'dr', ?, ?, ?)",
                   (session_id, DEVICE, at, at + 60 if ended else None,
                    "end" if ended else None))
        local.insert_event(db, DEVICE, session_id, 0, "start", at, {
            "source": "client", "sub": "dr", "organization": None, "department": None,
            "model": "m", "started_at": at})
        for seq in range(1, finals + 1):
            local.insert_event(db, DEVICE, session_id, seq, "final", at + seq,
                               final_message(session_id, seq, rng))
        local.insert_event(db, DEVICE, session_id, finals + 1, "end", at + 60,
                           {"reason": "end", "ended_at": at + 60})
        return finals + 2

    old = 0
    for i in range(expired):
        old += session(f"old-{i}", 20, 1000.0 + i, True)
    db.execute("UPDATE events SET relayed = 1")
    n = 0
    while made < events:
        finals = min(FINALS_PER_SESSION, events - made - 2)
        made += session(f"backlog-{n}", max(0, finals), time.time() - 3600 + n, True)
        n += 1
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return {"pending": made, "expired_sessions": expired, "expired_events": old}


def upstream_main(path: Path, port: int) -> None:
    """The upstream as its own process (as a second daemon would be): no share of this
    process's event loop or GIL."""
    import trio

    from edge.journal.db import Journal
    from edge.journal.service import JournalService

    async def run() -> None:
        with Journal.open(path, key=common.BENCH_KEY, device_id="clinic") as journal:
            service = JournalService(journal, retention_days=30, purge_interval=3600,
                                     keep_unrelayed=False)
            async with trio.open_nursery() as nursery:
                await upstream_server(nursery, service, port)

    trio.run(run)


async def upstream_server(nursery: Any, service: Any, port: int = 0) -> int:
    """A relay upstream on 127.0.0.1: greets, stores each batch durably, acks it."""
    from trio_websocket import ConnectionClosed, serve_websocket

    from edge.protocols import relay as wire

    async def handler(request: Any) -> None:
        ws = await request.accept()
        await ws.send_message(wire.encode(wire.RelayInit("bench", "0")))
        try:
            while True:
                batch = wire.parse_downstream(await ws.get_message())
                stored = await service.call(service.journal.ingest, batch.events)
                await ws.send_message(wire.encode(wire.RelayAck(batch.batch, batch.up_to,
                                                                stored)))
        except ConnectionClosed:
            return

    server = await nursery.start(functools.partial(
        serve_websocket, handler, "127.0.0.1", port, None, max_message_size=16 * 1024 * 1024))
    return int(server.port)


def run_mode(source: Path, work: Path, *, separate: bool, idle_finals: int,
             interval: float, batch_events: int, info: dict[str, int]) -> dict[str, Any]:
    import trio

    from edge.journal.db import Journal
    from edge.journal.service import JournalService
    from edge.relay.sender import Relay, RelaySettings

    device_path = common.copy_journal(source, work / "device" / "journal.db", clear=work)
    token = common.relay_token(DEVICE)
    out: dict[str, Any] = {"separate_hot_path": separate}

    upstream_path = work / "upstream" / "journal.db"
    port = common.free_port()
    child = subprocess.Popen([sys.executable, __file__, "--upstream-child",
                              str(upstream_path), str(port)])

    async def run() -> None:
        device = Journal.open(device_path, key=common.BENCH_KEY, device_id=DEVICE)
        try:
            dev = JournalService(device, retention_days=30, purge_interval=3600,
                                 keep_unrelayed=True, separate_hot_path=separate)
            await common.wait_for_port(port)
            await dev.start_session("live", None, source="client")
            rng = random.Random(11)
            seq = 0

            async def finals(count: int | None, until: trio.Event | None) -> list[float]:
                nonlocal seq
                waits: list[float] = []
                next_at = trio.current_time()
                while ((count is None or len(waits) < count)
                       and not (until is not None and until.is_set())):
                    seq += 1
                    message = final_message("live", seq, rng)
                    t0 = time.perf_counter()
                    ok = await dev.append_final("live", message)
                    waits.append(time.perf_counter() - t0)
                    if not ok:
                        raise RuntimeError("a final could not be journaled")
                    next_at += interval
                    await trio.sleep_until(next_at)
                return waits

            out["idle"] = common.summarize(await finals(idle_finals, None))

            done = trio.Event()
            purge_s: list[float] = []
            async with trio.open_nursery() as nursery:
                relay = Relay(RelaySettings(
                    url=f"ws://127.0.0.1:{port}/ws/relay", token=token,
                    batch_events=batch_events, ack_timeout=60.0, backoff_base=0.05,
                    backoff_max=0.5), dev)

                async def bulk() -> None:
                    t0 = time.perf_counter()
                    await nursery.start(relay.run)

                    async def purge() -> None:
                        p0 = time.perf_counter()
                        purged = await dev.call(device.purge, time.time() - 30 * 86400,
                                                keep_unrelayed=True)
                        purge_s.append(time.perf_counter() - p0)
                        out["purged_sessions"] = purged

                    nursery.start_soon(purge)
                    with trio.fail_after(1800):
                        while relay.sent_events < info["pending"] or not purge_s:
                            if relay.failures:
                                raise RuntimeError(f"relay failed: {relay.last_error}")
                            await trio.sleep(0.01)
                    out["drain_s"] = time.perf_counter() - t0
                    done.set()

                window = common.CpuWindow({"bench": os.getpid()})
                nursery.start_soon(bulk)
                out["bulk"] = common.summarize(await finals(None, done))
                cpu = window.read()
                nursery.cancel_scope.cancel()
            out["purge_s"] = purge_s[0]
            out["events_per_s"] = info["pending"] / out["drain_s"]
            out["process_cores"], out["others_cores"] = cpu["bench"], cpu["others"]
        finally:
            device.close()

    common.trio_run_beside(child, run)
    with Journal.open(upstream_path, key=common.BENCH_KEY, device_id="reader",
                      readonly=True) as upstream:
        stored = common.events_stored(upstream, DEVICE)
    assert stored >= info["pending"], (stored, info["pending"])
    out["stored_upstream"] = stored
    return out


def main() -> int:
    if sys.argv[1:2] == ["--upstream-child"]:
        upstream_main(Path(sys.argv[2]), int(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--expired", type=int, default=2_000,
                        help="expired sessions (22 events each) for the purge")
    parser.add_argument("--idle-finals", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=0.01,
                        help="seconds between finals on the live session")
    parser.add_argument("--batch-events", type=int, default=200)
    parser.add_argument("--only", choices=("lanes", "single"), default=None)
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent,
                        help="where the temporary journals go (a real disk)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.events, args.expired, args.idle_finals = 20_000, 500, 300
    common.wait_quiet()
    modes = [m for m in ("lanes", "single") if args.only in (None, m)]
    results: dict[str, Any] = {"machine": common.machine_info(), "args": {
        k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="hotpath-", dir=args.dir) as tmp:
        source = Path(tmp) / "source" / "journal.db"
        info = prefill(source, args.events, args.expired)
        results["journal"] = info
        print(f"journal: {info['pending']} pending events, {info['expired_sessions']} "
              f"expired sessions ({info['expired_events']} events)", flush=True)
        for mode in modes:
            results[mode] = run_mode(source, Path(tmp) / mode, separate=mode == "lanes",
                                     idle_finals=args.idle_finals, interval=args.interval,
                                     batch_events=args.batch_events, info=info)
            r = results[mode]
            print(f"{mode}: idle p50/p99 {common.ms(r['idle']['p50'], 2)}/"
                  f"{common.ms(r['idle']['p99'], 2)} ms, bulk p50/p99 "
                  f"{common.ms(r['bulk']['p50'], 2)}/{common.ms(r['bulk']['p99'], 2)} ms, "
                  f"drain {r['drain_s']:.1f} s, purge {r['purge_s']:.1f} s", flush=True)
    rows = []
    for mode in modes:
        r = results[mode]
        ratio = r["bulk"]["p99"] / r["idle"]["p99"]
        r["p99_ratio"] = ratio
        rows.append([
            "two lanes (as shipped)" if mode == "lanes" else "one worker (before)",
            f"{common.ms(r['idle']['p50'], 2)} / {common.ms(r['idle']['p99'], 2)}",
            f"{common.ms(r['bulk']['p50'], 2)} / {common.ms(r['bulk']['p99'], 2)}",
            f"{ratio:.2f}x", f"{common.ms(r['bulk']['max'], 1)}",
            f"{r['events_per_s']:.0f}", f"{r['purge_s']:.1f}",
            f"{r['bulk']['n']}"])
    common.print_table(
        ["hot path", "idle p50 / p99 ms", "bulk p50 / p99 ms", "p99 bulk/idle",
         "bulk max ms", "drain events/s", "purge s", "finals during bulk"], rows,
        f"append_final, one final every {1000 * args.interval:.0f} ms; bulk = relay drain "
        f"of {info['pending']} events + purge of {info['expired_sessions']} sessions")
    print(f"results: {common.write_json('hotpath', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
