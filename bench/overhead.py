"""Server-path overhead: CPU per 100 ms chunk spent outside Vosk, next to Vosk's own.

The server runs in a subprocess exactly as ``edge serve`` builds it, except that its
model's recognisers are stand-ins that cost almost nothing. Two stand-ins, each in its
own run:

* ``replay``: returns, chunk by chunk, what the real recogniser returned for the same
  chunk of the same audio (recorded in this process first), so the server sends the
  messages a real session sends: the representative figure.
* ``flood``: returns a partial with new text on every call, so every chunk also
  produces an outgoing message: the worst case.

A load client in another process streams N sessions at real-time pace. Over a steady
window, the server process's CPU time (/proc/PID/stat) divided by the chunks the
stand-in was given is the server path's cost per chunk: sockets, WebSocket framing,
the session's tasks, audio checks, the worker-thread hop, JSON and sending.

A third run measures the floor of the stack: a trio + trio-websocket server that
accepts the same sessions through edge's own request-head reader and only reads the
chunks (no session, no recogniser, no thread hop). What edge adds per chunk is the
server path minus this floor.

In the same run, Vosk's CPU per 100 ms chunk is measured in this process (one thread,
the same stream length): a fresh recogniser over the whole stream (including its lazy
graph expansion), the same in the steady state (its last loop), and a warm recogniser
over the whole stream (one that has decoded the stream once and been reset, as the
server's recogniser pool hands them out). The share is server path / Vosk; the target
is at most 5%.

    .venv/bin/python bench/overhead.py            # about 2 minutes
    .venv/bin/python bench/overhead.py --quick    # under 1 minute
    .venv/bin/python bench/overhead.py --profile  # also a py-spy profile of the server
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import fmt

TARGET_SHARE = 0.05


# --- the stand-in server (a subprocess) ----------------------------------------------------

def record_script(chunks: list[bytes]) -> list[list[dict[str, Any]]]:
    """What edge's Vosk recogniser returns for each chunk (one warm-up pass first, so
    the script is the pooled recogniser's)."""
    from edge.asr.recognizer import RecognizerPool
    from edge.asr.vosk import load_model

    pool = RecognizerPool(load_model(common.model_path()).recognizer, size=1)
    for _ in range(2):
        recognizer = pool(16000, None)
        script = [[dataclasses.asdict(u) for u in recognizer.accept(c)] for c in chunks]
        recognizer.flush()
        recognizer.close()
    return script


