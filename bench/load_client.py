"""Load client: many Live API streams from one process, recording when things happen.

Run by the benchmarks in a process of its own, so that sending and timing never share
an event loop (or a GIL) with the server. Each stream connects, waits for the common
start time, sends the speech fixture (looped to ``--seconds``) in 100 ms chunks at
real-time pace (chunk k is sent when its audio would have been recorded, at
``t0 + (k + 1) * 100 ms``), sends ``end`` and reads until the server closes.

Two independent WebSocket libraries can do this: asyncio ``websockets`` (default) and
``trio-websocket``, to cross-check latency figures. ``--protocol vosk-server`` speaks
the protocol of alphacep's vosk-server WebSocket server instead (``{"config": ...}``,
audio, ``{"eof" : 1}``; a reply per message), for bench/compare.py.
The JSON written to ``--out`` has, per stream, the send time of every chunk and the
arrival time and fields of every message, all as ``time.monotonic()`` values (the
same clock in every process).

    .venv/bin/python bench/load_client.py --url ws://127.0.0.1:8000/ws/transcribe \
        --token "$TOKEN" --streams 4 --seconds 30 --out /tmp/run.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CHUNK_MS, PHRASES_JSON, load_audio

CONNECT_TIMEOUT = 30.0
CLOSE_TIMEOUT = 120.0  # after `end`: the server may still be decoding a backlog


class Stream:
    """What one connection recorded."""

    def __init__(self, index: int, chunk_ms: int, fast: bool) -> None:
        self.index = index
        self.chunk_ms = chunk_ms
        self.fast = fast
        self.t0 = 0.0
        self.connected_at: float | None = None
        self.sends: list[float] = []
        self.messages: list[list[Any]] = []
        self.end_sent: float | None = None
        self.closed_at: float | None = None
        self.close_code: int | None = None
        self.error: str | None = None
        self.done = False  # session_end seen

    def on_message(self, text: str | bytes) -> None:
        t = time.monotonic()
        data = json.loads(text)
        kind = data.get("type")
        if kind is None:  # vosk-server: {"partial": ...} or {"text": ..., "result": ...}
            kind = "transcription"
            data = {"is_final": "text" in data}
        self.messages.append([t, kind, data.get("is_final"), data.get("start_ms"),
                              data.get("end_ms"), data.get("code"), data.get("lag_ms")])
        if kind == "session_end":
            self.done = True

    def begin(self, start: float) -> float:
        """Set the stream's time origin; returns how long to wait before sending."""
        self.t0 = max(start, time.monotonic()) if self.fast else start
        return max(0.0, self.t0 - time.monotonic())

    def wait_before(self, k: int) -> float:
        """Seconds to wait before sending chunk ``k``: it is due when its audio would
        have been recorded, at ``t0 + (k + 1) * chunk``; nothing with ``--fast``."""
        if self.fast:
            return 0.0
        return max(0.0, self.t0 + (k + 1) * self.chunk_ms / 1000 - time.monotonic())

    def record(self) -> dict[str, Any]:
        return {"index": self.index, "chunk_ms": self.chunk_ms, "fast": self.fast,
                "t0": self.t0, "connected_at": self.connected_at, "sends": self.sends,
                "messages": self.messages, "end_sent": self.end_sent,
                "closed_at": self.closed_at, "close_code": self.close_code,
                "error": self.error}

    def summary(self) -> dict[str, Any]:
        """A short record for reconnect (soak) runs."""
        kinds: dict[str, int] = {}
        for m in self.messages:
            kinds[m[1]] = kinds.get(m[1], 0) + 1
        return {"connected_at": self.connected_at, "closed_at": self.closed_at,
                "close_code": self.close_code, "error": self.error, "done": self.done,
                "messages": kinds}


