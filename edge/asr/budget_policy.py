"""The memory budget's policy: when to recycle, how many, and when to refuse a session.

Pure arithmetic on what :class:`edge.asr.memory.MemoryBudget` measured (no trio, no
vosk, no clock). A recogniser marked for recycling is replaced only at its stream's next
pause, and it keeps growing until then; so recycling starts at a *high-water mark*
below the budget, with headroom for what the recognisers grow while the marked ones wait
for their pauses:

    headroom = growth (bytes/s, measured) x wait (mark to swap, s: :func:`expected_wait`)
               + a replacement being warmed (when replacements are pre-warmed)

clamped to between a tenth and half of the budget. The wait follows the streams as they
are now: the audio a marked stream decodes before its pause (measured) takes longer
when decoding lags behind real time, and a marked recogniser still waiting is proof of
a longer wait. Above the mark, as many live recognisers are marked (most audio decoded
first) as it takes to bring the recognisers back below the mark by half the headroom
(the *low-water mark*), counting what the ones already marked will give back; young
ones too once the recognisers will be over the budget before a pause comes. Once the
recognisers will pass the budget within :data:`GRACE` at the growth measured (or have
passed it), every marked recogniser is *hurried*: swapped at the next short gap between
words rather than at its turn's end, before the budget is passed. Over the budget, one
hurried for :data:`FORCE_AFTER` without finding a gap is *forced*: swapped at the
quietest moment of its next audio (a word may be cut in two). A live session is
refused at the handshake while the recognisers are above the mark (one more growing
stream is what the headroom has no room for), unless none is running.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

#: Headroom below the budget, as fractions of it (floor and ceiling).
MIN_HEADROOM = 0.10
MAX_HEADROOM = 0.50
#: Mark-to-swap wait assumed before one was measured (seconds of the stream's audio): a
#: turn or two.
DEFAULT_WAIT = 8.0
#: Lead time (seconds) of the hurry: once the recognisers, growing as measured, will
#: pass the budget within it, marked recognisers are swapped at the next short gap
#: between words (their captions split in two) instead of at their turns' ends. It
#: covers a gap's wait (a word, then :data:`edge.asr.recycling.GAP_MS`) and the time
#: between two readings. Waiting for the turn's end over the budget itself (up to 2 s
#: after the mark, until 2026-12-07) left the recognisers 51 MB over a 400 MB budget at
#: the worst second of a 40-minute soak (docs/memory.md).
GRACE = 2.0
#: Seconds of its stream's audio a hurried recogniser may look for a gap between words
#: while the recognisers are over the budget; after that it is swapped at the quietest
#: 10 ms of its next audio. Continuous speech can go 13 s without a 150 ms gap: in a
#: soak under CPU starvation two such waits left the recognisers 83 MB over a 300 MB
#: budget (docs/memory.md).
FORCE_AFTER = 1.0
#: Over the budget itself, recognisers this fraction of ``min_audio`` old may be
#: recycled too (a fresh one costs CPU; a budget exceeded costs more).
OVER_BUDGET_AGE = 1 / 6
#: Weight of a new measurement in the running averages of growth and wait.
SMOOTHING = 0.3


@dataclass(frozen=True)
class Candidate:
    """A live recogniser as the policy sees it."""

    key: Hashable
    audio_seconds: float  # decoded over its life
    marked: bool  # already waiting for its pause
    waited: float = 0.0  # seconds since it was marked (a marked one)
    hurried: float = 0.0  # seconds since it was hurried (a hurried one)


@dataclass(frozen=True)
class Plan:
    high_water: int  # bytes: recycling starts above this
    low_water: int  # bytes: marking stops once the marked ones bring the total here
    mark: tuple[Hashable, ...]  # recognisers to mark now
    held: bool  # False: over the budget and what is marked cannot bring it back
    near: bool  # above the high-water mark: no room for another growing stream
    hurry: tuple[Hashable, ...] = ()  # marked (now or before): swap at the next short gap
    force: tuple[Hashable, ...] = ()  # hurried too long over the budget: swap now


def headroom(budget: int, growth: float, wait: float, replacement: int) -> int:
    """Bytes below ``budget`` at which recycling starts (see the module's docstring)."""
    want = growth * wait + replacement
    return int(min(MAX_HEADROOM * budget, max(MIN_HEADROOM * budget, want)))


def expected_wait(audio_wait: float, slowdown: float, wall_wait: float,
                  waited: float) -> float:
    """Seconds a recogniser marked now waits for its pause: ``audio_wait`` (seconds of
    its stream's audio from a mark to the pause, measured) at the pace the streams
    decode now (``slowdown``: wall seconds a second of audio takes in the recognisers;
    a stream that keeps up is paced by its audio, so at least 1), or the waits measured
    at past swaps (``wall_wait``, seconds: they also count the time a stream waits
    between its decoding calls), or what a marked recogniser has waited already
    (``waited``, seconds), whichever is longest."""
    return max(audio_wait * max(1.0, slowdown), wall_wait, waited)


def plan(*, used: int, budget: int, growth: float, wait: float, replacement: int,
         live: Sequence[Candidate], min_audio: float, grace: float | None = None) -> Plan:
    """What to do with ``used`` bytes held by recognisers (idle ones already dropped).

    ``replacement`` is what the recogniser replacing a recycled one holds (a warm one's
    size); each live recogniser is taken to hold an equal share of ``used``, so
    recycling one gives back its share less its replacement; when that is nothing,
    recycling would only cost CPU and nothing is marked. ``wait`` is
    :func:`expected_wait`'s; ``grace`` :data:`GRACE` unless given. A recogniser marked
    now is hurried at once when the budget is that close.
    """
    high = budget - headroom(budget, growth, wait, replacement)
    low = max(0, high - (budget - high) // 2)
    if used <= high:
        return Plan(high, low, (), held=True, near=False)
    over = used > budget
    if not live:
        # Nothing live holds anything: what is above the model is not the recognisers'
        # to give back (the heap's fragments, buffers).
        return Plan(high, low, (), held=True, near=True)
    gain = max(0, used // len(live) - replacement)
    pending = gain * sum(1 for c in live if c.marked)
    # Over the budget by the time a pause comes is over the budget: young ones may go.
    floor = min_audio * OVER_BUDGET_AGE if used + growth * wait > budget else min_audio
    eligible = sorted((c for c in live if not c.marked and c.audio_seconds >= floor),
                      key=lambda c: c.audio_seconds, reverse=True)
    mark: list[Hashable] = []
    for candidate in eligible:
        if gain <= 0 or used - pending <= low:
            break
        mark.append(candidate.key)
        pending += gain
    held = not over or used - pending <= budget
    grace = GRACE if grace is None else grace
    hurry: tuple[Hashable, ...] = ()
    if used + growth * grace > budget:  # passed within the grace, or passed already
        hurry = tuple(c.key for c in live if c.marked or c.key in mark)
    force = tuple(c.key for c in live
                  if over and c.marked and c.key in hurry and c.hurried >= FORCE_AFTER)
    return Plan(high, low, tuple(mark), held=held, near=True, hurry=hurry, force=force)


def smooth(average: float | None, value: float) -> float:
    """A running average (exponential, :data:`SMOOTHING`)."""
    return value if average is None else average + SMOOTHING * (value - average)