def serve_stub(config_path: str, script_path: str) -> int:
    """``edge serve`` with a stand-in recogniser instead of Vosk.

    The daemon is composed by ``edge.app.run`` as ``edge serve`` composes it (journal,
    watchdogs, everything the configuration enables); only the model is supplied
    (``app.Parts``), one whose recognisers are stand-ins.
    """
    import trio

    from edge import app
    from edge.asr.vosk import LoadedModel
    from edge.cli import setup_logging
    from edge.core.config import load_config
    from edge.protocols.events import Utterance, Word

    script: list[list[Utterance]] | None = None
    if script_path != "flood":
        script = [[Utterance(**{**u, "words": tuple(Word(**w) for w in u["words"])})
                   for u in step] for step in json.loads(Path(script_path).read_text())]

    class StandIn:
        """Reusable like VoskRecognizer, so that the server's recogniser pool is on the
        measured path."""

        def __init__(self, rate: int) -> None:
            self._rate = self.sample_rate = rate
            self._samples = 0
            self._calls = 0
            self.audio_seconds = 0.0

        def reset(self) -> None:
            self.audio_seconds += self._samples / self._rate
            self._samples = self._calls = 0

        def close(self) -> None:
            pass

        def accept(self, pcm: bytes) -> list[Utterance]:
            self._samples += len(pcm) // 2
            self._calls += 1
            if script is not None:
                return script[(self._calls - 1) % len(script)]
            return [Utterance(is_final=False, text=f"stand-in {self._calls}", start_ms=0,
                              end_ms=1000 * self._samples // self._rate)]

        def flush(self) -> Utterance | None:
            return Utterance(is_final=True, text="stand-in", start_ms=0,
                             end_ms=1000 * self._samples // self._rate)

    @dataclasses.dataclass(frozen=True)
    class StandInModel(LoadedModel):
        def recognizer(self, sample_rate: int, phrases: Any = None) -> Any:
            return StandIn(sample_rate)

    stand_in = StandInModel(model=None, path=Path("stand-in"), name="stand-in",
                            sample_rate=16000)
    config = load_config(config_path, environ={"EDGE_JWT_SECRET": common.SECRET})
    setup_logging(config.log.level)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(functools.partial(
                app.run, config, parts=app.Parts(model=stand_in)))
            if server.model_name != stand_in.name:
                raise SystemExit("overhead: the stand-in model was not used")

    trio.run(run)
    return 0


def serve_floor(config_path: str) -> int:
    """The stack's floor: trio and trio-websocket reading 100 ms chunks, nothing else.

    Answers ``/healthz`` (so that EdgeServer sees it ready), accepts every WebSocket,
    sends ``session_init``, reads messages until ``end`` and sends ``session_end``.
    """
    import tomllib

    import trio
    from trio_websocket import ConnectionClosed

    from edge.net import http, ws

    port = tomllib.loads(Path(config_path).read_text())["server"]["port"]
    live = 0

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal live
        buffer = b""
        while not (n := http.head_complete(buffer)):
            buffer += await stream.receive_some(65536)
        head = http.parse_head(buffer[:n])
        if head.target.startswith("/healthz"):
            await stream.send_all(http.response(200, {"sessions": live}))
            await stream.aclose()
            return
        async with trio.open_nursery() as nursery:
            request = await ws.wrap_server_request(nursery, stream, head, buffer[n:],
                                                   max_frame_bytes=1 << 20,
                                                   message_queue_size=4)
            if request is None:  # refused by wsproto: the refusal was sent
                nursery.cancel_scope.cancel()
                return
            socket = await request.accept()
            live += 1
            try:
                await socket.send_message('{"type":"session_init"}')
                while True:
                    message = await socket.get_message()
                    if isinstance(message, str) and '"end"' in message:
                        await socket.send_message('{"type":"session_end","reason":"end"}')
                        await socket.aclose()
                        break
            except ConnectionClosed:
                pass
            finally:
                live -= 1

    trio.run(trio.serve_tcp, handle, port)
    return 0


# --- measuring -----------------------------------------------------------------------------

def vosk_per_chunk(model: Any, speech: common.Speech, pcm: bytes, grammar: bool
                   ) -> dict[str, Any]:
    chunks = speech.chunks(pcm)
    common.bare_decode(model, speech.chunks()[:20], 1, grammar=grammar)  # warm-up
    r = common.bare_decode(model, chunks, 1, grammar=grammar, loop_bytes=len(speech.pcm))
    loops = r["loop_cpu_s"][0]
    loop_chunks = len(speech.pcm) / (2 * speech.rate) / (common.CHUNK_MS / 1000)
    warm = common.bare_decode(model, chunks, 1, grammar=grammar, warm=True)
    return {"grammar": grammar, "chunks": len(chunks),
            "cpu_s_per_chunk": r["cpu_s"][0] / len(chunks),
            "warm_cpu_s_per_chunk": warm["cpu_s"][0] / len(chunks),
            "steady_cpu_s_per_chunk": loops[-1] / loop_chunks if loops else None,
            "first_loop_cpu_s_per_chunk": loops[0] / loop_chunks if loops else None,
            "loop_cpu_s": loops}


def server_per_chunk(args: argparse.Namespace, seconds: float, script: str,
                     profile: bool = False) -> dict[str, Any]:
    """``script``: a recorded script's path, ``flood``, or ``floor`` (the stack alone)."""
    command = ([common.PYTHON, str(Path(__file__).resolve()), "--serve-floor", "{config}"]
               if script == "floor" else
               [common.PYTHON, str(Path(__file__).resolve()), "--serve-stub", "{config}",
                script])
    with common.EdgeServer("overhead-server", command=command) as server:
        common.wait_quiet(max_wait=args.quiet_wait)
        start_at = time.monotonic() + 3.0
        result: dict[str, Any] = {}

        def load() -> None:
            result.update(common.run_clients(
                server.url, [common.ClientSpec(args.streams)], seconds=seconds,
                ramp=args.ramp, start_at=start_at, server_pid=server.pid))

        loader = threading.Thread(target=load)
        loader.start()
        # The window: after every stream has started, until just before the first ends.
        t_begin = start_at + args.ramp + 1.0
        t_end = start_at + seconds - 1.0
        time.sleep(max(0.0, t_begin - time.monotonic()))
        c0, w0 = server.cpu_seconds(), time.monotonic()
        m0 = common.machine_busy_seconds()
        spy = None
        if profile:
            spy = start_py_spy(server.pid, t_end - time.monotonic())
        time.sleep(max(0.0, t_end - time.monotonic()))
        c1, w1 = server.cpu_seconds(), time.monotonic()
        m1 = common.machine_busy_seconds()
        loader.join()
        if spy is not None:
            spy.wait(30)
        # At real-time pace with no backlog the server handles a chunk right after it is
        # sent (the partial latency below shows it does), so the chunks sent in the
        # window are the chunks the server handled in it.
        streams = common.all_streams(result)
        chunks = sum(1 for st in streams for t in st["sends"] if w0 <= t < w1)
        cpu = c1 - c0
        a = common.analyze_streams(streams, [])
        sent = sum(1 for st in streams for m in st["messages"]
                   if w0 <= m[0] < w1 and m[1] == "transcription")
        return {"stand_in": script if script in ("flood", "floor") else "replay",
                "streams": args.streams, "window_s": w1 - w0, "chunks": chunks,
                "messages_per_chunk": sent / chunks if chunks else None,
                "chunks_per_s": chunks / (w1 - w0), "server_cpu_s": cpu,
                "cpu_s_per_chunk": cpu / chunks if chunks else None,
                "server_cores": cpu / (w1 - w0),
                "others_cores": max(0.0, (m1 - m0) - cpu) / (w1 - w0),
                "client_cpu_cores": {k: v for k, v in result["cpu"].items()
                                     if k.startswith("client")},
                "partial_latency_s": a["partial_latency_s"], "completed": a["completed"],
                "profile": str(PROFILE.relative_to(common.ROOT)) if profile else None}


PROFILE = common.RESULTS / "overhead-profile.txt"
RAW_PROFILE = common.RESULTS / "overhead-profile.collapsed"


def start_py_spy(pid: int, duration: float) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(common.PYTHON).parent / "py-spy")
    if not Path(spy).exists():
        print("  (py-spy is not installed: pip install py-spy to profile)")
        return None
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--duration", str(max(1, int(duration))),
         "--rate", "250", "--threads", "--format", "raw", "--output",
         str(RAW_PROFILE), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_profile(top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    if not RAW_PROFILE.is_file():
        return ""
    self_count: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in RAW_PROFILE.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = [f for f in stack.split(";") if f]
        count = int(n)
        total += count
        self_count[_short(frames[-1])] += count
        for f in {_short(f) for f in frames}:
            incl[f] += count
    lines = [f"{total} busy samples", "", "self %  function"]
    lines += [f"{100 * c / total:6.1f}  {f}" for f, c in self_count.most_common(top)]
    lines += ["", "incl %  function"]
    lines += [f"{100 * c / total:6.1f}  {f}" for f, c in incl.most_common(top)]
    text = "\n".join(lines) + "\n"
    PROFILE.write_text(text)
    return text


def _short(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)``."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if parts else path
    return f"{name} ({short})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short run (CI): under 1 minute")
    p.add_argument("--streams", type=int, default=10, help="concurrent sessions (default 10)")
    p.add_argument("--seconds", type=float, help="audio per stream (whole loops)")
    p.add_argument("--profile", action="store_true",
                   help="record the stand-in server with py-spy during a second run")
    p.add_argument("--serve-stub", nargs=2, metavar=("CONFIG", "SCRIPT"),
                   help=argparse.SUPPRESS)
    p.add_argument("--serve-floor", metavar="CONFIG", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_stub:
        return serve_stub(*args.serve_stub)
    if args.serve_floor:
        return serve_floor(args.serve_floor)
    common.exit_on_sigterm()
    quick = args.quick
    args.seconds = args.seconds or (14.0 if quick else 56.0)
    args.ramp = 2.0 if quick else 5.0
    args.quiet_wait = 10.0 if quick else 60.0

    info = common.machine_info()
    speech = common.load_speech()
    pcm, _ = speech.looped(args.seconds)
    seconds = len(pcm) / (2 * speech.rate)
    print(f"{info['cpu_model']}, {info['cores']} cores; {args.streams} streams x "
          f"{seconds:.1f} s at real-time pace", flush=True)

    common.wait_quiet(max_wait=args.quiet_wait)
    model = common.load_vosk_model()
    vosk = vosk_per_chunk(model, speech, pcm, grammar=False)
    vosk_grammar = vosk_per_chunk(model, speech, pcm, grammar=True)
    del model
    script_path = common.RESULTS / "overhead-script.json"
    script_path.write_text(json.dumps(record_script(speech.chunks(pcm)), ensure_ascii=False))
    server = server_per_chunk(args, seconds, str(script_path))
    flood = server_per_chunk(args, seconds, "flood")
    floor = server_per_chunk(args, seconds, "floor")
    profile_text = ""
    if args.profile:
        server["profiled_run"] = server_per_chunk(args, seconds, str(script_path),
                                                  profile=True)
        profile_text = summarize_profile()

    s = server["cpu_s_per_chunk"]
    f = flood["cpu_s_per_chunk"]
    rows = [[f"server path, replayed recognition ({fmt(server['messages_per_chunk'], '.2f')} "
             "messages per chunk)", fmt(None if s is None else 1000 * s, ".3f"), "", ""],
            [f"server path, worst case ({fmt(flood['messages_per_chunk'], '.2f')} messages "
             "per chunk)", fmt(None if f is None else 1000 * f, ".3f"), "", ""],
            ["floor: trio + trio-websocket reading the chunks, nothing else",
             fmt(None if floor["cpu_s_per_chunk"] is None
                 else 1000 * floor["cpu_s_per_chunk"], ".3f"), "", ""]]
    shares: dict[str, float | None] = {}
    floor_s = floor["cpu_s_per_chunk"]
    above = s - floor_s if s is not None and floor_s is not None else None
    for label, v, key in (
            ("Vosk, free dictation, fresh recogniser", vosk["cpu_s_per_chunk"], "whole"),
            ("Vosk, free dictation, fresh, last loop", vosk["steady_cpu_s_per_chunk"],
             "steady"),
            ("Vosk, free dictation, warm recogniser", vosk["warm_cpu_s_per_chunk"], "warm"),
            ("Vosk, grammar, whole stream", vosk_grammar["cpu_s_per_chunk"], "grammar")):
        share = s / v if s is not None and v else None
        worst = f / v if f is not None and v else None
        shares[key], shares[f"{key}_worst_case"] = share, worst
        shares[f"{key}_floor"] = floor_s / v if floor_s is not None and v else None
        shares[f"{key}_above_floor"] = above / v if above is not None and v else None
        target = "" if key in ("grammar", "steady") else (
            "meets" if share is not None and share <= TARGET_SHARE else "MISSES")
        rows.append([label, fmt(None if v is None else 1000 * v, ".3f"),
                     f"{fmt(None if share is None else 100 * share, '.1f')}% "
                     f"({fmt(None if worst is None else 100 * worst, '.1f')}%)", target])
    print()
    common.print_table(["per 100 ms chunk", "CPU ms", "server path share (worst case)",
                        "5% target"], rows,
                       title=f"CPU per chunk ({server['chunks']} chunks over "
                             f"{server['window_s']:.0f} s, {server['chunks_per_s']:.0f} "
                             f"chunks/s; server {server['server_cores']:.2f} cores, other "
                             f"work {server['others_cores']:.2f} cores)")
    warm_v = vosk["warm_cpu_s_per_chunk"]
    if s is not None and floor_s is not None and warm_v:
        print(f"\nof the server path's {1000 * s:.3f} ms per chunk, the stack's floor (trio + "
              f"trio-websocket reading the chunks) is {1000 * floor_s:.3f} ms "
              f"({100 * floor_s / warm_v:.1f}% of warm Vosk) and edge adds "
              f"{1000 * (s - floor_s):.3f} ms ({100 * (s - floor_s) / warm_v:.1f}%)")
    if profile_text:
        print("\nwhere the server path's CPU goes (py-spy, stand-in recogniser):")
        print("\n".join(profile_text.splitlines()[:30]))
    common.write_json("overhead", {
        "machine": info, "quick": quick, "stream_seconds": seconds, "server": server,
        "server_worst_case": flood, "floor": floor,
        "vosk": vosk, "vosk_grammar": vosk_grammar, "share": shares,
        "target_share": TARGET_SHARE,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
