"""Home Assistant's Wyoming speech-to-text flow, run with the ``wyoming`` package's own
asyncio client (``AsyncTcpClient``), unmodified: the tests run under trio, so they run
this script in a subprocess against a real daemon.

``describe``: one connection, ``describe``, read until ``info`` (as Home Assistant's
``load_wyoming_info`` does, within its one second), parsed with ``Info.from_event``.
``transcribe``: for each WAV file, a fresh connection (as Home Assistant's
``async_process_audio_stream``): ``transcribe``, ``audio-start``, the file's chunks
(``wav_to_chunks``), ``audio-stop``, then every event up to ``transcript`` and, for a
streaming server, on to ``transcript-stop``. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import wave
from typing import Any

from wyoming.asr import Transcribe, Transcript, TranscriptStop
from wyoming.audio import AudioStart, AudioStop, wav_to_chunks
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info

_READ_TIMEOUT = 60.0


def _event(event: Event) -> dict[str, Any]:
    return {"type": event.type, "data": event.data,
            "payload_length": len(event.payload or b"")}


async def describe(host: str, port: int) -> dict[str, Any]:
    started = time.monotonic()
    async with AsyncTcpClient(host, port) as client:
        await client.write_event(Describe().event())
        while True:
            event = await asyncio.wait_for(client.read_event(), 1.0)
            if event is None:
                return {"error": "connection closed before info"}
            if Info.is_type(event.type):
                info = Info.from_event(event)  # raises on a missing required field
                break
    elapsed = time.monotonic() - started
    asr = info.asr[0]
    return {"elapsed": elapsed, "name": asr.name,
            "supports_transcript_streaming": asr.supports_transcript_streaming,
            "models": [{"name": m.name, "languages": m.languages, "installed": m.installed}
                       for m in asr.models]}


async def transcribe(host: str, port: int, path: str, language: str | None,
                     samples_per_chunk: int) -> dict[str, Any]:
    events: list[dict[str, Any]] = []
    text: str | None = None
    async with AsyncTcpClient(host, port) as client:
        await client.write_event(Transcribe(language=language).event())
        with wave.open(path, "rb") as wav:
            await client.write_event(AudioStart(rate=wav.getframerate(),
                                                width=wav.getsampwidth(),
                                                channels=wav.getnchannels()).event())
            for chunk in wav_to_chunks(wav, samples_per_chunk):
                await client.write_event(chunk.event())
        await client.write_event(AudioStop().event())
        while True:
            event = await asyncio.wait_for(client.read_event(), _READ_TIMEOUT)
            if event is None:
                events.append({"type": "<closed>"})
                break
            events.append(_event(event))
            if Error.is_type(event.type):
                break
            if Transcript.is_type(event.type):
                text = Transcript.from_event(event).text
                if not streaming_after(events):
                    break
            if TranscriptStop.is_type(event.type):
                break
        # Home Assistant stops here; read on to see whether the server closes.
        tail = await asyncio.wait_for(client.read_event(), _READ_TIMEOUT)
        events.append({"type": "<closed>"} if tail is None else _event(tail))
    return {"text": text, "events": events}


def streaming_after(events: list[dict[str, Any]]) -> bool:
    """A ``transcript-start`` came: a ``transcript-stop`` follows the transcript."""
    return any(e["type"] == "transcript-start" for e in events)


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["describe", "transcribe"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--wav", action="append", default=[])
    parser.add_argument("--language")
    parser.add_argument("--samples-per-chunk", type=int, default=1024)
    args = parser.parse_args(argv)
    result: Any
    if args.mode == "describe":
        result = await describe(args.host, args.port)
    else:
        result = [await transcribe(args.host, args.port, path, args.language,
                                   args.samples_per_chunk) for path in args.wav]
    json.dump(result, sys.stdout, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
