"""Pauses told from the audio (edge.audio.pauses): synthetic levels for the rules, the
speakers conversation (with and without room tone) for real speech."""

from __future__ import annotations

import itertools
import json
import wave

import numpy as np
import pytest

from edge.asr.decode import accept_each
from edge.audio.pauses import FRAME_MS, PauseDetector, TurnEnd
from edge.protocols.events import Utterance
from helpers import FIXTURES

RATE = 16000
CONVERSATION = FIXTURES / "speakers" / "conversation.wav"


def tone(ms: int, dbfs: float, freq: float = 220.0) -> np.ndarray:
    t = np.arange(RATE * ms // 1000) / RATE
    return np.sqrt(2) * 32768 * 10 ** (dbfs / 20) * np.sin(2 * np.pi * freq * t)


def noise(ms: int, dbfs: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 32768 * 10 ** (dbfs / 20), RATE * ms // 1000)


def pcm(samples: np.ndarray) -> bytes:
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


def test_digital_silence_after_speech_is_a_pause_and_speech_ends_it() -> None:
    d = PauseDetector()
    d.feed(pcm(np.zeros(RATE // 5)), RATE)
    d.feed(pcm(tone(500, -20)), RATE)
    assert d.paused_ms == 0
    d.feed(pcm(np.zeros(RATE * 300 // 1000)), RATE)
    assert d.paused_ms == 300
    d.feed(pcm(tone(20, -20)), RATE)
    assert d.paused_ms == 0


def test_a_pause_in_room_tone_is_measured_against_the_noise_floor() -> None:
    d = PauseDetector()
    d.feed(pcm(noise(2000, -50)), RATE)  # the room before anyone speaks
    d.feed(pcm(tone(800, -25) + noise(800, -50, seed=1)), RATE)
    assert d.paused_ms == 0
    d.feed(pcm(noise(600, -50, seed=2)), RATE)
    assert 590 <= d.paused_ms <= 600


def test_soft_speech_above_a_quiet_floor_is_speech() -> None:
    d = PauseDetector()
    d.feed(pcm(noise(1000, -70)), RATE)
    d.feed(pcm(tone(300, -45)), RATE)  # well under the loud talker, 25 dB over the floor
    assert d.paused_ms == 0


def test_a_steady_sound_becomes_the_floor_and_is_not_speech() -> None:
    d = PauseDetector()
    d.feed(pcm(np.zeros(RATE // 5)), RATE)
    d.feed(pcm(tone(1000, -40, freq=50)), RATE)  # mains hum switched on
    assert d.paused_ms == 0  # louder than the floor so far: taken for speech
    # once the silence before it has left the floor's window, the hum is the floor
    d.feed(pcm(tone(6000, -40, freq=50)), RATE)
    assert d.paused_ms >= 900


def test_in_a_room_too_loud_to_tell_no_pause_is_reported() -> None:
    d = PauseDetector()
    d.feed(pcm(noise(2000, -25)), RATE)
    assert d.paused_ms == 0


def test_chunks_of_any_length_give_the_same_pauses() -> None:
    audio = pcm(np.concatenate((np.zeros(RATE // 5), tone(400, -20), np.zeros(RATE * 437 // 1000))))
    whole, pieces = PauseDetector(), PauseDetector()
    whole.feed(audio, RATE)
    for i in range(0, len(audio), 14):  # 7 samples at a time: frames straddle chunks
        pieces.feed(audio[i:i + 14], RATE)
    assert whole.paused_ms == pieces.paused_ms == 430  # whole 10 ms frames only
    odd = PauseDetector()  # 100 ms and 3 samples: a frame straddles every other chunk
    for i in range(0, len(audio), 3206):
        odd.feed(audio[i:i + 3206], RATE)
    assert odd.paused_ms == 430 and list(odd.speech) == list(whole.speech) == [(200, 600)]


def partial(text: str, start_ms: int, end_ms: int) -> Utterance:
    return Utterance(is_final=False, text=text, start_ms=start_ms, end_ms=end_ms)


def final(text: str, start_ms: int, end_ms: int) -> Utterance:
    return Utterance(is_final=True, text=text, start_ms=start_ms, end_ms=end_ms)


def test_a_turn_ends_only_with_words_heard_and_enough_pause() -> None:
    turn = TurnEnd(400)
    turn.heard(pcm(np.zeros(RATE // 5)), RATE)
    turn.heard(pcm(tone(500, -20)), RATE)  # 200-700 ms
    turn.heard(pcm(np.zeros(RATE // 2)), RATE)
    assert not turn.due  # a pause, but no words yet
    assert turn.admit(partial("안녕", 0, 1200))
    assert turn.due
    turn.closed()
    assert not turn.due
    turn.heard(pcm(tone(300, -20)), RATE)  # 1200-1500 ms
    assert turn.admit(partial("안녕", 1200, 1500))
    assert turn.admit(final("안녕 하세요", 1250, 1450))  # Vosk's own endpoint closed it
    turn.heard(pcm(np.zeros(RATE)), RATE)
    assert not turn.due


def test_results_of_audio_without_speech_are_not_results() -> None:
    turn = TurnEnd(400)
    turn.heard(pcm(noise(1000, -70)), RATE)
    assert not turn.admit(partial("예", 0, 1000))  # Vosk hears words in room tone
    assert not turn.admit(final("예", 300, 500))
    turn.heard(pcm(tone(300, -20)), RATE)  # 1000-1300 ms
    assert turn.admit(partial("안녕", 0, 1300))
    turn.heard(pcm(np.zeros(RATE // 2)), RATE)
    assert turn.due
    assert turn.admit(final("안녕", 1010, 1290))
    turn.closed()
    turn.heard(pcm(np.zeros(RATE)), RATE)  # nothing spoken since: 1800-2800 ms
    assert not turn.admit(partial("예", 1800, 2800))
    assert not turn.admit(final("예", 2100, 2300))
    assert TurnEnd(0).admit(final("예", 2100, 2300))  # off: every result is one


def test_finals_decoded_together_are_judged_by_their_own_spans() -> None:
    """A client may send seconds of audio in one frame: the turn hears it all before
    the recogniser's results come, each with its own times."""
    turn = TurnEnd(400)
    turn.heard(pcm(np.concatenate((np.zeros(RATE // 5), tone(500, -20), np.zeros(RATE),
                                   tone(500, -20), np.zeros(RATE)))), RATE)
    # speech at 200-700 and 1700-2200 ms
    assert turn.admit(final("하나", 210, 690))
    assert turn.admit(partial("둘", 690, 2000))
    assert turn.admit(final("둘", 1710, 2190))
    assert not turn.admit(final("예", 2500, 2700))


@pytest.mark.parametrize("silence", [0, None])
def test_off_never_ends_a_turn(silence: int | None) -> None:
    turn = TurnEnd(silence)
    turn.heard(pcm(np.zeros(RATE * 5)), RATE)
    turn.admit(partial("안녕", 0, 5000))
    assert not turn.due


def test_a_turn_waits_for_the_whole_setting() -> None:
    turn = TurnEnd(500)
    turn.heard(pcm(np.zeros(RATE // 5)), RATE)
    turn.heard(pcm(tone(300, -20)), RATE)
    turn.admit(partial("안녕", 0, 500))
    turn.heard(pcm(np.zeros(RATE * 490 // 1000)), RATE)
    assert not turn.due
    turn.heard(pcm(np.zeros(RATE * FRAME_MS // 1000)), RATE)
    assert turn.due


def _pauses_in(samples: np.ndarray) -> list[tuple[int, int]]:
    """(start_ms, length_ms) of every run of non-speech frames, fed as 100 ms chunks."""
    d = PauseDetector()
    runs: list[tuple[int, int]] = []
    step = RATE * FRAME_MS // 1000
    data = pcm(samples)
    for i in range(0, len(data) // (2 * step)):
        before = d.paused_ms
        d.feed(data[2 * step * i:2 * step * (i + 1)], RATE)
        if d.paused_ms == 0 and before > 0:
            runs.append((i * FRAME_MS - int(before), int(before)))
    return runs


@pytest.mark.parametrize("room_tone_dbfs", [None, -55.0, -45.0])
def test_real_speech_pauses_between_utterances_and_not_inside_them(
        room_tone_dbfs: float | None) -> None:
    with wave.open(str(CONVERSATION)) as w:
        assert w.getframerate() == RATE
        samples = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64)
    if room_tone_dbfs is not None:
        samples = samples + noise(len(samples) * 1000 // RATE, room_tone_dbfs, seed=3)
    truth = [(int(u["start_ms"]), int(u["end_ms"]))
             for u in json.loads((FIXTURES / "speakers" / "voices.json").read_text()
                                 )["conversation"]]
    runs = _pauses_in(samples)
    long_runs = [(start, length) for start, length in runs if length >= 300]
    # the lead-in and every gap between utterances (1.2 s) is one long pause, and
    # nothing else is
    gaps = [(0, truth[0][0])] + [(end, start) for (_, end), (start, _)
                                  in itertools.pairwise(truth)]
    assert len(long_runs) == len(gaps), long_runs
    for (start, length), (gap_start, gap_end) in zip(long_runs, gaps, strict=True):
        assert abs(start - gap_start) <= 150 and abs(start + length - gap_end) <= 150


def test_a_batch_decoded_late_ends_its_turn_where_the_pause_was() -> None:
    """Audio queued behind recognition is decoded in batches: the turn ends after the
    part that completed the pause, before the next utterance's audio is fed."""
    calls: list[str] = []
    fed: list[int] = []  # bytes per accept

    class Scripted:
        def __init__(self) -> None:
            self.results = iter([[partial("하나", 0, 700)], [], [],
                                 [partial("둘", 0, 1700)]])

        def accept(self, pcm: bytes) -> list[Utterance]:
            calls.append("accept")
            fed.append(len(pcm))
            return next(self.results)

        def flush(self) -> Utterance | None:
            calls.append("flush")
            return final("하나", 210, 690)

        def close(self) -> None:
            pass

    parts = [pcm(np.concatenate((np.zeros(RATE // 5), tone(500, -20)))),  # 0-700 ms
             pcm(np.zeros(RATE // 2)),  # 700-1200 ms: the pause
             pcm(tone(500, -20))]  # 1200-1700 ms: the next utterance
    got = accept_each(Scripted(), parts, TurnEnd(400), RATE)
    # the pause's part is cut where 400 ms of it have passed, and finalised there
    assert calls == ["accept", "accept", "flush", "accept", "accept"]
    assert fed == [len(parts[0]), 2 * RATE * 400 // 1000, 2 * RATE * 100 // 1000,
                   len(parts[2])]
    assert [(u.text, u.is_final) for u in got] == [("하나", True), ("둘", False)]


def test_where_a_pause_would_complete() -> None:
    d = PauseDetector()
    d.feed(pcm(np.concatenate((np.zeros(RATE // 5), tone(500, -20)))), RATE)
    quiet = pcm(np.zeros(RATE // 2))
    assert d.bytes_until(400, quiet, RATE) == 2 * RATE * 400 // 1000
    assert d.bytes_until(600, quiet, RATE) is None  # not within these 500 ms
    assert d.paused_ms == 0  # nothing was taken
    d.feed(pcm(np.zeros(RATE // 10)), RATE)  # 100 ms of the pause already
    assert d.bytes_until(400, quiet, RATE) == 2 * RATE * 300 // 1000
    odd = pcm(np.zeros(RATE * 7 // 1000))  # 7 ms: less than a frame
    d.feed(odd, RATE)
    assert d.bytes_until(400, quiet, RATE) == 2 * (RATE * 300 // 1000 - RATE * 7 // 1000)
    assert d.bytes_until(400, pcm(tone(500, -20)), RATE) is None  # speech, no pause
