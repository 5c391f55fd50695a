"""edge next to vosk-server, the WebSocket server Vosk deployments run today.

alphacep's vosk-server (https://github.com/alphacep/vosk-server, its
``websocket/asr_server.py``) is not part of this repository: clone it and pass the
script's path. It is run unchanged, with the same model, on loopback; the only shim is
that its two-argument connection handler is served by ``websockets.legacy`` (the
websockets release installed here calls handlers with one argument).

The same load client (bench/load_client.py, speaking each server's protocol) sends N
streams of the looped fixture at real-time pace to one server, then the other:

* edge with a fresh recogniser per session (``warm_recognizers = 0``), as vosk-server
  does: like for like;
* edge as shipped, its recogniser pool warmed by one untimed round first;
* vosk-server.

Per server: its CPU per second of audio sent (all its threads, /proc/PID/stat), its
peak RSS, the latency of results (edge: from a chunk's send to the partial covering it;
vosk-server answers every chunk, so from a chunk's send to its answer), how long it
took to finish after the last chunk, and what it sent per chunk. vosk-server checks no
token, keeps no journal and enforces no limits; edge does all of that.

    git clone https://github.com/alphacep/vosk-server /tmp/vosk-server
    .venv/bin/python bench/compare.py --vosk-server /tmp/vosk-server/websocket/asr_server.py
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import fmt, ms

SHIM = """\
import runpy, sys, warnings
warnings.simplefilter("ignore", DeprecationWarning)
import websockets, websockets.legacy.server
websockets.serve = websockets.legacy.server.serve
script = sys.argv[1]
sys.argv = [script]  # the script reads a model path from its first argument
runpy.run_path(script, run_name="__main__")
"""


class VoskServer(common.EdgeServer):
    """vosk-server's asr_server.py in a subprocess on a free loopback port (the edge
    configuration file the base class writes goes unused)."""

    def __init__(self, script: Path) -> None:
        port = common.free_port()
        super().__init__("compare-vosk-server", port=port,
                         command=[common.PYTHON, "-c", SHIM, str(script)],
                         env={"VOSK_MODEL_PATH": str(common.model_path()),
                              "VOSK_SERVER_INTERFACE": "127.0.0.1",
                              "VOSK_SERVER_PORT": str(port), "VOSK_SAMPLE_RATE": "16000"})

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 120.0, *, interval: float = 0.1) -> float:
        """vosk-server has no health endpoint: ready when it accepts connections."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vosk-server exited with {self.proc.returncode}; see "
                                   f"{self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return time.monotonic()
            except OSError:
                time.sleep(interval)
        raise TimeoutError("vosk-server did not start listening")