def _slot(args: argparse.Namespace, i: int) -> float:
    """Stream i's start offset: starts spread evenly over ``--ramp`` seconds, and send
    slots spread evenly over one chunk period (streams do not send in lockstep)."""
    spread = (i + args.phase) / args.streams
    return spread * args.ramp + spread * args.chunk_ms / 1000


def _config_message(args: argparse.Namespace) -> str | None:
    grammar = json.loads(PHRASES_JSON.read_text())["grammar"] if args.grammar else None
    if args.protocol == "vosk-server":
        config: dict[str, Any] = {"sample_rate": 16000, "words": True}
        if grammar:
            config["phrase_list"] = grammar
        return json.dumps({"config": config}, ensure_ascii=False)
    if not grammar:
        return None
    return json.dumps({"type": "config", "phrases": grammar}, ensure_ascii=False)


def _end_message(args: argparse.Namespace) -> str:
    # vosk-server compares the text with exactly this string.
    return '{"eof" : 1}' if args.protocol == "vosk-server" else json.dumps({"type": "end"})


# --- asyncio websockets ------------------------------------------------------------------

async def _ws_stream(args: argparse.Namespace, st: Stream, chunks: list[bytes],
                     start: float) -> None:
    import asyncio

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    headers = {"Authorization": f"Bearer {args.token}"}
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            ws = await connect(args.url, additional_headers=headers, compression=None,
                               ping_interval=None, max_size=None, open_timeout=None)
    except Exception as exc:
        st.error = f"connect: {exc!r}"
        return
    st.connected_at = time.monotonic()

    async def receive() -> None:
        try:
            async for text in ws:
                st.on_message(text)
        except ConnectionClosed:
            pass

    reader = asyncio.create_task(receive())
    try:
        config = _config_message(args)
        if config:
            await ws.send(config)
        await asyncio.sleep(st.begin(start))
        for k, chunk in enumerate(chunks):
            await asyncio.sleep(st.wait_before(k))
            st.sends.append(time.monotonic())
            await ws.send(chunk)
        st.end_sent = time.monotonic()
        await ws.send(_end_message(args))
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await reader
    except Exception as exc:
        st.error = f"{type(exc).__name__}: {exc}"
    finally:
        reader.cancel()
        st.closed_at = time.monotonic()
        st.close_code = ws.close_code
        await ws.close()


async def _ws_main(args: argparse.Namespace, chunks: list[bytes]) -> list[dict[str, Any]]:
    import asyncio

    if args.reconnect:
        return await _ws_reconnect(args, chunks)
    streams = [Stream(i, args.chunk_ms, args.fast) for i in range(args.streams)]
    await asyncio.gather(*(_ws_stream(args, st, chunks, args.start_at + _slot(args, i))
                           for i, st in enumerate(streams)))
    return [st.record() for st in streams]


async def _ws_reconnect(args: argparse.Namespace, chunks: list[bytes]) -> list[dict[str, Any]]:
    import asyncio

    until = args.start_at + args.seconds
    sessions: list[dict[str, Any]] = []

    async def worker(i: int) -> None:
        start = args.start_at + _slot(args, i)
        while time.monotonic() < until:
            st = Stream(i, args.chunk_ms, args.fast)
            await _ws_stream(args, st, chunks, max(start, time.monotonic()))
            sessions.append(st.summary())
            if st.error and st.connected_at is None:
                await asyncio.sleep(1.0)
            start = 0.0

    await asyncio.gather(*(worker(i) for i in range(args.streams)))
    return sessions


# --- trio-websocket ----------------------------------------------------------------------

