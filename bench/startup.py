"""Start-up: spawning ``edge serve`` until it answers, next to loading the model bare.

Interleaved repetitions of:

* edge: spawn ``edge serve`` (real model) and poll connect + ``GET /healthz`` every
  5 ms until it answers; the time from spawn to that answer. The server's log lines
  ("loading model", "model ... loaded", "ready") split it into interpreter and
  imports, model load, and the rest;
* bare: spawn a fresh Python that imports vosk and calls ``vosk.Model(path)``; the
  time from spawn to the model being loaded, and ``vosk.Model()`` alone.

The ratio is edge / bare (spawn to ready vs spawn to model loaded); target <= 1.5.

    .venv/bin/python bench/startup.py            # about 1 minute
    .venv/bin/python bench/startup.py --quick    # under 1 minute
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import fmt

TARGET_RATIO = 1.5

BARE = """
import time
t0 = time.monotonic()
import vosk
vosk.SetLogLevel(-1)
t1 = time.monotonic()
vosk.Model({path!r})
t2 = time.monotonic()
print(t0, t1, t2)
"""

LOG_MARKS = {"loading": "loading model", "loaded": "loaded from", "ready": "edge.app: ready"}


def edge_once() -> dict[str, Any]:
    server = common.EdgeServer("startup-server")
    server.spawn()
    try:
        ready = server.wait_ready(60.0, interval=0.005)
    finally:
        server.stop()
    out: dict[str, Any] = {"spawn_to_healthz_s": ready - server.spawned_at}
    marks = _log_marks(server.log_path, server.spawned_wall)
    out.update({f"spawn_to_{k}_s": v for k, v in marks.items()})
    if "loading" in marks and "loaded" in marks:
        out["model_load_s"] = marks["loaded"] - marks["loading"]
    return out


def _log_marks(path: Path, spawned_wall: float) -> dict[str, float]:
    """Seconds from spawn to each marked log line (log times have millisecond resolution)."""
    marks: dict[str, float] = {}
    for line in path.read_text(errors="replace").splitlines():
        for key, needle in LOG_MARKS.items():
            if needle in line and key not in marks:
                try:
                    stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                except ValueError:
                    continue
                marks[key] = stamp.timestamp() - spawned_wall
    return marks


def bare_once(model: Path) -> dict[str, Any]:
    spawned = time.monotonic()
    out = subprocess.run([common.PYTHON, "-c", BARE.format(path=str(model))], cwd=common.ROOT,
                         capture_output=True, text=True, check=True, timeout=300)
    t0, t1, t2 = (float(x) for x in out.stdout.split())
    return {"spawn_to_loaded_s": t2 - spawned, "interpreter_s": t0 - spawned,
            "import_vosk_s": t1 - t0, "model_s": t2 - t1}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="no warm-up round (CI)")
    p.add_argument("--repeat", type=int, default=3, help="measured rounds (default 3)")
    args = p.parse_args(argv)
    common.exit_on_sigterm()
    warmup = 0 if args.quick else 1
    info = common.machine_info()
    model = common.model_path()
    print(f"{info['cpu_model']}, {info['cores']} cores; model {model}", flush=True)

    rounds: list[dict[str, Any]] = []
    for i in range(warmup + args.repeat):
        common.wait_quiet(max_wait=10.0 if args.quick else 30.0)
        results: dict[str, Any] = {"warm_up": i < warmup}
        for kind in ("edge", "bare") if i % 2 == 0 else ("bare", "edge"):
            results[kind] = edge_once() if kind == "edge" else bare_once(model)
        rounds.append(results)
        print(f"  round {i + 1}{' (warm-up)' if i < warmup else ''}: edge "
              f"{results['edge']['spawn_to_healthz_s']:.2f} s, bare "
              f"{results['bare']['spawn_to_loaded_s']:.2f} s", flush=True)

    measured = [r for r in rounds if not r["warm_up"]]

    def med(kind: str, key: str) -> float | None:
        values = [r[kind][key] for r in measured if r[kind].get(key) is not None]
        return statistics.median(values) if values else None

    edge = med("edge", "spawn_to_healthz_s")
    bare = med("bare", "spawn_to_loaded_s")
    model_only = med("bare", "model_s")
    ratio = edge / bare if edge and bare else None
    rows = [[f"{i + 1}", f"{r['edge']['spawn_to_healthz_s']:.2f}",
             fmt(r["edge"].get("spawn_to_loading_s")), fmt(r["edge"].get("model_load_s")),
             f"{r['bare']['spawn_to_loaded_s']:.2f}", f"{r['bare']['import_vosk_s']:.2f}",
             f"{r['bare']['model_s']:.2f}",
             f"{r['edge']['spawn_to_healthz_s'] / r['bare']['spawn_to_loaded_s']:.2f}"]
            for i, r in enumerate(measured)]
    print()
    common.print_table(
        ["round", "edge: spawn to /healthz", "edge: to 'loading model'", "edge: model load",
         "bare: spawn to loaded", "bare: import vosk", "bare: vosk.Model()", "ratio"],
        rows, title="start-up, seconds")
    verdict = "meets" if ratio is not None and ratio <= TARGET_RATIO else "MISSES"
    print(f"\nmedian: edge {fmt(edge)} s, bare {fmt(bare)} s (vosk.Model() alone "
          f"{fmt(model_only)} s); ratio {fmt(ratio)} (target <= {TARGET_RATIO}: {verdict})")
    common.write_json("startup", {
        "machine": info, "quick": args.quick, "rounds": rounds,
        "median_edge_s": edge, "median_bare_s": bare, "median_model_only_s": model_only,
        "ratio": ratio, "ratio_to_model_only": edge / model_only if edge and model_only
        else None, "target_ratio": TARGET_RATIO, "model": str(model),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
