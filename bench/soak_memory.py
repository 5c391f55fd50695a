"""Memory soak: ever-new speech through live sessions and the room, with and without
recycling.

The daemon runs in a subprocess (``edge.app.run``, as ``edge serve`` builds it, with
the real model, the pool warmed at start, the journal), its room microphone a source
playing ever-new speech (bench/babble.py) at real-time pace. ``--sessions`` clients
stream other ever-new speech at ``--pace`` times real time, each reconnecting every
``--session-minutes`` (so pooled recognisers are reused and keep growing). VmRSS of
the daemon is read every second; ``/healthz`` every 10 s.

Two runs of ``--minutes`` each: recycling on (``recognizer.memory_budget_mb =
--budget``) and off (a budget too large to reach), one after the other, or with
``--together`` at the same time (two daemons sharing the machine, each with its own
clients on the same speech: side by side, but each starves the other of CPU).

Reported: idle RSS after the warm-up, peak, the peak against the model's share plus
``--budget`` and the share of one-second samples above that line (both runs measured
against the same line), the slope over the second half (MB per minute), the last figure,
the recycles, the swaps to a pre-warmed replacement, the share of ``/healthz`` samples
``degraded``, finals, refusals, the room's dropped chunks, the longest expected wait
behind the high-water mark (``wait_seconds``) and the machine's load average at the
start and end of the run (the benchmark measures a daemon competing for the CPU with
whatever else runs).

    .venv/bin/python bench/soak_memory.py --minutes 15       # about 32 minutes
    .venv/bin/python bench/soak_memory.py --minutes 2 --only on
    .venv/bin/python bench/soak_memory.py --minutes 120 --sessions 1 --pace 1 --together
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import babble
import common
import trio
from common import fmt

CHUNK = 3200  # 100 ms at 16 kHz
OFF_BUDGET_MB = 1_000_000


# --- the daemon's side (in the subprocess) ---------------------------------------------


class BabbleSource:
    """A room microphone hearing ever-new speech at real-time pace; like the real one,
    it never waits for the room (chunks are dropped and counted when the room lags)."""

    def __init__(self, seed: int) -> None:
        self._speech = babble.Babble(seed)
        self.chunks = 0
        self.dropped = 0

    async def run(self, send: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        from edge.audio.source import Chunk

        task_status.started()
        next_at = trio.current_time()
        async with send:
            while True:
                pcm = await trio.to_thread.run_sync(self._speech.read, CHUNK)
                self.chunks += 1
                try:
                    send.send_nowait(Chunk(pcm, 16000, trio.current_time()))
                except trio.WouldBlock:
                    self.dropped += 1
                next_at += CHUNK / 32000
                await trio.sleep_until(next_at)

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def statistics(self) -> Any:
        from edge.audio.source import MicStatistics

        return MicStatistics(state="running", device="babble", sample_rate=16000,
                             channels=1, chunks=self.chunks, dropped_chunks=self.dropped,
                             overruns=0, restarts=0, failures=0, last_error=None,
                             stream_open=True)


def serve(config_path: str) -> int:
    """(The subprocess.) The daemon with a babbling room microphone."""
    from edge import app
    from edge.core.config import load_config

    common.sigterm_on_parent_death()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = load_config(Path(config_path), environ=dict(os.environ))
    parts = app.Parts(microphone=BabbleSource(seed=1000))
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(lambda: app.run(config, parts=parts))
    return 0


# --- the clients and the sampling (the benchmark's process) ----------------------------


def client(url: str, seed: int, pace: float, until: float, session_s: float,
           totals: dict[str, int], lock: threading.Lock) -> None:
    """Sessions of ever-new speech, one after another, until ``until``."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    speech = babble.Babble(seed)
    token = common.mint_token(sub=f"soak-{seed}")
    try:
        while time.time() < until:
            try:
                ws = connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                             open_timeout=30, max_size=None, ping_interval=None)
            except InvalidStatus as exc:
                with lock:
                    totals["refused"] += 1
                time.sleep(min(30, int(exc.response.headers.get("Retry-After", "5"))))
                continue
            finals = 0

            def receive(ws: Any = ws) -> None:
                nonlocal finals
                with contextlib.suppress(ConnectionClosed):
                    for message in ws:
                        data = json.loads(message)
                        if data.get("type") == "transcription" and data.get("is_final"):
                            finals += 1

            reader = threading.Thread(target=receive, daemon=True)
            reader.start()
            end = min(until, time.time() + session_s)
            next_at = time.monotonic()
            sent = 0
            with contextlib.suppress(ConnectionClosed):
                while time.time() < end:
                    ws.send(speech.read(CHUNK))
                    sent += 1
                    next_at += 0.1 / pace
                    time.sleep(max(0.0, next_at - time.monotonic()))
                ws.send(json.dumps({"type": "end"}))
            reader.join(timeout=120)
            ws.close()
            with lock:
                totals["sessions"] += 1
                totals["finals"] += finals
                totals["audio_s"] += round(sent * 0.1)
    finally:
        speech.close()


