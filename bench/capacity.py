"""Capacity: how many real-time streams one device sustains, next to what bare Vosk can do.

(a) Bare Vosk: N threads (N = 1 .. cores), each with a fresh recogniser on one shared
    model, decode the looped speech fixture in 100 ms chunks as fast as they can. The
    aggregate speed (seconds of audio decoded per wall second, all threads together) is
    the number of real-time streams the CPU could carry with nothing else running.
    Then the same at N = cores with warm recognisers (each has decoded the audio once
    and been reset, as the server's pool hands them out): the reference for (b).
(b) Server: ``edge serve`` in a subprocess, its recogniser pool sized for the trials
    and warmed by one untimed round of streams (``--cold``: no pool, and fresh bare
    Vosk as the reference); a load client in another process streams the same audio
    over N WebSockets at real-time pace (starts spread over a ramp). A trial passes when
    every session completes, no ``realtime_lag`` warning comes, the p95 partial latency
    is under 1 s, the final latency does not grow over the stream and the server drains
    within 1 s of ``end``. The largest passing N is the server capacity; its ratio to
    (a) at N = cores is what the server path costs.

    .venv/bin/python bench/capacity.py            # 5-13 minutes
    .venv/bin/python bench/capacity.py --quick    # under 2 minutes
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import fmt, ms

PARTIAL_P95_LIMIT = 1.0  # seconds
FINAL_GROWTH_LIMIT = 0.3  # seconds: last third's median final latency over the first third's
DRAIN_LIMIT = 1.0  # seconds from `end` to `session_end`
DISTURBED = 0.3  # cores used by other work during a trial


def judge(a: dict[str, Any]) -> list[str]:
    """Why a trial did not sustain its streams (empty: it did)."""
    reasons = []
    if a["errors"] or a["completed"] < a["streams"]:
        reasons.append(f"{a['streams'] - a['completed']} session(s) incomplete")
    if a["warnings"].get("realtime_lag"):
        reasons.append(f"realtime_lag x{a['warnings']['realtime_lag']}")
    p95 = a["partial_latency_s"]["p95"]
    if p95 is None or p95 >= PARTIAL_P95_LIMIT:
        reasons.append(f"partial p95 {ms(p95)} ms")
    trend = a["final_trend_s"]
    if trend is not None and trend > FINAL_GROWTH_LIMIT:
        reasons.append(f"final latency grows {ms(trend)} ms")
    drain = a["drain_s"]["max"]
    if drain is not None and drain > DRAIN_LIMIT:
        reasons.append(f"drain {drain:.1f} s")
    return reasons


def run_trial(server: common.EdgeServer, n: int, args: argparse.Namespace,
              spans: list[tuple[float, float]]) -> dict[str, Any]:
    background = common.wait_quiet(max_wait=args.quiet_wait)
    run = common.run_clients(server.url, [common.ClientSpec(n, args.lib)],
                             seconds=args.seconds, ramp=args.ramp, grammar=args.grammar,
                             server_pid=server.pid)
    a = common.analyze_streams(common.all_streams(run), spans, first_seconds=args.loop_s)
    reasons = judge(a)
    server.wait_idle()
    cpu = run["cpu"]
    # CPU the server spent per second of audio it was sent: unlike the pass/fail
    # verdict, this hardly changes when other work competes for the cores.
    server_rtf = cpu["server"] * cpu["wall_s"] / (n * args.seconds)
    loop_rtf = cpu["server_loop"] * cpu["wall_s"] / (n * args.seconds)
    trial = {**a, "streams": n, "passed": not reasons, "reasons": reasons,
             "background_cores_before": background, "cpu_cores": cpu,
             "server_cpu_s_per_audio_s": server_rtf,
             "event_loop_cpu_s_per_audio_s": loop_rtf,
             "workers_cpu_s_per_audio_s": server_rtf - loop_rtf}
    pl, fl = a["partial_latency_s"], a["final_latency_s"]
    print(f"  {n:3d} streams: {'PASS' if not reasons else 'FAIL'}  partial p50/p95 "
          f"{ms(pl['p50'])}/{ms(pl['p95'])} ms (p95 in each stream's first loop "
          f"{ms(a['partial_latency_first_s']['p95'])}, later "
          f"{ms(a['partial_latency_rest_s']['p95'])}), final p50/p95 "
          f"{ms(fl['p50'])}/{ms(fl['p95'])} "
          f"ms, server {run['cpu']['server']:.2f} cores, others "
          f"{run['cpu']['others']:.2f} cores {'; '.join(reasons)}", flush=True)
    return trial


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short run (CI): under 2 minutes")
    p.add_argument("--seconds", type=float, help="audio per stream (rounded up to whole loops)")
    p.add_argument("--ramp", type=float, help="spread stream starts over this many seconds")
    p.add_argument("--max-trials", type=int, help="server trials at most")
    p.add_argument("--start", type=int, help="first number of streams to try")
    p.add_argument("--grammar", action="store_true",
                   help="recognise with the fixture's phrase list (a Vosk grammar)")
    p.add_argument("--lib", choices=["websockets", "trio"], default="websockets")
    p.add_argument("--threads", type=int,
                   help="the server's recognizer.threads (default: its own, one per core)")
    p.add_argument("--endpoint-silence-ms", type=int, metavar="MS",
                   help="recognizer.endpoint_silence_ms for the server (default: the "
                        "device default; 0: Vosk's endpointer only)")
    p.add_argument("--cold", action="store_true",
                   help="no recogniser pool (warm_recognizers = 0); compare with fresh "
                        "recognisers in bare Vosk")
    args = p.parse_args(argv)
    common.exit_on_sigterm()
    quick = args.quick
    args.seconds = args.seconds or (14.0 if quick else 42.0)
    args.ramp = args.ramp if args.ramp is not None else (3.0 if quick else 7.0)
    args.max_trials = args.max_trials or (3 if quick else 8)
    args.quiet_wait = 10.0 if quick else 60.0
    budget = time.monotonic() + (100 if quick else 13 * 60)
    cores = os.cpu_count() or 1

    speech = common.load_speech()
    pcm, spans = speech.looped(args.seconds)
    args.loop_s = speech.seconds
    args.seconds = len(pcm) / (2 * speech.rate)
    chunks = speech.chunks(pcm)
    info = common.machine_info()
    print(f"{info['cpu_model']}, {cores} cores; {args.seconds:.1f} s streams "
          f"({len(pcm) // len(speech.pcm)} loops of the fixture), "
          f"{'grammar' if args.grammar else 'free dictation'}")

    print("\n(a) bare Vosk", flush=True)
    common.wait_quiet(max_wait=args.quiet_wait)
    model = common.load_vosk_model()
    common.bare_decode(model, speech.chunks()[:20], 1, grammar=args.grammar)  # warm-up
    bare = []
    for n in range(1, cores + 1):
        common.wait_quiet(max_wait=args.quiet_wait)
        window = common.CpuWindow({"bench": os.getpid()})
        r = common.bare_decode(model, chunks, n, grammar=args.grammar, loop_bytes=len(speech.pcm))
        r["cpu_cores"] = window.read()
        steady = [loops[-1] / speech.seconds for loops in r["loop_cpu_s"] if loops]
        r["steady_cpu_rtf"] = sum(steady) / len(steady) if steady else None
        bare.append(r)
        print(f"  {n} thread(s): {r['x_realtime']:.1f}x real time, CPU RTF "
              f"{r['cpu_rtf']:.3f} (steady {fmt(r['steady_cpu_rtf'], '.3f')}), "
              f"others {r['cpu_cores']['others']:.2f} cores", flush=True)
    bare_fresh = bare[-1]
    bare_warm = None
    if not args.cold:
        common.wait_quiet(max_wait=args.quiet_wait)
        window = common.CpuWindow({"bench": os.getpid()})
        bare_warm = common.bare_decode(model, chunks, cores, grammar=args.grammar, warm=True)
        bare_warm["cpu_cores"] = window.read()
        print(f"  {cores} thread(s), warm recognisers: {bare_warm['x_realtime']:.1f}x real "
              f"time, CPU RTF {bare_warm['cpu_rtf']:.3f}, others "
              f"{bare_warm['cpu_cores']['others']:.2f} cores", flush=True)
    reference = bare_warm or bare_fresh
    bare_streams = reference["x_realtime"]
    # The server interleaves many recognisers on the same cores; their working sets
    # compete for the caches. The same in bare Vosk, at about the first trial's size:
    k = 2 if quick else max(2, round(0.8 * bare_streams / cores))
    common.wait_quiet(max_wait=args.quiet_wait)
    window = common.CpuWindow({"bench": os.getpid()})
    interleaved = common.bare_decode(model, chunks, cores, grammar=args.grammar,
                                     per_thread=k, warm=not args.cold)
    interleaved["cpu_cores"] = window.read()
    print(f"  {cores} threads x {k} recognisers each: CPU RTF "
          f"{interleaved['cpu_rtf']:.3f}, others "
          f"{interleaved['cpu_cores']['others']:.2f} cores", flush=True)
    del model

    print("\n(b) server", flush=True)
    pool = 0 if args.cold else math.ceil(bare_streams * 1.3)
    extra = "[recognizer]\n" + (f"threads = {args.threads}\n" if args.threads else "") + \
        f"warm_recognizers = {pool}\n" + (
            "" if args.endpoint_silence_ms is None
            else f"endpoint_silence_ms = {args.endpoint_silence_ms}\n")
    with common.EdgeServer("capacity-server", config_extra=extra) as server:
        if pool:
            print(f"  warming the pool: {pool} streams of {speech.seconds:.0f} s, untimed",
                  flush=True)
            common.run_clients(server.url, [common.ClientSpec(pool, args.lib)],
                               seconds=speech.seconds, fast=True, grammar=args.grammar)
            server.wait_idle()

        def trial(n: int) -> list[dict[str, Any]]:
            runs = [run_trial(server, n, args, spans)]
            if not runs[0]["passed"] and runs[0]["cpu_cores"]["others"] > DISTURBED:
                print("    (other work on the machine during the trial: repeating)")
                runs.append(run_trial(server, n, args, spans))
            return runs

        lo, hi, trials = common.search_capacity(
            trial, args.start or max(1, math.floor(bare_streams * 0.8)), args.max_trials,
            budget)
        server_rss = server.rss_mb()

    capacity = lo
    ratio = capacity / bare_streams if bare_streams else None
    # CPU-bound view: what the cores could carry at the CPU per stream-second the
    # server used, next to bare Vosk's CPU per audio second (both fresh recognisers,
    # same stream length). Taken from the passing trials (no backlog).
    passing = [t["server_cpu_s_per_audio_s"] for t in trials if t["passed"]]
    server_rtf = min(passing) if passing else None
    bare_rtf = reference["cpu_rtf"]
    cpu_capacity = cores / server_rtf if server_rtf else None
    cpu_ratio = bare_rtf / server_rtf if server_rtf else None
    print()
    common.print_table(
        ["threads", "x real time", "CPU RTF/thread", "steady RTF", "others (cores)"],
        [[r["threads"], f"{r['x_realtime']:.1f}", f"{r['cpu_rtf']:.3f}",
          fmt(r["steady_cpu_rtf"], ".3f"), f"{r['cpu_cores']['others']:.2f}"] for r in bare],
        title=f"(a) bare Vosk, {args.seconds:.0f} s of audio per thread, fresh recognisers")
    if bare_warm is not None:
        print(f"{cores} threads, warm recognisers: {bare_warm['x_realtime']:.1f}x real time, "
              f"CPU RTF {bare_warm['cpu_rtf']:.3f} (fresh: {bare_fresh['cpu_rtf']:.3f})")
    print(f"{cores} threads x {k} interleaved recognisers ({cores * k} streams): CPU RTF "
          f"{interleaved['cpu_rtf']:.3f} ({interleaved['cpu_rtf'] / reference['cpu_rtf']:.2f}x "
          f"one recogniser per thread; {'fresh' if args.cold else 'warm'}; others "
          f"{interleaved['cpu_cores']['others']:.2f} cores)")
    common.print_table(
        ["streams", "result", "partial p50", "partial p95", "p95 1st loop / later",
         "final p50", "final p95",
         "final growth", "drain max", "server cores", "CPU/audio s (loop + workers)",
         "others", "why"],
        [[t["streams"], "pass" if t["passed"] else "FAIL",
          ms(t["partial_latency_s"]["p50"]), ms(t["partial_latency_s"]["p95"]),
          f"{ms(t['partial_latency_first_s']['p95'])} / "
          f"{ms(t['partial_latency_rest_s']['p95'])}",
          ms(t["final_latency_s"]["p50"]), ms(t["final_latency_s"]["p95"]),
          ms(t["final_trend_s"]), fmt(t["drain_s"]["max"], ".2f"),
          f"{t['cpu_cores']['server']:.2f}",
          f"{t['server_cpu_s_per_audio_s']:.3f} ({t['event_loop_cpu_s_per_audio_s']:.3f} + "
          f"{t['workers_cpu_s_per_audio_s']:.3f})",
          f"{t['cpu_cores']['others']:.2f}", "; ".join(t["reasons"])] for t in trials],
        title="(b) server trials (latencies in ms, drain in s)")
    bracket = f"{capacity}" + ("" if hi is not None and hi - capacity <= 1
                               else " (upper bound not found)")
    print(f"\nserver capacity: {bracket} real-time streams; bare Vosk at {cores} threads "
          f"({'fresh' if args.cold else 'warm'} recognisers): {bare_streams:.1f}; "
          f"ratio {fmt(ratio)}")
    print(f"CPU per audio second: server {fmt(server_rtf, '.3f')} (passing trials), bare "
          f"Vosk {bare_rtf:.3f} ({interleaved['cpu_rtf']:.3f} interleaved); bare/server "
          f"{fmt(cpu_ratio)}; CPU-bound capacity {fmt(cpu_capacity, '.1f')} streams on "
          f"{cores} cores")
    common.write_json("capacity", {
        "machine": info, "quick": quick, "grammar": args.grammar, "lib": args.lib,
        "recognizer_threads": args.threads or cores,
        "stream_seconds": args.seconds, "ramp_seconds": args.ramp, "chunk_ms": common.CHUNK_MS,
        "criteria": {"partial_p95_s": PARTIAL_P95_LIMIT, "final_growth_s": FINAL_GROWTH_LIMIT,
                     "drain_s": DRAIN_LIMIT, "realtime_lag_warnings": 0},
        "cold": args.cold, "warm_recognizers": pool,
        "bare": bare, "bare_warm": bare_warm, "bare_streams": bare_streams,
        "bare_interleaved": interleaved,
        "trials": trials, "server_capacity": capacity, "first_failing": hi,
        "ratio_to_bare": ratio, "server_rss_mb_after": server_rss,
        "server_cpu_s_per_audio_s": server_rtf, "bare_cpu_s_per_audio_s": bare_rtf,
        "cpu_bound_capacity": cpu_capacity, "cpu_ratio_bare_to_server": cpu_ratio,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
