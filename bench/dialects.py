"""Per-chunk server cost of each wire protocol, next to the Live API's, in one run.

One daemon (``edge serve`` as ``edge.app.run`` builds it, in a subprocess) serves every
dialect at once: the Live API, AssemblyAI v3 and Scriptix on the main port, vosk-server
and Wyoming on ports of their own. Its recognisers are ``bench/overhead.py``'s stand-in
replaying, chunk by chunk, what the real recogniser returned for the same audio, so
the server sends what a real session sends while Vosk's own cost (the same for every
dialect) is left out. For each dialect in turn, ``--streams`` clients stream the speech
fixture in 100 ms chunks at real-time pace, speaking that dialect as its own clients
do (vosk-server's lockstep: one reply awaited per chunk); over the steady window the
server process's CPU time divided by the chunks sent is that dialect's cost per chunk.

    .venv/bin/python bench/dialects.py            # about 2 minutes
    .venv/bin/python bench/dialects.py --quick    # under a minute
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common
import overhead

DIALECTS = ("live", "assemblyai", "scriptix", "vosk_server", "wyoming")
CHUNK = 2 * 16000 // 10  # 100 ms of 16 kHz s16le


def token() -> str:
    from edge.core.auth import mint

    return mint(algorithm="HS256", key=common.SECRET, sub="bench",
                scope="transcription:read transcription:write", user_type="doctor",
                ttl=3600, now=time.time())


# --- one stream per dialect: connect, stream ``chunks`` at real-time pace, end ------------

async def paced(chunks: list[bytes], send: Callable[[bytes], Awaitable[None]],
                counter: list[int]) -> None:
    import trio

    start = trio.current_time()
    for i, chunk in enumerate(chunks):
        await trio.sleep_until(start + i * 0.1)
        await send(chunk)
        counter[0] += 1


async def drain(ws: Any) -> None:
    from trio_websocket import ConnectionClosed

    try:
        while True:
            await ws.get_message()
    except ConnectionClosed:
        return


async def websocket_stream(url: str, headers: list[tuple[bytes, bytes]],
                           first: list[str], last: str, chunks: list[bytes],
                           counter: list[int], *, lockstep: bool = False) -> None:
    import trio
    from trio_websocket import open_websocket_url

    async with open_websocket_url(url, extra_headers=headers) as ws:
        for message in first:
            await ws.send_message(message)
        if lockstep:  # vosk-server's clients: one reply per frame before the next
            async def send(chunk: bytes) -> None:
                await ws.send_message(chunk)
                await ws.get_message()

            await paced(chunks, send, counter)
            await ws.send_message(last)
            await drain(ws)
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, ws)
            await paced(chunks, ws.send_message, counter)
            await ws.send_message(last)


async def wyoming_stream(port: int, chunks: list[bytes], counter: list[int]) -> None:
    import trio

    from edge.protocols.wyoming_wire import encode_event

    audio = {"rate": 16000, "width": 2, "channels": 1}
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream, trio.open_nursery() as nursery:
        async def drain_tcp() -> None:
            while await stream.receive_some(65536):
                pass

        nursery.start_soon(drain_tcp)
        await stream.send_all(encode_event("transcribe", {"language": "ko"})
                              + encode_event("audio-start", audio))

        async def send(chunk: bytes) -> None:
            await stream.send_all(encode_event("audio-chunk", audio, chunk))

        await paced(chunks, send, counter)
        await stream.send_all(encode_event("audio-stop"))


def stream_for(dialect: str, server: common.EdgeServer, peer_ports: dict[str, int],
               chunks: list[bytes], counter: list[int]) -> Awaitable[None]:
    jwt = token()
    base = f"ws://127.0.0.1:{server.port}"
    auth = [(b"authorization", f"Bearer {jwt}".encode())]
    if dialect == "live":
        return websocket_stream(f"{base}/ws/transcribe", auth, [], '{"type":"end"}',
                                chunks, counter)
    if dialect == "assemblyai":
        return websocket_stream(f"{base}/v3/ws?sample_rate=16000&encoding=pcm_s16le",
                                [(b"authorization", jwt.encode())], [],
                                '{"type":"Terminate"}', chunks, counter)
    if dialect == "scriptix":
        return websocket_stream(f"{base}/v2/realtime?language=ko",
                                [(b"x-zoom-s2t-key", jwt.encode())],
                                ['{"action": "start"}'], '{"action": "stop"}', chunks,
                                counter)
    if dialect == "vosk_server":
        return websocket_stream(f"ws://127.0.0.1:{peer_ports['vosk_server']}/", [],
                                ['{"config": {"sample_rate": 16000}}'], '{"eof" : 1}',
                                chunks, counter, lockstep=True)
    return wyoming_stream(peer_ports["wyoming"], chunks, counter)


def run_dialect(dialect: str, server: common.EdgeServer, peer_ports: dict[str, int],
                chunks: list[bytes], streams: int, ramp: float) -> dict[str, Any]:
    import trio

    counter = [0]
    seconds = len(chunks) / 10
    window: dict[str, float] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(streams):
                nursery.start_soon(_delayed, i * ramp / streams, stream_for(
                    dialect, server, peer_ports, chunks, counter))
            # The window: every stream started, none ended.
            await trio.sleep(ramp + 1.0)
            window["c0"], window["n0"] = server.cpu_seconds(), counter[0]
            window["t0"] = time.monotonic()
            await trio.sleep(max(1.0, seconds - ramp - 2.0))
            window["c1"], window["n1"] = server.cpu_seconds(), counter[0]
            window["t1"] = time.monotonic()

    trio.run(main)
    server.wait_idle()
    cpu = window["c1"] - window["c0"]
    sent = window["n1"] - window["n0"]
    return {"dialect": dialect, "streams": streams, "window_s": window["t1"] - window["t0"],
            "chunks": sent, "server_cpu_s": cpu,
            "cpu_ms_per_chunk": 1000 * cpu / sent if sent else None}


async def _delayed(delay: float, stream: Awaitable[None]) -> None:
    import trio

    await trio.sleep(delay)
    await stream


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short run: under a minute")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--seconds", type=float, help="audio per stream (whole loops)")
    p.add_argument("--repeat", type=int, default=2,
                   help="rounds over all dialects (interleaved: the machine drifts)")
    args = p.parse_args(argv)
    common.exit_on_sigterm()
    seconds = args.seconds or (9.0 if args.quick else 27.0)
    repeat = 1 if args.quick else args.repeat
    ramp = 1.0 if args.quick else 3.0
    speech = common.load_speech()
    pcm, _ = speech.looped(seconds)
    chunks = speech.chunks(pcm)
    script_chunks = speech.chunks()
    print("recording the real recogniser's results for the stand-in ...", flush=True)
    script = overhead.record_script(script_chunks)
    results: dict[str, Any] = {"machine": common.machine_info(), "streams": args.streams,
                               "seconds": seconds, "rounds": []}
    with tempfile.TemporaryDirectory(prefix="edge-dialects-") as tmp:
        script_path = Path(tmp) / "script.json"
        script_path.write_text(json.dumps(script))
        vosk_port, wyoming_port = common.free_port(), common.free_port()
        extra = (f"[vosk_server]\nenabled = true\nport = {vosk_port}\n"
                 f"[wyoming]\nenabled = true\nport = {wyoming_port}\n"
                 "[assemblyai]\nenabled = true\n[scriptix]\nenabled = true\n"
                 '[log]\nlevel = "warning"\n')
        command = [common.PYTHON, str(Path(overhead.__file__).resolve()), "--serve-stub",
                   "{config}", str(script_path)]
        peer_ports = {"vosk_server": vosk_port, "wyoming": wyoming_port}
        with common.EdgeServer("dialects-server", command=command,
                               config_extra=extra, log_level="warning") as server:
            for round_ in range(repeat):
                rows = []
                for dialect in DIALECTS:
                    common.wait_quiet(max_wait=10.0 if args.quick else 60.0)
                    row = run_dialect(dialect, server, peer_ports, chunks, args.streams,
                                      ramp)
                    rows.append(row)
                    print(f"round {round_ + 1} {dialect:12s} "
                          f"{row['cpu_ms_per_chunk']:.3f} ms CPU per chunk "
                          f"({row['chunks']} chunks)", flush=True)
                results["rounds"].append(rows)
    table = []
    for dialect in DIALECTS:
        values = [r["cpu_ms_per_chunk"] for rows in results["rounds"] for r in rows
                  if r["dialect"] == dialect and r["cpu_ms_per_chunk"] is not None]
        table.append((dialect, min(values), max(values)))
    live = next(lo for d, lo, _ in table if d == "live")
    print(f"\nserver CPU per 100 ms chunk, {args.streams} streams at real-time pace "
          f"(stand-in recogniser; min / max over {repeat} round(s))")
    print("| dialect | ms per chunk | vs Live API |")
    print("|---|---|---|")
    for dialect, lo, hi in table:
        print(f"| {dialect} | {lo:.3f} / {hi:.3f} | {lo / live:.2f}x |")
    results["table"] = [{"dialect": d, "min_ms": lo, "max_ms": hi} for d, lo, hi in table]
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    out = common.RESULTS / "dialects.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