def soak(name: str, budget_mb: int, args: argparse.Namespace) -> dict[str, Any]:
    extra = (f"[recognizer]\nmemory_budget_mb = {budget_mb}\nwarm_recognizers = "
             f"{args.warm}\n[microphone]\nenabled = true\n")
    with common.EdgeServer(f"soak-memory-{name}", config_extra=extra,
                           command=[common.PYTHON, __file__, "--serve", "{config}"]) as server:
        # Let the start-up warm-up finish (it is what an idle device holds).
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if server.health().get("recognizers", {}).get("state") in ("warm", "off"):
                break
            time.sleep(1)
        idle_mb = server.rss_mb()
        samples: list[tuple[float, float]] = []
        health: list[dict[str, Any]] = []
        totals = {"sessions": 0, "finals": 0, "audio_s": 0, "refused": 0}
        lock = threading.Lock()
        load_start = os.getloadavg()[0]
        start = time.time()
        until = start + 60 * args.minutes
        threads = [threading.Thread(target=client, daemon=True, args=(
            server.url, 10 + i, args.pace, until, 60 * args.session_minutes, totals, lock))
            for i in range(args.sessions)]
        for t in threads:
            t.start()
        next_health = start
        while time.time() < until or any(t.is_alive() for t in threads):
            now = time.time()
            samples.append((now - start, server.rss_mb()))
            if now >= next_health:
                health.append({"t": now - start, **server.health()})
                next_health += 10
            time.sleep(1)
        last = server.health()
        load_end = os.getloadavg()[0]
    times = [t for t, _ in samples]
    rss = [mb for _, mb in samples]
    half = [(t, mb) for t, mb in samples if t >= times[-1] / 2]
    slope = common.slope([t / 60 for t, _ in half], [mb for _, mb in half])
    memory = last.get("memory", {})
    model_mb = memory.get("model_bytes", 0) / 2**20
    # Against the budget of the run with recycling (the same line for the run without).
    limit = model_mb + args.budget
    over = [mb - limit for mb in rss if mb > limit]
    return {"name": name, "budget_mb": budget_mb, "minutes": args.minutes,
            "sessions": args.sessions, "pace": args.pace, "idle_mb": idle_mb,
            "peak_mb": max(rss), "last_mb": rss[-1], "slope_mb_per_min": slope,
            "model_mb": model_mb, "peak_over_mb": max(rss) - limit,
            "over_pct": 100 * len(over) / len(rss), "prewarmed": memory.get("prewarmed"),
            "prewarm_late": memory.get("prewarm_late"),
            "degraded_pct": 100 * sum(1 for h in health if h.get("status") == "degraded")
            / max(1, len(health)),
            "recycled": memory.get("recycled"), "held": memory.get("held"),
            "room_dropped": last.get("microphone", {}).get("dropped_chunks"),
            "max_wait_s": max((h.get("memory", {}).get("wait_seconds", 0) for h in health),
                              default=0),
            "load": (load_start, load_end),
            **totals, "samples": samples, "health": health}


def together(chosen: list[tuple[str, int]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """:func:`soak` for each of ``chosen`` at the same time, in threads."""
    results: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def run(name: str, budget: int) -> None:
        try:
            results[name] = soak(name, budget, args)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=pair) for pair in chosen]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [results[name] for name, _ in chosen]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--pace", type=float, default=2.0,
                        help="sessions send audio this many times faster than real time")
    parser.add_argument("--session-minutes", type=float, default=5.0)
    parser.add_argument("--budget", type=int, default=400, help="memory_budget_mb when on")
    parser.add_argument("--warm", type=int, default=4, help="warm_recognizers (both runs)")
    parser.add_argument("--only", choices=("on", "off"))
    parser.add_argument("--together", action="store_true",
                        help="run both at the same time, side by side")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)
    babble.check_tools()
    common.exit_on_sigterm()
    chosen = [(name, budget) for name, budget in (("on", args.budget), ("off", OFF_BUDGET_MB))
              if args.only in (None, name)]
    if args.together:
        print(f"recycling on and off together: {args.minutes:g} min ...", flush=True)
        runs = together(chosen, args)
    else:
        runs = []
        for name, budget in chosen:
            print(f"recycling {name}: {args.minutes:g} min ...", flush=True)
            runs.append(soak(name, budget, args))
    rows = [[r["name"], r["budget_mb"] if r["name"] == "on" else "-", fmt(r["model_mb"], ".0f"),
             fmt(r["idle_mb"], ".0f"), fmt(r["peak_mb"], ".0f"),
             f"{r['peak_over_mb']:+.0f} ({100 * r['peak_over_mb'] / args.budget:+.0f}%)",
             fmt(r["over_pct"], ".1f"), fmt(r["last_mb"], ".0f"),
             fmt(r["slope_mb_per_min"], ".1f"), json.dumps(r["recycled"]),
             f"{r['prewarmed']} / {r['prewarm_late']}",
             fmt(r["degraded_pct"], ".0f"), r["sessions"], r["finals"], r["audio_s"],
             r["refused"], r["room_dropped"], fmt(r["max_wait_s"], ".1f"),
             "{:.1f} / {:.1f}".format(*r["load"])] for r in runs]
    common.print_table(["recycling", "budget MB", "model MB", "idle MB", "peak MB",
                        f"peak vs model+{args.budget} MB", "% samples over", "last MB",
                        "slope MB/min (2nd half)", "recycled", "prewarmed / late", "% degraded",
                        "sessions", "finals", "session audio s", "refused", "room dropped",
                        "max wait s", "load start / end"],
                       rows,
                       title=f"{args.sessions} sessions at {args.pace:g}x + the room, ever-new "
                       f"speech, {args.minutes:g} min each")
    path = common.write_json("soak_memory", {"machine": common.machine_info(),
                                             "args": vars(args), "runs": runs})
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
