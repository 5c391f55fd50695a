"""Pauses in speech, told from the audio, for closing turns sooner than Vosk does.

Vosk's own endpointer ends an utterance once its best path has ended in enough silence
phones: about 1.4 s after speech ends with the small models, and with room tone it
often hears words in the noise and runs one utterance into the next. Vosk 0.3.45 has no
per-recogniser endpointer settings. So edge measures pauses itself, on the samples:

* the audio is cut into 10 ms frames; a frame is speech when its level is more than
  :data:`MARGIN_DB` above the room's noise floor (and above :data:`QUIET_DBFS`);
* the noise floor is the quietest 50 ms block of the last :data:`FLOOR_WINDOW_S`
  seconds, so it follows the room (a fan switched on, a quieter night) within seconds;
  before a stream's first block it is taken as :data:`QUIET_DBFS`, the quietest room,
  so that a stream opening on room tone is not taken for speech (and decoded) while
  one opening on speech, near or far, is;
* in a room so loud that its floor is above :data:`LOUD_FLOOR_DBFS`, speech cannot be
  told from the noise: no pause is reported and Vosk's endpointer alone ends turns.

:class:`TurnEnd` puts that together with the recogniser's partial text: a turn is over
when words have been heard in it and ``silence_ms`` of audio has passed since the last
speech frame. Pure arithmetic on samples, no trio; one per stream.

:class:`SilenceGate` spares the recogniser the room: once a turn is over and no speech is
heard, the audio is not decoded (only its last :data:`PREROLL_MS` is kept); at the next
speech onset the recogniser is given that pre-roll and everything after it, until the
turn is over again. Results are put back on the stream's clock by the audio left out.
A noisy room (floor over :data:`NOISY_FLOOR_DBFS`) is decoded all along.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from edge.audio.frames import frame_energies

if TYPE_CHECKING:
    from edge.protocols.events import Utterance

FRAME_MS = 10
BLOCK_FRAMES = 5  # the noise floor is measured on 50 ms blocks
FLOOR_WINDOW_S = 5.0
MARGIN_DB = 12.0
#: At or below this a frame is never speech (digital silence, a muted input).
QUIET_DBFS = -60.0
#: A room whose floor is this loud is not told from speech: no pauses are reported.
LOUD_FLOOR_DBFS = -30.0
_FULL_SCALE_POWER = 32768.0 ** 2
_QUIET_POWER = 10 ** (QUIET_DBFS / 10)  # QUIET_DBFS and MARGIN_DB as powers
_MARGIN_RATIO = 10 ** (MARGIN_DB / 10)
_SPEECH_RUNS = 2000  # minutes of speech: far more than one utterance spans
#: Vosk's word times and the level's edges differ by up to this much.
TIME_SLACK_MS = 200
#: Audio before a speech onset that is decoded with it, so that a soft first phoneme
#: (under the level rule) is not lost: the shortest with no word differing on the
#: generated quiet rooms (``bench/silence.py words``, docs/performance.md).
PREROLL_MS = 500
#: A room whose floor is this loud is decoded all along (the gate stays open): with noise
#: this close to speech (20 dB under a talker at -24 dBFS), what the recogniser makes of
#: a turn depends on the noise it heard before it, and 15-50% of the words differed.
NOISY_FLOOR_DBFS = -47.0
#: A turn in which no words were heard is given up after this much audio without speech.
GATE_HOLD_MS = 400


def quietest_cut(pcm: bytes, sample_rate: int) -> int:
    """Where to cut ``pcm`` (bytes) at its quietest: the middle of its quietest 10 ms
    frame (0 when it is shorter than a frame)."""
    per_frame = max(1, sample_rate * FRAME_MS // 1000)
    energies = frame_energies(pcm, per_frame)
    if not energies:
        return 0
    quietest = energies.index(min(energies))
    return 2 * (quietest * per_frame + per_frame // 2)


class PauseDetector:
    """How much audio has passed since the last speech frame (see the module's doc)."""

    def __init__(self) -> None:
        self._rate = 0
        self._carry = np.zeros(0, dtype=np.float32)  # samples short of a whole frame
        self._block: list[float] = []  # energies of the frames of the block in progress
        self._blocks: deque[float] = deque(
            maxlen=int(FLOOR_WINDOW_S * 1000 / (FRAME_MS * BLOCK_FRAMES)))
        self._floor = QUIET_DBFS  # dBFS: the quietest block of the window, once there is one
        self._threshold = _QUIET_POWER * _MARGIN_RATIO  # power a speech frame is over
        # ...as a frame's energy (sum of squared samples): frames are compared unscaled
        self._per_frame = 0
        self._energy_threshold = 0.0
        self._since_speech_ms = 0.0
        self._clock_ms = 0  # audio fed so far
        # (start_ms, end_ms) of the runs of speech frames, the newest last
        self.speech: deque[tuple[int, int]] = deque(maxlen=_SPEECH_RUNS)

    @property
    def paused_ms(self) -> float:
        """Audio since the last speech frame, 0 while speaking or when the room is too
        loud to tell."""
        if self._floor_dbfs() > LOUD_FLOOR_DBFS:
            return 0.0
        return self._since_speech_ms

    def feed(self, pcm: bytes, sample_rate: int) -> None:
        """Take mono s16le samples (any length, chunks of one stream in order)."""
        if sample_rate != self._rate:
            self._set_rate(sample_rate)
        energies, self._carry = self._energies(pcm)
        for energy in energies:
            self._frame(energy)

    def _energies(self, pcm: bytes) -> tuple[list[float], np.ndarray]:
        """The energies of the whole frames of the carry and ``pcm``, and the samples
        left over (the next carry)."""
        per_frame = self._per_frame
        if not self._carry.size:  # whole frames from the chunk's start: read once
            left = self._carry  # empty, unless the chunk ends inside a frame
            if rest := len(pcm) // 2 % per_frame:
                left = np.frombuffer(pcm, dtype="<i2")[-rest:].astype(np.float32)
            return frame_energies(pcm, per_frame), left
        samples = np.concatenate((self._carry,
                                  np.frombuffer(pcm, dtype="<i2").astype(np.float32)))
        whole = samples.size // per_frame * per_frame
        frames = samples[:whole].reshape(-1, per_frame)
        return np.einsum("ij,ij->i", frames, frames).tolist(), samples[whole:]

    def _set_rate(self, sample_rate: int) -> None:
        self._rate, self._carry = sample_rate, self._carry[:0]
        self._per_frame = max(1, sample_rate * FRAME_MS // 1000)
        self._energy_threshold = self._threshold * self._per_frame * _FULL_SCALE_POWER

    def bytes_until(self, pause_ms: float, pcm: bytes, sample_rate: int) -> int | None:
        """How much of ``pcm`` (bytes, whole frames) would bring the pause to
        ``pause_ms``, judged against the floor as it is now; None: not within it. Does
        not take the audio (:meth:`feed` does)."""
        if sample_rate != self._rate or self._floor_dbfs() > LOUD_FLOOR_DBFS:
            return None
        if self._since_speech_ms >= pause_ms:
            return 0
        per_frame = self._per_frame
        carry = self._carry.size
        whole = (carry + len(pcm) // 2) // per_frame * per_frame
        if whole * FRAME_MS // per_frame < pause_ms - self._since_speech_ms:
            return None  # too short to complete it
        energies, _ = self._energies(pcm)  # the carry is feed's to take
        paused = self._since_speech_ms
        threshold = self._energy_threshold
        for i, energy in enumerate(energies):
            paused = 0.0 if energy > threshold else paused + FRAME_MS
            if paused >= pause_ms:
                return 2 * ((i + 1) * per_frame - carry)
        return None

    def _frame(self, energy: float) -> None:
        """One frame (its energy: the sum of its squared samples): the floor at its
        block's end, then speech or not (the level rule: a frame's power over
        ``_threshold``, compared as energies)."""
        block = self._block
        block.append(energy)
        if len(block) == BLOCK_FRAMES:
            scale = self._per_frame * _FULL_SCALE_POWER
            self._blocks.append(sum(block) / BLOCK_FRAMES / scale)
            block.clear()
            lowest = min(self._blocks)  # once a block, not once a frame
            self._floor = _dbfs(lowest)
            self._threshold = max(_QUIET_POWER, lowest * _MARGIN_RATIO)
            self._energy_threshold = self._threshold * scale
        start, self._clock_ms = self._clock_ms, self._clock_ms + FRAME_MS
        if energy > self._energy_threshold:
            if self._since_speech_ms == 0 and self.speech:  # the run goes on
                self.speech[-1] = (self.speech[-1][0], self._clock_ms)
            else:
                self.speech.append((start, self._clock_ms))
            self._since_speech_ms = 0.0
        else:
            self._since_speech_ms += FRAME_MS

    @property
    def clock_ms(self) -> int:
        """Audio fed so far, in whole frames (ms)."""
        return self._clock_ms

    @property
    def noisy(self) -> bool:
        """The room's floor is over :data:`NOISY_FLOOR_DBFS`."""
        return self._floor_dbfs() > NOISY_FLOOR_DBFS

    def speech_from(self, start_ms: int) -> int | None:
        """Where the first speech at or after ``start_ms`` (stream time) began; None:
        none heard since."""
        first = None
        for s, e in reversed(self.speech):
            if e <= start_ms:
                break
            first = max(s, start_ms)
        return first

    def spoke_between(self, start_ms: int, end_ms: int) -> bool:
        """Whether speech was heard between these stream times (ms since the first
        sample fed)."""
        for s, e in reversed(self.speech):  # newest first: stop at the first run before
            if e <= start_ms:
                return False
            if s < end_ms:
                return True
        return False

    def _floor_dbfs(self) -> float:
        return self._floor  # before the stream's first block: the quietest a room can be


class TurnEnd:
    """When to close the utterance in progress: ``silence_ms`` of audio without speech
    after words were heard in it (``silence_ms`` 0 or None: never; Vosk's endpointer
    alone ends turns). Feed it the audio as it is decoded (:meth:`heard`, times counted
    from the first sample, the recogniser's clock) and its results (:meth:`admit`).

    With the rule on, results are also gated: what the recogniser makes of audio without
    speech is not a result (Vosk hears words in room tone, and even in digital silence).
    A final is one when speech was heard within its span; a partial, when speech was
    heard after the last final.
    """

    def __init__(self, silence_ms: int | None, skip_silence: bool = False) -> None:
        self.silence_ms = silence_ms
        self._pauses = PauseDetector()
        self.gate = SilenceGate(skip_silence)
        self._words = False  # the utterance in progress has words
        self._last_end_ms = -TIME_SLACK_MS  # where the last final ended

    def heard(self, pcm: bytes, sample_rate: int) -> None:
        self._pauses.feed(pcm, sample_rate)

    def onset(self, pcm: bytes, sample_rate: int) -> int | None:
        """Hear ``pcm`` (as :meth:`heard`) and say where in it (bytes) speech starts:
        None when it has none; 0 in a noisy room (:data:`NOISY_FLOOR_DBFS`)."""
        start = self._pauses.clock_ms
        self._pauses.feed(pcm, sample_rate)
        if self._pauses.noisy:
            return 0
        at = self._pauses.speech_from(start)
        if at is None:
            return None
        return min(len(pcm), 2 * ((at - start) * sample_rate // 1000))

    @property
    def idle(self) -> bool:
        """No words in the turn in progress, and :data:`GATE_HOLD_MS` without speech, in
        a room that is not noisy."""
        return (not self._words and self._pauses.paused_ms >= GATE_HOLD_MS
                and not self._pauses.noisy)

    def cut(self, pcm: bytes, sample_rate: int) -> int:
        """Where in ``pcm`` (bytes) the turn in progress would be over, so that the
        recogniser can be given the audio up to there, finalised, then given the rest;
        ``len(pcm)`` when it would not be over within it."""
        if not (self.silence_ms and self._words):
            return len(pcm)
        at = self._pauses.bytes_until(self.silence_ms, pcm, sample_rate)
        return len(pcm) if at is None else at

    def admit(self, utterance: Utterance) -> bool:
        """Whether a result is one (see the class's doc); notes it when it is."""
        if self.silence_ms:
            if utterance.is_final:
                spoke = self._pauses.spoke_between(utterance.start_ms - TIME_SLACK_MS,
                                                   utterance.end_ms + TIME_SLACK_MS)
            else:
                spoke = self._pauses.spoke_between(self._last_end_ms + TIME_SLACK_MS,
                                                   sys.maxsize)
            if not spoke:
                if utterance.is_final:
                    self._words = False
                return False
        self._words = bool(utterance.text) and not utterance.is_final
        if utterance.is_final:
            self._last_end_ms = utterance.end_ms
        return True

    def closed(self) -> None:
        """The utterance was finalised (by this rule or by a ForceEndpoint)."""
        self._words = False

    @property
    def due(self) -> bool:
        return (bool(self.silence_ms) and self._words
                and self._pauses.paused_ms >= (self.silence_ms or 0))


class SilenceGate:
    """Which audio of a stream its recogniser is given (see the module's doc).

    Closed, it keeps the last ``preroll_ms`` of what it is offered and gives nothing;
    :meth:`take` with an onset opens it and gives the pre-roll and the audio from there.
    The caller closes it (:meth:`close`) when its turn is idle and the recogniser holds
    nothing. ``offset_ms``: audio left out so far, to add to the recogniser's times.
    Disabled, it stays open and leaves nothing out. Pure bookkeeping on bytes.
    """

    def __init__(self, enabled: bool, preroll_ms: int | None = None) -> None:
        self.preroll_ms = PREROLL_MS if preroll_ms is None else preroll_ms
        self.is_open = not enabled
        self.pending = False  # audio given since the recogniser last finalised
        #: Off: the gate opens at the next audio (with the pre-roll it kept) and stays open.
        self.enabled = enabled
        self._ring = bytearray()  # the end of the audio not given, up to preroll_ms
        self._skipped_ms = 0.0

    @property
    def offset_ms(self) -> int:
        return round(self._skipped_ms)

    def take(self, pcm: bytes, onset: int | None, sample_rate: int) -> bytes:
        """What of ``pcm`` to decode while the gate is closed: ``b""`` (kept for the
        pre-roll) when ``onset`` is None, else the pre-roll before ``onset`` (bytes into
        ``pcm``) and ``pcm`` from there; the gate is then open."""
        if not self.enabled:
            onset = 0
        ring = self._ring + pcm
        keep = 2 * (sample_rate * self.preroll_ms // 1000)
        end = len(ring) if onset is None else len(self._ring) + onset
        start = max(0, end - keep)
        start -= start % 2
        self._skipped_ms += 1000 * start / 2 / sample_rate
        if onset is None:
            del ring[:start]
            self._ring = ring
            return b""
        self._ring = bytearray()
        self.is_open = self.pending = True
        return bytes(ring[start:])

    def close(self) -> None:
        self.is_open = False


def _dbfs(power: float) -> float:
    return -math.inf if power <= 0 else 10 * math.log10(power)
