"""The recognisers' memory budget: measured from ``/proc``, held by recycling recognisers.

A recogniser of a dynamic-graph model caches the part of the graph it has expanded and
never lets it go: fed ever-new speech it grows by about 200 MB in its first minutes
and a few MB a minute after that. Vosk offers no limit, so the budget is kept from the
outside:

* the daemon's RSS is read from ``/proc/self/status``; what it holds above the RSS
  measured after the model was loaded (before any recogniser) is the recognisers'
  share (:class:`MemoryBudget.baseline`);
* when that share passes ``recognizer.memory_budget_mb``, idle pooled recognisers are
  dropped first (most audio decoded first), then live ones are *recycled*: marked, and
  replaced by their stream at the next moment between utterances
  (:class:`RecyclingRecognizer`), so no audio is skipped or decoded twice and times go
  on where the old recogniser stopped;
* after a recogniser is freed, ``malloc_trim(0)`` hands glibc's free pages back to the
  kernel (without it, most of a freed recogniser stays in the process's RSS).

No trio here but :meth:`MemoryBudget.run`, the watching loop; everything else is
thread-safe bookkeeping, called from worker threads and the event loop alike.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge.protocols.events import Utterance

if TYPE_CHECKING:
    from edge.asr.recognizer import Recognizer, RecognizerFactory, RecognizerPool

logger = logging.getLogger(__name__)

MB = 1024 * 1024
#: How often the daemon reads its RSS (seconds).
CHECK_INTERVAL = 1.0
#: Audio (seconds) a live recogniser decodes before it may be recycled again: a fresh
#: recogniser costs about twice the CPU of a warm one, so recycling is never a loop
#: per utterance; a budget that cannot hold recognisers this young is not held.
MIN_AUDIO_BEFORE_RECYCLE = 30.0

# Reasons, in edge_recognizer_recycled_total{reason}
IDLE = "idle"  # an idle pooled recogniser dropped for the budget
LIVE = "live"  # a live stream's recogniser replaced between utterances for the budget
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

    def status(self) -> dict[str, Any]:
        return {"rss_bytes": self.rss, "model_bytes": self.model,
                "recognizers": self.recognizers,
                "recognizer_bytes": self.recognizer_bytes, "budget_bytes": self.budget,
                "recycled": dict(self.recycles), "recycling": self.pending,
                "held": self.held}


class MemoryBudget:
    """What the recognisers hold above the model, against ``budget_mb``.

    ``baseline`` is the process's RSS with the model loaded and no recogniser (read by
    the caller right after loading). ``pool`` (the recogniser pool, if any) gives up
    idle recognisers. :meth:`check` decides (called every second by :meth:`run`);
    :meth:`factory` wraps a recogniser factory so its recognisers can be recycled.
    ``read`` and ``trim`` are :func:`read_rss` and :func:`malloc_trim` (stand-ins in
    tests).
    """

    def __init__(self, budget_mb: int, baseline: int, *, recognizer_mb: int = 0,
                 reserved: int = 0, pool: RecognizerPool | None = None,
                 recycle: bool = True, read: Callable[[], int] = read_rss,
                 trim: Callable[[], bool] = malloc_trim, min_audio: float | None = None
                 ) -> None:
        self.budget = budget_mb * MB
        self.baseline = baseline
        self.recognizer_mb = recognizer_mb
        self.reserved = reserved  # recognisers held outside sessions (the room's)
        self.pool = pool
        if pool is not None:
            pool.accepts_idle = lambda: not self.over
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
        self.trim_due = False  # a recogniser was freed where trimming would block

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
                        recycles=recycles, pending=pending, held=self.held)

    # --- deciding (blocking: reads /proc, may trim) ----------------------------------

    def check(self) -> None:
        """Read RSS; over the budget, drop idle recognisers (then trim and read again),
        then mark the live recogniser with the most audio decoded for recycling, one
        at a time. ``held`` is False when over with nothing left to do."""
        if self.trim_due:
            self.trim_due = False
            self._trim()
        self.rss = self._read()
        if not self.over:
            self.held = True
            return
        if not self.recycle:
            self.held = False
            return
        dropped = 0
        while self.pool is not None and self.pool.drop_idle():
            dropped += 1
            self.recycled(IDLE)
            self._trim()
            self.rss = self._read()
            if not self.over:
                break
        if dropped:
            logger.info("memory: dropped %d idle recogniser(s); recognisers now hold "
                        "%d MB of %d", dropped, self.recognizer_bytes // MB,
                        self.budget // MB)
        if not self.over:
            self.held = True
            return
        with self._lock:
            live = list(self._live)
        if not live:
            # No recogniser holds anything: what is above the model is not theirs to
            # give back (the heap's fragments, the journal's cache).
            self.held = True
            return
        if any(r.recycle_requested for r in live):
            self.held = True  # one at a time: wait for it to be replaced
            return
        candidates = [r for r in live if r.audio_seconds >= self.min_audio]
        if not candidates:
            if self.held:
                logger.warning("memory: recognisers hold %d MB, over the budget of %d MB, "
                               "and none can be recycled yet", self.recognizer_bytes // MB,
                               self.budget // MB)
            self.held = False
            return
        victim = max(candidates, key=lambda r: r.audio_seconds)
        victim.request_recycle()
        self.held = True
        logger.info("memory: recognisers hold %d MB, over the budget of %d MB: recycling "
                    "one (%.0f s of audio) at its next pause", self.recognizer_bytes // MB,
                    self.budget // MB, victim.audio_seconds)

    async def run(self, *, task_status: Any = None) -> None:
        """Check every :data:`CHECK_INTERVAL` seconds until cancelled (a service)."""
        import trio

        if task_status is not None:
            task_status.started()
        while True:
            await trio.to_thread.run_sync(self.check)
            await trio.sleep(CHECK_INTERVAL)  # read each time: the suite shortens it


class RecyclingRecognizer:
    """A stream's recogniser that can be swapped for a new one between utterances.

    Wraps what ``factory`` makes for the stream. When :meth:`request_recycle` was
    called, the recogniser is retired (freed, not pooled; then ``malloc_trim``) at the
    first moment nothing is pending in it: right after a final that ended the audio fed
    so far (a turn's flush, or Vosk's endpoint at the end of a call). The next audio
    goes to a new one from ``factory``, and its results are shifted by the audio fed
    before it, so the stream's times go on without a jump.
    """

    def __init__(self, factory: RecognizerFactory, sample_rate: int,
                 phrases: Sequence[str] | None, budget: MemoryBudget) -> None:
        self._factory = factory
        self.sample_rate = sample_rate
        self._phrases = phrases
        self._budget = budget
        self._inner: Recognizer | None = factory(sample_rate, phrases)
        self._fed = 0  # samples fed to this stream
        self._inner_start = 0  # samples fed before the current inner recogniser
        self._inner_life = _audio_seconds(self._inner)  # its audio before this stream
        self.recycle_requested = False
        self.recycles = 0
        budget._add(self)

    @property
    def audio_seconds(self) -> float:
        """Audio the current inner recogniser has decoded over its life."""
        if self._inner is None:
            return 0.0
        return self._inner_life + (self._fed - self._inner_start) / self.sample_rate

    def request_recycle(self) -> None:
        self.recycle_requested = True

    def accept(self, pcm: bytes) -> list[Utterance]:
        inner = self._inner
        if inner is None:
            inner = self._inner = self._factory(self.sample_rate, self._phrases)
            self._inner_start, self._inner_life = self._fed, _audio_seconds(inner)
        offset = self._offset_ms()
        self._fed += len(pcm) // 2
        out = [_shift(u, offset) for u in inner.accept(pcm)]
        self._maybe_retire()
        return out

    def flush(self) -> Utterance | None:
        if self._inner is None:
            return None
        final = self._inner.flush()
        out = None if final is None else _shift(final, self._offset_ms())
        self._maybe_retire()
        return out

    def close(self) -> None:
        """Cheap enough for the event loop: a recogniser marked for recycling is freed
        (not pooled) and the heap is trimmed at the budget's next check."""
        inner, self._inner = self._inner, None
        self._budget._remove(self)
        if inner is not None:
            if self.recycle_requested:
                _retire(inner)
                del inner
                self._budget.recycled(LIVE)
                self._budget.trim_due = True  # on the event loop: trimmed at the next check
            else:
                inner.close()

    def _offset_ms(self) -> int:
        return round(1000 * self._inner_start / self.sample_rate)

    def _maybe_retire(self) -> None:
        inner = self._inner
        if not self.recycle_requested or inner is None or not _at_boundary(inner):
            return
        self._inner = None
        self.recycle_requested = False
        self.recycles += 1
        _retire(inner)
        del inner
        self._budget.recycled(LIVE)
        self._budget._trim()


def _audio_seconds(recognizer: Recognizer) -> float:
    value = getattr(recognizer, "audio_seconds", 0.0)
    return float(value) if isinstance(value, int | float) else 0.0


def _at_boundary(recognizer: Recognizer) -> bool:
    return bool(getattr(recognizer, "at_boundary", False))


def _retire(recognizer: Recognizer) -> None:
    retire = getattr(recognizer, "retire", None)
    if retire is not None:
        retire()
    else:
        recognizer.close()


def _shift(utterance: Utterance, offset_ms: int) -> Utterance:
    """``utterance`` on the stream's clock (its recogniser started ``offset_ms`` in)."""
    if not offset_ms:
        return utterance
    words = tuple(dataclasses.replace(w, start_ms=w.start_ms + offset_ms,
                                      end_ms=w.end_ms + offset_ms) for w in utterance.words)
    return dataclasses.replace(utterance, start_ms=utterance.start_ms + offset_ms,
                               end_ms=utterance.end_ms + offset_ms, words=words)
