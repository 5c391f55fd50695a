"""Capacity in one sitting: bare Vosk, edge as shipped and vosk-server, on one audio each.

For each recording (``--audio``, default the generated consultation and continuous
speech, ``tools/make_rooms.py --set cost``):

(a) **bare Vosk**: as many threads as cores, each recogniser warmed on the packaged
    warm-up speech (``edge/asr/data/warmup.wav``, as edge's pool is: never on the audio
    that follows), decoding the recording in 100 ms chunks with a partial after each, as
    fast as it can. Seconds of audio per wall second: the real-time streams the CPU
    could carry with nothing else to do.
(b) **edge as shipped** (``edge serve``, its defaults but a pool sized for the trials
    and warmed by its own warm-up at start, not by the trial's audio), and
(c) **vosk-server** (alphacep's ``websocket/asr_server.py``, unchanged, same model):
    N clients stream the recording at real-time pace; the largest N that passes is the
    capacity. edge passes as in ``bench/capacity.py`` (every session completes, no
    ``realtime_lag`` warning, partial p95 under 1 s, finals not falling behind, drained
    within 1 s of ``end``); vosk-server, which answers every chunk, passes when every
    session completes, its answer to a chunk comes within 1 s at the 95th percentile
    and it drains within 1 s.

    git clone https://github.com/alphacep/vosk-server /tmp/vosk-server
    .venv/bin/python bench/capacity_table.py --vosk-server /tmp/vosk-server/websocket/asr_server.py
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
from capacity import judge
from common import fmt, ms
from compare import VoskServer, _percentiles
from paced import read_wav

WARMUP = common.ROOT / "edge" / "asr" / "data" / "warmup.wav"
LATENCY_LIMIT = 1.0  # s, vosk-server's answer to a chunk, p95
DRAIN_LIMIT = 1.0


def edge_trial(audio: str, pool: int, seconds: float, spans: list[tuple[float, float]],
               n: int, ramp: float) -> dict[str, Any]:
    """N paced sessions on a fresh ``edge serve`` whose pool of ``pool`` recognisers was
    warmed on its warm-up speech only (a pool that served the last trial would hold
    recognisers that have heard this audio, and decode it at about half the cost)."""
    with common.EdgeServer(f"table-edge-{audio}", config_extra=(
            f"[recognizer]\nwarm_recognizers = {pool}\nwarm_at_start = true\n")) as server:
        deadline = time.monotonic() + 300
        while server.health().get("recognizers", {}).get("state") != "warm":
            if time.monotonic() > deadline:
                raise SystemExit("edge's pool did not finish warming in 300 s")
            time.sleep(0.5)
        common.wait_quiet(max_wait=20)
        run = common.run_clients(server.url, [common.ClientSpec(n)], seconds=seconds,
                                 ramp=ramp, server_pid=server.pid, audio=audio)
        a = common.analyze_streams(common.all_streams(run), spans)
        reasons = judge(a)
        server.wait_idle()
    cpu = run["cpu"]["server"] * run["cpu"]["wall_s"] / (n * seconds)
    print(f"    edge {n:3d}: {'PASS' if not reasons else 'FAIL'} partial p95 "
          f"{ms(a['partial_latency_s']['p95'])} ms, final p50 "
          f"{ms(a['final_latency_s']['p50'])} ms, CPU/audio s {cpu:.3f} "
          f"{'; '.join(reasons)}", flush=True)
    return {"streams": n, "passed": not reasons, "reasons": reasons,
            "cpu_s_per_audio_s": cpu, "partial_latency_s": a["partial_latency_s"],
            "final_latency_s": a["final_latency_s"], "others_cores": run["cpu"]["others"]}


def vosk_trial(server: VoskServer, audio: str, seconds: float, n: int, ramp: float
               ) -> dict[str, Any]:
    common.wait_quiet(max_wait=20)
    run = common.run_clients(server.url, [common.ClientSpec(n)], seconds=seconds,
                             ramp=ramp, server_pid=server.pid, protocol="vosk-server",
                             audio=audio)
    streams = common.all_streams(run)
    delays = [m[0] - t for s in streams for t, m in zip(s["sends"], s["messages"],
                                                          strict=False)]
    latency = _percentiles(delays)
    drains = [s["closed_at"] - s["end_sent"] for s in streams
              if s.get("closed_at") and s.get("end_sent")]
    completed = sum(1 for s in streams if not s.get("error") and s.get("end_sent"))
    reasons = []
    if completed < n:
        reasons.append(f"{n - completed} session(s) incomplete")
    if latency["p95"] is None or latency["p95"] >= LATENCY_LIMIT:
        reasons.append(f"answer p95 {ms(latency['p95'])} ms")
    if max(drains, default=math.inf) > DRAIN_LIMIT:
        reasons.append(f"drain {fmt(max(drains, default=None), '.1f')} s")
    cpu = run["cpu"]["server"] * run["cpu"]["wall_s"] / (n * seconds)
    print(f"    vosk-server {n:3d}: {'PASS' if not reasons else 'FAIL'} answer p50/p95 "
          f"{ms(latency['p50'])}/{ms(latency['p95'])} ms, CPU/audio s {cpu:.3f} "
          f"{'; '.join(reasons)}", flush=True)
    return {"streams": n, "passed": not reasons, "reasons": reasons,
            "cpu_s_per_audio_s": cpu, "latency_s": latency,
            "others_cores": run["cpu"]["others"]}


def bare(audio: common.Speech, pcm: bytes) -> dict[str, Any]:
    model = common.load_vosk_model()
    warm_pcm, _ = read_wav(WARMUP)
    common.wait_quiet(max_wait=20)
    cores = os.cpu_count() or 1
    r = common.bare_decode(model, audio.chunks(pcm), cores, warm=True,
                           warm_on=audio.chunks(warm_pcm))
    print(f"    bare Vosk, {cores} threads warmed on the warm-up: {r['x_realtime']:.1f}x "
          f"real time, CPU/audio s {r['cpu_rtf']:.3f}", flush=True)
    return r


def one_audio(name: str, args: argparse.Namespace) -> dict[str, Any]:
    audio = common.load_audio(name)
    pcm, spans = audio.looped(args.seconds)
    seconds = len(pcm) / (2 * audio.rate)
    print(f"\n{name}: {seconds:.0f} s per stream", flush=True)
    anchor = bare(audio, pcm)
    start = max(1, math.floor(anchor["x_realtime"] * 0.8))
    pool = math.ceil(anchor["x_realtime"] * 1.3)
    edge = common.search_capacity(
        lambda n: [edge_trial(name, pool, seconds, spans, n, args.ramp)], start,
        args.max_trials)
    vosk: tuple[int, int | None, list[dict[str, Any]]] = (0, None, [])
    if not args.edge_only:
        with VoskServer(args.vosk_server) as vs:
            vosk = common.search_capacity(
                lambda n: [vosk_trial(vs, name, seconds, n, args.ramp)], start,
                args.max_trials)
    return {"audio": name, "stream_seconds": seconds, "bare": anchor, "pool": pool,
            "edge": {"capacity": edge[0], "first_failing": edge[1], "trials": edge[2]},
            "vosk_server": {"capacity": vosk[0], "first_failing": vosk[1],
                            "trials": vosk[2]}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vosk-server", type=Path, required=True,
                   help="path to vosk-server's websocket/asr_server.py")
    p.add_argument("--audio", default="consultation,continuous",
                   help=f"comma-separated: fixture, {', '.join(common.ROOMS)}")
    p.add_argument("--seconds", type=float, default=60.0, help="audio per stream")
    p.add_argument("--ramp", type=float, default=5.0)
    p.add_argument("--max-trials", type=int, default=4, help="per server and audio")
    p.add_argument("--edge-only", action="store_true", help="no vosk-server trials")
    args = p.parse_args(argv)
    if not args.vosk_server.is_file():
        p.error(f"--vosk-server: {args.vosk_server} is not a file")
    common.exit_on_sigterm()
    info = common.machine_info()
    print(f"{info['cpu_model']}, {info['cores']} cores, load {info.get('loadavg_at_start')}")
    results = [one_audio(name, args) for name in args.audio.split(",")]
    rows = []
    for r in results:
        def best(trials: list[dict[str, Any]]) -> str:
            passing = [t["cpu_s_per_audio_s"] for t in trials if t["passed"]]
            return fmt(min(passing), ".3f") if passing else "-"

        def bracket(x: dict[str, Any]) -> str:
            return f"{x['capacity']}" + ("" if x["first_failing"] is not None
                                         and x["first_failing"] - x["capacity"] <= 1
                                         else " (bound not found)")

        rows.append([r["audio"], f"{r['bare']['x_realtime']:.1f}",
                     f"{r['bare']['cpu_rtf']:.3f}", bracket(r["edge"]),
                     best(r["edge"]["trials"]), bracket(r["vosk_server"]),
                     best(r["vosk_server"]["trials"])])
    common.print_table(["audio", "bare Vosk streams", "bare CPU/audio s", "edge streams",
                        "edge CPU/audio s", "vosk-server streams",
                        "vosk-server CPU/audio s"], rows,
                       title="real-time streams sustained, one sitting")
    path = common.write_json("capacity-table", {"machine": info, "results": results,
                                                "vosk_server_script": str(args.vosk_server)})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
