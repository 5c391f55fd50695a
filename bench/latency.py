"""Latency at 50% and 80% of capacity, measured by two independent client libraries.

``edge serve`` runs in a subprocess. At each load level, two load-client processes
stream at once, one with asyncio ``websockets`` and one with ``trio-websocket`` (the
streams are split between them), so both libraries see the same server under the same
load. Figures:

* partial latency: from the moment a chunk was sent to the arrival of the partial
  whose ``end_ms`` is that chunk's end (the partial its decoding produced);
* final latency: from the moment the chunk holding a phrase's end was sent (phrase
  ends come from the fixture's signal) to the arrival of that phrase's final;
* endpoint floor: the same final delay measured without a server or a clock, as
  seconds of audio Vosk needs after the phrase before it declares an endpoint. Final
  latency minus the floor is what the server (queueing, threads, sockets) adds.

The server's recogniser pool is sized for the largest level and warmed by one untimed
round of streams first (as in capacity.py).

Capacity comes from ``--capacity N``, else from bench/results/capacity.json, else
from a bare-Vosk estimate (80% of its aggregate real-time speed).

    .venv/bin/python bench/latency.py            # about 3 minutes
    .venv/bin/python bench/latency.py --quick    # under 1 minute
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import ms

LIBS = ("websockets", "trio")


def capacity_from(args: argparse.Namespace, speech: common.Speech, model: Any
                  ) -> tuple[int, str]:
    if args.capacity:
        return args.capacity, "--capacity"
    saved = common.read_json("capacity")
    if saved and saved.get("server_capacity") and saved.get("grammar") == args.grammar:
        kind = "quick run" if saved.get("quick") else "full run"
        return int(saved["server_capacity"]), f"bench/results/capacity.json ({kind})"
    cores = os.cpu_count() or 1
    pcm, _ = speech.looped(args.seconds)
    r = common.bare_decode(model, speech.chunks(pcm), cores, grammar=args.grammar)
    return max(1, math.floor(0.8 * r["x_realtime"])), (
        f"estimate: 80% of bare Vosk's {r['x_realtime']:.1f}x real time at {cores} threads")


def split(n: int) -> list[common.ClientSpec]:
    """Streams split between the two libraries, send slots interleaved."""
    first = math.ceil(n / 2)
    specs = [common.ClientSpec(first, LIBS[0], 0.0)]
    if n - first:
        specs.append(common.ClientSpec(n - first, LIBS[1], 0.5))
    return specs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short run (CI): under 2 minutes")
    p.add_argument("--capacity", type=int, help="server capacity in streams (default: "
                   "bench/results/capacity.json)")
    p.add_argument("--levels", default="0.5,0.8", help="fractions of capacity to run at")
    p.add_argument("--seconds", type=float, help="audio per stream (whole loops)")
    p.add_argument("--ramp", type=float, help="spread stream starts over this many seconds")
    p.add_argument("--grammar", action="store_true", help="recognise with the phrase list")
    args = p.parse_args(argv)
    common.exit_on_sigterm()
    quick = args.quick
    args.seconds = args.seconds or (14.0 if quick else 56.0)
    args.ramp = args.ramp if args.ramp is not None else (2.0 if quick else 7.0)
    quiet_wait = 10.0 if quick else 60.0

    info = common.machine_info()
    speech = common.load_speech()
    pcm, spans = speech.looped(args.seconds)
    seconds = len(pcm) / (2 * speech.rate)
    model = common.load_vosk_model()
    capacity, source = capacity_from(args, speech, model)
    floor = common.endpoint_delays(model, speech.chunks(pcm), spans, grammar=args.grammar)
    del model
    floor_p50 = statistics.median(floor) if floor else None
    print(f"{info['cpu_model']}, {info['cores']} cores; capacity {capacity} streams "
          f"({source}); {seconds:.1f} s streams; endpoint floor p50 {ms(floor_p50)} ms")

    levels: list[dict[str, Any]] = []
    most = max(max(1, round(capacity * float(f))) for f in args.levels.split(","))
    # As in capacity.py: a recogniser pool as large as the largest level, warmed by one
    # untimed round, so that the levels measure a device in service, not its first minute.
    with common.EdgeServer("latency-server",
                           config_extra=f"[recognizer]\nwarm_recognizers = {most}\n"
                           ) as server:
        common.run_clients(server.url, [common.ClientSpec(most)], seconds=speech.seconds,
                           fast=True, grammar=args.grammar)
        server.wait_idle()
        for fraction in (float(f) for f in args.levels.split(",")):
            n = max(1, round(capacity * fraction))
            background = common.wait_quiet(max_wait=quiet_wait)
            specs = split(n)
            runs = [common.run_clients(server.url, specs, seconds=seconds, ramp=args.ramp,
                                       grammar=args.grammar, server_pid=server.pid)]
            if n == 1:  # one stream cannot be split: the second library runs after
                server.wait_idle()
                runs.append(common.run_clients(server.url, [common.ClientSpec(1, LIBS[1])],
                                               seconds=seconds, grammar=args.grammar,
                                               server_pid=server.pid))
            server.wait_idle()
            for lib in LIBS:
                streams = [s for run in runs for s in common.all_streams(run, lib)]
                if not streams:
                    continue
                a = common.analyze_streams(streams, spans)
                cpu = runs[-1 if (n == 1 and lib == LIBS[1]) else 0]["cpu"]
                levels.append({**a, "fraction": fraction, "streams": n, "lib": lib,
                               "lib_streams": len(streams), "cpu_cores": cpu,
                               "background_cores_before": background})
                pl, fl = a["partial_latency_s"], a["final_latency_s"]
                print(f"  {fraction:.0%} ({n} streams) {lib:10s}: partial p50/p95 "
                      f"{ms(pl['p50'])}/{ms(pl['p95'])} ms, final p50/p95 "
                      f"{ms(fl['p50'])}/{ms(fl['p95'])} ms, others "
                      f"{cpu['others']:.2f} cores", flush=True)

    print()
    common.print_table(
        ["load", "streams", "client", "partial p50", "partial p95", "final p50", "final p95",
         "server adds (final p50 - floor)", "lag warnings", "others (cores)"],
        [[f"{r['fraction']:.0%}", r["streams"], f"{r['lib']} ({r['lib_streams']})",
          ms(r["partial_latency_s"]["p50"]), ms(r["partial_latency_s"]["p95"]),
          ms(r["final_latency_s"]["p50"]), ms(r["final_latency_s"]["p95"]),
          ms(None if r["final_latency_s"]["p50"] is None or floor_p50 is None
             else r["final_latency_s"]["p50"] - floor_p50),
          r["warnings"].get("realtime_lag", 0), f"{r['cpu_cores']['others']:.2f}"]
         for r in levels],
        title=f"latency in ms (endpoint floor p50 {ms(floor_p50)} ms, "
              f"p95 {ms(common.percentile(floor, 95))} ms)")
    common.write_json("latency", {
        "machine": info, "quick": quick, "grammar": args.grammar, "capacity": capacity,
        "capacity_source": source, "stream_seconds": seconds, "ramp_seconds": args.ramp,
        "chunk_ms": common.CHUNK_MS, "endpoint_floor_s": common.summarize(floor),
        "levels": levels, "finished_at": time.time(),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
