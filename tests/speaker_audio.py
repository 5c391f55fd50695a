"""The multi-voice fixtures (fixtures/speakers) as sessions send them, and a session
that streams them.

``voices.json`` describes the generated conversation (turn by turn: speaker, text,
start and end) and the clips of each voice; ``spk-model`` is the committed test speaker
model that Vosk's ``SpkModel`` loads.
"""

from __future__ import annotations

import json
import wave
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.net.server import Server
from helpers import (
    FIXTURES,
    READ_WRITE,
    connect,
    make_token,
    receive_json,
    receive_until_closed,
    stream,
)

SPEAKERS = FIXTURES / "speakers"
SPK_MODEL = SPEAKERS / "spk-model"
META: dict[str, Any] = json.loads((SPEAKERS / "voices.json").read_text(encoding="utf-8"))
RATE = 16000
_BYTES_PER_MS = RATE * 2 // 1000


def pcm_of(path: Path) -> bytes:
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2)
        return w.readframes(w.getnframes())


@dataclass(frozen=True)
class Turn:
    speaker: str
    start_ms: int
    end_ms: int


def conversation(voices: Iterable[str] | None = None) -> tuple[bytes, list[Turn]]:
    """The conversation's raw PCM and its turns (who speaks when), in order.

    With ``voices``, only those voices' turns, cut out of the recording with 200 ms of
    its silence either side and joined by 800 ms more (the original's 1.2 s gaps).
    """
    pcm = pcm_of(SPEAKERS / "conversation.wav")
    turns = META["conversation"]
    if voices is None:
        return pcm, [Turn(t["speaker"], t["start_ms"], t["end_ms"]) for t in turns]
    keep = set(voices)
    out = bytearray()
    kept = []
    for t in turns:
        if t["speaker"] in keep:
            start_ms = len(out) // _BYTES_PER_MS + 200
            kept.append(Turn(t["speaker"], start_ms, start_ms + t["end_ms"] - t["start_ms"]))
            out += pcm[(t["start_ms"] - 200) * _BYTES_PER_MS:(t["end_ms"] + 200) * _BYTES_PER_MS]
            out += bytes(800 * _BYTES_PER_MS)
    return bytes(out), kept


def turn_of(turns: Sequence[Turn], start_ms: int, end_ms: int) -> Turn:
    """The turn a result overlaps most."""
    return max(turns, key=lambda t: min(end_ms, t.end_ms) - max(start_ms, t.start_ms))


def clips(voice: str) -> list[Path]:
    return sorted((SPEAKERS / "clips" / voice).glob("*.wav"))


def clips_pcm(voice: str) -> bytes:
    """A voice's enrolment clips back to back, a second of silence after each."""
    return b"".join(pcm_of(p) + bytes(1000 * _BYTES_PER_MS) for p in clips(voice))


def clip_words() -> list[str]:
    return sorted({w for p in META["clip_phrases"] for w in p.split()})


def best_mapping_accuracy(predicted: Sequence[str | None], truth: Sequence[str]) -> float:
    """Share of utterances labelled right under the best one-to-one label mapping."""
    import itertools

    labels = sorted({p for p in predicted if p is not None})
    speakers = sorted(set(truth))
    targets: list[str | None] = [*speakers, *[None] * max(0, len(labels) - len(speakers))]
    best = 0
    for perm in itertools.permutations(targets, len(labels)):
        mapping = dict(zip(labels, perm, strict=True))
        best = max(best, sum(p is not None and mapping[p] == t
                             for p, t in zip(predicted, truth, strict=True)))
    return best / len(truth)


GRAMMAR: list[str] = META["grammar"]


async def session(server: Server, audio: bytes, *, phrases: list[str] | None = GRAMMAR,
                  query: str = "", scope: str = READ_WRITE
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Stream ``audio`` with the conversation's word grammar, end; (init, messages)."""
    async with connect(server, make_token(scope=scope), query) as ws:
        init = await receive_json(ws)
        if phrases is not None:
            await ws.send_message(json.dumps({"type": "config", "phrases": phrases}))
        await stream(ws, audio)
        await ws.send_message(json.dumps({"type": "end"}))
        messages = await receive_until_closed(ws, timeout=120)
    return init, messages


def finals(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == "transcription" and m["is_final"]]
