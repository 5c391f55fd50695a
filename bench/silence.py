"""Skipping silence (issue 23): words lost, and CPU per audio second, side by side.

``words``: the full generated set (``tools/make_rooms.py --set full``: pauses, a far
talker 12 dB down, HVAC/pink/babble noise at 30 to 5 dB SNR) decoded with the gate off,
off again (Vosk's own run-to-run variation), and on with each pre-roll of ``--sweep``;
words that differ, words of the turns found, turns lost, split or run together.

``cost``: CPU per audio second for room tone only, a consultation (two voices, ~55%
speech, HVAC noise at 20 dB SNR) and continuous speech (``--set cost``), each streamed
by ``--streams`` paced clients (100 ms chunks in real time, asyncio ``websockets``) to
``edge serve`` with a warm pool, with ``skip_silence`` on and off per session, next to
the anchor: bare Vosk in plain threads, each recogniser warmed on the packaged warm-up
speech, a partial asked for after every chunk, paced in real time. Server CPU from
/proc. Also the turn latency (end of speech to final, p50) on the consultation. Two
rows more for the empty room: the room microphone itself (``edge serve`` capturing the
room tone through a file-backed ALSA device, ``tests/alsa_file_device.py``, no session)
and the transport's floor (``bench/ws_floor.py``: a bare trio-websocket server
discarding the same paced chunks: what the sessions' figure cannot go below on this
stack).

    .venv/bin/python bench/silence.py words [--sweep 200,300,400,500,600]   # ~10 min
    .venv/bin/python bench/silence.py cost [--seconds 30 --streams 4]         # ~12 min
    .venv/bin/python bench/silence.py path                                    # ~1 min
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ws_floor
from common import (
    RESULTS,
    ROOT,
    EdgeServer,
    cpu_seconds,
    fmt,
    load_vosk_model,
    machine_info,
    mint_token,
    ms,
    percentile,
    print_table,
    write_json,
)
from paced import CHUNK_MS, Trace, paced_session, read_wav

from tools.make_rooms import make
from tools.silence_check import Comparison, compare, finals, read_recording

WARMUP = ROOT / "edge" / "asr" / "data" / "warmup.wav"


def rooms(kind: str) -> Path:
    out = RESULTS / f"rooms-{kind}"
    if not any(out.glob("*.wav")):
        print(f"generating the {kind} set in {out}", flush=True)
        make(kind, out)
    return out


# --- words -------------------------------------------------------------------------------

def words(args: argparse.Namespace) -> int:
    from edge.asr.vosk import load_model

    model = load_model(None)
    paths = sorted(rooms("full").glob("*.wav"))
    sweep = [int(x) for x in args.sweep.split(",")]
    labels = ["off again", *(f"on, pre-roll {p} ms" for p in sweep)]

    def one(path: Path) -> dict[str, Comparison]:
        r = read_recording(path)
        off = finals(model, r.pcm, r.rate, skip=False)
        out = {"off again": compare(off, finals(model, r.pcm, r.rate, skip=False), r)}
        for p in sweep:
            skipped: list[int] = []
            on = finals(model, r.pcm, r.rate, skip=True, preroll_ms=p, skipped=skipped)
            out[f"on, pre-roll {p} ms"] = compare(off, on, r, skipped[0])
        print(f"  {path.stem}: " + ", ".join(
            f"{k} {v.turn_differ}/{v.turn_words}" for k, v in out.items()), flush=True)
        return out

    with ThreadPoolExecutor(args.threads) as pool:
        per = list(pool.map(one, paths))
    totals = {k: sum((p[k] for p in per), Comparison()) for k in labels}
    said = totals["off again"].said
    rows = [[k, f"{100 * c.differ_share:.1f}% ({c.differ}/{c.words})",
             f"{100 * c.turn_differ_share:.1f}% ({c.turn_differ}/{c.turn_words})",
             f"{c.found[0]} / {c.found[1]} of {said}", c.missing,
             f"{c.splits[0]} / {c.splits[1]}", f"{c.merges[0]} / {c.merges[1]}",
             f"{100 * c.skipped_ms / max(1, c.audio_ms):.0f}%"]
            for k, c in totals.items()]
    print_table(["against off", "all finals' words differ", "turns' finals' words differ",
                 "turn words found off / this", "turns lost", "splits off / this",
                 "run together off / this", "audio left out"], rows,
                title=f"Skipping silence, words: {len(paths)} recordings "
                      f"({', '.join(p.stem for p in paths)}), grammar of the set's phrases, "
                      "400 ms turn rule")
    path = write_json("silence-words", {
        "machine": machine_info(), "sweep": sweep,
        "per_recording": [{k: vars(v) for k, v in p.items()} for p in per],
        "totals": {k: vars(v) for k, v in totals.items()}})
    print(f"wrote {path}")
    return 0


# --- cost --------------------------------------------------------------------------------

def bare_paced(pcm: bytes, rate: int, streams: int, warm: bool = True) -> float:
    """CPU-s per audio second of bare Vosk: ``streams`` threads, each recogniser warmed
    on the warm-up speech (untimed; ``warm`` False: fresh), then fed ``pcm`` in 100 ms
    chunks at real-time pace with a partial after each."""
    import vosk

    model = load_vosk_model()
    warmup, warm_rate = read_wav(WARMUP)
    size = 2 * rate * CHUNK_MS // 1000
    chunks = [pcm[i:i + size] for i in range(0, len(pcm), size)]
    barrier = threading.Barrier(streams + 1)
    cpu = [0.0] * streams

    def work(i: int) -> None:
        rec = vosk.KaldiRecognizer(model, float(rate))
        rec.SetWords(True)
        if warm and warm_rate == rate:
            for j in range(0, len(warmup), size):
                rec.AcceptWaveform(warmup[j:j + size])
            rec.FinalResult()
        barrier.wait()
        t0, c0 = time.monotonic() + 0.1 * i / streams, time.thread_time()
        for k, chunk in enumerate(chunks):
            time.sleep(max(0.0, t0 + (k + 1) * CHUNK_MS / 1000 - time.monotonic()))
            if rec.AcceptWaveform(chunk):
                rec.Result()
            else:
                rec.PartialResult()
        rec.FinalResult()
        cpu[i] = time.thread_time() - c0

    workers = [threading.Thread(target=work, args=(i,)) for i in range(streams)]
    for w in workers:
        w.start()
    barrier.wait()
    for w in workers:
        w.join()
    return sum(cpu) / (streams * len(pcm) / 2 / rate)


async def edge_paced(server: EdgeServer, pcm: bytes, rate: int, streams: int, skip: bool
                     ) -> list[Trace]:
    token = mint_token()
    start = time.monotonic() + 0.5
    return list(await asyncio.gather(*(
        paced_session(server.url, token, pcm, rate, {"skip_silence": skip},
                      start_at=start + CHUNK_MS / 1000 * i / streams)
        for i in range(streams))))


def turn_latencies(traces: list[Trace], turns: list[tuple[int, int]]) -> list[float]:
    """Arrival of the first final overlapping each turn, after the send time of the
    chunk holding the turn's end."""
    out = []
    for trace in traces:
        for start, end in turns:
            arrivals = [t for t, m in trace.finals()
                        if m["start_ms"] < end + 200 and m["end_ms"] > start - 200]
            if arrivals:
                sent = trace.t0 + (end // CHUNK_MS + 1) * CHUNK_MS / 1000
                out.append(min(arrivals) - sent)
    return out


def edge_cost(args: argparse.Namespace, pcm: bytes, rate: int, turns: list[tuple[int, int]],
              skip: bool, warm: bool) -> tuple[float, list[float]]:
    """Server CPU-s per audio second and turn latencies of ``args.streams`` paced
    sessions on a fresh ``edge serve`` (its pool warmed on the warm-up speech only)."""
    with EdgeServer("silence-server", config_extra=(
            f"[recognizer]\nwarm_at_start = {str(warm).lower()}\n"
            f"warm_recognizers = {args.streams if warm else 0}\n")) as server:
        deadline = time.monotonic() + args.warm_wait
        while warm and (pool := server.health().get("recognizers", {})).get("state") != "warm":
            if time.monotonic() > deadline:
                raise SystemExit(f"pool not warm after {args.warm_wait} s: {pool}; "
                                 "run with --warm-wait 0 (fresh recognisers)")
            time.sleep(0.5)
        before = cpu_seconds(server.pid)
        traces = asyncio.run(edge_paced(server, pcm, rate, args.streams, skip))
        server.wait_idle()
        cpu = (cpu_seconds(server.pid) - before) / (args.streams * len(pcm) / 2 / rate)
    return cpu, turn_latencies(traces, turns)


def room_cost(pcm: bytes, seconds: int, skip: bool) -> float:
    """CPU-s per audio second of ``edge serve`` capturing ``pcm`` (16 kHz) from its room
    microphone, a file-backed ALSA device (paced to real time by the capture), with no
    session; measured over ``seconds`` after the room has run for 5 s."""
    import tempfile

    sys.path.insert(0, str(ROOT / "tests"))
    from alsa_file_device import FileDevice, make_home

    with tempfile.TemporaryDirectory(prefix="edge-bench-room-") as tmp:
        infile = Path(tmp) / "room.raw"
        loops = int((seconds + 30) * 32000 // len(pcm)) + 1
        infile.write_bytes(pcm * loops)
        home = make_home(Path(tmp) / "home", [FileDevice("edge_bench_room", infile)])
        with EdgeServer("silence-room", env={"HOME": str(home)}, config_extra=(
                "[microphone]\nenabled = true\ndevice = \"edge_bench_room\"\n"
                f"[recognizer]\nskip_silence = {str(skip).lower()}\n"
                "warm_recognizers = 0\n")) as server:
            deadline = time.monotonic() + 60
            while server.health().get("microphone", {}).get("state") != "listening":
                if time.monotonic() > deadline:
                    raise SystemExit(f"the room microphone did not start: {server.health()}")
                time.sleep(0.5)
            time.sleep(5)
            before, t0 = cpu_seconds(server.pid), time.monotonic()
            time.sleep(seconds)
            cpu, wall = cpu_seconds(server.pid) - before, time.monotonic() - t0
            mic = server.health().get("microphone", {})
    print(f"  room microphone skip {'on' if skip else 'off'}: {cpu / wall:.4f} CPU-s/audio s"
          f" ({mic.get('dropped_chunks')} chunks dropped)", flush=True)
    return cpu / wall


def cost(args: argparse.Namespace) -> int:
    out = rooms("cost")
    audio = {}
    for name in ("room-tone", "consultation", "continuous"):
        pcm, rate = read_wav(out / f"{name}.wav")
        pcm = pcm[:2 * rate * args.seconds]
        meta = json.loads((out / f"{name}.json").read_text())
        turns = [(t["start_ms"], t["end_ms"]) for t in meta["turns"]
                 if t["end_ms"] <= 1000 * args.seconds]
        audio[name] = (pcm, rate, turns)
    results: dict[str, dict[str, Any]] = {name: {} for name in audio}
    # Each (audio, mode) on a server of its own, its pool warmed on the warm-up speech
    # only: a pooled recogniser keeps the graph it expanded for the last session's words,
    # so a second mode on the same pool would decode speech its recognisers have heard
    # (about half the cost) and flatter whichever mode runs second. A warm pool when the
    # machine lets it warm in --warm-wait seconds (the warm-up yields to other work);
    # otherwise fresh recognisers, next to a fresh anchor too.
    warm = args.warm_wait > 0
    for name, (pcm, rate, turns) in audio.items():
        results[name]["bare"] = bare_paced(pcm, rate, args.streams)
        if not warm:
            results[name]["bare_fresh"] = bare_paced(pcm, rate, args.streams, warm=False)
        for skip in (True, False):
            key = "on" if skip else "off"
            results[name][key], results[name][f"latency_{key}"] = edge_cost(
                args, pcm, rate, turns, skip, warm)
            print(f"  {name} skip {key}: {results[name][key]:.4f} CPU-s/audio s "
                  f"(anchor {results[name]['bare']:.4f})", flush=True)
    tone = audio["room-tone"][0]
    results["room tone, room microphone"] = {
        "bare": results["room-tone"]["bare"], "latency_on": [], "latency_off": [],
        **{key: room_cost(tone, args.seconds, key == "on") for key in ("on", "off")}}
    floor = ws_floor.floor(args.streams, args.seconds, tone[:2 * 16000 * CHUNK_MS // 1000])
    print(f"  bare trio-websocket: {floor:.4f} CPU-s/audio s", flush=True)
    results["room tone, bare trio-websocket"] = {
        "bare": results["room-tone"]["bare"], "on": floor, "off": floor,
        "latency_on": [], "latency_off": []}
    rows = []
    for name, r in results.items():
        p50 = {k: percentile(r[f"latency_{k}"], 50) for k in ("on", "off")}
        rows.append([name, fmt(r["bare"], ".4f"), fmt(r.get("bare_fresh"), ".4f"),
                     fmt(r["off"], ".4f"), fmt(r["on"], ".4f"),
                     fmt(r["on"] / r["bare"], ".2f") + "x", ms(p50["off"]), ms(p50["on"])])
    print_table(["audio", "bare Vosk (anchor)", "bare Vosk, fresh", "edge, skip off",
                 "edge, skip on", "on / anchor", "turn end to final p50 ms, off", "on"], rows,
                title=f"CPU-s per audio second, {args.streams} streams of {args.seconds} s "
                      f"paced in real time, one run, edge's pool "
                      f"{'warm' if warm else 'off (fresh recognisers)'}")
    path = write_json("silence-cost", {
        "machine": machine_info(), "streams": args.streams, "seconds": args.seconds,
        "warm_pool": warm,
        "results": {k: {x: v for x, v in r.items()} for k, r in results.items()},
        "latency_p50": {k: {x: statistics.median(r[f"latency_{x}"])
                            if r[f"latency_{x}"] else None for x in ("on", "off")}
                        for k, r in results.items()}})
    print(f"wrote {path}")
    return 0


def decode_path(args: argparse.Namespace) -> int:
    """CPU-s per audio second of the decode path alone (``accept_each`` with the 400 ms
    turn rule, in this thread, no server), gate on and off, next to bare Vosk fed the
    same chunks with a partial after each; every recogniser warmed on the warm-up speech
    first. Unpaced: thread CPU time is what is compared."""
    import vosk

    from edge.asr.decode import accept_each, flush_turn
    from edge.asr.vosk import load_model
    from edge.audio.pauses import TurnEnd

    model = load_model(None)
    out = rooms("cost")
    warmup, _ = read_wav(WARMUP)
    rows, data = [], {}
    for name in ("room-tone", "consultation", "continuous"):
        pcm, rate = read_wav(out / f"{name}.wav")
        size = 2 * rate * CHUNK_MS // 1000
        chunks = [pcm[i:i + size] for i in range(0, len(pcm), size)]
        seconds = len(pcm) / 2 / rate
        cpu = {}
        for mode in ("bare", "off", "on"):
            if mode == "bare":
                rec = vosk.KaldiRecognizer(model.model, float(rate))
                rec.SetWords(True)
                for c in (warmup[i:i + size] for i in range(0, len(warmup), size)):
                    rec.AcceptWaveform(c)
                rec.FinalResult()
                c0 = time.thread_time()
                for c in chunks:
                    if rec.AcceptWaveform(c):
                        rec.Result()
                    else:
                        rec.PartialResult()
                rec.FinalResult()
            else:
                recognizer = model.recognizer(rate, None)
                for c in (warmup[i:i + size] for i in range(0, len(warmup), size)):
                    recognizer.accept(c)
                recognizer.flush()
                turn = TurnEnd(400, mode == "on")
                c0 = time.thread_time()
                for c in chunks:
                    accept_each(recognizer, [c], turn, rate)
                flush_turn(recognizer, turn)
                recognizer.close()
            cpu[mode] = (time.thread_time() - c0) / seconds
        data[name] = cpu
        rows.append([name, fmt(cpu["bare"], ".4f"), fmt(cpu["off"], ".4f"),
                     fmt(cpu["on"], ".4f"), fmt(cpu["on"] / cpu["bare"], ".2f") + "x",
                     fmt(cpu["on"] / cpu["off"], ".2f") + "x"])
        print(f"  {name}: {cpu}", flush=True)
    print_table(["audio (60 s)", "bare Vosk, warm", "decode path, skip off",
                 "decode path, skip on", "on / bare", "on / off"], rows,
                title="CPU-s per audio second of decoding alone (one thread, unpaced)")
    path = write_json("silence-path", {"machine": machine_info(), "results": data})
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    w = sub.add_parser("words")
    w.add_argument("--sweep", default="200,300,400,500,600", help="pre-rolls, ms")
    w.add_argument("--threads", type=int, default=2)
    c = sub.add_parser("cost")
    c.add_argument("--seconds", type=int, default=30)
    c.add_argument("--streams", type=int, default=4)
    c.add_argument("--warm-wait", type=float, default=300,
                   help="seconds to wait for the warm pool; 0: no pool (fresh recognisers)")
    sub.add_parser("path")
    args = p.parse_args(argv)
    return {"words": words, "cost": cost, "path": decode_path}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
