"""The recogniser as sessions and the room see it: a small blocking protocol, a pool
that keeps recognisers warm, and the wrapper that labels finals by speaker. No vosk
here (:mod:`edge.asr.vosk` is the binding).

A :class:`RecognizerPool` keeps recognisers warm between streams. With a dynamic-graph
model (``HCLr.fst`` + ``Gr.fst``, as the small models are) each ``KaldiRecognizer``
expands and caches its own part of the decoding graph as it meets speech: a fresh one
spends about four times the CPU of a warm one on its first utterances (0.6 s on the
first 100 ms of speech on the development machine) and grows by tens of MB. A reset
recogniser keeps its cache, so the next stream starts warm.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from edge.protocols.events import Speaker, Utterance

if TYPE_CHECKING:
    from edge.speakers import SpeakerTrack

logger = logging.getLogger(__name__)

_TAKE_WARMING_WAIT = 0.25  # seconds a stream waits for a warm-up slice to finish


class Recognizer(Protocol):
    """What a session needs from a recogniser (Vosk here; stand-ins in benchmarks)."""

    def accept(self, pcm: bytes) -> list[Utterance]:
        """Decode mono s16le PCM; return the finals reached and then the latest partial."""
        ...

    def flush(self) -> Utterance | None:
        """End the stream: return the last final, if any speech is pending."""
        ...

    def close(self) -> None:
        """The stream is over, nothing more is fed (a pooled recogniser goes back to its
        pool). Cheap and non-blocking: safe on the event loop."""
        ...


@runtime_checkable
class Reusable(Recognizer, Protocol):
    """A recogniser that can start a new stream after :meth:`reset` (blocking)."""

    sample_rate: int

    @property
    def audio_seconds(self) -> float:
        """Audio decoded over the recogniser's whole life."""
        ...

    def reset(self) -> None: ...

RecognizerFactory = Callable[[int, Sequence[str] | None], Recognizer]

class LabelingRecognizer:
    """A recogniser whose finals carry a speaker label.

    The label is decided in the call that produced the final, so in the same worker
    thread: the labeler's arithmetic (a few dot products) and its occasional stat of the
    voiceprint file never run on the event loop. Partials are passed through unlabelled
    (Vosk computes vectors for finals only).
    """

    def __init__(self, inner: Recognizer, track: SpeakerTrack) -> None:
        self.inner = inner
        self.track = track

    def accept(self, pcm: bytes) -> list[Utterance]:
        return [self._label(u) for u in self.inner.accept(pcm)]

    def flush(self) -> Utterance | None:
        final = self.inner.flush()
        return None if final is None else self._label(final)

    def close(self) -> None:
        self.inner.close()

    def _label(self, utterance: Utterance) -> Utterance:
        if not utterance.is_final:
            return utterance
        decision = self.track.label(utterance.speaker_vector,
                                    duration_ms=max(0, utterance.end_ms - utterance.start_ms))
        if decision.label is None:
            return utterance
        return dataclasses.replace(utterance, speaker=Speaker(
            label=decision.label, id=decision.speaker_id, confidence=decision.confidence,
            role=decision.role))


