"""The budget while decoding lags: a high-water mark that follows how slowly the streams
decode now."""

from __future__ import annotations

import pytest
from test_memory import Readings, Stub, budget

from edge.asr import budget_policy
from edge.asr.memory import MB, RecyclingRecognizer

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


@pytest.mark.parametrize(("used", "growth", "wait", "live", "mark", "held"), [
    # growth 10 MB/s x 8 s: at 340 MB the recognisers reach 420 before a pause comes,
    # so the young ones (past 30 s / 6) may go: 340/3 - 90 = 23 MB each, down to 145
    (340, 10, 8.0, [P("a", 20, False), P("b", 10, False), P("c", 3, False)],
     ("a", "b"), True),
    # half the growth: under the budget at the pause, so only those past 30 s (none)
    (340, 5, 8.0, [P("a", 20, False), P("b", 10, False), P("c", 3, False)],
     (), True),
    # the same growth with a wait stretched by lag (20 s): over by the pause again
    (340, 5, 20.0, [P("a", 20, False), P("b", 10, False), P("c", 3, False)],
     ("a", "b"), True),
])
def test_the_policy_while_streams_lag(used: int, growth: int, wait: float,
                                      live: list[budget_policy.Candidate],
                                      mark: tuple[str, ...], held: bool) -> None:
    plan = budget_policy.plan(used=used * MB, budget=400 * MB, growth=growth * MB,
                              wait=wait, replacement=90 * MB, live=live, min_audio=30.0)
    assert (plan.mark, plan.held) == (mark, held)


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
