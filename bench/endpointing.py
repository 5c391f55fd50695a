"""Endpointing: final latency and utterance splits/joins for each turn-silence setting,
side by side in one run against one daemon.

A turn ends at Vosk's own endpoint (about 1.4 s of trailing silence with the small
models; Vosk 0.3.45 has no per-recogniser endpointer settings) or once a pause of
``max_turn_silence_ms`` follows words (edge's own, told from the audio by
edge/audio/pauses.py: ``recognizer.endpoint_silence_ms`` / the Live API's
``config.max_turn_silence_ms``). Each setting is one paced session of the speakers
conversation (tests/fixtures/speakers/conversation.wav: 18 utterances of three voices,
1.2 s apart, times in voices.json), all at once, plus ``--load`` filler streams
(speech_ko.wav looped, the device default) to bring the device near a given share of
its capacity. The streams start spread over an utterance's period (fillers: over a
loop), as rooms do not speak in lockstep. ``--room-tone DBFS`` adds white noise at that
level to every stream (the fixtures' gaps are digital silence, which no room is). The
daemon warms its pool at start (one recogniser per stream) and the streams begin once
/healthz says ``warm``: fresh recognisers cost about twice the CPU, and that many fresh
ones at once would overload the device. For each setting:

* final latency: arrival of the utterance's final minus the time its last speech
  (voices.json's end) was sent, p50 / p95 over the utterances that got exactly one
  final of their own (a joined utterance's final waits for the next one);
* split: utterances that got two or more finals; joined: utterances whose final also
  holds (part of) another utterance;
* missed: utterances with no final.

Numbers only, no assertions; the machine is shared and noisy: compare within a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    FIXTURE,
    ROOT,
    EdgeServer,
    cpu_seconds,
    fmt,
    machine_info,
    mint_token,
    ms,
    percentile,
    print_table,
    write_json,
)
from paced import Trace, paced_session, read_wav

CONVERSATION = ROOT / "tests" / "fixtures" / "speakers" / "conversation.wav"
VOICES = ROOT / "tests" / "fixtures" / "speakers" / "voices.json"
SETTINGS = (0, 300, 400, 500, 600, 800)
# A final belongs to an utterance when their spans overlap by more than this: Vosk's
# word times are approximate, and a word ending a few frames into the next utterance's
# start is not a join.
MIN_OVERLAP_MS = 150


def score(trace: Trace, truth: list[tuple[int, int]]) -> dict[str, Any]:
    """Match finals to the true utterances by overlap of their time spans."""
    finals = [(t, int(m["start_ms"]), int(m["end_ms"])) for t, m in trace.finals()]
    hits: list[list[int]] = [[] for _ in truth]  # final indices per utterance
    for f, (_, start, end) in enumerate(finals):
        for u, (us, ue) in enumerate(truth):
            if min(end, ue) - max(start, us) > MIN_OVERLAP_MS:
                hits[u].append(f)
    shared = {f for f in range(len(finals)) if sum(f in fs for fs in hits) > 1}
    joined = sum(1 for fs in hits if shared.intersection(fs))
    # Latency over the utterances that got exactly one final of their own: a joined
    # utterance's final waits for the next utterance, which the joined count shows.
    latencies = [finals[fs[0]][0] - (trace.t0 + ue / 1000)
                 for fs, (_, ue) in zip(hits, truth, strict=True)
                 if len(fs) == 1 and fs[0] not in shared]
    return {
        "finals": len(finals),
        "split": sum(1 for fs in hits if len(fs) > 1),
        "joined": joined,
        "missed": sum(1 for fs in hits if not fs),
        "latency_p50": percentile(latencies, 50),
        "latency_p95": percentile(latencies, 95),
        "latencies": latencies,
    }


def with_room_tone(pcm: bytes, dbfs: float | None, seed: int) -> bytes:
    """``pcm`` with white noise at ``dbfs`` added (None: as it is)."""
    if dbfs is None:
        return pcm
    samples = np.frombuffer(pcm, "<i2").astype(np.float64)
    samples += np.random.default_rng(seed).normal(0, 32768 * 10 ** (dbfs / 20),
                                                  samples.size)
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


async def run(server: EdgeServer, settings: list[int], load: int,
              room_tone: float | None) -> list[Trace]:
    pcm, rate = read_wav(CONVERSATION)
    pcm = with_room_tone(pcm, room_tone, 1)
    filler, filler_rate = read_wav(FIXTURE)
    filler = with_room_tone(filler, room_tone, 2)
    loop = len(filler) / 2 / filler_rate
    filler = filler * max(1, -(-len(pcm) // len(filler)))
    token = mint_token()
    start = asyncio.get_running_loop().time() + 1.0  # monotonic on Linux
    # Rooms do not speak in lockstep: the streams start spread over one utterance's
    # period (the conversation's) or one loop (the fillers'), so that their utterances
    # do not all end, and get finalised, at the same instant.
    period = len(pcm) / 2 / rate / len(json.loads(VOICES.read_text())["conversation"])
    sessions = [paced_session(server.url, token, pcm, rate, {"max_turn_silence_ms": s},
                              start_at=start + period * i / len(settings))
                for i, s in enumerate(settings)]
    fillers = [paced_session(server.url, token, filler, filler_rate,
                             start_at=start + loop * i / max(1, load))
               for i in range(load)]
    traces = await asyncio.gather(*sessions, *fillers)
    return list(traces[:len(settings)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default=",".join(map(str, SETTINGS)),
                   help="max_turn_silence_ms values, 0 = Vosk's endpointer only")
    p.add_argument("--load", type=int, default=10,
                   help="filler streams alongside (default 10: with the 6 settings, 16 "
                        "streams, 80%% of this 2-core machine's capacity with warm "
                        "recognisers, 20 streams by bench/capacity.py)")
    p.add_argument("--room-tone", type=float, default=None, metavar="DBFS",
                   help="add white noise at this level (e.g. -50) to every stream")
    p.add_argument("--trials", type=int, default=1)
    args = p.parse_args(argv)
    settings = [int(s) for s in args.settings.split(",")]
    truth = [(int(u["start_ms"]), int(u["end_ms"]))
             for u in json.loads(VOICES.read_text())["conversation"]]
    results: dict[int, list[dict[str, Any]]] = {s: [] for s in settings}
    cpu = []
    streams = len(settings) + args.load
    with EdgeServer("endpointing-server", config_extra=(
            f"[recognizer]\nwarm_at_start = true\nwarm_recognizers = {streams}\n"
            f"memory_budget_mb = {200 * streams}\n")) as server:
        started = time.monotonic()
        while server.health().get("recognizers", {}).get("state") != "warm":
            time.sleep(0.5)
        print(f"pool of {streams} warm after {time.monotonic() - started:.0f} s", flush=True)
        for _ in range(args.trials):
            before = cpu_seconds(server.pid)
            traces = asyncio.run(run(server, settings, args.load, args.room_tone))
            server.wait_idle()
            cpu.append(cpu_seconds(server.pid) - before)
            for s, trace in zip(settings, traces, strict=True):
                results[s].append(score(trace, truth))
    rows = []
    for s in settings:
        lat = [x for r in results[s] for x in r["latencies"]]
        rows.append([
            "off (Vosk's endpointer)" if s == 0 else f"{s} ms pause",
            ms(percentile(lat, 50)), ms(percentile(lat, 95)),
            sum(r["split"] for r in results[s]), sum(r["joined"] for r in results[s]),
            sum(r["missed"] for r in results[s]),
            fmt(sum(r["finals"] for r in results[s]) / max(1, len(results[s])), ".1f"),
        ])
    n = len(truth) * args.trials
    print_table(["turn silence", "final p50 ms", "p95 ms", f"split /{n}", f"joined /{n}",
                 f"missed /{n}", "finals/run"], rows,
                title=f"Endpointing: {len(settings)} settings side by side + {args.load} "
                      f"filler streams, conversation.wav ({len(truth)} utterances, 1.2 s "
                      "apart), paced 100 ms chunks, warm pool, room tone "
                      f"{'none' if args.room_tone is None else f'{args.room_tone:g} dBFS'}")
    print(f"server CPU per trial: {', '.join(f'{c:.1f} s' for c in cpu)}")
    path = write_json("endpointing", {
        "machine": machine_info(), "settings": settings, "load": args.load,
        "room_tone_dbfs": args.room_tone,
        "trials": args.trials,
        "results": {str(s): [{k: v for k, v in r.items()} for r in results[s]]
                    for s in settings}})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
