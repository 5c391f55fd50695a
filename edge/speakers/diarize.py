"""Diarization: who is talking within one session, from speaker vectors alone.

Pure: numpy and the standard library only (no trio, no vosk, no files). Vosk gives a
speaker vector with a final result when the utterance has at least 50 frames (0.5 s) of
speech; :class:`Diarizer` clusters one session's vectors online into "Speaker 1",
"Speaker 2", ... in order of first appearance, and says so in a :class:`SpeakerDecision`.

Similarities are cosines. What counts as "the same voice" depends on the speaker model,
so the threshold is a setting; the default suits the test model built by
:mod:`tools.spkmodel` and is a starting point for vosk-model-spk-0.4, not a calibration.

Speaker vectors are biometric data: nothing here logs them or puts them in a repr or an
error message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_DIARIZE_THRESHOLD = 0.55
DEFAULT_MAX_SPEAKERS = 8
DEFAULT_MIN_NEW_SPEAKER_MS = 1000

Vector = np.ndarray | Sequence[float]


@dataclass(frozen=True)
class SpeakerDecision:
    """Who said an utterance, in the shape of the protocol's ``speaker`` fields.

    All ``None`` when there was nothing to decide on (no speaker vector).
    ``confidence`` is in [0, 1].
    """

    label: str | None = None
    speaker_id: str | None = None
    confidence: float | None = None
    role: str | None = None


NO_DECISION = SpeakerDecision()


def cosine(a: Vector, b: Vector) -> float:
    """Cosine similarity in [-1, 1]; 0.0 when either vector has no direction.

    A zero vector, or one with NaN or infinite entries, has no direction. Vectors of
    different lengths raise ``ValueError``.
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"vectors of different dimensions ({x.size} and {y.size})")
    ux, uy = unit_vector(x), unit_vector(y)
    if ux is None or uy is None:
        return 0.0
    return float(np.clip(ux @ uy, -1.0, 1.0))


def unit_vector(v: np.ndarray) -> np.ndarray | None:
    """``v`` scaled to length 1, or None if it has no direction."""
    if v.size == 0 or not np.all(np.isfinite(v)):
        return None
    norm = float(np.linalg.norm(v))
    if norm == 0.0 or not math.isfinite(norm):
        return None
    return v / norm


def as_unit_vector(vector: Vector | None) -> np.ndarray | None:
    """``vector`` (any sequence of numbers, or None) as a unit float64 array, or None."""
    if vector is None:
        return None
    return unit_vector(np.asarray(vector, dtype=np.float64).ravel())


def score_confidence(x: float) -> float:
    """A similarity as a protocol confidence: clamped to [0, 1], four decimals."""
    return round(min(1.0, max(0.0, x)), 4)


@dataclass
class _Cluster:
    number: int
    total: np.ndarray = field(repr=False)  # sum of the members' unit vectors
    count: int = 1

    @property
    def label(self) -> str:
        return f"Speaker {self.number}"

    @property
    def speaker_id(self) -> str:
        return f"session:{self.number}"

    def centroid(self) -> np.ndarray:
        # The running mean of unit vectors; its direction is all cosine needs.
        c = unit_vector(self.total)
        return self.total if c is None else c


class Diarizer:
    """Online clustering of one session's speaker vectors.

    Each utterance's vector is compared (cosine) with the centroid of every speaker
    seen so far, the running mean of their unit vectors:

    - best similarity >= ``threshold``: that speaker; the centroid takes the vector in;
      confidence = the similarity.
    - below: a new speaker, "Speaker N+1"; confidence = 1 - the best similarity
      (1.0 for the session's first speaker). Except when ``max_speakers`` are already
      known, or the utterance is shorter than ``min_new_speaker_ms`` (short utterances
      give noisy vectors): then the nearest speaker, confidence = the similarity, which
      is below the threshold and so below that of any ordinary match; such forced
      assignments leave the centroid alone.
    - no vector (Vosk gives none under 50 frames of speech), or a zero or non-finite
      one: no label, ``SpeakerDecision()``. Guessing the previous speaker would be
      wrong exactly when short answers happen, at a change of speaker.

    Labels are stable for the session: a speaker's number never changes. Not
    thread-safe; one session uses it from one task.
    """

    def __init__(self, *, threshold: float = DEFAULT_DIARIZE_THRESHOLD,
                 max_speakers: int = DEFAULT_MAX_SPEAKERS,
                 min_new_speaker_ms: int = DEFAULT_MIN_NEW_SPEAKER_MS) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError("threshold must be between -1 and 1")
        if max_speakers < 1:
            raise ValueError("max_speakers must be at least 1")
        self.threshold = threshold
        self.max_speakers = max_speakers
        self.min_new_speaker_ms = min_new_speaker_ms
        self._clusters: list[_Cluster] = []
        self._dim: int | None = None
        self._counts = {"matched": 0, "new": 0, "forced": 0, "no_vector": 0}

    @property
    def speakers(self) -> list[str]:
        """Labels in order of first appearance."""
        return [c.label for c in self._clusters]

    def assign(self, vector: Vector | None, *, duration_ms: int) -> SpeakerDecision:
        """Label one utterance. ``duration_ms`` is the utterance's length.

        Raises ``ValueError`` for a vector whose dimension differs from the session's
        earlier ones (the speaker model cannot change within a session).
        """
        unit = as_unit_vector(vector)
        if unit is None:
            self._counts["no_vector"] += 1
            return NO_DECISION
        if self._dim is None:
            self._dim = unit.size
        elif unit.size != self._dim:
            raise ValueError(f"speaker vector has {unit.size} dimensions, "
                             f"the session's have {self._dim}")
        if not self._clusters:
            return self._open(unit, best=None)
        sims = [float(c.centroid() @ unit) for c in self._clusters]
        best = int(np.argmax(sims))
        cluster = self._clusters[best]
        if sims[best] >= self.threshold:
            cluster.total = cluster.total + unit
            cluster.count += 1
            self._counts["matched"] += 1
            return SpeakerDecision(cluster.label, cluster.speaker_id, score_confidence(sims[best]))
        if len(self._clusters) < self.max_speakers and duration_ms >= self.min_new_speaker_ms:
            return self._open(unit, best=sims[best])
        self._counts["forced"] += 1
        return SpeakerDecision(cluster.label, cluster.speaker_id, score_confidence(sims[best]))

    def _open(self, unit: np.ndarray, *, best: float | None) -> SpeakerDecision:
        cluster = _Cluster(number=len(self._clusters) + 1, total=unit.copy())
        self._clusters.append(cluster)
        self._counts["new"] += 1
        confidence = 1.0 if best is None else 1.0 - max(0.0, best)
        return SpeakerDecision(cluster.label, cluster.speaker_id, score_confidence(confidence))

    def reset(self) -> None:
        """Forget every speaker (a new session)."""
        self._clusters.clear()
        self._dim = None

    def statistics(self) -> dict[str, int]:
        return {"speakers": len(self._clusters), **self._counts}

