"""The transport's floor: CPU a bare trio-websocket server spends receiving paced audio.

A trio-websocket server (the library edge's main port is built on) that accepts every
connection and discards every message, in a subprocess, with ``streams`` asyncio
``websockets`` clients sending 100 ms binary chunks at real-time pace, staggered as
``bench/silence.py cost`` staggers its sessions (so each chunk wakes the server on its
own). What it costs per audio second is what any server on this stack pays before it
looks at the audio: the floor under edge's own figure for an empty room.

    .venv/bin/python bench/ws_floor.py [--streams 4 --seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PYTHON, cpu_seconds, free_port
from paced import CHUNK_MS


def serve(port: int) -> None:
    """(The subprocess.) Accept every WebSocket on ``port`` and discard its messages."""
    import trio
    from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed:
            pass

    trio.run(lambda: serve_websocket(handler, "127.0.0.1", port, ssl_context=None))


def floor(streams: int, seconds: int, chunk: bytes) -> float:
    """Server CPU-s per audio second for ``streams`` paced streams of ``seconds``,
    each sending ``chunk`` every 100 ms."""
    import websockets

    port = free_port()
    server = subprocess.Popen([PYTHON, __file__, "--serve", str(port)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                asyncio.run(_probe(port))
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)

        async def one(k: int, start: float) -> None:
            async with websockets.connect(f"ws://127.0.0.1:{port}/", max_size=None,
                                          ping_interval=None) as ws:
                t0 = start + CHUNK_MS / 1000 * k / streams
                for i in range(seconds * 1000 // CHUNK_MS):
                    await asyncio.sleep(max(0.0, t0 + (i + 1) * CHUNK_MS / 1000
                                            - time.monotonic()))
                    await ws.send(chunk)

        async def all_streams() -> None:
            start = time.monotonic() + 0.5
            await asyncio.gather(*(one(k, start) for k in range(streams)))

        before = cpu_seconds(server.pid)
        asyncio.run(all_streams())
        time.sleep(0.3)
        return (cpu_seconds(server.pid) - before) / (streams * seconds)
    finally:
        server.terminate()
        server.wait(10)


async def _probe(port: int) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()
    await writer.wait_closed()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    cpu = floor(args.streams, args.seconds, os.urandom(2 * 16000 * CHUNK_MS // 1000))
    print(f"bare trio-websocket, {args.streams} paced streams: {cpu:.4f} CPU-s per audio "
          f"second ({1000 * cpu * CHUNK_MS / 1000:.3f} ms per 100 ms chunk)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
