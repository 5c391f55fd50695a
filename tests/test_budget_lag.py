"""The budget while decoding lags: a high-water mark that follows how slowly the streams
decode now, and, over the budget, a marked recogniser swapped at the next short gap
between words (the decisions with fakes; the swap in a live session with the real
model, checked against the journal)."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np
import pytest
import trio
from test_memory import Readings, Stub, budget, memory_status

from edge import app
from edge.asr import budget_policy, memory
from edge.asr.decode import decode_pcm
from edge.asr.memory import FORCED, GAP, LIVE, MB, MemoryBudget, RecyclingRecognizer
from helpers import FIXTURES, connect, make_token, receive_json, stream


@pytest.fixture
def hurried_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every recogniser over a budget of 0, hurried as soon as it is marked (a gap is
    always waited for: never forced)."""
    monkeypatch.setattr(memory, "MIN_AUDIO_BEFORE_RECYCLE", 0.0)
    monkeypatch.setattr(memory, "CHECK_INTERVAL", 0.02)
    monkeypatch.setattr(app, "read_rss", lambda: 0)  # the model's share as 0
    monkeypatch.setattr(budget_policy, "GRACE", 0.0)
    monkeypatch.setattr(budget_policy, "FORCE_AFTER", math.inf)

RAW = (FIXTURES / "speech_ko.raw").read_bytes()
P = budget_policy.Candidate


# --- the mark follows the streams' lag --------------------------------------------------


@pytest.mark.parametrize(("audio_wait", "slowdown", "wall_wait", "waited", "expected"), [
    (8.0, 0.5, 0.0, 0.0, 8.0),  # keeping up: paced by the audio, never faster
    (8.0, 1.0, 6.0, 0.0, 8.0),
    (8.0, 2.5, 6.0, 0.0, 20.0),  # decoding 2.5x slower than real time: the pause is late
    (8.0, 1.0, 0.0, 30.0, 30.0),  # one marked 30 s ago is still waiting: at least that
    (4.0, 3.0, 0.0, 5.0, 12.0),
    (4.0, 1.2, 9.0, 5.0, 9.0),  # past swaps took longer than the decoding explains
])
def test_the_expected_wait(audio_wait: float, slowdown: float, wall_wait: float,
                           waited: float, expected: float) -> None:
    assert budget_policy.expected_wait(audio_wait, slowdown, wall_wait, waited) == \
        pytest.approx(expected)


@pytest.mark.parametrize(("used", "growth", "wait", "live", "mark", "hurry", "held"), [
    # growth 10 MB/s x 8 s: at 340 MB the recognisers reach 420 before a pause comes,
    # so the young ones (past 30 s / 6) may go: 340/3 - 90 = 23 MB each, down to 145
    (340, 10, 8.0, [P("a", 20, False), P("b", 10, False), P("c", 3, False)],
     ("a", "b"), (), True),
    # half the growth: under the budget at the pause, so only those past 30 s (none)
    (340, 5, 8.0, [P("a", 20, False), P("b", 10, False), P("c", 3, False)],
     (), (), True),
    # the same growth with a wait stretched by lag (20 s): over by the pause again
    (340, 5, 20.0, [P("a", 20, False), P("b", 10, False), P("c", 3, False)],
     ("a", "b"), (), True),
    # over the budget: every marked one is hurried, those marked now too
    (450, 0, 8.0, [P("a", 100, True, 3.0), P("b", 50, True, 1.0), P("c", 40, False)],
     ("c",), ("a", "b", "c"), True),
    # under the budget (above the mark), not growing: nobody is hurried, however long
    # the wait
    (390, 0, 8.0, [P("a", 100, True, 60.0), P("b", 10, False)], (), (), True),
    # under it, but growing 8 MB/s: over it within the lead time (2 s), so hurried now
    (390, 8, 8.0, [P("a", 100, True, 0.5), P("b", 10, False)], ("b",), ("a", "b"), True),
    # growing 4 MB/s: 398 MB in 2 s, still inside; marked, not hurried
    (390, 4, 8.0, [P("a", 100, True, 0.5), P("b", 10, False)], ("b",), (), True),
])
def test_the_policy_while_streams_lag(used: int, growth: int, wait: float,
                                      live: list[budget_policy.Candidate],
                                      mark: tuple[str, ...], hurry: tuple[str, ...],
                                      held: bool) -> None:
    plan = budget_policy.plan(used=used * MB, budget=400 * MB, growth=growth * MB,
                              wait=wait, replacement=90 * MB, live=live, min_audio=30.0)
    assert (plan.mark, plan.hurry, plan.held) == (mark, hurry, held)


