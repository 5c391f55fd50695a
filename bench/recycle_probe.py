"""Does freeing a grown recogniser give its memory back to the system?

In a fresh subprocess per variant (default glibc, ``MALLOC_ARENA_MAX=2``): load the
model, then ``--cycles`` times: a new ``KaldiRecognizer`` decodes ``--seconds`` of
ever-new speech (bench/babble.py, made once and reused so that every variant hears
the same), is freed, and ``malloc_trim(0)`` is called. VmRSS is read after each step.
When decoding happens in a worker thread (``--thread``, as the daemon decodes), its
allocations land in a per-thread arena, which is where glibc is slowest to give back.

    .venv/bin/python bench/recycle_probe.py                  # 90 s of speech, 3 cycles
    .venv/bin/python bench/recycle_probe.py --seconds 300

``--swap`` asks instead what a recycle costs the captions: the speech a stream sends
after a swap (``--seconds`` of ever-new speech), decoded in 100 ms chunks by a fresh
recogniser (a swap without a pre-warmed replacement) and by one pre-warmed as
:class:`edge.asr.recycling.Prewarmer` does (the packaged 16 s of warm-up speech, then
flush and reset), alternately, ``--cycles`` times each, in one process: CPU seconds
per second of audio, and the slowest chunk (a caption's delay).

    .venv/bin/python bench/recycle_probe.py --swap --seconds 20 --cycles 3
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CHUNK = 3200  # 100 ms


def make_speech(seconds: float, path: Path) -> None:
    import babble

    babble.check_tools()
    stream = babble.Babble(seed=1)
    try:
        path.write_bytes(stream.read(int(seconds * babble.RATE) * 2))
    finally:
        stream.close()


def probe(speech: Path, cycles: int, in_thread: bool) -> dict[str, Any]:
    """(In the subprocess.) RSS at each step, in MB."""
    import vosk

    from edge.asr.memory import malloc_trim, read_rss
    from edge.asr.modeldir import default_model_path

    pcm = speech.read_bytes()
    vosk.SetLogLevel(-1)
    mb = 1024 * 1024
    start = read_rss() / mb
    model = vosk.Model(str(default_model_path()))
    out: dict[str, Any] = {"start_mb": start, "model_mb": read_rss() / mb, "cycles": []}

    def decode() -> None:
        rec = vosk.KaldiRecognizer(model, 16000.0)
        for i in range(0, len(pcm), CHUNK):
            rec.AcceptWaveform(pcm[i:i + CHUNK])
        rec.FinalResult()
        holder.append(rec)

    for _ in range(cycles):
        holder: list[Any] = []
        t0 = time.monotonic()
        if in_thread:
            worker = threading.Thread(target=decode)
            worker.start()
            worker.join()
        else:
            decode()
        grown = read_rss() / mb
        holder.clear()
        gc.collect()
        freed = read_rss() / mb
        t1 = time.monotonic()
        trimmed_ok = malloc_trim()
        trim_s = time.monotonic() - t1
        out["cycles"].append({"grown_mb": grown, "freed_mb": freed,
                              "trimmed_mb": read_rss() / mb, "trim_returned": trimmed_ok,
                              "trim_ms": 1000 * trim_s, "decode_s": t1 - t0})
    return out


def swap_probe(speech: Path, cycles: int) -> list[dict[str, Any]]:
    """Fresh vs pre-warmed replacement on the same speech, alternately."""
    from edge.asr import recycling
    from edge.asr.vosk import load_model
    from edge.asr.warmup import warmup_speech

    pcm = speech.read_bytes()
    model = load_model(None)
    warm_pcm, rate = warmup_speech()
    warm_pcm = warm_pcm[:2 * int(rate * recycling.PREWARM_SECONDS)]
    rows = []
    for _ in range(cycles):
        for kind in ("fresh", "prewarmed"):
            rec = model.recognizer(16000, None)
            if kind == "prewarmed":
                for i in range(0, len(warm_pcm), CHUNK):
                    rec.accept(warm_pcm[i:i + CHUNK])
                rec.flush()
                rec.reset()  # type: ignore[attr-defined]
            chunks = []
            cpu0 = time.thread_time()
            for i in range(0, len(pcm), CHUNK):
                t = time.monotonic()
                rec.accept(pcm[i:i + CHUNK])
                chunks.append(time.monotonic() - t)
            rec.flush()
            cpu = time.thread_time() - cpu0
            chunks.sort()
            rows.append({"kind": kind, "cpu_per_audio_s": cpu / (len(pcm) / 32000),
                         "p95_chunk_ms": 1000 * chunks[int(0.95 * (len(chunks) - 1))],
                         "max_chunk_ms": 1000 * chunks[-1]})
            rec.close()
            del rec
    return rows


def print_swap(rows: list[dict[str, Any]], seconds: float) -> None:
    print(f"{seconds:g} s of ever-new speech after a swap, 100 ms chunks")
    for row in rows:
        print(f"  {row['kind']:9}: CPU {row['cpu_per_audio_s']:.3f} s per audio s, "
              f"p95 chunk {row['p95_chunk_ms']:.0f} ms, slowest {row['max_chunk_ms']:.0f} ms")
    for key in ("cpu_per_audio_s", "p95_chunk_ms", "max_chunk_ms"):
        fresh = statistics.median(r[key] for r in rows if r["kind"] == "fresh")
        warm = statistics.median(r[key] for r in rows if r["kind"] == "prewarmed")
        print(f"  median {key}: fresh {fresh:.3f}, prewarmed {warm:.3f}, "
              f"fresh / prewarmed {fresh / warm:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--swap", action="store_true",
                        help="fresh vs pre-warmed replacement: what captions pay")
    parser.add_argument("--probe", nargs=3, metavar=("SPEECH", "CYCLES", "THREAD"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(Path(args.probe[0]), int(args.probe[1]),
                               args.probe[2] == "1")))
        return 0
    speech = Path(f"/tmp/edge-babble-{int(args.seconds)}s.raw")
    if not speech.exists():
        make_speech(args.seconds, speech)
    if args.swap:
        print_swap(swap_probe(speech, args.cycles), args.seconds)
        return 0
    print(f"{args.seconds:g} s of ever-new speech per recogniser, {args.cycles} cycles; "
          "VmRSS in MB")
    for name, env, thread in (("default, main thread", {}, False),
                              ("default, worker thread", {}, True),
                              ("MALLOC_ARENA_MAX=2, worker thread",
                               {"MALLOC_ARENA_MAX": "2"}, True)):
        result = subprocess.run(
            [sys.executable, __file__, "--probe", str(speech), str(args.cycles),
             "1" if thread else "0"], env={**os.environ, **env}, capture_output=True,
            text=True, check=True)
        data = json.loads(result.stdout)
        print(f"\n{name}: model loaded {data['model_mb']:.0f} (process {data['start_mb']:.0f} "
              "before)")
        for i, c in enumerate(data["cycles"], 1):
            print(f"  cycle {i}: grown {c['grown_mb']:.0f}, freed {c['freed_mb']:.0f}, "
                  f"after malloc_trim {c['trimmed_mb']:.0f} (trim {c['trim_ms']:.0f} ms), "
                  f"decode {c['decode_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
