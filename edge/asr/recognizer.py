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

    @property
    def idle(self) -> int:
        return len(self._idle)

    def __call__(self, sample_rate: int, phrases: Sequence[str] | None = None) -> Recognizer:
        if phrases or self.size <= 0:
            return self._factory(sample_rate, phrases)
        with self._lock:
            warm = next((r for r in self._idle if r.sample_rate == sample_rate), None)
            if warm is not None:
                self._idle.remove(warm)
        if warm is not None:
            try:
                warm.reset()
            except Exception:
                logger.exception("a pooled recogniser could not be reset; creating another")
            else:
                self.reused += 1
                return _Lease(warm, self)
        recognizer = self._factory(sample_rate, None)
        self.created += 1
        return _Lease(recognizer, self) if isinstance(recognizer, Reusable) else recognizer

    def _give_back(self, recognizer: Reusable) -> None:
        with self._lock:
            if len(self._idle) < self.size and recognizer.audio_seconds < self._retire_after:
                self._idle.append(recognizer)


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

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None and not self._failed:
            pool._give_back(self.inner)