async def _trio_stream(args: argparse.Namespace, st: Stream, chunks: list[bytes],
                       start: float) -> None:
    import trio
    from trio_websocket import ConnectionClosed, open_websocket_url

    headers = [(b"authorization", f"Bearer {args.token}".encode())]
    try:
        async with open_websocket_url(args.url, extra_headers=headers,
                                      connect_timeout=CONNECT_TIMEOUT,
                                      max_message_size=2 ** 24) as ws:
            st.connected_at = time.monotonic()

            closed = trio.Event()

            async def receive() -> None:
                try:
                    while True:
                        st.on_message(await ws.get_message())
                except ConnectionClosed as exc:
                    st.close_code = exc.reason.code if exc.reason else None
                finally:
                    closed.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                config = _config_message(args)
                if config:
                    await ws.send_message(config)
                await trio.sleep(st.begin(start))
                for k, chunk in enumerate(chunks):
                    await trio.sleep(st.wait_before(k))
                    st.sends.append(time.monotonic())
                    await ws.send_message(chunk)
                st.end_sent = time.monotonic()
                await ws.send_message(_end_message(args))
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await closed.wait()
                nursery.cancel_scope.cancel()
    except Exception as exc:
        if st.error is None and not (st.done and st.close_code == 1000):
            st.error = f"{type(exc).__name__}: {exc}"
    finally:
        st.closed_at = time.monotonic()


async def _trio_main(args: argparse.Namespace, chunks: list[bytes]) -> list[dict[str, Any]]:
    import trio

    if args.reconnect:
        until = args.start_at + args.seconds
        sessions: list[dict[str, Any]] = []

        async def worker(i: int) -> None:
            start = args.start_at + _slot(args, i)
            while time.monotonic() < until:
                st = Stream(i, args.chunk_ms, args.fast)
                await _trio_stream(args, st, chunks, max(start, time.monotonic()))
                sessions.append(st.summary())
                if st.error and st.connected_at is None:
                    await trio.sleep(1.0)
                start = 0.0

        async with trio.open_nursery() as nursery:
            for i in range(args.streams):
                nursery.start_soon(worker, i)
        return sessions
    streams = [Stream(i, args.chunk_ms, args.fast) for i in range(args.streams)]
    async with trio.open_nursery() as nursery:
        for i, st in enumerate(streams):
            nursery.start_soon(_trio_stream, args, st, chunks, args.start_at + _slot(args, i))
    return [st.record() for st in streams]


# --- main --------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--seconds", type=float, default=30.0,
                   help="audio per stream (whole loops of the fixture); with --reconnect, "
                        "how long to keep reconnecting")
    p.add_argument("--lib", choices=["websockets", "trio"], default="websockets")
    p.add_argument("--chunk-ms", type=int, default=CHUNK_MS)
    p.add_argument("--start-at", type=float, default=None,
                   help="time.monotonic() at which to start sending (default: in 2 s)")
    p.add_argument("--phase", type=float, default=0.0,
                   help="offset of the send slots, as a fraction of one stream's slot")
    p.add_argument("--ramp", type=float, default=0.0,
                   help="spread the streams' starts evenly over this many seconds")
    p.add_argument("--grammar", action="store_true", help="send the fixture's phrase list")
    p.add_argument("--fast", action="store_true", help="send as fast as the server reads")
    p.add_argument("--reconnect", action="store_true",
                   help="each stream sends the fixture once, ends, reconnects, until "
                        "--seconds have passed; records a summary per session")
    p.add_argument("--protocol", choices=["live", "vosk-server"], default="live")
    p.add_argument("--audio", default="fixture",
                   help="what to send: the fixture, or a generated room (common.ROOMS)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.start_at is None:
        args.start_at = time.monotonic() + 2.0
    speech = load_audio(args.audio)
    pcm = speech.pcm if args.reconnect else speech.looped(args.seconds)[0]
    chunks = speech.chunks(pcm, args.chunk_ms)
    cpu0 = time.process_time()
    if args.lib == "trio":
        import trio

        streams = trio.run(_trio_main, args, chunks)
    else:
        import asyncio

        streams = asyncio.run(_ws_main(args, chunks))
    args.out.write_text(json.dumps({
        "lib": args.lib, "streams": streams, "cpu_s": time.process_time() - cpu0,
        "reconnect": args.reconnect,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
