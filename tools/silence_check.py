"""Whether skipping silence loses words: a recording decoded with the silence gate on and
off (fed as ``edge.asr.decode.decode_pcm`` feeds it, with the device's 400 ms turn
rule), and what differs.

Used by ``tests/test_silence_words.py`` (a short set) and ``bench/silence.py`` (the full
set, and the pre-roll sweep). Recordings come from ``tools/make_rooms.py``: a WAV and a
JSON sidecar naming its turns.
"""

from __future__ import annotations

import json
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.asr.decode import CLIENT_CHUNK_MS, accept_each, flush_turn
from edge.audio.pauses import TurnEnd
from edge.protocols.events import Utterance
from tools.make_rooms import PHRASES

TURN_SILENCE_MS = 400  # recognizer.endpoint_silence_ms's default
#: A final belongs to a turn it overlaps, give or take the level rule's edges.
SLACK_MS = 200


@dataclass(frozen=True)
class Recording:
    name: str
    pcm: bytes
    rate: int
    turns: list[tuple[int, int]]  # (start_ms, end_ms) of each turn
    texts: list[str]  # what was said in each


def read_recording(path: Path) -> Recording:
    """A make_rooms recording."""
    with wave.open(str(path)) as w:
        pcm, rate = w.readframes(w.getnframes()), w.getframerate()
    meta = json.loads(path.with_suffix(".json").read_text())
    return Recording(path.stem, pcm, rate, [(t["start_ms"], t["end_ms"]) for t in meta["turns"]],
                     [t["text"] for t in meta["turns"]])


def finals(model: Any, pcm: bytes, rate: int, *, skip: bool,
           preroll_ms: int | None = None, skipped: list[int] | None = None
           ) -> list[Utterance]:
    """The finals of ``pcm`` decoded by a new recogniser of ``model`` with the set's
    grammar, as ``decode_pcm`` does (blocking); ``preroll_ms`` replaces the gate's; the
    ms of audio the gate left out are appended to ``skipped``."""
    turn = TurnEnd(TURN_SILENCE_MS, skip)
    if preroll_ms is not None:
        turn.gate.preroll_ms = preroll_ms
    recognizer = model.recognizer(rate, PHRASES)
    try:
        step = 2 * (rate * CLIENT_CHUNK_MS // 1000)
        results = [u for i in range(0, len(pcm), step)
                   for u in accept_each(recognizer, [pcm[i:i + step]], turn, rate)]
        last = flush_turn(recognizer, turn)
    finally:
        recognizer.close()
    if skipped is not None:
        skipped.append(turn.gate.offset_ms)
    return [u for u in [*results, *([last] if last else [])] if u.is_final and u.text]


@dataclass
class Comparison:
    """Skipping on against off, over one recording or a set."""

    words: int = 0  # words of the finals with skipping off
    differ: int = 0  # word edits that turn off's words into on's
    turn_words: int = 0  # words of the finals with skipping off that overlap a turn
    turn_differ: int = 0  # the same, over the finals that overlap a turn
    said: int = 0  # words said in the turns
    found: tuple[int, int] = (0, 0)  # of them, found in the finals overlapping each (off, on)
    missing: int = 0  # turns with a final when off and none when on
    splits: tuple[int, int] = (0, 0)  # finals beyond one per turn (off, on)
    merges: tuple[int, int] = (0, 0)  # finals spanning more than one turn (off, on)
    names: list[str] = field(default_factory=list)
    audio_ms: int = 0  # of the recordings
    skipped_ms: int = 0  # of it, left out by the gate

    @property
    def differ_share(self) -> float:
        return self.differ / self.words if self.words else 0.0

    @property
    def turn_differ_share(self) -> float:
        return self.turn_differ / self.turn_words if self.turn_words else 0.0

    def __add__(self, other: Comparison) -> Comparison:
        def pair(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
            return a[0] + b[0], a[1] + b[1]

        return Comparison(self.words + other.words, self.differ + other.differ,
                          self.turn_words + other.turn_words,
                          self.turn_differ + other.turn_differ, self.said + other.said,
                          pair(self.found, other.found), self.missing + other.missing,
                          pair(self.splits, other.splits), pair(self.merges, other.merges),
                          self.names + other.names, self.audio_ms + other.audio_ms,
                          self.skipped_ms + other.skipped_ms)


def compare(off: Sequence[Utterance], on: Sequence[Utterance], recording: Recording,
            skipped_ms: int = 0) -> Comparison:
    turns = recording.turns
    words_off = [w for u in off for w in u.text.split()]
    words_on = [w for u in on for w in u.text.split()]
    in_off = [w for u in off if _in_a_turn(u, turns) for w in u.text.split()]
    in_on = [w for u in on if _in_a_turn(u, turns) for w in u.text.split()]
    hits_off, hits_on = _turn_hits(off, turns), _turn_hits(on, turns)
    missing = sum(1 for a, b in zip(hits_off, hits_on, strict=True) if a and not b)
    return Comparison(len(words_off), edit_distance(words_off, words_on),
                      len(in_off), edit_distance(in_off, in_on),
                      sum(len(t.split()) for t in recording.texts),
                      (_found(off, recording), _found(on, recording)), missing,
                      (_splits(hits_off), _splits(hits_on)),
                      (_merges(off, turns), _merges(on, turns)), [recording.name],
                      len(recording.pcm) * 500 // recording.rate, skipped_ms)


def edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance over words."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def _overlaps(u: Utterance, turn: tuple[int, int]) -> bool:
    return u.start_ms < turn[1] + SLACK_MS and u.end_ms > turn[0] - SLACK_MS


def _in_a_turn(u: Utterance, turns: Sequence[tuple[int, int]]) -> bool:
    return any(_overlaps(u, t) for t in turns)


def _found(finals: Sequence[Utterance], recording: Recording) -> int:
    """Words said in a turn that a final overlapping it has."""
    found = 0
    for turn, text in zip(recording.turns, recording.texts, strict=True):
        heard = [w for u in finals if _overlaps(u, turn) for w in u.text.split()]
        for word in text.split():
            if word in heard:
                heard.remove(word)
                found += 1
    return found


def _turn_hits(finals: Sequence[Utterance], turns: Sequence[tuple[int, int]]) -> list[int]:
    return [sum(1 for u in finals if _overlaps(u, t)) for t in turns]


def _splits(hits: Sequence[int]) -> int:
    return sum(max(0, n - 1) for n in hits)


def _merges(finals: Sequence[Utterance], turns: Sequence[tuple[int, int]]) -> int:
    return sum(1 for u in finals if sum(1 for t in turns if _overlaps(u, t)) > 1)


def check_recording(model: Any, path: Path, preroll_ms: int | None = None) -> Comparison:
    r = read_recording(path)
    off = finals(model, r.pcm, r.rate, skip=False)
    skipped: list[int] = []
    on = finals(model, r.pcm, r.rate, skip=True, preroll_ms=preroll_ms, skipped=skipped)
    return compare(off, on, r, skipped[0])
