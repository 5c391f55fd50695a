"""The session core's vocabulary: what clients ask for and what the core reports.

Pure. A *dialect* (the Live API in :mod:`edge.protocols.live`, and any peer protocol
served beside it) is a pair of translations over these values: client frames into
:data:`ClientEvent` values, and :data:`CoreEvent` values into frames and a close code.
The session core (:mod:`edge.net.session`) never sees JSON, so adding a protocol means
a new module implementing :class:`Dialect`, a route, and a config section.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

# --- recognition results -----------------------------------------------------------


@dataclass(frozen=True)
class Word:
    word: str
    start_ms: int
    end_ms: int
    confidence: float


@dataclass(frozen=True)
class Speaker:
    """Who said an utterance: a label ("Speaker 2", or an enrolled name), an id stable
    within the session, the confidence (0-1) and, for enrolled speakers, their role."""

    label: str | None = None
    id: str | None = None
    confidence: float | None = None
    role: str | None = None


@dataclass(frozen=True)
class TermMatch:
    """A listed term said in a final (:mod:`edge.core.terms`): ``text`` is the words as
    said (``두통이``), ``term`` the list's entry (``두통``); the times are the matched
    words' own."""

    text: str
    term: str
    start_ms: int
    end_ms: int
    category: str
    code: str | None = None


@dataclass(frozen=True)
class Utterance:
    """A recognition result, before it is numbered and addressed to a session.

    ``speaker_vector`` is the recogniser's speaker vector (finals only, when a speaker
    model is loaded). It is biometric data: it never goes on the wire and is kept out of
    the repr, so that no log line can carry it. ``speaker`` is the label decided for it.
    ``terms``: the listed terms said in a final, in order.
    """

    is_final: bool
    text: str
    start_ms: int
    end_ms: int
    words: tuple[Word, ...] = ()
    speaker_vector: tuple[float, ...] | None = field(default=None, repr=False)
    speaker: Speaker | None = None
    terms: tuple[TermMatch, ...] = ()

    def later(self, offset_ms: int) -> Utterance:
        """This result ``offset_ms`` later, its words and terms too: a recogniser's
        times moved onto the stream's clock (it started, or was fed again, that far in)."""
        if not offset_ms:
            return self
        return replace(self, start_ms=self.start_ms + offset_ms,
                       end_ms=self.end_ms + offset_ms,
                       words=tuple(replace(w, start_ms=w.start_ms + offset_ms,
                                           end_ms=w.end_ms + offset_ms) for w in self.words),
                       terms=tuple(replace(t, start_ms=t.start_ms + offset_ms,
                                           end_ms=t.end_ms + offset_ms) for t in self.terms))


# --- what the client asks for ------------------------------------------------------------


@dataclass(frozen=True)
class Audio:
    """Audio bytes as the client framed them (WAV or raw PCM; the decoder tells)."""

    data: bytes = field(repr=False)


@dataclass(frozen=True)
class End:
    """Flush the final result, report the end, close normally."""


@dataclass(frozen=True)
class KeepAlive:
    """Resets the idle timeout: a client pausing its audio on purpose keeps the session."""


@dataclass(frozen=True)
class Configure:
    """Per-session settings. ``phrases`` and ``sample_rate`` only before the first audio
    frame; ``max_turn_silence_ms`` at any time: an utterance with words, followed by that
    much audio without speech (:mod:`edge.audio.pauses`), is finalised without waiting
    for Vosk's endpointer; 0: Vosk's endpointer only. ``skip_silence`` (at any time):
    whether audio between turns without speech is left undecoded
    (``recognizer.skip_silence``).
    ``idle_timeout_s`` (at any time, from the next check on) replaces
    ``server.idle_timeout`` for this session. ``language``: an installed language tag
    or model name to run on instead of the one admitted (before the first audio)."""

    phrases: tuple[str, ...] | None = None
    sample_rate: int | None = None
    partial_results: bool | None = None
    max_turn_silence_ms: int | None = None
    idle_timeout_s: float | None = None
    skip_silence: bool | None = None
    language: str | None = None


@dataclass(frozen=True)
class ForceEndpoint:
    """Finalise the utterance in progress now (its final comes out, if it has words),
    then go on with the same stream."""


@dataclass(frozen=True)
class Reply:
    """Frames a dialect answers a client message with by itself (its own greeting or
    description); the core sends them as they are, in order with everything else."""

    frames: tuple[Any, ...]


