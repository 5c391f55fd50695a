"""Speaker labels for the daemon: enrolled names first, the session's speakers otherwise.

- :class:`SpeakerLabeler` puts a session's :class:`~edge.speakers.diarize.Diarizer` and
  the :class:`~edge.speakers.voiceprints.VoiceprintStore` together: an enrolled name when
  a voiceprint matches, the session's "Speaker N" otherwise. Pure (memory only).
- :class:`SpeakerIdentification` is the daemon's side: the settings, the store (reloaded
  when another process changes it, names switched off while it is damaged) and
  enrolment. Its methods do blocking file I/O under a lock, so worker threads may call
  them at once.
- :class:`SpeakerTrack` is one stream's labels (a session, a room segment).
- :data:`UNAVAILABLE` is the :class:`SpeakerStatus` of a daemon without a speaker model.

Speaker vectors are biometric data: nothing here logs them or puts them in a repr or an
error message.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from edge.speakers.diarize import (
    DEFAULT_DIARIZE_THRESHOLD,
    DEFAULT_MAX_SPEAKERS,
    Diarizer,
    SpeakerDecision,
    Vector,
    score_confidence,
)
from edge.speakers.voiceprints import Voiceprint, VoiceprintStore, VoiceprintStoreError

logger = logging.getLogger(__name__)


class SpeakerLabeler:
    """Labels for one session: enrolled names first, the session's speakers otherwise.

    A vector that matches a voiceprint (``store.identify``) gives the enrolled name and
    role, ``speaker_id`` ``"enrolled:<name>"`` and the match score as confidence; such
    utterances do not enter the diarizer, so "Speaker N" numbers count unknown voices
    only. Any other vector goes to the session's :class:`Diarizer`.
    """

    def __init__(self, diarizer: Diarizer | None = None,
                 store: VoiceprintStore | None = None) -> None:
        self.diarizer = diarizer if diarizer is not None else Diarizer()
        self.store = store
        self._identified = 0

    def label(self, vector: Vector | None, *, duration_ms: int) -> SpeakerDecision:
        if self.store is not None and len(self.store):
            match = self.store.identify(vector)
            if match is not None:
                self._identified += 1
                return SpeakerDecision(label=match.name, speaker_id=f"enrolled:{match.name}",
                                       confidence=score_confidence(match.score), role=match.role)
        return self.diarizer.assign(vector, duration_ms=duration_ms)

    def statistics(self) -> dict[str, int]:
        return {"identified": self._identified, **self.diarizer.statistics()}


NO_SPEAKER_MODEL = "no speaker model configured"


@dataclass(frozen=True)
class SpeakerStatus:
    """What sessions are told in ``session_init``.

    ``enabled``: finals carry speaker labels. ``names``: enrolled voiceprints are in use.
    ``reason``: why either is off, in words for a client (no paths, no names).
    """

    enabled: bool
    names: bool
    reason: str | None = None
    enrolled: int = 0


UNAVAILABLE = SpeakerStatus(enabled=False, names=False, reason=NO_SPEAKER_MODEL)


class SpeakerIdentification:
    """Speaker labelling for the daemon: the settings and the voiceprint store.

    One per daemon, shared by every session and the room; it exists only when a speaker
    model is loaded. :meth:`refresh`, :meth:`enroll` and :meth:`remove` do blocking
    file I/O and hold a lock, so worker threads may call them at once; labelers read
    the store without it (see :class:`VoiceprintStore`).

    The file may change under the daemon (``edge speakers enroll`` / ``remove`` from
    another process): :meth:`refresh` reloads it when it has. A damaged file switches
    names off, with the reason logged (once per version of the file) and reported in
    :attr:`status`; diarization goes on.
    """

    def __init__(self, store: VoiceprintStore, *,
                 diarization_threshold: float = DEFAULT_DIARIZE_THRESHOLD,
                 max_speakers: int = DEFAULT_MAX_SPEAKERS) -> None:
        Diarizer(threshold=diarization_threshold, max_speakers=max_speakers)  # validates
        self.store = store
        self.diarization_threshold = diarization_threshold
        self.max_speakers = max_speakers
        self._lock = threading.Lock()
        self._loaded = False
        self._error: str | None = None

    @property
    def status(self) -> SpeakerStatus:
        """As of the last :meth:`refresh` (or change)."""
        if self._error is not None:
            return SpeakerStatus(enabled=True, names=False, reason=(
                "the voiceprint store is damaged: enrolled speakers are not named until an "
                "administrator repairs it; speakers are told apart as Speaker 1, 2, ..."))
        return SpeakerStatus(enabled=True, names=True, enrolled=len(self.store))

    @property
    def error(self) -> str | None:
        """Why the store could not be read (for logs and ``edge check``), or None."""
        return self._error

    def refresh(self) -> SpeakerStatus:
        """Reload the voiceprints if their file changed (blocking: a stat, or a read)."""
        with self._lock:
            self._refresh_locked()
        return self.status

    def _refresh_locked(self) -> None:
        if self._loaded and not self.store.changed():
            return
        self._loaded = True
        try:
            self.store.load()
        except VoiceprintStoreError as exc:
            self._error = str(exc)
            logger.error("%s; enrolled speakers will not be named until it is repaired "
                         "or removed (diarization goes on)", exc)
            return
        if self._error is not None:
            logger.info("voiceprints in %s are readable again", self.store.path)
        self._error = None

    def labeler(self) -> SpeakerLabeler:
        """A labeler for one stream: a fresh diarizer, and the store unless damaged."""
        store = self.store if self._error is None else None
        return SpeakerLabeler(Diarizer(threshold=self.diarization_threshold,
                                       max_speakers=self.max_speakers), store)

    def track(self) -> SpeakerTrack:
        return SpeakerTrack(self)

    def enroll(self, name: str, role: str | None, vectors: Iterable[Vector]) -> Voiceprint:
        """Enrol ``name`` (blocking; see :meth:`VoiceprintStore.enroll`).

        Refuses (:class:`VoiceprintStoreError`) while the file is damaged: writing would
        replace the voiceprints it still holds. Creates the store's directory (0700).
        """
        with self._lock:
            self._refresh_locked()
            if self._error is not None:
                raise VoiceprintStoreError(
                    f"{self._error}; not enrolling, so that the voiceprints it holds are "
                    "not overwritten: repair or remove the file first")
            try:
                self.store.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                raise VoiceprintStoreError(f"cannot create {self.store.path.parent}: "
                                           f"{exc.strerror or exc}") from exc
            return self.store.enroll(name, role, vectors)

    def remove(self, name: str) -> bool:
        """Forget ``name`` (blocking); False if not enrolled. Refuses on a damaged file."""
        with self._lock:
            self._refresh_locked()
            if self._error is not None:
                raise VoiceprintStoreError(self._error)
            return self.store.remove(name)


class SpeakerTrack:
    """Speaker labels for one stream: a client session, or a segment of the room's.

    :meth:`label` runs where the speaker vectors come from, in the recogniser's worker
    thread; the first label of a stream refreshes the store (a stat). :meth:`reset`
    starts a new stream ("Speaker 1" again); call it only while no :meth:`label` call
    is running (the owner awaits each recogniser call before anything else).
    """

    def __init__(self, identification: SpeakerIdentification) -> None:
        self._identification = identification
        self._labeler: SpeakerLabeler | None = None

    def label(self, vector: Vector | None, *, duration_ms: int) -> SpeakerDecision:
        if self._labeler is None:
            self._identification.refresh()
            self._labeler = self._identification.labeler()
        return self._labeler.label(vector, duration_ms=duration_ms)

    def reset(self) -> None:
        self._labeler = None

    def statistics(self) -> dict[str, int]:
        return self._labeler.statistics() if self._labeler is not None else {}
