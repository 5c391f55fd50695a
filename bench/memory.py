"""Memory: RSS of ``edge serve`` idle, with 1 and 10 sessions streaming, and over a soak.

RSS is VmRSS from /proc/PID/status of the server subprocess (real model), sampled
every half second. A phase's figure is its peak: the most RSS seen while its sessions
were live (Vosk's memory grows as a recogniser decodes, and the last of it is reached
just before the session ends). The per-added-session cost is
(peak with 10 sessions - peak with 1) / 9.

The same is measured for bare Vosk in a fresh subprocess (one model, 1 then 10
recognisers, each fed the same audio), so the server's per-session figure can be told
apart from Vosk's own per-recogniser memory.

The soak keeps N sessions streaming the fixture once each and reconnecting, for
``--soak`` minutes, and reports RSS growth after a warm-up (the first quarter).

    .venv/bin/python bench/memory.py                # 30-minute soak, about 35 minutes
    .venv/bin/python bench/memory.py --soak 3       # about 5 minutes
    .venv/bin/python bench/memory.py --quick        # 2-minute soak, about 3 minutes
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import fmt

PER_SESSION_TARGET_MB = 15.0
SAMPLE_EVERY = 0.5


def streaming_phase(server: common.EdgeServer, n: int, seconds: float, ramp: float,
                    grammar: bool) -> dict[str, Any]:
    samples: list[tuple[float, float]] = []
    run = common.run_clients(server.url, [common.ClientSpec(n)], seconds=seconds, ramp=ramp,
                             grammar=grammar,
                             server_pid=server.pid, rss_samples=samples,
                             sample_every=SAMPLE_EVERY)
    streams = common.all_streams(run)
    # While sending: the last 30% of the time every stream was sending.
    begin = max(s["t0"] for s in streams)
    end = min(s["end_sent"] or s["closed_at"] for s in streams)
    sending = [mb for t, mb in samples if begin + 0.7 * (end - begin) <= t <= end]
    a = common.analyze_streams(streams, [])
    server.wait_idle()
    return {"sessions": n, "seconds": seconds, "rss_peak_mb": max(mb for _, mb in samples),
            "rss_sending_mb": statistics.median(sending) if sending else None,
            "rss_after_close_mb": server.rss_mb(), "completed": a["completed"],
            "errors": a["errors"], "drain_s": a["drain_s"]["max"], "cpu_cores": run["cpu"]}


def bare_probe(seconds: float, grammar: bool) -> int:
    """(In a fresh subprocess.) RSS with the model, then 1 and 10 fed recognisers."""
    import json
    import os
    from concurrent.futures import ThreadPoolExecutor

    import vosk

    speech = common.load_speech()
    chunks = speech.chunks(speech.looped(seconds)[0])
    model = common.load_vosk_model()
    gram = common.grammar_json() if grammar else None

    def fed() -> Any:
        rec = (vosk.KaldiRecognizer(model, float(speech.rate), gram) if gram
               else vosk.KaldiRecognizer(model, float(speech.rate)))
        rec.SetWords(True)
        for chunk in chunks:
            if rec.AcceptWaveform(chunk):
                rec.Result()
            else:
                rec.PartialResult()
        return rec

    out = {"idle_mb": common.rss_mb(os.getpid())}
    recognisers = [fed()]
    out["one_mb"] = common.rss_mb(os.getpid())
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        recognisers += list(pool.map(lambda _: fed(), range(9)))
    out["ten_mb"] = common.rss_mb(os.getpid())
    print(json.dumps(out))
    return 0


def run_bare_probe(seconds: float, grammar: bool) -> dict[str, Any]:
    import json
    import subprocess

    cmd = [common.PYTHON, str(Path(__file__).resolve()), "--bare-probe", str(seconds)]
    if grammar:
        cmd.append("--grammar")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600)
    data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    data["per_added_recogniser_mb"] = (data["ten_mb"] - data["one_mb"]) / 9
    return data


def soak(server: common.EdgeServer, sessions: int, minutes: float, grammar: bool
         ) -> dict[str, Any]:
    seconds = 60 * minutes
    samples: list[tuple[float, float]] = []
    run = common.run_clients(server.url, [common.ClientSpec(sessions)], seconds=seconds,
                             reconnect=True, ramp=common.load_speech().seconds,
                             grammar=grammar,
                             server_pid=server.pid, rss_samples=samples, sample_every=2.0,
                             start_delay=2.0, timeout=seconds + 180)
    server.wait_idle()
    t0 = samples[0][0]
    xs = [(t - t0) / 60 for t, _ in samples]
    ys = [mb for _, mb in samples]
    warm = max(0.5, minutes / 4)  # minutes
    base = [y for x, y in zip(xs, ys, strict=True) if warm - 1 / 6 <= x <= warm]
    last = [y for x, y in zip(xs, ys, strict=True) if x >= xs[-1] - 0.5]
    after = [(x, y) for x, y in zip(xs, ys, strict=True) if x >= warm]
    baseline = statistics.median(base) if base else ys[0]
    final = statistics.median(last)
    done = [s for s in common.all_streams(run)]
    return {
        "sessions": sessions, "minutes": minutes, "warm_up_minutes": warm,
        "sessions_run": len(done),
        "sessions_completed": sum(1 for s in done if s["done"]),
        "sessions_failed": sum(1 for s in done if s["error"] or not s["done"]),
        "errors": sorted({s["error"] for s in done if s["error"]})[:5],
        "rss_start_mb": ys[0], "rss_baseline_mb": baseline, "rss_end_mb": final,
        "rss_max_mb": max(ys), "growth_pct": 100 * (final - baseline) / baseline,
        "slope_mb_per_min": common.slope([x for x, _ in after], [y for _, y in after]),
        "rss_after_idle_mb": server.rss_mb(),
        "samples": [[round(x, 3), round(y, 1)] for x, y in zip(xs, ys, strict=True)],
        "cpu_cores": run["cpu"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short phases and a 2-minute soak")
    p.add_argument("--soak", type=float, metavar="MINUTES",
                   help="soak length (default 30, 2 with --quick; 0 skips it)")
    p.add_argument("--soak-sessions", type=int, default=4,
                   help="sessions kept streaming during the soak (default 4)")
    p.add_argument("--seconds", type=float, help="audio per stream in the 1/10 phases")
    p.add_argument("--grammar", action="store_true", help="recognise with the phrase list")
    p.add_argument("--bare-probe", type=float, metavar="SECONDS", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    common.exit_on_sigterm()
    if args.bare_probe:
        return bare_probe(args.bare_probe, args.grammar)
    quick = args.quick
    minutes = args.soak if args.soak is not None else (2.0 if quick else 30.0)
    seconds = args.seconds or (7.0 if quick else 28.0)
    quiet_wait = 10.0 if quick else 60.0

    info = common.machine_info()
    speech = common.load_speech()
    seconds = len(speech.looped(seconds)[0]) / (2 * speech.rate)
    print(f"{info['cpu_model']}, {info['cores']} cores; {seconds:.1f} s streams, "
          f"{'grammar' if args.grammar else 'free dictation'}; soak {minutes:g} min x "
          f"{args.soak_sessions} sessions", flush=True)
    bare = run_bare_probe(seconds, args.grammar)
    print(f"  bare Vosk: model {bare['idle_mb']:.0f} MiB, 1 recogniser {bare['one_mb']:.0f}, "
          f"10 recognisers {bare['ten_mb']:.0f}", flush=True)
    with common.EdgeServer("memory-server") as server:
        time.sleep(2.0)
        idle = statistics.median(_sample(server, 3.0))
        print(f"  idle, model loaded: {idle:.0f} MiB", flush=True)
        common.wait_quiet(max_wait=quiet_wait)
        one = streaming_phase(server, 1, seconds, 0.0, args.grammar)
        print(f"  1 session: peak {one['rss_peak_mb']:.0f} MiB", flush=True)
        common.wait_quiet(max_wait=quiet_wait)
        ten = streaming_phase(server, 10, seconds, 2.0, args.grammar)
        print(f"  10 sessions: peak {ten['rss_peak_mb']:.0f} MiB", flush=True)
        per_session = (ten["rss_peak_mb"] - one["rss_peak_mb"]) / 9
    soaked = None
    if minutes > 0:
        # A fresh server: memory freed by the 10-session phase would otherwise hide
        # growth until the soak had used it up.
        print(f"  soak: {minutes:g} min ...", flush=True)
        with common.EdgeServer("memory-soak-server") as server:
            soaked = soak(server, args.soak_sessions, minutes, args.grammar)
        print(f"  soak: {soaked['sessions_run']} sessions, RSS "
              f"{soaked['rss_baseline_mb']:.0f} -> {soaked['rss_end_mb']:.0f} MiB", flush=True)

    rows = [["idle (model loaded)", f"{idle:.0f}", "", "", f"{bare['idle_mb']:.0f}"],
            ["1 session", f"{one['rss_peak_mb']:.0f}", fmt(one["rss_sending_mb"], ".0f"),
             f"{one['rss_after_close_mb']:.0f}", f"{bare['one_mb']:.0f}"],
            ["10 sessions", f"{ten['rss_peak_mb']:.0f}", fmt(ten["rss_sending_mb"], ".0f"),
             f"{ten['rss_after_close_mb']:.0f}", f"{bare['ten_mb']:.0f}"],
            ["per added session", f"{per_session:.1f}", "", "",
             f"{bare['per_added_recogniser_mb']:.1f}"]]
    print()
    common.print_table(["state", "peak MiB", "while sending", "after close",
                        "bare Vosk MiB"], rows,
                       title=f"edge serve RSS ({seconds:.0f} s streams)")
    verdict = "meets" if per_session <= PER_SESSION_TARGET_MB else "MISSES"
    print(f"\nper added session: {per_session:.1f} MiB (target <= "
          f"{PER_SESSION_TARGET_MB:g}: {verdict}); bare Vosk per added recogniser: "
          f"{bare['per_added_recogniser_mb']:.1f} MiB")
    if soaked:
        print(f"soak: {soaked['sessions_run']} sessions ({soaked['sessions_failed']} failed) "
              f"over {minutes:g} min with {args.soak_sessions} at a time; RSS after warm-up "
              f"{soaked['rss_baseline_mb']:.0f} MiB -> end {soaked['rss_end_mb']:.0f} MiB: "
              f"{soaked['growth_pct']:+.1f}% ({fmt(soaked['slope_mb_per_min'], '+.2f')} "
              "MiB/min)")
    common.write_json("memory", {
        "machine": info, "quick": quick, "grammar": args.grammar, "stream_seconds": seconds,
        "idle_rss_mb": idle, "one": one, "ten": ten, "per_added_session_mb": per_session,
        "target_per_session_mb": PER_SESSION_TARGET_MB, "bare_vosk": bare, "soak": soaked,
    })
    return 0


def _sample(server: common.EdgeServer, seconds: float) -> list[float]:
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.append(server.rss_mb())
        time.sleep(SAMPLE_EVERY)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
