"""The recognisers' memory budget: measured from ``/proc``, held by recycling recognisers.

A recogniser of a dynamic-graph model caches the part of the graph it has expanded and
never lets it go: fed ever-new speech it grows by about 200 MB in its first minutes
and a few MB a minute after that. Vosk offers no limit, so the budget is kept from the
outside:

* the daemon's RSS is read from ``/proc/self/status``; what it holds above the RSS
  measured after the model was loaded (before any recogniser) is the recognisers'
  share (:class:`MemoryBudget.baseline`);
* when that share passes a high-water mark below ``recognizer.memory_budget_mb``
  (:mod:`edge.asr.budget_policy`: headroom for what recognisers grow until their next
  pause, from the measured growth rate and mark-to-swap wait, the wait stretched by how
  slowly the streams decode now), idle pooled recognisers
  are dropped first (most audio decoded first), then as many live ones as needed are
  *recycled*: marked, and replaced by their stream at the next moment between
  utterances (:class:`~edge.asr.recycling.RecyclingRecognizer`) by a replacement
  pre-warmed meanwhile at idle priority, so no audio is skipped or decoded twice and
  times go on where the old recogniser stopped; when the budget would be passed within
  seconds, marked ones are swapped at the next short gap between words instead;
* after a recogniser is freed, ``malloc_trim(0)`` hands glibc's free pages back to the
  kernel (without it, most of a freed recogniser stays in the process's RSS).

No trio here but :meth:`MemoryBudget.run`, the watching loop; everything else is
thread-safe bookkeeping, called from worker threads and the event loop alike.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge.asr import budget_policy
from edge.asr.recycling import FORCED, GAP, LIVE, Prewarmer, RecyclingRecognizer, Supplier

if TYPE_CHECKING:
    from edge.asr.recognizer import Recognizer, RecognizerFactory, RecognizerPool

__all__ = ["FORCED", "GAP", "IDLE", "LIVE", "MB", "RETIRED", "MemoryBudget",
           "RecyclingRecognizer", "Snapshot", "malloc_trim", "mem_total", "read_rss"]

logger = logging.getLogger(__name__)

MB = 1024 * 1024
#: How often the daemon reads its RSS (seconds): a recogniser on new words grows up to
#: about 9 MB/s (docs/memory.md), so a reading every half second keeps what grows
#: unseen between two readings near the few MB the budget's lead time allows for.
CHECK_INTERVAL = 0.5
#: ...but while no stream decodes, nothing is marked and nothing was freed, the
#: recognisers do not grow: a reading every this many seconds (an empty room's
#: daemon reads /proc ten times less often).
QUIET_INTERVAL = 5.0
#: Audio (seconds) a live recogniser decodes before it may be recycled again: a fresh
#: recogniser costs about twice the CPU of a warm one, so recycling is never a loop
#: per utterance. Over the budget itself a sixth of it is enough
#: (:data:`edge.asr.budget_policy.OVER_BUDGET_AGE`); a budget that cannot hold
#: recognisers that young is not held.
MIN_AUDIO_BEFORE_RECYCLE = 30.0

# Reasons, in edge_recognizer_recycled_total{reason} (and LIVE, GAP, FORCED: edge.asr.recycling)
IDLE = "idle"  # an idle pooled recogniser dropped for the budget
RETIRED = "retired"  # the pool retired a recogniser after recognizer_retire_hours of audio


def read_rss(status: str = "/proc/self/status") -> int:
    """Resident set size in bytes (``VmRSS``); 0 where ``/proc`` has none."""
    try:
        with open(status, encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def mem_total(meminfo: str = "/proc/meminfo") -> int:
    """The machine's RAM in bytes (``MemTotal``); 0 if unknown."""
    try:
        with open(meminfo, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


@functools.cache
def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def malloc_trim() -> bool:
    """Give glibc's free heap pages back to the kernel (blocking: tens of ms on a heap
    of a GB). ``False`` where there is no glibc or nothing was returned."""
    try:
        trim = _libc().malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))