@pytest.mark.parametrize(("used", "growth", "live", "force"), [
    # over the budget: the one hurried for a second of its audio is swapped now, the one
    # hurried for half a second may look for a gap a little longer
    (450, 0, [P("a", 100, True, 3.0, 1.0), P("b", 50, True, 1.0, 0.5)], ("a",)),
    # under it (growing: hurried), however long the search: a gap is still waited for
    (390, 8, [P("a", 100, True, 30.0, 20.0)], ()),
    # a hurried one no longer marked (swapped at a final meanwhile) is not forced
    (450, 0, [P("a", 100, False, 0.0, 5.0)], ()),
])
def test_over_the_budget_a_hurried_recogniser_without_a_gap_is_forced(
        used: int, growth: int, live: list[budget_policy.Candidate],
        force: tuple[str, ...]) -> None:
    plan = budget_policy.plan(used=used * MB, budget=400 * MB, growth=growth * MB,
                              wait=8.0, replacement=90 * MB, live=live, min_audio=30.0)
    assert plan.force == force


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_the_mark_moves_down_while_decoding_lags_and_while_a_marked_one_waits() -> None:
    clock = Clock()
    readings = Readings(*range(500, 700, 5))  # +5 MB a second
    b = budget(readings, budget_mb=400, recognizer_mb=0, prewarm=None, clock=clock,
               min_audio=10)
    stream = RecyclingRecognizer(Stub, 16000, None, b)
    for _ in range(5):  # keeping up: a second of audio decoded in a third of a second
        b.decoded(1.0, 0.3)
        b.check()
        clock.t += 1
    keeping_up = b.high_water
    assert b.expected_wait == budget_policy.DEFAULT_WAIT
    for _ in range(5):  # starved: a second of audio takes three
        b.decoded(1.0, 3.0)
        b.check()
        clock.t += 1
    assert b.slowdown is not None and b.slowdown > 2
    assert b.expected_wait > 2 * budget_policy.DEFAULT_WAIT
    assert b.high_water < keeping_up - 40 * MB
    assert b.snapshot().status()["wait_seconds"] == round(b.expected_wait, 1)
    # caught up again, but a marked recogniser has waited 60 s for its pause: that long
    stream.accept(b"\0" * 32000 * 20)
    stream.request_recycle()
    clock.t += 60
    stream.accept(b"\0" * 3200)  # still in its utterance
    b.slowdown = None
    b.check()
    assert b.expected_wait == pytest.approx(60.0)
    clock.t += 100  # its stream gives no audio: it grows no more, and its wait holds still
    b.check()
    assert b.expected_wait == pytest.approx(60.0)


# --- over the budget: the swap at a short gap -------------------------------------------


def tone(ms: int) -> bytes:
    t = np.arange(16 * ms) / 16000
    return (8000 * np.sin(2 * math.pi * 440 * t)).astype("<i2").tobytes()


def silence(ms: int) -> bytes:
    return b"\0\0" * 16 * ms


def over_the_budget() -> tuple[list[Stub], Clock, MemoryBudget, RecyclingRecognizer]:
    """A stream whose recognisers (``made``, in order) are 200 MB over a budget of 100."""
    made: list[Stub] = []

    def factory(rate: int, phrases: Any = None) -> Stub:
        made.append(Stub(rate))
        return made[-1]

    clock = Clock()
    b = budget(Readings(700), prewarm=None, min_audio=0, clock=clock)
    return made, clock, b, RecyclingRecognizer(factory, 16000, None, b)


def test_over_the_budget_a_marked_recogniser_is_swapped_at_the_next_short_gap() -> None:
    made, _, b, r = over_the_budget()
    r.accept(tone(500))  # a word in progress, the room's floor not yet heard
    b.check()
    assert r.recycle_requested and r.hurry  # over the budget: marked and hurried at once
    r.accept(tone(500))
    # a stop shorter than the gap, then one longer: the swap comes 150 ms into the second
    rest = tone(500) + silence(100) + tone(500) + silence(300) + tone(500)
    out = []
    for i in range(0, len(rest), 3200):
        out += r.accept(rest[i:i + 3200])
    [final] = out
    assert final.end_ms == 1000 + 500 + 100 + 500 + 150  # the first caption ends there
    assert made[0].retired and made[0].fed == 16 * final.end_ms
    assert b.recycles[GAP] == 1 and b.recycles[LIVE] == 0 and not r.hurry
    assert b.wait is None  # a wait cut short is not a pause's
    last = r.flush()  # the second caption goes on from the cut, on the stream's clock
    assert last is not None and last.end_ms == 2900
    assert len(made) == 2 and made[1].fed == 16 * (2900 - final.end_ms)


