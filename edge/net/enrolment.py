"""A session opened with ``?enroll=NAME``: its finals' speaker vectors, enrolled as one
voiceprint when the client ends the session with ``end``.

The vectors are kept in memory for the session's life only (they are biometric data:
never journaled, never logged); :meth:`Enrolment.enrol` averages them into the
voiceprint store in a worker thread (file I/O) and says how it went.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from edge.core.audit import FAILED, OK
from edge.protocols.events import Utterance
from edge.speakers import SpeakerIdentification, VoiceprintStoreError

logger = logging.getLogger(__name__)


class Enrolment:
    """The enrolment a session asked for: ``name`` and ``role`` to enrol its speaker
    as, the vectors of its finals so far, and (once tried) ``outcome``: (name, audit
    outcome, reason) for the audit trail."""

    def __init__(self, speakers: SpeakerIdentification, name: str, role: str | None
                 ) -> None:
        self._speakers = speakers
        self.name = name
        self.role = role
        self._vectors: list[tuple[float, ...]] = []
        self.outcome: tuple[str, str, str | None] | None = None

    def keep(self, utterance: Utterance) -> None:
        """Keep a final's speaker vector, if it has one."""
        if utterance.speaker_vector is not None:
            self._vectors.append(utterance.speaker_vector)

    async def enrol(self, session_id: str, warn: Callable[[str, str], None]
                    ) -> tuple[str, str | None, int] | None:
        """Enrol the vectors kept under the name (a worker thread: file I/O); the
        voiceprint's (name, role, utterances), or None after warning the client
        (``enrollment_failed``) why nothing was enrolled. Never raises for the
        client's doing or a store that cannot be written."""
        vectors, self._vectors = self._vectors, []
        self.outcome = (self.name, FAILED, "enrollment_failed")  # until it succeeds
        if not vectors:
            warn("enrollment_failed", "no utterance was long enough for a speaker "
                 "vector (at least half a second of speech each); nothing enrolled")
            return None
        try:
            voiceprint = await trio.to_thread.run_sync(self._speakers.enroll, self.name,
                                                       self.role, vectors)
        except (ValueError, VoiceprintStoreError) as exc:
            logger.error("session %s: enrolment failed: %s", session_id, exc)
            message = (str(exc) if isinstance(exc, ValueError) else
                       "the voiceprint store cannot be written; ask an administrator")
            warn("enrollment_failed", f"nothing enrolled: {message}")
            return None
        logger.info("session %s: enrolled a voiceprint for %r from %d utterance(s)",
                    session_id, voiceprint.name, voiceprint.count)
        self.outcome = (voiceprint.name, OK, None)
        return voiceprint.name, voiceprint.role, voiceprint.count