class RecognizerPool:
    """A recogniser factory that reuses warm recognisers (see the module's docstring).

    Call it like a :data:`RecognizerFactory` (blocking: in a worker thread). Streams
    without a grammar get an idle recogniser of their sample rate when there is one
    (reset, in the caller's thread); a recogniser goes back when its stream is closed,
    unless it failed, ``size`` are already idle, or it has decoded ``retire_after``
    seconds of audio in all (a bound on how far its graph cache can grow). Grammar
    streams, and recognisers that cannot be reset, are never pooled.
    """

    def __init__(self, factory: RecognizerFactory, size: int,
                 retire_after: float = 4 * 3600.0) -> None:
        self._factory = factory
        self.size = size
        self._retire_after = retire_after
        self._idle: list[Reusable] = []
        self._lock = threading.Lock()
        self.created = 0
        self.reused = 0
        self.lent = 0  # leases not yet closed
        # The recogniser being warmed (edge.asr.warmup), if any; a stream that finds
        # no idle one takes it (``taken_warming``). ``_warm_lock`` is held while a
        # slice of warm-up speech is decoded in it.
        self._warming: Reusable | None = None
        self._warm_lock = threading.Lock()
        self.warmed = 0
        self.taken_warming = 0
        # Set by the warm-up service: off, waiting, warming or warm, and its target.
        self.warm_state = "off"
        self.warm_target = 0
        # Whether a recogniser may be kept idle now (the memory budget says no while
        # recognisers are over it); ended streams' recognisers are dropped otherwise.
        self.accepts_idle: Callable[[], bool] = lambda: True
        self.retired = 0  # recognisers let go after retire_after seconds of audio
        self.dropped = 0  # recognisers let go at the end of a stream, over the budget

    @property
    def idle(self) -> int:
        return len(self._idle)

    def status(self) -> dict[str, int | str]:
        """The pool at a glance, for ``/healthz`` and ``/metrics``."""
        return {"state": self.warm_state, "warm": self.idle, "target": self.warm_target,
                "in_use": self.lent, "fresh": self.created, "reused": self.reused,
                "warmed": self.warmed, "taken_warming": self.taken_warming,
                "warming_now": 0 if self._warming is None else 1}

    @property
    def held(self) -> int:
        """Recognisers the pool has: idle, or lent to a stream that will give them back."""
        return len(self._idle) + self.lent

    # --- warming (edge.asr.warmup drives these, in its own thread) -------------------

    def begin_warming(self, sample_rate: int) -> Reusable | None:
        """A fresh recogniser to warm (blocking), registered so that a stream finding
        no idle recogniser takes it; ``None`` if the factory's are not reusable."""
        recognizer = self._factory(sample_rate, None)
        if not isinstance(recognizer, Reusable):
            return None
        with self._lock:
            self._warming = recognizer
        return recognizer

    def warm_slice(self, recognizer: Reusable, pcm: bytes) -> bool:
        """Decode one short slice of warm-up speech (blocking); ``False`` once a stream
        has taken the recogniser (stop warming it)."""
        with self._warm_lock:
            if self._warming is not recognizer:
                return False
            recognizer.accept(pcm)
            return True

    def end_warming(self, recognizer: Reusable) -> bool:
        """Finish warming (blocking: flush and reset) and make the recogniser idle;
        ``False`` if a stream took it first."""
        with self._warm_lock:
            if self._warming is not recognizer:
                return False
            recognizer.flush()
            recognizer.reset()
            with self._lock:
                self._warming = None
                if len(self._idle) >= self.size:
                    return True  # streams gave enough back meanwhile: not needed
                self._idle.append(recognizer)
                self.warmed += 1
        return True

    def abandon_warming(self, recognizer: Reusable) -> None:
        with self._lock:
            if self._warming is recognizer:
                self._warming = None

    def _take_warming(self, sample_rate: int) -> Reusable | None:
        # Waits for the slice in progress only briefly: it runs at idle priority and may
        # be starved by the very load this session adds (a priority inversion). A
        # session that finds it still busy gets a fresh recogniser instead.
        if not self._warm_lock.acquire(timeout=_TAKE_WARMING_WAIT):
            return None
        try:
            with self._lock:
                warming = self._warming
                if warming is None or warming.sample_rate != sample_rate:
                    return None
                self._warming = None
                return warming
        finally:
            self._warm_lock.release()

    def __call__(self, sample_rate: int, phrases: Sequence[str] | None = None) -> Recognizer:
        if phrases or self.size <= 0:
            return self._factory(sample_rate, phrases)
        with self._lock:
            warm = next((r for r in self._idle if r.sample_rate == sample_rate), None)
            if warm is not None:
                self._idle.remove(warm)
        taken = False
        if warm is None:
            warm = self._take_warming(sample_rate)
            taken = warm is not None
        if warm is not None:
            try:
                warm.reset()
            except Exception:
                logger.exception("a pooled recogniser could not be reset; creating another")
            else:
                if taken:
                    self.taken_warming += 1
                else:
                    self.reused += 1
                return self._lease(warm)
        recognizer = self._factory(sample_rate, None)
        self.created += 1
        return self._lease(recognizer) if isinstance(recognizer, Reusable) else recognizer

    def _lease(self, recognizer: Reusable) -> _Lease:
        with self._lock:
            self.lent += 1
        return _Lease(recognizer, self)

    def _give_back(self, recognizer: Reusable | None) -> None:
        """A lease ended; ``recognizer`` is ``None`` when it failed or was retired
        (dropped)."""
        with self._lock:
            self.lent -= 1
            if recognizer is None or len(self._idle) >= self.size:
                return
            if recognizer.audio_seconds >= self._retire_after:
                self.retired += 1
            elif self.accepts_idle():
                self._idle.append(recognizer)
            else:
                self.dropped += 1

    # --- pre-warmed replacements (edge.asr.recycling.Prewarmer's supplier) -----------

    def fresh(self, sample_rate: int, phrases: Sequence[str] | None) -> Recognizer:
        """A new recogniser from the model (blocking), not counted as lent."""
        return self._factory(sample_rate, phrases or None)

    def adopt(self, recognizer: Recognizer, phrases: Sequence[str] | None) -> Recognizer:
        """``recognizer`` (made by :meth:`fresh`) lent to a stream: pooled at its end
        like any other (grammar streams' are never pooled)."""
        if phrases or self.size <= 0 or not isinstance(recognizer, Reusable):
            return recognizer
        return self._lease(recognizer)

    def offer(self, recognizer: Recognizer, phrases: Sequence[str] | None) -> None:
        """Keep ``recognizer`` idle if the pool has room and the budget allows; else it
        is let go (freed once the caller drops it)."""
        if phrases or not isinstance(recognizer, Reusable):
            recognizer.close()
            return
        with self._lock:
            if len(self._idle) < self.size and self.accepts_idle():
                self._idle.append(recognizer)

    def drop_idle(self) -> bool:
        """Let the idle recogniser with the most audio decoded go (the memory budget's
        first resort); ``False`` if none is idle. The caller trims the heap."""
        with self._lock:
            if not self._idle:
                return False
            self._idle.remove(max(self._idle, key=lambda r: r.audio_seconds))
        return True


class _Lease:
    """A pooled recogniser lent to one stream; :meth:`close` gives it back.

    A recogniser that raised is not given back: its state is unknown.
    """

    def __init__(self, inner: Reusable, pool: RecognizerPool) -> None:
        self.inner = inner
        self._pool: RecognizerPool | None = pool
        self._failed = False

    def accept(self, pcm: bytes) -> list[Utterance]:
        try:
            return self.inner.accept(pcm)
        except BaseException:
            self._failed = True
            raise

    def flush(self) -> Utterance | None:
        try:
            return self.inner.flush()
        except BaseException:
            self._failed = True
            raise

    @property
    def audio_seconds(self) -> float:
        return self.inner.audio_seconds

    @property
    def at_boundary(self) -> bool:
        return bool(getattr(self.inner, "at_boundary", False))

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool._give_back(None if self._failed else self.inner)

    def retire(self) -> None:
        """End the lease without giving the recogniser back: it is freed (memory)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool._give_back(None)