def measure(name: str, url: str, pid: int, args: argparse.Namespace, seconds: float,
            protocol: str) -> dict[str, Any]:
    common.wait_quiet(max_wait=args.quiet_wait)
    rss: list[tuple[float, float]] = []
    run = common.run_clients(url, [common.ClientSpec(args.streams)], seconds=seconds,
                             ramp=args.ramp, server_pid=pid, rss_samples=rss,
                             sample_every=0.5, protocol=protocol)
    streams = common.all_streams(run)
    cpu = run["cpu"]
    audio = args.streams * seconds
    chunks = sum(len(s["sends"]) for s in streams)
    messages = sum(1 for s in streams for m in s["messages"] if m[1] == "transcription")
    if protocol == "vosk-server":
        # One answer per audio message, in order; the last answer is the final after eof.
        delays = [m[0] - t for s in streams
                  for t, m in zip(s["sends"], s["messages"], strict=False)]
        latency = _percentiles(delays)
    else:
        latency = common.analyze_streams(streams, [])["partial_latency_s"]
    drains = [s["closed_at"] - s["end_sent"] for s in streams
              if s.get("closed_at") and s.get("end_sent")]
    completed = sum(1 for s in streams if not s.get("error") and s.get("end_sent"))
    result = {"server": name, "streams": args.streams, "audio_s": audio,
              "cpu_s_per_audio_s": cpu["server"] * cpu["wall_s"] / audio,
              "server_cores": cpu["server"], "others_cores": cpu["others"],
              "peak_rss_mb": max((r for _, r in rss), default=None),
              "latency_s": latency, "drain_s_max": max(drains, default=None),
              "messages_per_chunk": messages / chunks if chunks else None,
              "completed": completed}
    print(f"  {name}: CPU per audio s {result['cpu_s_per_audio_s']:.3f}, latency p50/p95 "
          f"{ms(latency['p50'])}/{ms(latency['p95'])} ms, peak RSS "
          f"{fmt(result['peak_rss_mb'], '.0f')} MiB, drain {fmt(result['drain_s_max'], '.2f')}"
          f" s, {completed}/{args.streams} completed", flush=True)
    return result


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    ordered = sorted(values)
    return {"p50": statistics.median(ordered),
            "p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vosk-server", type=Path, required=True,
                   help="path to vosk-server's websocket/asr_server.py")
    p.add_argument("--streams", type=int, default=10, help="concurrent streams (default 10)")
    p.add_argument("--seconds", type=float, help="audio per stream (whole loops)")
    p.add_argument("--quick", action="store_true", help="short streams")
    args = p.parse_args(argv)
    if not args.vosk_server.is_file():
        p.error(f"--vosk-server: {args.vosk_server} is not a file")
    common.exit_on_sigterm()
    args.seconds = args.seconds or (14.0 if args.quick else 45.0)
    args.ramp = 2.0 if args.quick else 5.0
    args.quiet_wait = 10.0 if args.quick else 60.0
    speech = common.load_speech()
    pcm, _ = speech.looped(args.seconds)
    seconds = len(pcm) / (2 * speech.rate)
    info = common.machine_info()
    print(f"{info['cpu_model']}, {info['cores']} cores; {args.streams} streams x "
          f"{seconds:.1f} s at real-time pace", flush=True)

    results = []
    cold = "[recognizer]\nwarm_recognizers = 0\n"
    with common.EdgeServer("compare-edge-fresh", config_extra=cold) as server:
        results.append(measure("edge, fresh recognisers", server.url, server.pid, args,
                               seconds, "live"))
    warm = f"[recognizer]\nwarm_recognizers = {args.streams}\n"
    with common.EdgeServer("compare-edge", config_extra=warm) as server:
        common.run_clients(server.url, [common.ClientSpec(args.streams)],
                           seconds=speech.seconds, fast=True)
        server.wait_idle()
        results.append(measure("edge, warm pool", server.url, server.pid, args, seconds,
                               "live"))
    with VoskServer(args.vosk_server) as vosk_server:
        results.append(measure("vosk-server", vosk_server.url, vosk_server.pid, args,
                               seconds, "vosk-server"))

    reference = results[-1]["cpu_s_per_audio_s"]
    print()
    common.print_table(
        ["server", "CPU per audio s", "vs vosk-server", "latency p50", "latency p95",
         "peak RSS MiB", "drain s", "messages per chunk", "completed"],
        [[r["server"], f"{r['cpu_s_per_audio_s']:.3f}",
          f"{r['cpu_s_per_audio_s'] / reference:.2f}x" if reference else "-",
          ms(r["latency_s"]["p50"]), ms(r["latency_s"]["p95"]),
          fmt(r["peak_rss_mb"], ".0f"), fmt(r["drain_s_max"], ".2f"),
          fmt(r["messages_per_chunk"], ".2f"), f"{r['completed']}/{r['streams']}"]
         for r in results],
        title=f"{args.streams} real-time streams of {seconds:.0f} s each (latency in ms)")
    common.write_json("compare", {"machine": info, "stream_seconds": seconds,
                                  "streams": args.streams, "results": results,
                                  "vosk_server_script": str(args.vosk_server)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
