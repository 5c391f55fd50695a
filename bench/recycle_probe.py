"""Does freeing a grown recogniser give its memory back to the system?

In a fresh subprocess per variant (default glibc, ``MALLOC_ARENA_MAX=2``): load the
model, then ``--cycles`` times: a new ``KaldiRecognizer`` decodes ``--seconds`` of
ever-new speech (bench/babble.py, made once and reused so that every variant hears
the same), is freed, and ``malloc_trim(0)`` is called. VmRSS is read after each step.
When decoding happens in a worker thread (``--thread``, as the daemon decodes), its
allocations land in a per-thread arena, which is where glibc is slowest to give back.

    .venv/bin/python bench/recycle_probe.py                  # 90 s of speech, 3 cycles
    .venv/bin/python bench/recycle_probe.py --seconds 300
"""

from __future__ import annotations

import argparse
import gc
import json
import os
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--cycles", type=int, default=3)
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
