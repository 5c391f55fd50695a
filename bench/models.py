"""A second model: its memory and load time, and what a session on an already loaded
language waits meanwhile.

Only the Korean model is installed, so the "second language" is the Korean model's
directory linked under another tag (``xx``): a real, separate load of the same files,
which is what memory and load time are about. For each of ``--trials`` rounds, in one
process: the registry (edge.asr.models) loads ``xx`` on first use, while the event loop
runs a 10 ms ticker and a session on the loaded start model takes its lease; then the
model is unloaded (made to make room for ``yy``) and loaded again.

Printed: the load's wall time, the RSS it added (what the registry counts), the guess
made before loading (twice the files), the longest tick of the loop during the load,
and how long the start model's lease took meanwhile. Numbers only: no assertions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import trio
from common import machine_info, print_table, write_json

from edge.asr.memory import MB, read_rss
from edge.asr.modeldir import default_model_path
from edge.asr.models import ModelRegistry, estimate_bytes
from edge.asr.recognizer import RecognizerPool
from edge.asr.vosk import load_model
from edge.core.model_table import ModelTable


async def one_round(registry: ModelRegistry, language: str) -> dict[str, float]:
    longest = 0.0
    lease_wait = 0.0
    done = trio.Event()

    async def ticker() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done.is_set():
            await trio.sleep(0.01)
            now = time.perf_counter()
            longest = max(longest, now - last - 0.01)
            last = now

    async def other_session() -> None:
        nonlocal lease_wait
        await trio.sleep(0.2)  # once the load is under way
        start = time.perf_counter()
        lease = await registry.acquire("ko")
        lease_wait = time.perf_counter() - start
        lease.release()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        nursery.start_soon(other_session)
        start = time.perf_counter()
        lease = await registry.acquire(language)
        took = time.perf_counter() - start
        done.set()
    lease.release()
    return {"load_s": took, "added_mb": registry.slots[language].bytes / MB,
            "loop_stall_ms": 1000 * longest, "other_lease_ms": 1000 * lease_wait}


async def run(trials: int) -> list[dict[str, float]]:
    korean = default_model_path()
    with tempfile.TemporaryDirectory() as tmp:
        table = {"ko": str(korean)}
        for tag in ("xx", "yy"):
            link = Path(tmp) / f"vosk-model-{tag}"
            link.symlink_to(korean, target_is_directory=True)
            table[tag] = str(link)
        guess = estimate_bytes(str(korean))
        start_model = load_model(korean)
        registry = ModelRegistry(ModelTable("ko", table), (3 * guess // 2) // MB, load=load_model,
                                 make_pool=lambda m: RecognizerPool(m.recognizer, 2))
        registry.add_loaded("ko", start_model, RecognizerPool(start_model.recognizer, 2))
        rows = []
        for i in range(trials):
            language = "xx" if i % 2 == 0 else "yy"  # each load unloads the other
            before = read_rss()
            row = await one_round(registry, language)
            row["rss_after_mb"] = read_rss() / MB
            row["rss_before_mb"] = before / MB
            row["guess_mb"] = guess / MB
            rows.append(row)
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    args = parser.parse_args()
    rows = trio.run(run, args.trials)
    keys = ("load_s", "added_mb", "guess_mb", "loop_stall_ms", "other_lease_ms")
    print_table(["trial", *keys], [[i + 1, *(f"{r[k]:.2f}" for k in keys)]
                                   for i, r in enumerate(rows)])
    median = {k: statistics.median(r[k] for r in rows) for k in keys}
    print("median:", ", ".join(f"{k} {v:.2f}" for k, v in median.items()))
    write_json("models", {"machine": machine_info(), "median": median, "trials": rows})


if __name__ == "__main__":
    main()