@dataclass(frozen=True)
class Snapshot:
    """The budget at one look, for ``/healthz`` and ``/metrics`` (bytes)."""

    rss: int
    model: int
    recognizers: int  # live and idle
    recognizer_bytes: int  # RSS above the model's share
    budget: int
    recycles: dict[str, int]
    pending: int  # live recognisers marked, waiting for a pause
    held: bool  # False: over the budget with nothing left to recycle
    high_water: int = 0  # recycling starts above this (bytes)
    near: bool = False  # above the high-water mark: new live sessions are refused
    prewarmed: int = 0  # swaps that got a pre-warmed replacement
    prewarm_late: int = 0  # replacements ordered but not warm at their swap
    wait: float = 0.0  # seconds a recogniser marked now is expected to wait for its pause

    def status(self) -> dict[str, Any]:
        return {"rss_bytes": self.rss, "model_bytes": self.model,
                "recognizers": self.recognizers,
                "recognizer_bytes": self.recognizer_bytes, "budget_bytes": self.budget,
                "high_water_bytes": self.high_water, "recycled": dict(self.recycles),
                "recycling": self.pending, "prewarmed": self.prewarmed,
                "prewarm_late": self.prewarm_late,
                "wait_seconds": round(self.wait, 1), "held": self.held}


class MemoryBudget:
    """What the recognisers hold above the model, against ``budget_mb``.

    ``baseline`` is the process's RSS with the model loaded and no recogniser (read by
    the caller right after loading). ``pool`` (the recogniser pool, if any) gives up
    idle recognisers. :meth:`check` decides (called every second by :meth:`run`);
    :meth:`factory` wraps a recogniser factory so its recognisers can be recycled.
    ``prewarm`` (by default the pool, when it can make fresh recognisers) supplies the
    pre-warmed replacements. ``read``, ``trim`` and ``clock`` are :func:`read_rss`,
    :func:`malloc_trim` and ``time.monotonic`` (stand-ins in tests).
    """

    def __init__(self, budget_mb: int, baseline: int, *, recognizer_mb: int = 0,
                 reserved: int = 0, pool: RecognizerPool | None = None,
                 recycle: bool = True, read: Callable[[], int] = read_rss,
                 trim: Callable[[], bool] = malloc_trim, min_audio: float | None = None,
                 prewarm: Supplier | bool | None = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget_mb * MB
        self.baseline = baseline
        self.recognizer_mb = recognizer_mb
        self.reserved = reserved  # recognisers held outside sessions (the room's)
        self.pool = pool
        if pool is not None:
            pool.accepts_idle = lambda: not self.near
        self.recycle = recycle
        # Read at start (a module constant: the suite lowers it to force recycles).
        self.min_audio = MIN_AUDIO_BEFORE_RECYCLE if min_audio is None else min_audio
        self._read = read
        self._trim = trim
        self._lock = threading.Lock()
        self._live: set[RecyclingRecognizer] = set()
        self.recycles: Counter[str] = Counter()
        self.rss = baseline
        self.held = True
        self.near = False
        self.high_water = self.budget
        self.trim_due = False  # a recogniser was freed where trimming would block
        self._clock = clock
        self._last: tuple[float, int, int] | None = None  # (time, rss, frees) last check
        self.growth: float | None = None  # bytes/s the recognisers grow (measured)
        # Seconds of its stream's audio a marked recogniser decodes before its pause,
        # and wall seconds from its mark to its swap (measured at each swap at a pause).
        self.wait: float | None = None
        self.wall_wait: float | None = None
        # Wall seconds a second of audio takes to decode, all streams (smoothed per check)
        self.slowdown: float | None = None
        self._decoding = [0.0, 0.0]  # audio, wall seconds decoded since the last check
        self.expected_wait = budget_policy.DEFAULT_WAIT  # seconds, at the last check
        self.prewarmed = 0
        if prewarm is True:
            prewarm = pool if pool is not None and hasattr(pool, "fresh") else None
        self.prewarmer = (Prewarmer(prewarm, on_freed=self._freed)
                          if prewarm and recycle else None)

    # --- bookkeeping (any thread) ---------------------------------------------------

    def factory(self, inner: RecognizerFactory) -> RecognizerFactory:
        """``inner``, with every recogniser it makes recyclable and counted."""

        def make(sample_rate: int, phrases: Sequence[str] | None = None) -> Recognizer:
            return RecyclingRecognizer(inner, sample_rate, phrases, self)

        return make

    def _add(self, recognizer: RecyclingRecognizer) -> None:
        with self._lock:
            self._live.add(recognizer)

    def _remove(self, recognizer: RecyclingRecognizer) -> None:
        with self._lock:
            self._live.discard(recognizer)

    def recycled(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.recycles[reason] += n

    def swapped(self, audio: float, wall: float) -> None:
        """A marked recogniser was replaced at a pause, ``audio`` seconds of its stream
        and ``wall`` seconds after it was marked."""
        with self._lock:
            self.wait = budget_policy.smooth(self.wait, audio)
            self.wall_wait = budget_policy.smooth(self.wall_wait, wall)

    def decoded(self, audio: float, wall: float) -> None:
        """A stream's recogniser decoded ``audio`` seconds in ``wall`` seconds."""
        with self._lock:
            self._decoding[0] += audio
            self._decoding[1] += wall

    def now(self) -> float:
        return self._clock()

    def prewarmed_swap(self) -> None:
        with self._lock:
            self.prewarmed += 1

    def _freed(self) -> None:
        self.trim_due = True

    @property
    def recognizer_bytes(self) -> int:
        return max(0, self.rss - self.baseline)

    @property
    def over(self) -> bool:
        return self.recognizer_bytes > self.budget

    def capacity(self) -> int | None:
        """Live sessions the budget holds by the per-recogniser estimate
        (``recognizer_memory_mb``; None: no estimate, measurement only)."""
        if self.recognizer_mb <= 0:
            return None
        return max(0, self.budget // (self.recognizer_mb * MB) - self.reserved)

    def refuses(self, live_sessions: int) -> str | None:
        """Why a new live session must be refused now, or None."""
        capacity = self.capacity()
        if capacity is not None and live_sessions >= capacity:
            return (f"the memory budget (recognizer.memory_budget_mb) holds {capacity} live "
                    "session(s) and they are in use; retry later")
        if not self.held:
            return ("the recognisers' memory is over its budget "
                    "(recognizer.memory_budget_mb); retry later")
        if self.near and live_sessions > 0:
            return ("the recognisers' memory is near its budget "
                    "(recognizer.memory_budget_mb) and being recycled; retry later")
        return None

    def snapshot(self) -> Snapshot:
        with self._lock:
            live = len(self._live)
            pending = sum(1 for r in self._live if r.recycle_requested)
            recycles = dict(self.recycles)
        idle = 0
        if self.pool is not None:
            idle = self.pool.idle
            recycles[IDLE] = recycles.get(IDLE, 0) + self.pool.dropped
            recycles[RETIRED] = recycles.get(RETIRED, 0) + self.pool.retired
        return Snapshot(rss=self.rss, model=self.baseline, recognizers=live + idle,
                        recognizer_bytes=self.recognizer_bytes, budget=self.budget,
                        recycles=recycles, pending=pending, held=self.held,
                        high_water=self.high_water, near=self.near,
                        prewarmed=self.prewarmed,
                        prewarm_late=self.prewarmer.late if self.prewarmer else 0,
                        wait=self.expected_wait)

    def due(self) -> bool:
        """Whether :meth:`check` is due (cheap, on the event loop): audio was decoded
        or a recogniser freed since the last reading, one is marked, or
        :data:`QUIET_INTERVAL` has passed."""
        last = self._last
        if self.trim_due or last is None or self._clock() - last[0] >= QUIET_INTERVAL:
            return True
        with self._lock:
            return (self._decoding[0] > 0 or sum(self.recycles.values()) != last[2]
                    or any(r.recycle_requested for r in self._live))

    # --- deciding (blocking: reads /proc, may trim) ----------------------------------

    def check(self) -> None:
        """Read RSS and act on :func:`budget_policy.plan`: above the high-water mark drop
        idle recognisers (then trim and read again), then mark as many live ones as it
        takes. ``held`` is False when over the budget with nothing left to do."""
        if self.trim_due:
            self.trim_due = False
            self._trim()
        self.rss = self._read()
        self._measure_growth()
        self._measure_slowdown()
        if not self.recycle:
            self.held, self.near = not self.over, False
            return
        with self._lock:
            live = list(self._live)
        self.expected_wait = budget_policy.expected_wait(
            budget_policy.DEFAULT_WAIT if self.wait is None else self.wait,
            self.slowdown or 1.0, self.wall_wait or 0.0,
            max((r.waited for r in live), default=0.0))
        if self._plan().near:
            self._drop_idle()
        with self._lock:
            live = list(self._live)
        decision = self._plan(live)
        hurried = forced = 0
        for victim in live:
            if victim in decision.mark:
                victim.request_recycle()
            hurry = victim in decision.hurry
            hurried += hurry and not victim.hurry
            victim.hurry = hurry
            forced += victim in decision.force and not victim.force
            victim.force = victim in decision.force
        if hurried:
            logger.info("memory: recognisers hold %d MB, growing %d MB/s against the "
                        "budget of %d MB: %d marked swapped at their next short gap",
                        self.recognizer_bytes // MB, (self.growth or 0) // MB,
                        self.budget // MB, hurried)
        if forced:
            logger.warning("memory: recognisers hold %d MB, over the budget of %d MB, and "
                           "%d hurried found no gap between words: swapped at their "
                           "quietest moment", self.recognizer_bytes // MB,
                           self.budget // MB, forced)
        if decision.mark:
            logger.info("memory: recognisers hold %d MB (high-water mark %d MB, budget %d "
                        "MB): recycling %d more at their next pause",
                        self.recognizer_bytes // MB, decision.high_water // MB,
                        self.budget // MB, len(decision.mark))
        if self.held and not decision.held:
            logger.warning("memory: recognisers hold %d MB, over the budget of %d MB, "
                           "and not enough can be recycled yet",
                           self.recognizer_bytes // MB, self.budget // MB)
        self.held, self.near, self.high_water = (decision.held, decision.near,
                                                 decision.high_water)

    def _plan(self, live: Sequence[RecyclingRecognizer] = ()) -> budget_policy.Plan:
        replacement = self.recognizer_mb * MB
        return budget_policy.plan(
            used=self.recognizer_bytes, budget=self.budget, growth=self.growth or 0.0,
            wait=self.expected_wait, replacement=replacement, min_audio=self.min_audio,
            live=[budget_policy.Candidate(r, r.audio_seconds, r.recycle_requested,
                                          r.waited, r.hurried) for r in live])

    def _drop_idle(self) -> None:
        dropped = 0
        while self.pool is not None and self.pool.drop_idle():
            dropped += 1
            self.recycled(IDLE)
            self._trim()
            self.rss = self._read()
            if not self._plan().near:
                break
        if dropped:
            self._last = None  # not growth
            logger.info("memory: dropped %d idle recogniser(s); recognisers now hold "
                        "%d MB of %d", dropped, self.recognizer_bytes // MB,
                        self.budget // MB)

    def _measure_growth(self) -> None:
        """The recognisers' growth (bytes/s) from checks between which nothing was freed."""
        now = self._clock()
        with self._lock:
            frees = sum(self.recycles.values())
        last, self._last = self._last, (now, self.rss, frees)
        if last is None or last[2] != frees or now <= last[0]:
            return
        rate = max(0.0, (self.rss - last[1]) / (now - last[0]))
        self.growth = budget_policy.smooth(self.growth, rate)

    def _measure_slowdown(self) -> None:
        """Wall seconds a second of audio took to decode since the last check (all
        streams together), smoothed; unchanged when nothing was decoded."""
        with self._lock:
            (audio, wall), self._decoding = self._decoding, [0.0, 0.0]
        if audio > 0:
            self.slowdown = budget_policy.smooth(self.slowdown, wall / audio)

    async def run(self, *, task_status: Any = None) -> None:
        """Check every :data:`CHECK_INTERVAL` seconds while :meth:`due`, until cancelled
        (a service)."""
        import trio

        if task_status is not None:
            task_status.started()
        try:
            while True:
                if self.due():
                    await trio.to_thread.run_sync(self.check)
                await trio.sleep(CHECK_INTERVAL)  # read each time: the suite shortens it
        finally:
            if self.prewarmer is not None:
                self.prewarmer.close()
