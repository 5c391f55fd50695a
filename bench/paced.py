"""A paced Live API client for the warm-up and endpointing benchmarks: an asyncio
``websockets`` client (an independent library from the server's trio-websocket) that
sends 100 ms chunks at real-time pace, chunk k at t0 + (k + 1) x 100 ms, and records
the arrival of every message on ``time.monotonic()``."""

from __future__ import annotations

import asyncio
import json
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets

CHUNK_MS = 100


@dataclass
class Trace:
    """One session: when it started sending, and every message with its arrival."""

    t0: float = 0.0
    messages: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def finals(self) -> list[tuple[float, dict[str, Any]]]:
        return [(t, m) for t, m in self.messages
                if m.get("type") == "transcription" and m.get("is_final")]

    def partials(self) -> list[tuple[float, dict[str, Any]]]:
        return [(t, m) for t, m in self.messages
                if m.get("type") == "transcription" and not m.get("is_final")]

    def partial_latencies(self) -> list[float]:
        """Arrival of each partial minus the send time of the chunk holding its end."""
        out = []
        for t, m in self.partials():
            k = max(0, -(-int(m["end_ms"]) // CHUNK_MS) - 1)
            out.append(t - (self.t0 + (k + 1) * CHUNK_MS / 1000))
        return out


def read_wav(path: Path) -> tuple[bytes, int]:
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise SystemExit(f"{path}: expected 16-bit mono")
        return w.readframes(w.getnframes()), w.getframerate()


async def paced_session(url: str, token: str, pcm: bytes, rate: int,
                        config: dict[str, Any] | None = None,
                        start_at: float | None = None) -> Trace:
    """Stream ``pcm`` at real-time pace, send ``end``, return the trace at session_end."""
    trace = Trace()
    size = 2 * rate * CHUNK_MS // 1000
    chunks = [pcm[i:i + size] for i in range(0, len(pcm), size)]
    async with websockets.connect(url, additional_headers={
            "Authorization": f"Bearer {token}"}, max_size=None, ping_interval=None) as ws:
        first = json.loads(await ws.recv())
        if first.get("type") != "session_init":
            raise RuntimeError(f"unexpected first message {first}")
        if config:
            await ws.send(json.dumps({"type": "config", **config}))

        async def receive() -> None:
            async for raw in ws:
                message = json.loads(raw)
                trace.messages.append((time.monotonic(), message))
                if message.get("type") == "session_end":
                    return

        receiver = asyncio.create_task(receive())
        if start_at is not None:
            await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        trace.t0 = time.monotonic()
        for k, chunk in enumerate(chunks):
            await asyncio.sleep(max(0.0, trace.t0 + (k + 1) * CHUNK_MS / 1000
                                    - time.monotonic()))
            await ws.send(chunk)
        await ws.send(json.dumps({"type": "end"}))
        await asyncio.wait_for(receiver, 120)
    return trace