@dataclass(frozen=True)
class Pause:
    """Room listeners allowed to write: stop capturing the room (privacy)."""


@dataclass(frozen=True)
class Resume:
    """Room listeners allowed to write: capture the room again."""


ClientEvent = Audio | End | KeepAlive | Configure | ForceEndpoint | Reply | Pause | Resume


# --- what the core reports ------------------------------------------------------------


@dataclass(frozen=True)
class SessionDescription:
    """What a client session is, for the dialect to tell its client: the model, the
    audio it takes, whether it may read the results (``transcripts``), its limits, and
    speaker labelling (``speaker_identification_reason``: why it is off). ``enroll`` is
    the (name, role) the session's voice will be enrolled as."""

    model: str
    sample_rate: int
    transcripts: bool
    expires_at: int
    max_session_seconds: float
    idle_timeout: float = 0.0
    max_frame_bytes: int = 0
    partial_results: bool = True
    speaker_identification: bool = False
    speaker_identification_reason: str | None = None
    rate_limit: int | None = None
    enroll: tuple[str, str | None] | None = None
    audio_formats: tuple[str, ...] = ("wav", "pcm_s16le")
    language: str = ""  # the installed language the session got (recognizer.models)


@dataclass(frozen=True)
class RoomDescription:
    """What a listener to the room microphone is told when it joins: the room, its
    state, the last result's ``seq`` and how many the replay holds, whether the token
    may pause the room (``can_pause``)."""

    room_id: str
    state: str
    last_seq: int
    replay_size: int
    model: str
    can_pause: bool
    expires_at: int
    speaker_identification: bool = False
    speaker_identification_reason: str | None = None


@dataclass(frozen=True)
class Started:
    """The session (or room listener) is open; ``description`` is what the dialect may
    tell the client about it."""

    session_id: str
    description: SessionDescription | RoomDescription


@dataclass(frozen=True)
class Described:
    """The session's description changed before its audio (a client chose another
    language): what the dialect may tell the client now."""

    session_id: str
    description: SessionDescription


@dataclass(frozen=True)
class Result:
    """A recognition result, numbered within its session (``seq`` from 1)."""

    session_id: str
    seq: int
    utterance: Utterance


@dataclass(frozen=True)
class Notice:
    """A warning: the session goes on."""

    session_id: str
    code: str
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RoomState:
    """The room microphone's state changed (``listening``, ``paused``, ``mic_lost``...)."""

    state: str


#: What the room publishes to its listeners: results, warnings and its state.
RoomEvent = Utterance | Notice | RoomState


@dataclass(frozen=True)
class Enrolled:
    session_id: str
    name: str
    role: str | None
    utterances: int


@dataclass(frozen=True)
class Ended:
    """The session is over. ``error`` (code, message) when it ended on an error the
    client must hear about; ``close_code`` is the Live API's (IANA) code for ``reason``,
    which other dialects translate."""

    session_id: str
    reason: str
    close_code: int
    error: tuple[str, str] | None = None
    summary: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Progress:
    """Sent to dialects that answer every audio frame (``answers_every_frame``), after
    each frame is decoded: the partial text of the utterance in progress ("" after a
    final). The frame's finals, if any, came before it as :class:`Result` events."""

    session_id: str
    partial: str


@dataclass(frozen=True)
class Flushed:
    """A :class:`ForceEndpoint` has been carried out (its final, if any, came first)."""

    session_id: str


CoreEvent = Started | Described | Result | Notice | Enrolled | Progress | Flushed | Ended


class Dialect(Protocol):
    """A wire protocol for the session core. Pure: no I/O, no clock. One instance per
    session (a dialect may keep the state its protocol needs: turn numbers, say).

    ``answers_every_frame``: the protocol's clients wait for one reply per audio frame
    (vosk-server's lockstep clients); the core then decodes frame by frame and sends a
    :class:`Progress` after each.
    """

    answers_every_frame: bool

    def parse(self, frame: str | bytes) -> ClientEvent:
        """One client frame as an event. Raises :class:`~edge.core.errors.ProtocolError`:
        code ``bad_message`` for a message to warn about and ignore, any other code to
        end the session with the error's close code."""
        ...

    def encode(self, event: CoreEvent) -> list[str | bytes]:
        """The frames that carry ``event`` to the client (none, one or several)."""
        ...

    def close_code(self, ended: Ended) -> int:
        """The WebSocket close code that ends a session for ``ended``."""
        ...
