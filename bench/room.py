"""The room microphone: fan-out latency and the CPU cost of capture + fan-out.

An edge ``Server`` with a ``Room`` runs in this process, built as ``edge serve`` builds
it, capturing with the real :class:`~edge.audio.capture.MicSource` from a file-backed ALSA
device (``tests/alsa_file_device.py``: ALSA ``file`` plugin -> PortAudio -> PyAudio)
that plays ``tests/fixtures/speech_ko.raw`` looped; ``MicSource`` paces such a device
to real time. Listeners are WebSocket clients (asyncio ``websockets``) in a separate
process, so that their work never shares the server's event loop or GIL.

1. **Fan-out latency** (real Vosk recogniser): every message the room publishes is
   stamped with ``time.monotonic()`` at ``hub.publish`` (the benchmark wraps
   ``room.hub.publish`` to add ``bench_t``); each listener records arrival minus
   ``bench_t``. At 1, 10 and 100 listeners: p50/p95/p99/max, messages published and
   delivered per second, and whether any listener was dropped or missed a ``seq``.
2. **CPU of capture + fan-out** as a share of recognition: the same room with a
   stand-in recogniser (a partial with new text on every 100 ms chunk, a final with
   words every 2 s, at almost no cost) at 0, 1, 10 and 100 listeners; this process's
   CPU time (all threads) over a fixed window per second of audio captured. Next to
   it, the real Vosk recogniser's CPU per audio second on the same audio, decoded in
   this process after the servers have stopped: over a fresh recogniser's whole
   stream and in the steady state (the second half of its loops; the room's recogniser
   lives for hours, so the steady figure is the one to compare with).

    .venv/bin/python bench/room.py            # 5-9 minutes
    .venv/bin/python bench/room.py --quick    # about 2 minutes

Before each phase it waits (up to a minute; 10 s with ``--quick``) for the machine to
be nearly idle, and reports the CPU other processes used during each window.

``--source played`` replaces the ALSA device by an in-process stand-in that plays the
same audio on a trio timer (for machines without ALSA).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

ROOT = common.ROOT
SPEECH_RAW = ROOT / "tests" / "fixtures" / "speech_ko.raw"
RATE = 16000
CHUNK_MS = 100
CHUNK_BYTES = 2 * RATE * CHUNK_MS // 1000
DEVICE = "edgemic"
READ_SCOPE = "transcription:read"


# --- the listeners (a subprocess) ------------------------------------------------------

def listen_child(args: argparse.Namespace) -> int:
    """``--listen-child``: open N room listeners, record arrivals until told to stop.

    Prints ``connected`` once every listener has its ``session_init``; reads ``stop``
    on stdin, closes the listeners and writes, per listener, every message's arrival
    time (``time.monotonic()``) with its ``bench_t``, ``seq``, type and ``is_final``.
    """
    import asyncio

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    headers = {"Authorization": f"Bearer {args.token}"}
    n = args.listeners

    class One:
        def __init__(self) -> None:
            self.raw: list[tuple[float, str]] = []
            self.ws: Any = None
            self.init: dict[str, Any] | None = None
            self.error: str | None = None
            self.ended_at: float | None = None  # the stream ended before `stop`
            self.close: list[Any] | None = None

    listeners = [One() for _ in range(n)]
    stopping = False

    async def run_one(one: One, connected: asyncio.Event, count: list[int]) -> None:
        try:
            one.ws = await connect(args.url, additional_headers=headers, max_size=None,
                                   ping_interval=None, compression=None, open_timeout=60)
            one.init = json.loads(await one.ws.recv())
        except Exception as exc:  # reported, never hidden: the run is then invalid
            one.error = f"{type(exc).__name__}: {exc}"
            count[0] += 1
            if count[0] == n:
                connected.set()
            return
        count[0] += 1
        if count[0] == n:
            connected.set()
        raw = one.raw
        try:
            async for text in one.ws:
                raw.append((time.monotonic(), text))
        except ConnectionClosed:
            pass
        if not stopping:
            one.ended_at = time.monotonic()
            rcvd = one.ws.close_rcvd
            one.close = [rcvd.code, rcvd.reason] if rcvd is not None else None

    async def main() -> None:
        nonlocal stopping
        connected = asyncio.Event()
        count = [0]
        tasks = [asyncio.create_task(run_one(one, connected, count)) for one in listeners]
        await connected.wait()
        print(json.dumps({"connected": sum(one.init is not None for one in listeners)}),
              flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.readline)
        stopping = True
        await asyncio.gather(*(one.ws.close() for one in listeners if one.ws is not None),
                             return_exceptions=True)
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    out = []
    for one in listeners:
        records = []
        for t, text in one.raw:
            data = json.loads(text)
            records.append([t, data.get("bench_t"), data.get("seq"), data.get("type"),
                            data.get("is_final"), data.get("code")])
        out.append({"init": (one.init or {}).get("type"), "error": one.error,
                    "ended_at": one.ended_at, "close": one.close, "messages": records})
    Path(args.out).write_text(json.dumps(out))
    return 0


class Listeners:
    """The listener subprocess, seen from the server's side."""

    def __init__(self, url: str, token: str, n: int, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--listen-child", "--url", url, "--token", token,
             "--listeners", str(n), "--out", str(out)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def wait_connected(self) -> int:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the listener process exited ({self.proc.wait()})")
        return int(json.loads(line)["connected"])

    def stop(self, timeout: float = 60) -> list[dict[str, Any]]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        if self.proc.wait(timeout) != 0:
            raise RuntimeError(f"the listener process exited with {self.proc.returncode}")
        data: list[dict[str, Any]] = json.loads(self.out.read_text())
        return data

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --- the server side -------------------------------------------------------------------

def prepare_alsa(tmp: Path, seconds: float) -> Path:
    """A HOME whose .asoundrc defines DEVICE, playing the fixture looped for ``seconds``.

    PortAudio reads the ALSA configuration when it first initialises in a process, so
    this must run before anything creates a ``pyaudio.PyAudio``.
    """
    sys.path.insert(0, str(ROOT / "tests"))
    from alsa_file_device import FileDevice, make_home

    speech = SPEECH_RAW.read_bytes()
    loops = int(seconds // (len(speech) / (2 * RATE))) + 1
    infile = tmp / "room.raw"
    infile.write_bytes(speech * loops)
    home = make_home(tmp / "home", [FileDevice(DEVICE, infile)])
    for key in [k for k in os.environ if k.startswith(("ALSA", "PULSE"))]:
        del os.environ[key]
    os.environ["HOME"] = str(home)
    return home


class StandInRecognizer:
    """A partial with new text on every chunk, a final with words every ~2 s."""

    FINAL_EVERY = 20  # chunks of 100 ms
    WORDS = ("안녕하세요", "오늘", "진료를", "시작하겠습니다", "감사합니다")

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._samples = 0
        self._calls = 0
        self._start_ms = 0

    def accept(self, pcm: bytes) -> list[Any]:
        from edge.protocols.events import Utterance, Word

        self._samples += len(pcm) // 2
        self._calls += 1
        end_ms = 1000 * self._samples // self._rate
        if self._calls % self.FINAL_EVERY == 0:
            start, self._start_ms = self._start_ms, end_ms
            step = (end_ms - start) // len(self.WORDS)
            words = tuple(Word(w, start + i * step, start + (i + 1) * step, 0.9)
                          for i, w in enumerate(self.WORDS))
            return [Utterance(True, " ".join(self.WORDS), start, end_ms, words)]
        n = 1 + (self._calls % self.FINAL_EVERY) * len(self.WORDS) // self.FINAL_EVERY
        text = " ".join(self.WORDS[:n]) + f" {self._calls}"
        return [Utterance(False, text, self._start_ms, end_ms)]

    def flush(self) -> Any:
        return None

    def close(self) -> None:
        pass


def stand_in_factory(rate: int, phrases: Any = None) -> StandInRecognizer:
    return StandInRecognizer(rate)


class PlayedSource:
    """``--source played``: the fixture looped in 100 ms chunks on a trio timer."""

    def __init__(self) -> None:
        self.chunks = 0

    async def run(self, send: Any, *, task_status: Any = None) -> None:
        import trio

        from edge.audio.source import Chunk

        speech = SPEECH_RAW.read_bytes()
        task_status.started()
        position = 0
        start = trio.current_time()
        async with send:
            while True:
                pcm = speech[position:position + CHUNK_BYTES]
                position = (position + CHUNK_BYTES) % len(speech)
                self.chunks += 1
                await trio.sleep_until(start + self.chunks * CHUNK_MS / 1000)
                send.send_nowait(Chunk(pcm.ljust(CHUNK_BYTES, b"\0"), RATE,
                                       trio.current_time()))

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def statistics(self) -> Any:
        from edge.audio.source import MicStatistics

        return MicStatistics(state="running", device="played", sample_rate=RATE, channels=1,
                             chunks=self.chunks, dropped_chunks=0, overruns=0, restarts=0,
                             failures=0, last_error=None, stream_open=True)


def make_config(state_dir: Path) -> Any:
    from edge.core.config import load_config

    overrides = {
        "server.host": "127.0.0.1", "server.port": 0, "server.state_dir": str(state_dir),
        "microphone.enabled": True, "microphone.device": DEVICE,
        "microphone.max_listeners": 128,
        # The fixture has 1.2 s pauses; do not let the silence detector talk.
        "audio.silence_seconds": 600.0,
    }
    return load_config(None, environ={}, overrides=overrides)


@contextlib.asynccontextmanager
async def serving(config: Any, model: Any, factory: Any, source_kind: str
                  ) -> AsyncIterator[tuple[Any, Any]]:
    """A Server and its Room (``source_kind`` "mic" or "played"), ``hub.publish`` stamped."""
    import functools

    import trio

    from edge import app
    from edge.core.auth import AuthSettings

    a = config.auth
    auth = AuthSettings(algorithm="HS256", key=common.SECRET, issuer=None, audience=None,
                        leeway=a.leeway, max_lifetime=a.max_token_lifetime)
    source = PlayedSource() if source_kind == "played" else None  # None: the real mic
    parts = app.Parts(auth=auth, model=model, recognizer_factory=factory, microphone=source)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(functools.partial(app.run, config, parts=parts))
        room = server.room
        publish = room.hub.publish

        def stamped(message: dict[str, Any], *, replay: bool | None = None) -> int:
            message["bench_t"] = time.monotonic()
            return publish(message, replay=replay)

        room.hub.publish = stamped
        with trio.fail_after(30):
            while room.source.statistics().chunks < 5:
                await trio.sleep(0.05)
        if room.state != "listening":
            raise RuntimeError(f"the room is {room.state!r}: {room.status()}")
        try:
            yield server, room
        finally:
            nursery.cancel_scope.cancel()


class Window:
    """CPU (this process, the listener process, the machine), audio and hub counters."""

    def __init__(self, room: Any, client_pid: int | None) -> None:

        self._room = room
        self._client = client_pid
        self.wall = time.monotonic()
        self.cpu = time.process_time()
        self.times = os.times()
        self.machine = common.machine_busy_seconds()
        self.client_cpu = common.cpu_seconds(client_pid) if client_pid else 0.0
        mic = room.source.statistics()
        self.chunks, self.dropped = mic.chunks, mic.dropped_chunks
        hub = room.hub.statistics()
        self.published, self.dropped_slow = hub.published, hub.dropped_slow

    def close(self) -> dict[str, Any]:

        wall = time.monotonic() - self.wall
        cpu = time.process_time() - self.cpu
        times = os.times()
        machine = common.machine_busy_seconds() - self.machine
        client = (common.cpu_seconds(self._client) - self.client_cpu) if self._client else 0.0
        mic = self._room.source.statistics()
        hub = self._room.hub.statistics()
        audio = (mic.chunks - self.chunks) * CHUNK_MS / 1000
        return {
            "t0": self.wall, "t1": self.wall + wall, "wall_s": wall, "audio_s": audio,
            "server_cpu_s": cpu, "server_sys_s": times.system - self.times.system,
            "client_cpu_s": client,
            "others_cores": max(0.0, machine - cpu - client) / wall,
            "cpu_per_audio_s": cpu / audio if audio else None,
            "published": hub.published - self.published,
            "dropped_slow": hub.dropped_slow - self.dropped_slow,
            "dropped_chunks": mic.dropped_chunks - self.dropped,
            "listeners_now": None,
        }


def analyse(window: dict[str, Any], listeners: list[dict[str, Any]]) -> dict[str, Any]:
    """Latencies of the messages that arrived within the window, and drop checks."""

    t0, t1 = window["t0"], window["t1"]
    latencies: list[float] = []
    finals: list[float] = []
    received = 0
    gaps = ended = errors = slow = 0
    per_listener: list[int] = []
    for one in listeners:
        if one["error"]:
            errors += 1
        if one["ended_at"] is not None:
            ended += 1
        seqs = [m[2] for m in one["messages"] if m[2] is not None]
        gaps += sum(b - a - 1 for a, b in itertools.pairwise(seqs))
        mine = 0
        for t, bench_t, _seq, kind, is_final, code in one["messages"]:
            if kind == "warning" and code == "slow_listener":
                slow += 1
            if not t0 <= t <= t1 or bench_t is None:
                continue
            mine += 1
            latencies.append(t - bench_t)
            if kind == "transcription" and is_final:
                finals.append(t - bench_t)
        received += mine
        per_listener.append(mine)
    return {
        "latency": common.summarize(latencies),
        "final_latency": common.summarize(finals),
        "delivered": received,
        "delivered_per_s": received / window["wall_s"],
        "published_per_s": window["published"] / window["wall_s"],
        "per_listener_min": min(per_listener) if per_listener else 0,
        "per_listener_max": max(per_listener) if per_listener else 0,
        "seq_gaps": gaps, "ended_early": ended, "connect_errors": errors,
        "slow_listener_warnings": slow,
    }


async def measure(server: Any, room: Any, n: int, *, warmup: float, seconds: float,
                  token: str, tmp: Path) -> dict[str, Any]:
    """One window at ``n`` listeners (``n = 0``: the room alone)."""
    import trio

    listeners: Listeners | None = None
    connected = 0
    try:
        if n:
            url = f"ws://127.0.0.1:{server.port}{server.config.server.path}?source=room"
            listeners = Listeners(url, token, n, tmp / f"listeners-{n}.json")
            connected = await trio.to_thread.run_sync(listeners.wait_connected)
        await trio.sleep(warmup)
        window = Window(room, listeners.proc.pid if listeners else None)
        await trio.sleep(seconds)
        result = window.close()
        result["listeners_now"] = server.listeners.current
        result["room"] = room.status()
        result["connected"] = connected
        if listeners is not None:
            recorded = await trio.to_thread.run_sync(listeners.stop)
            listeners = None
            result.update(analyse(result, recorded))
    finally:
        if listeners is not None:
            listeners.kill()
    with trio.move_on_after(10):
        while server.listeners.current:
            await trio.sleep(0.05)
    result["n"] = n
    return result


def vosk_cost(model: Any, loops: int) -> dict[str, Any]:
    """Vosk's CPU per audio second on the looped fixture: a fresh recogniser, 100 ms
    chunks as fast as it takes them, this process's CPU time per loop."""
    speech = SPEECH_RAW.read_bytes()
    loop_s = len(speech) / (2 * RATE)
    recognizer = model.recognizer(RATE)
    per_loop = []
    results = 0
    for _ in range(loops):
        cpu = time.process_time()
        for i in range(0, len(speech), CHUNK_BYTES):
            results += len(recognizer.accept(speech[i:i + CHUNK_BYTES]))
        per_loop.append((time.process_time() - cpu) / loop_s)
    recognizer.flush()
    steady = per_loop[loops // 2:]
    return {"loops": loops, "loop_s": loop_s, "per_loop": per_loop,
            "whole": sum(per_loop) / loops, "steady": sum(steady) / len(steady),
            "steady_loops": len(steady), "results": results}


# --- the run ---------------------------------------------------------------------------

def pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


async def run(args: argparse.Namespace, tmp: Path, model: Any) -> dict[str, Any]:
    import trio

    from edge.core.auth import mint

    config = make_config(tmp / "state")
    token = mint(algorithm="HS256", key=common.SECRET, sub="bench", scope=READ_SCOPE,
                 user_type="doctor", ttl=4 * 3600, now=time.time())
    out: dict[str, Any] = {"latency": [], "cpu": []}

    quiet = await trio.to_thread.run_sync(common.wait_quiet, 0.3, 2.0, args.max_wait)
    print(f"latency: real Vosk, room source {args.source}, machine busy before {quiet:.2f} "
          "cores", flush=True)
    async with serving(config, model, model.recognizer, args.source) as (server, room):
        out["device"] = room.source.statistics().device
        await trio.sleep(args.settle)  # past the recogniser's first seconds
        for n in args.listeners:
            r = await measure(server, room, n, warmup=args.warmup, seconds=args.latency_s,
                              token=token, tmp=tmp)
            out["latency"].append(r)
            lat = r["latency"]
            print(f"  N={n:<3} p50 {common.ms(lat['p50'], 1)} ms  p95 {common.ms(lat['p95'], 1)}"
                  f" ms  max {common.ms(lat['max'], 1)} ms  {r['delivered_per_s']:.0f} msg/s"
                  f"  server {r['server_cpu_s'] / r['wall_s']:.2f} cores", flush=True)

    quiet = await trio.to_thread.run_sync(common.wait_quiet, 0.3, 2.0, args.max_wait)
    print(f"cpu: stand-in recogniser, machine busy before {quiet:.2f} cores", flush=True)
    async with serving(config, model, stand_in_factory, args.source) as (server, room):
        await trio.sleep(args.settle)
        for n in args.cpu_listeners:
            r = await measure(server, room, n, warmup=args.warmup, seconds=args.cpu_s,
                              token=token, tmp=tmp)
            out["cpu"].append(r)
            print(f"  N={n:<3} {1000 * r['cpu_per_audio_s']:.2f} ms CPU per audio s"
                  f"  ({r['published'] / r['wall_s']:.1f} msg/s published)", flush=True)
    return out


def report(result: dict[str, Any]) -> None:
    from common import fmt, ms, print_table

    def dropped(r: dict[str, Any]) -> str:
        if not r["n"]:
            return "-"
        lost = r["dropped_slow"] + r["ended_early"] + r["connect_errors"]
        return f"{lost} / {r['seq_gaps']}"

    vosk = result["vosk"]
    rows = []
    for r in result["latency"]:
        lat = r["latency"]
        rows.append([r["n"], f"{r['published_per_s']:.1f}", f"{r['delivered_per_s']:.0f}",
                     ms(lat["p50"], 1), ms(lat["p95"], 1), ms(lat["p99"], 1),
                     ms(lat["max"], 1), dropped(r),
                     fmt(1000 * r["server_cpu_s"] / r["audio_s"], ".0f"),
                     fmt(r["others_cores"], ".2f")])
    print_table(["listeners", "published msg/s", "delivered msg/s", "p50 ms", "p95 ms",
                 "p99 ms", "max ms", "dropped / seq gaps", "whole room, ms CPU per audio s",
                 "others (cores)"], rows,
                "Fan-out latency, hub.publish -> listener (real Vosk room)")
    rows = []
    for r in result["cpu"]:
        cost = r["cpu_per_audio_s"]
        lat = r.get("latency") or {}
        rows.append([r["n"], f"{r['published'] / r['wall_s']:.1f}",
                     fmt(r.get("delivered_per_s"), ".0f"), fmt(cost * 1000, ".1f"),
                     pct(cost / vosk["steady"]), pct(cost / vosk["whole"]),
                     ms(lat.get("p50"), 1), ms(lat.get("p95"), 1), dropped(r),
                     fmt(r["others_cores"], ".2f")])
    print_table(["listeners", "published msg/s", "delivered msg/s",
                 "capture + fan-out, ms CPU per audio s", "share of Vosk (steady)",
                 "share of Vosk (fresh stream)", "p50 ms", "p95 ms", "dropped / seq gaps",
                 "others (cores)"], rows,
                "CPU of capture + fan-out (stand-in recogniser) as a share of recognition")
    print(f"\nVosk on the same audio: {1000 * vosk['steady']:.1f} ms CPU per audio s steady "
          f"(last {vosk['steady_loops']} of {vosk['loops']} loops), "
          f"{1000 * vosk['whole']:.1f} over a fresh {vosk['loops'] * vosk['loop_s']:.0f} s stream")
    chunks = sum(r["dropped_chunks"] for r in result["latency"] + result["cpu"])
    if chunks:
        print(f"WARNING: the room dropped {chunks} chunks (mic_overrun) during the windows")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows (~2 min)")
    parser.add_argument("--source", choices=("mic", "played"), default="mic",
                        help="MicSource on a file-backed ALSA device (default), or an "
                        "in-process stand-in")
    parser.add_argument("--listeners", default="1,10,100",
                        help="listener counts for the latency windows")
    parser.add_argument("--cpu-listeners", default="0,1,10,100",
                        help="listener counts for the CPU windows")
    parser.add_argument("--listen-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.listen_child:
        args.listeners = int(args.listeners)
        return listen_child(args)

    args.listeners = [int(x) for x in args.listeners.split(",") if x]
    args.cpu_listeners = [int(x) for x in args.cpu_listeners.split(",") if x]
    args.latency_s = 15.0 if args.quick else 60.0
    args.cpu_s = 8.0 if args.quick else 30.0
    args.warmup = 2.0
    args.settle = 3.0 if args.quick else 10.0
    args.max_wait = 10.0 if args.quick else 60.0
    vosk_loops = 2 if args.quick else 8
    phase_s = (args.settle + len(args.listeners) * (args.latency_s + args.warmup + 15)
               + len(args.cpu_listeners) * (args.cpu_s + args.warmup + 15) + 120)

    with tempfile.TemporaryDirectory(prefix="edge-bench-room-") as name:
        tmp = Path(name)
        if args.source == "mic":
            prepare_alsa(tmp, phase_s)  # before anything initialises PortAudio
        import trio

        from edge.asr.vosk import load_model

        common.exit_on_sigterm()
        common.RESULTS.mkdir(parents=True, exist_ok=True)
        log_path = common.RESULTS / "room-server.log"
        logging.basicConfig(filename=log_path, filemode="w", level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        machine = common.machine_info()
        started = time.monotonic()
        model = load_model(None)
        # PortAudio's probing of every ALSA/JACK backend talks on fd 2: into the log.
        saved = os.dup(2)
        with open(log_path, "ab") as log:
            os.dup2(log.fileno(), 2)
        try:
            result = trio.run(run, args, tmp, model)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        quiet = common.wait_quiet(0.3, 2.0, args.max_wait)
        result["vosk"] = vosk_cost(model, vosk_loops)
        result["vosk"]["machine_busy_before"] = quiet
    result.update(machine=machine, quick=args.quick, source=args.source,
                  latency_window_s=args.latency_s, cpu_window_s=args.cpu_s,
                  clock="time.monotonic() (CLOCK_MONOTONIC, shared by both processes)",
                  total_s=time.monotonic() - started)
    common.write_json("room", result)
    report(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