def test_a_hurried_recogniser_waits_for_speech_before_it_trusts_a_gap() -> None:
    clock = Clock()
    b = budget(Readings(700), prewarm=None, min_audio=0, clock=clock)
    r = RecyclingRecognizer(Stub, 16000, None, b)
    b.check()  # hurried at once (the clock stands still: never forced)
    # a stream that begins in speech: its level is the floor, not a gap; nothing is cut
    assert r.accept(tone(100)) == []
    b.check()
    assert r.hurry
    for _ in range(9):
        assert r.accept(tone(100)) == []
    assert b.recycles[GAP] == 0 and r.recycle_requested
    r.accept(silence(200))  # a quieter moment: the floor is known, still no speech after
    assert b.recycles[GAP] == 0
    r.accept(tone(300))  # speech told from the floor...
    assert b.recycles[GAP] == 0
    r.accept(silence(200))  # ...then a gap
    assert b.recycles[GAP] == 1


def test_a_forced_swap_cuts_at_the_quietest_10_ms_and_loses_nothing() -> None:
    made, clock, b, r = over_the_budget()
    r.accept(silence(200) + tone(300))  # the floor, then speech
    b.check()
    assert r.hurry and not r.force
    for i in range(10):  # a second of speech without a gap
        clock.t = (i + 1) / 10
        assert r.accept(tone(100)) == []
    b.check()
    assert r.force and b.recycles[GAP] == 0
    dip = bytearray(tone(100))
    dip[2 * 16 * 60:2 * 16 * 70] = (np.frombuffer(dip[2 * 16 * 60:2 * 16 * 70], "<i2")
                                    // 20).astype("<i2").tobytes()  # a soft 10 ms
    [final] = r.accept(bytes(dip))
    assert final.end_ms == 500 + 1000 + 65  # the middle of the softest 10 ms
    assert b.recycles[FORCED] == 1 and b.recycles[GAP] == 0 and not (r.hurry or r.force)
    last = r.flush()  # nothing skipped or decoded twice, on the stream's clock
    assert last is not None and last.end_ms == 1600
    assert made[0].fed + made[1].fed == 16 * 1600


# --- with the real model -----------------------------------------------------------------


@pytest.mark.usefixtures("hurried_at_once")
async def test_over_the_budget_a_live_session_swaps_at_a_short_gap_and_loses_nothing(
    start_server: Any, model: Any, phrases: dict[str, Any]
) -> None:
    server = await start_server(recognizer={"memory_budget_mb": 0,
                                            "recognizer_memory_mb": 0})
    grammar = [p for p in phrases["grammar"] if p != "[unk]"]
    # The first two utterances 310 ms apart: one turn (its pause rule wants 400 ms)...
    pcm = RAW[:2 * 16 * 1750] + silence(200) + RAW[2 * 16 * 3830:]
    reference = [u for u in await trio.to_thread.run_sync(
        lambda: decode_pcm(model.recognizer(16000, grammar), pcm, 16000,
                           turn_silence_ms=400)) if u.is_final]
    assert len(reference) == 2
    seen = []
    memory = server.engine.memory
    async with connect(server, make_token()) as ws:
        session_id = (await receive_json(ws))["session_id"]
        await ws.send_message(json.dumps({"type": "config", "phrases": grammar}))
        # the room before the first word, and the word's start: the session's
        # recogniser is taken at the first speech, then marked and hurried
        await stream(ws, pcm[:2 * 16 * 600])
        with trio.fail_after(30):
            while not any(r.hurry for r in list(memory._live)):
                await trio.sleep(0.02)
        await stream(ws, pcm[2 * 16 * 600:])
        await ws.send_message(json.dumps({"type": "end"}))
        while (message := await receive_json(ws))["type"] != "session_end":
            if message["type"] == "transcription" and message["is_final"]:
                seen.append(message)
    assert (await memory_status(server))["recycled"].get("gap", 0) >= 1
    # ...two captions once hurried: split at the gap, every word once, times continuous
    assert [m["text"] for m in seen] == phrases["utterances"]
    assert " ".join(m["text"] for m in seen) == " ".join(u.text for u in reference)
    # the cut: 150 ms after the first utterance's last speech frame (1690 ms)
    assert seen[0]["end_ms"] <= 1840 <= seen[1]["start_ms"]
    words = [w for m in seen for w in m["words"]]
    ref_words = [w for u in reference for w in u.words or ()]
    assert [w["word"] for w in words] == [w.word for w in ref_words]
    for got, ref in zip(words, ref_words, strict=True):
        assert abs(got["start_ms"] - ref.start_ms) <= 100, (words, ref_words)
    for before, after in itertools.pairwise(seen):
        assert after["start_ms"] >= before["end_ms"]
    with trio.fail_after(10):
        while (row := server.journal.journal.session(session_id)) is None \
                or row.ended_at is None:
            await trio.sleep(0.05)
    assert server.journal.journal.finals(session_id) == seen  # none lost, none twice
