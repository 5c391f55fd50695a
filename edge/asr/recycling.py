"""Recycling a stream's recogniser between utterances, and its pre-warmed replacement.

:class:`RecyclingRecognizer` wraps a stream's recogniser; once marked by the memory
budget (:mod:`edge.asr.memory`) it is swapped at the first moment it holds nothing of
the stream. :class:`Prewarmer` prepares the replacement meanwhile: a fresh recogniser
decodes the packaged warm-up speech (:func:`edge.asr.warmup.warmup_speech`) in one
thread of its own at the lowest CPU priority, so at the swap the stream gets a warm
recogniser and captions do not slow down. A swap never waits for it: if it is not
ready at the pause, the stream takes what its factory gives (the pool, or fresh), and
the late one goes to the pool (or is freed).

Near the budget (to be passed within :data:`edge.asr.budget_policy.GRACE`) a marked
recogniser is *hurried*: it is swapped at the next short gap between words
(:data:`GAP_MS` without speech, by the level rule of
:class:`edge.audio.pauses.PauseDetector`, which hears the whole stream). The audio up to
the gap is finalised (one caption split in two), the rest goes to the replacement, on
the same clock. Over the budget, one hurried for
:data:`edge.asr.budget_policy.FORCE_AFTER` without a gap is *forced*: swapped at the
quietest 10 ms of its next audio.

No trio here: everything is called from worker threads (and ``close`` from the loop).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from edge.asr.warmup import lower_this_threads_priority, warmup_speech
from edge.protocols.events import Utterance

if TYPE_CHECKING:
    from edge.asr.memory import MemoryBudget
    from edge.asr.recognizer import Recognizer, RecognizerFactory

logger = logging.getLogger(__name__)

LIVE = "live"  # a live stream's recogniser replaced between utterances for the budget
GAP = "gap"  # a hurried one replaced at a short gap between words, at the budget
FORCED = "forced"  # a hurried one with no gap, replaced at its quietest 10 ms, over it
#: A gap between words this long (ms without speech) is where a hurried recogniser is
#: swapped: longer than the stops inside a word, shorter than a turn's pause.
GAP_MS = 150
#: Warm-up speech a replacement decodes (seconds; the packaged speech is 16 s).
PREWARM_SECONDS = 16.0
_SLICE = 3200  # bytes of 16 kHz audio per call (100 ms): a cancel is seen this soon


class Supplier(Protocol):
    """Where pre-warmed recognisers come from and go (a :class:`RecognizerPool`)."""

    def fresh(self, sample_rate: int, phrases: Sequence[str] | None) -> Recognizer: ...

    def adopt(self, recognizer: Recognizer, phrases: Sequence[str] | None) -> Recognizer: ...

    def offer(self, recognizer: Recognizer, phrases: Sequence[str] | None) -> None: ...


class Ticket:
    """A replacement on order: :meth:`take` it at the swap (``None`` if not ready)."""

    def __init__(self, sample_rate: int, phrases: Sequence[str] | None) -> None:
        self.sample_rate = sample_rate
        self.phrases = phrases
        self._lock = threading.Lock()
        self._ready: Recognizer | None = None
        self.cancelled = False

    def take(self) -> Recognizer | None:
        """The warm recogniser if it is ready; otherwise the order is cancelled."""
        with self._lock:
            ready, self._ready = self._ready, None
            self.cancelled = True
            return ready

    def fulfil(self, recognizer: Recognizer) -> bool:
        """``False`` if the order was cancelled first (the caller keeps it)."""
        with self._lock:
            if self.cancelled:
                return False
            self._ready = recognizer
            return True


class Prewarmer:
    """One low-priority thread warming replacements, one at a time.

    At most one warmed replacement waits for its swap: the next order is warmed only once
    it was taken or cancelled, so pre-warming holds at most one recogniser's memory
    (which the budget's headroom counts). A stream at another sample rate than the
    warm-up speech's gets its replacement made ahead but not fed.
    """

    def __init__(self, supplier: Supplier, *, on_freed: Callable[[], None] = lambda: None,
                 speech: tuple[bytes, int] | None = None) -> None:
        self.supplier = supplier
        self._on_freed = on_freed
        self._speech = speech
        self._orders: queue.SimpleQueue[Ticket | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._waiting: Ticket | None = None  # warmed, not yet taken
        self._idle = threading.Condition()
        self.made = 0  # replacements warmed in time
        self.late = 0  # orders whose swap came first (begun or not)

    def order(self, sample_rate: int, phrases: Sequence[str] | None) -> Ticket:
        ticket = Ticket(sample_rate, phrases)
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name="edge-prewarm",
                                            daemon=True)
            self._thread.start()
        self._orders.put(ticket)
        return ticket

    def close(self) -> None:
        if self._thread is not None:
            self._orders.put(None)
            self._thread = None

    def _main(self) -> None:
        lower_this_threads_priority()
        while (ticket := self._orders.get()) is not None:
            if ticket.cancelled:
                self.late += 1
                continue
            try:
                self._serve(ticket)
            except Exception:
                logger.exception("a replacement recogniser could not be warmed")

    def _serve(self, ticket: Ticket) -> None:
        with self._idle:  # one warmed replacement at a time
            while self._waiting is not None and not self._waiting.cancelled:
                self._idle.wait(timeout=1.0)
            self._waiting = None
        if ticket.cancelled:
            self.late += 1
            return
        if self._speech is None:
            self._speech = warmup_speech()
        pcm, rate = self._speech
        recognizer = self.supplier.fresh(ticket.sample_rate, ticket.phrases)
        step = _SLICE * rate // 16000
        end = min(len(pcm), 2 * int(rate * PREWARM_SECONDS))
        if rate != ticket.sample_rate:
            end = 0
        for i in range(0, end, step):
            if ticket.cancelled:
                break
            recognizer.accept(pcm[i:i + step])
        else:
            recognizer.flush()
            reset = getattr(recognizer, "reset", None)
            if reset is not None:
                reset()
            if ticket.fulfil(recognizer):
                with self._idle:
                    self._waiting = ticket
                self.made += 1
                return
            self.late += 1
        self.supplier.offer(recognizer, ticket.phrases)  # the pool keeps it, or it is freed
        del recognizer
        self._on_freed()

    def taken(self) -> None:
        """A ticket was taken or cancelled: the next order may be warmed."""
        with self._idle:
            self._idle.notify_all()


class RecyclingRecognizer:
    """A stream's recogniser that can be swapped for a new one between utterances.

    Wraps what ``factory`` makes for the stream. When :meth:`request_recycle` was
    called, the recogniser is retired (freed, not pooled; then ``malloc_trim``) at the
    first moment nothing is pending in it: right after a final that ended the audio fed
    so far (a turn's flush, or Vosk's endpoint at the end of a call). The next audio
    goes to the pre-warmed replacement if it is ready, else to a new one from
    ``factory``; its results are shifted by the audio fed before it, so the stream's
    times go on without a jump.
    """

    def __init__(self, factory: RecognizerFactory, sample_rate: int,
                 phrases: Sequence[str] | None, budget: MemoryBudget) -> None:
        from edge.audio.pauses import BLOCK_FRAMES, FRAME_MS, PauseDetector  # numpy

        self._factory = factory
        self.sample_rate = sample_rate
        self._phrases = phrases
        self._budget = budget
        self._inner: Recognizer | None = factory(sample_rate, phrases)
        self._fed = 0  # samples fed to this stream
        self._inner_start = 0  # samples fed before the current inner recogniser
        self._inner_life = _audio_seconds(self._inner)  # its audio before this stream
        self.recycle_requested = False
        self._hurry = False  # set by the budget: swap at the next short gap
        self._hurried_at = 0.0
        self.force = False  # set by the budget: swap at the quietest moment of the next audio
        self._marked_at = 0.0
        self._marked_fed = 0  # samples fed when it was marked
        self._heard_at = 0.0  # when the stream last gave audio (the budget's clock)
        self._gaps = PauseDetector()  # the stream's level, for a hurried swap's gap
        self._floor_ms = FRAME_MS * BLOCK_FRAMES  # speech before its first floor block
        self._ticket: Ticket | None = None
        self.recycles = 0
        self.prewarmed = 0  # swaps to a pre-warmed replacement
        budget._add(self)

    @property
    def audio_seconds(self) -> float:
        """Audio the current inner recogniser has decoded over its life."""
        if self._inner is None:
            return 0.0
        return self._inner_life + (self._fed - self._inner_start) / self.sample_rate

    @property
    def waited(self) -> float:
        """Seconds it has waited for its pause since it was marked, up to its stream's
        latest audio (a stream that gives none holds still, and grows no more); 0 when
        it is not marked."""
        if not self.recycle_requested:
            return 0.0
        return max(0.0, self._heard_at - self._marked_at)

    @property
    def hurry(self) -> bool:
        return self._hurry

    @hurry.setter
    def hurry(self, value: bool) -> None:
        if value and not self._hurry:
            self._hurried_at = self._budget.now()
        self._hurry = value

    @property
    def hurried(self) -> float:
        """Seconds it has looked for a gap since it was hurried, up to its stream's
        latest audio; 0 when it is not hurried."""
        if not self._hurry:
            return 0.0
        return max(0.0, self._heard_at - self._hurried_at)

    def request_recycle(self) -> None:
        """Mark for recycling at the next pause, and order a warm replacement."""
        self._marked_at, self._marked_fed = self._budget.now(), self._fed
        self.recycle_requested = True
        prewarmer = self._budget.prewarmer
        if prewarmer is not None and self._ticket is None:
            self._ticket = prewarmer.order(self.sample_rate, self._phrases)

    def accept(self, pcm: bytes) -> list[Utterance]:
        self._heard_at = self._budget.now()
        cut = None
        if self.force and self.recycle_requested:
            from edge.audio.pauses import quietest_cut  # numpy

            cut = quietest_cut(pcm, self.sample_rate)
        gap = self._gap(pcm)
        if cut is None:
            cut = gap
        if cut is None:
            return self._accept(pcm)
        out = self._accept(pcm[:cut]) if cut else []
        inner = self._inner
        if inner is not None and self.recycle_requested:  # not swapped at a final meanwhile
            final = inner.flush()
            if final is not None:
                out.append(final.later(self._offset_ms()))
            self._swap(GAP if gap is not None and gap <= cut else FORCED)
        return out + self._accept(pcm[cut:]) if cut < len(pcm) else out

    def _accept(self, pcm: bytes) -> list[Utterance]:
        inner = self._inner
        if inner is None:
            inner = self._start(self._factory(self.sample_rate, self._phrases))
        offset = self._offset_ms()
        self._fed += len(pcm) // 2
        started = time.monotonic()
        got = inner.accept(pcm)
        self._budget.decoded(len(pcm) / 2 / self.sample_rate, time.monotonic() - started)
        out = [u.later(offset) for u in got]
        self._maybe_retire()
        return out

    def _gap(self, pcm: bytes) -> int | None:
        """Where in ``pcm`` (bytes) a hurried recogniser reaches a short gap, or None.
        Only after speech told from a floor: a stream that began in speech has the
        speech's level as its floor (and its first frames as speech) until a quieter
        moment, and no gap is trusted before it."""
        gaps = self._gaps
        at = None
        if (self.hurry and self.recycle_requested and gaps.speech
                and gaps.speech[-1][0] >= self._floor_ms):
            at = gaps.bytes_until(GAP_MS, pcm, self.sample_rate)
        gaps.feed(pcm, self.sample_rate)
        return at

    def flush(self) -> Utterance | None:
        if self._inner is None:
            return None
        final = self._inner.flush()
        out = None if final is None else final.later(self._offset_ms())
        self._maybe_retire()
        return out

    def close(self) -> None:
        """Cheap enough for the event loop: a recogniser marked for recycling is freed
        (not pooled) and the heap is trimmed at the budget's next check."""
        inner, self._inner = self._inner, None
        self._budget._remove(self)
        warm = self._take_ticket()
        if warm is not None:  # the stream ended before its pause: the pool may keep it
            assert self._budget.prewarmer is not None
            self._budget.prewarmer.supplier.offer(warm, self._phrases)
            del warm
        if inner is not None:
            if self.recycle_requested:
                _retire(inner)
                del inner
                self._budget.recycled(LIVE)
                self._budget.trim_due = True  # on the event loop: trimmed at the next check
            else:
                inner.close()

    def _start(self, inner: Recognizer) -> Recognizer:
        self._inner = inner
        self._inner_start, self._inner_life = self._fed, _audio_seconds(inner)
        return inner

    def _take_ticket(self) -> Recognizer | None:
        """The pre-warmed replacement if it is ready (the order is over either way)."""
        ticket, self._ticket = self._ticket, None
        prewarmer = self._budget.prewarmer
        if ticket is None or prewarmer is None:
            return None
        warm = ticket.take()
        prewarmer.taken()
        return warm

    def _offset_ms(self) -> int:
        return round(1000 * self._inner_start / self.sample_rate)

    def _maybe_retire(self) -> None:
        inner = self._inner
        if self.recycle_requested and inner is not None and _at_boundary(inner):
            self._swap(LIVE)

    def _swap(self, reason: str) -> None:
        """Retire the inner recogniser (it holds nothing of the stream) for the
        pre-warmed replacement, or none yet (the next audio makes one)."""
        inner, self._inner = self._inner, None
        assert inner is not None
        self.hurry = self.force = self.recycle_requested = False
        self.recycles += 1
        if reason == LIVE:  # a hurried swap's wait was cut short: not the pauses' measure
            self._budget.swapped((self._fed - self._marked_fed) / self.sample_rate,
                                 self._budget.now() - self._marked_at)
        _retire(inner)
        del inner
        self._budget.recycled(reason)
        warm = self._take_ticket()
        if warm is not None:
            prewarmer = self._budget.prewarmer
            assert prewarmer is not None
            self._start(prewarmer.supplier.adopt(warm, self._phrases))
            self.prewarmed += 1
            self._budget.prewarmed_swap()
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
