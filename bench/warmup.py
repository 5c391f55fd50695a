"""The first session after a start: cold versus warmed at boot, in one run.

Three daemons per trial, one after another (never two at once), each serving one
paced session of speech the warm-up never saw (the first ``--seconds`` of
tests/fixtures/speakers/conversation.wav: other voices, other phrases than
edge/asr/data/warmup.wav):

* **cold**: ``warm_at_start = false``: the session gets a fresh recogniser, as every
  session after a boot did before the warm-up existed;
* **warmed at boot**: the daemon warms its pool on the packaged speech; the session
  starts once /healthz says ``warm``;
* **warm on this speech**: no warm-up, but one untimed session of the same recording
  first, so the session gets a recogniser that has already decoded this very speech
  (the best a pool can do): how much of that the packaged speech gives.

For each: the server's CPU seconds (utime + stime from /proc) per audio second of the
session, partial latency (arrival minus the send of the chunk holding the partial's
end) and final latency (arrival minus the send of the final's last word) p50 / p95;
for the warmed daemon, the time and CPU the warm-up took and the memory each warm
recogniser added (RSS after warming minus RSS at ready, over the warm count).

Numbers only, no assertions; the machine is shared and noisy: compare within a run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    ROOT,
    EdgeServer,
    cpu_seconds,
    fmt,
    machine_info,
    mint_token,
    ms,
    percentile,
    print_table,
    rss_mb,
    write_json,
)
from paced import paced_session, read_wav

CONVERSATION = ROOT / "tests" / "fixtures" / "speakers" / "conversation.wav"
MODES = ("cold", "warmed at boot", "warm on this speech")


def one(mode: str, pcm: bytes, rate: int, warm: int) -> dict[str, Any]:
    extra = (f"[recognizer]\nwarm_at_start = {'true' if mode == 'warmed at boot' else 'false'}"
             f"\nwarm_recognizers = {warm}\nmemory_budget_mb = {200 * warm}\n")
    out: dict[str, Any] = {"mode": mode}
    with EdgeServer("warmup-server", config_extra=extra) as server:
        token = mint_token()
        ready_rss, ready_cpu, ready_at = rss_mb(server.pid), cpu_seconds(server.pid), \
            time.monotonic()
        if mode == "warmed at boot":
            while (pool := server.health().get("recognizers", {})).get("state") != "warm":
                time.sleep(0.2)
            out["warm_seconds"] = time.monotonic() - ready_at
            out["warm_cpu"] = cpu_seconds(server.pid) - ready_cpu
            out["mb_per_recognizer"] = (rss_mb(server.pid) - ready_rss) / max(1, pool["warm"])
        if mode == "warm on this speech":
            asyncio.run(paced_session(server.url, token, pcm, rate))
            server.wait_idle()
        before = cpu_seconds(server.pid)
        trace = asyncio.run(paced_session(server.url, token, pcm, rate))
        server.wait_idle()
        out["cpu_per_audio_s"] = (cpu_seconds(server.pid) - before) / (len(pcm) / 2 / rate)
        out["pool"] = server.health().get("recognizers")
    partial = trace.partial_latencies()
    final = [t - (trace.t0 + int(m["end_ms"]) / 1000) for t, m in trace.finals()]
    out.update(partial_p50=percentile(partial, 50), partial_p95=percentile(partial, 95),
               final_p50=percentile(final, 50), final_p95=percentile(final, 95),
               finals=len(final), partials=len(partial))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=30.0,
                   help="seconds of conversation.wav per session (default 30)")
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--warm", type=int, default=2,
                   help="recognisers the warmed daemon warms (default 2; the first "
                        "session needs one)")
    args = p.parse_args(argv)
    pcm, rate = read_wav(CONVERSATION)
    pcm = pcm[:2 * int(rate * args.seconds)]
    runs: list[dict[str, Any]] = []
    for trial in range(args.trials):
        order = MODES if trial % 2 == 0 else tuple(reversed(MODES))
        for mode in order:
            runs.append(one(mode, pcm, rate, args.warm))
            print(f"trial {trial + 1} {mode}: {fmt(runs[-1]['cpu_per_audio_s'], '.3f')} "
                  "CPU-s per audio s", flush=True)

    def med(mode: str, key: str) -> float | None:
        values = [r[key] for r in runs if r["mode"] == mode and r.get(key) is not None]
        return statistics.median(values) if values else None

    rows = [[mode, fmt(med(mode, "cpu_per_audio_s"), ".3f"),
             ms(med(mode, "partial_p50")), ms(med(mode, "partial_p95")),
             ms(med(mode, "final_p50")), ms(med(mode, "final_p95"))] for mode in MODES]
    print_table(["first session", "CPU-s / audio s", "partial p50 ms", "p95 ms",
                 "final p50 ms", "p95 ms"], rows,
                title=f"First session after start, {args.seconds:g} s of conversation.wav "
                      f"(unseen by the warm-up), paced 100 ms chunks; medians of "
                      f"{args.trials} trial(s)")
    print(f"warm-up of {args.warm}: {fmt(med('warmed at boot', 'warm_seconds'), '.1f')} s, "
          f"{fmt(med('warmed at boot', 'warm_cpu'), '.1f')} CPU-s; "
          f"{fmt(med('warmed at boot', 'mb_per_recognizer'), '.0f')} MB RSS per warm "
          "recogniser")
    path = write_json("warmup", {"machine": machine_info(), "seconds": args.seconds,
                                 "trials": args.trials, "warm": args.warm, "runs": runs})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
