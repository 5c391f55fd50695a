"""Skipping silence (edge.audio.pauses.SilenceGate, fed through edge.asr.decode): what the
recogniser is given, and that results keep the stream's times. Pure logic: a scripted
recogniser with its own clock stands for Vosk (the real model: tests/test_silence_words.py)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from edge.asr.decode import accept_each, decode_pcm, flush_turn, through_gate
from edge.audio.pauses import (
    GATE_HOLD_MS,
    NOISY_FLOOR_DBFS,
    PREROLL_MS,
    SilenceGate,
    TurnEnd,
)
from edge.core.errors import ConfigError, ProtocolError
from edge.protocols.events import Configure, TermMatch, Utterance, Word
from edge.protocols.live import parse_client_text
from helpers import make_config

RATE = 16000
MS = 2 * RATE // 1000  # bytes per ms


def silence(ms: int) -> bytes:
    return bytes(ms * MS)


def room(ms: int, dbfs: float = -55.0, seed: int = 0) -> bytes:
    x = np.random.default_rng(seed).normal(0, 32768 * 10 ** (dbfs / 20), RATE * ms // 1000)
    return x.astype("<i2").tobytes()


def speech(ms: int, dbfs: float = -20.0) -> bytes:
    t = np.arange(RATE * ms // 1000) / RATE
    return (np.sqrt(2) * 32768 * 10 ** (dbfs / 20) * np.sin(2 * np.pi * 220 * t)
            ).astype("<i2").tobytes()


class Clocked:
    """A recogniser that hears a word in every loud 10 ms it is fed, on its own clock
    (ms of audio given to it), as Vosk's times are."""

    def __init__(self) -> None:
        self.fed_ms = 0
        self.accepts = 0
        self.flushes = 0
        self._word: tuple[int, int] | None = None  # the utterance in progress

    def accept(self, pcm: bytes) -> list[Utterance]:
        self.accepts += 1
        x = np.frombuffer(pcm, "<i2").astype(np.float64)
        for i in range(0, x.size // (RATE // 100)):
            frame = x[i * RATE // 100:(i + 1) * RATE // 100]
            if np.sqrt(np.mean(frame ** 2)) > 1000:
                start = self._word[0] if self._word else self.fed_ms + 10 * i
                self._word = (start, self.fed_ms + 10 * (i + 1))
        self.fed_ms += len(pcm) // MS
        if self._word is None:
            return []
        return [Utterance(False, "말", self._word[0], self._word[1])]

    def flush(self) -> Utterance | None:
        self.flushes += 1
        word, self._word = self._word, None
        if word is None:
            return None
        return Utterance(True, "말", word[0], word[1], words=(Word("말", *word, 1.0),))

    def close(self) -> None:
        pass


def chunks(audio: bytes, ms: int = 100) -> list[bytes]:
    return [audio[i:i + ms * MS] for i in range(0, len(audio), ms * MS)]


def run(audio: bytes, skip: bool, silence_ms: int = 400) -> tuple[Clocked, list[Utterance]]:
    rec, turn = Clocked(), TurnEnd(silence_ms, skip)
    out: list[Utterance] = []
    for c in chunks(audio):
        out += [u for u in accept_each(rec, [c], turn, RATE) if u.is_final]
    final = flush_turn(rec, turn)
    return rec, out + ([final] if final else [])


def spans(finals: list[Utterance]) -> list[tuple[int, int]]:
    return [(u.start_ms, u.end_ms) for u in finals]


# --- the gate's bookkeeping ------------------------------------------------------------

@pytest.mark.parametrize(("offered", "onset", "given", "offset_ms"), [
    # (ms offered while closed, onset in the last part in ms or None, ms given, ms left out)
    ([100], None, 0, 100 - PREROLL_MS if PREROLL_MS < 100 else 0),
    ([1000], None, 0, 1000 - PREROLL_MS),
    ([1000, 100], 50, PREROLL_MS + 50, 1050 - PREROLL_MS),
    ([1000, 100], 0, PREROLL_MS + 100, 1000 - PREROLL_MS),
    ([100], 30, 100, 0),  # the stream's start: less than a pre-roll before the onset
])
def test_the_gate_gives_the_pre_roll_and_counts_what_it_leaves_out(
        offered: list[int], onset: int | None, given: int, offset_ms: int) -> None:
    gate = SilenceGate(True)
    assert not gate.is_open
    out = b""
    for i, ms in enumerate(offered):
        last = i == len(offered) - 1
        out = gate.take(silence(ms), onset * MS if last and onset is not None else None,
                        RATE)
    assert len(out) == given * MS
    assert gate.offset_ms == offset_ms
    assert gate.is_open == (onset is not None)


def test_the_pre_roll_is_the_audio_just_before_the_onset() -> None:
    gate = SilenceGate(True, preroll_ms=200)
    marks = bytes(range(1, 201)) * (MS * 5)  # 1000 ms of distinct bytes
    assert gate.take(marks[:600 * MS], None, RATE) == b""
    got = gate.take(marks[600 * MS:], 100 * MS, RATE)  # speech at 700 ms
    assert got == marks[500 * MS:]
    assert gate.offset_ms == 500


def test_a_disabled_gate_leaves_nothing_out() -> None:
    gate = SilenceGate(False)
    assert gate.is_open
    gate.enabled = True
    gate.close()
    assert gate.take(silence(500), None, RATE) == b""
    gate.enabled = False  # switched off while closed: the next audio opens it
    assert len(gate.take(silence(100), None, RATE)) == (PREROLL_MS + 100) * MS
    assert gate.is_open and gate.offset_ms == 500 - PREROLL_MS


# --- through accept_each ----------------------------------------------------------------

def test_room_tone_alone_is_not_decoded() -> None:
    rec, finals = run(room(10_000), skip=True)
    # not even the first frames, before the floor is known (taken as QUIET_DBFS then);
    # the one flush is the end of the stream's, with nothing fed
    assert (rec.fed_ms, rec.flushes, finals) == (0, 1, [])
    off, _ = run(room(10_000), skip=False)
    assert off.fed_ms == 10_000


def test_turns_keep_the_stream_times_with_the_room_left_out() -> None:
    audio = (room(3000) + speech(800) + room(2000, seed=1) + speech(500)
             + room(3000, seed=2))
    on, finals_on = run(audio, skip=True)
    off, finals_off = run(audio, skip=False)
    assert spans(finals_on) == spans(finals_off) == [(3000, 3800), (5800, 6300)]
    assert [w.start_ms for u in finals_on for w in u.words] == [3000, 5800]
    assert off.fed_ms == len(audio) // MS
    # each turn: its pre-roll, its speech and its pause until the gate closed
    assert on.fed_ms <= 2 * (PREROLL_MS + GATE_HOLD_MS + 100) + 800 + 500 + GATE_HOLD_MS


def test_a_pause_inside_a_turn_is_decoded() -> None:
    audio = room(2000) + speech(500) + room(250, seed=1) + speech(500) + room(2000, seed=2)
    on, finals = run(audio, skip=True)
    assert spans(finals) == [(2000, 3250)]  # one turn, as without skipping
    # the turn's end, the end of the stream
    assert on.flushes == 2


@pytest.mark.parametrize("dbfs", [-20.0, -28.0])
def test_a_stream_that_begins_in_speech_is_decoded_from_its_first_sample(dbfs: float
                                                                         ) -> None:
    # No floor yet, and speech from the first sample (the fake hears words above -30)
    audio = speech(500, dbfs) + room(2000) + speech(300) + room(2000, seed=1)
    on, finals = run(audio, skip=True)
    off, finals_off = run(audio, skip=False)
    assert spans(finals) == spans(finals_off) == [(0, 500), (2500, 2800)]
    assert on.fed_ms < off.fed_ms


@pytest.mark.parametrize(("first", "onset"), [
    (speech(100, -20.0), 0), (speech(100, -40.0), 0),  # near and far talkers: speech
    (room(100, -55.0), None), (room(100, -50.0), None),  # room tone: none
])
def test_before_its_floor_is_known_a_stream_is_judged_against_the_quietest_room(
        first: bytes, onset: int | None) -> None:
    assert TurnEnd(400, True).onset(first, RATE) == onset


def test_the_closed_gate_on_the_event_loop_gives_what_the_worker_thread_would() -> None:
    """A session passes a closed gate on the event loop (through_gate), then hands the
    rest to accept_each: the same audio reaches the recogniser, on the same clock."""
    audio = room(2000) + speech(500) + room(1500, seed=1) + speech(300) + room(1000)
    results = {}
    for on_loop in (False, True):
        rec, turn, out = Clocked(), TurnEnd(400, True), []
        for c in chunks(audio):
            parts = [c]
            if on_loop and not turn.gate.is_open:
                parts = through_gate(turn, parts, RATE)
                if not parts:
                    continue
            out += [u for u in accept_each(rec, parts, turn, RATE) if u.is_final]
        results[on_loop] = (rec.fed_ms, rec.accepts, spans(out))
    assert results[True] == results[False]
    assert results[True][2] == [(2000, 2500), (4000, 4300)]
    # room tone alone: nothing for a worker thread, every time
    turn = TurnEnd(400, True)
    assert [through_gate(turn, [c], RATE) for c in chunks(room(3000))] == [[]] * 30


def test_the_first_sample_of_speech_after_a_skip_is_at_its_stream_time() -> None:
    rec, turn = Clocked(), TurnEnd(400, True)
    assert accept_each(rec, chunks(room(2000)), turn, RATE) == []
    got = accept_each(rec, [room(40, seed=5) + speech(60)], turn, RATE)
    assert [(u.is_final, u.start_ms, u.end_ms) for u in got] == [(False, 2040, 2100)]


@pytest.mark.parametrize("dbfs", [-25.0, NOISY_FLOOR_DBFS + 3])
def test_a_noisy_room_is_decoded_all_along(dbfs: float) -> None:
    rec, _ = run(room(5000, dbfs=dbfs), skip=True)
    assert rec.fed_ms == 5000


def test_a_room_turning_noisy_opens_the_gate() -> None:
    rec, turn = Clocked(), TurnEnd(400, True)
    accept_each(rec, chunks(room(3000)), turn, RATE)
    assert not turn.gate.is_open
    accept_each(rec, chunks(room(6000, dbfs=NOISY_FLOOR_DBFS + 6, seed=1)), turn, RATE)
    assert turn.gate.is_open  # the fan's noise became the floor


def test_turning_it_off_mid_stream_keeps_the_times() -> None:
    rec, turn = Clocked(), TurnEnd(400, True)
    accept_each(rec, chunks(room(3000)), turn, RATE)
    turn.gate.enabled = False
    out = accept_each(rec, chunks(room(1000, seed=1) + speech(300)), turn, RATE)
    assert out[-1].start_ms == 4000
    before = rec.fed_ms
    accept_each(rec, chunks(room(3000, seed=2)), turn, RATE)
    assert rec.fed_ms == before + 3000  # off: the room is decoded again


def test_a_file_decoded_with_skipping_has_the_same_turns() -> None:
    audio = room(1500) + speech(600) + room(1500, seed=1) + speech(600) + room(1000, seed=2)
    on = [u for u in decode_pcm(Clocked(), audio, RATE, turn_silence_ms=400,
                                skip_silence=True) if u.is_final]
    off = [u for u in decode_pcm(Clocked(), audio, RATE, turn_silence_ms=400)
           if u.is_final]
    assert spans(on) == spans(off) == [(1500, 2100), (3600, 4200)]


# --- switched per session -----------------------------------------------------------------

@pytest.mark.parametrize("value", [True, False])
def test_the_live_config_message_switches_it(value: bool) -> None:
    parsed = parse_client_text(json.dumps({"type": "config", "skip_silence": value}))
    assert parsed == Configure(skip_silence=value)


@pytest.mark.parametrize("value", [0, 1, "false", [], {}])
def test_a_bad_skip_silence_is_a_bad_message(value: Any) -> None:
    with pytest.raises(ProtocolError, match="skip_silence") as caught:
        parse_client_text(json.dumps({"type": "config", "skip_silence": value}))
    assert caught.value.code == "bad_message"


def test_the_device_default_is_on_and_validated() -> None:
    assert make_config().recognizer.skip_silence is True
    assert make_config(recognizer={"skip_silence": False}).recognizer.skip_silence is False
    with pytest.raises(ConfigError, match=r"recognizer\.skip_silence"):
        make_config(recognizer={"skip_silence": "sometimes"})


def test_a_results_words_and_terms_move_to_the_stream_clock() -> None:
    u = Utterance(True, "머리가 아파", 100, 900, words=(Word("머리가", 100, 500, 1.0),),
                  terms=(TermMatch("머리가", "머리", 100, 500, "anatomy"),))
    moved = u.later(2000)
    assert u.later(0) is u
    assert (moved.start_ms, moved.end_ms) == (2100, 2900)
    assert [(w.start_ms, w.end_ms) for w in moved.words] == [(2100, 2500)]
    assert [(t.start_ms, t.end_ms) for t in moved.terms] == [(2100, 2500)]


def test_a_check_between_seconds_stops_a_long_frame_early() -> None:
    # A live session passes trio.from_thread.check_cancelled: a frame of 31 s is fed a
    # second at a time, and a stop seen between seconds leaves the rest undecoded.
    class Stopped(Exception):
        pass

    rec, calls = Clocked(), []

    def check() -> None:
        calls.append(rec.fed_ms)
        if len(calls) == 4:
            raise Stopped

    with pytest.raises(Stopped):
        accept_each(rec, [room(31_000)], TurnEnd(400, False), RATE, check)
    assert calls == [0, 1000, 2000, 3000] and rec.fed_ms == 3000
    # Without a check, the frame goes whole, as before.
    whole = Clocked()
    accept_each(whole, [room(31_000)], TurnEnd(400, False), RATE)
    assert whole.accepts == 1 and whole.fed_ms == 31_000
