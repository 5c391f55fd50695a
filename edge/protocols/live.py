"""The Live API wire protocol: every message, client message parsing, close codes.

Pure (sans-IO): builds and parses JSON text; no trio, no vosk, no sockets. docs/protocol.md
(the Live API) documents exactly what this module produces and accepts.
:class:`LiveDialect` is the Live API as a dialect of the session core (see
:mod:`edge.protocols.events`); the ``transcription`` message is also the journal's
record of a final, whatever dialect carried it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge import __version__

# The Live API's close codes are the daemon's own; its readers find them here too.
from edge.core.close_codes import CLOSE_AUTH as CLOSE_AUTH
from edge.core.close_codes import CLOSE_GOING_AWAY as CLOSE_GOING_AWAY
from edge.core.close_codes import CLOSE_INTERNAL_ERROR as CLOSE_INTERNAL_ERROR
from edge.core.close_codes import CLOSE_NORMAL as CLOSE_NORMAL
from edge.core.close_codes import CLOSE_POLICY as CLOSE_POLICY
from edge.core.close_codes import CLOSE_SERVICE_RESTART as CLOSE_SERVICE_RESTART
from edge.core.close_codes import CLOSE_TOO_BIG as CLOSE_TOO_BIG
from edge.core.close_codes import CLOSE_TRY_AGAIN_LATER as CLOSE_TRY_AGAIN_LATER
from edge.core.close_codes import CLOSE_UNSUPPORTED_DATA as CLOSE_UNSUPPORTED_DATA
from edge.core.errors import ProtocolError
from edge.core.languages import is_language_tag
from edge.core.rates import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, is_sample_rate
from edge.protocols.events import (
    Audio,
    ClientEvent,
    Configure,
    CoreEvent,
    Described,
    End,
    Ended,
    Enrolled,
    Flushed,
    KeepAlive,
    Notice,
    Pause,
    Progress,
    Result,
    Resume,
    RoomDescription,
    RoomEvent,
    RoomState,
    SessionDescription,
    Speaker,
    Started,
    Utterance,
)
from edge.protocols.query import single
from edge.protocols.text import JsonTextError, Limits, json_object, phrase_list

PROTOCOL_VERSION = 1


def transcription(
    session_id: str, seq: int, utterance: Utterance, speaker: Speaker | None = None
) -> dict[str, Any]:
    """A ``transcription`` message; ``speaker`` defaults to the utterance's own. Finals
    carry ``terms`` (the listed terms said, :mod:`edge.core.terms`); partials do not."""
    speaker = speaker or utterance.speaker or Speaker()
    message = {
        "type": "transcription",
        "session_id": session_id,
        "seq": seq,
        "is_final": utterance.is_final,
        "text": utterance.text,
        "start_ms": utterance.start_ms,
        "end_ms": utterance.end_ms,
        "words": [
            {"word": w.word, "start_ms": w.start_ms, "end_ms": w.end_ms,
             "confidence": round(w.confidence, 4)}
            for w in utterance.words
        ],
        "speaker": speaker.label,
        "speaker_id": speaker.id,
        "speaker_confidence": speaker.confidence,
        "speaker_role": speaker.role,
    }
    if utterance.is_final:
        message["terms"] = [
            {"text": t.text, "term": t.term, "start_ms": t.start_ms, "end_ms": t.end_ms,
             "category": t.category, "code": t.code}
            for t in utterance.terms
        ]
    return message


def warning(session_id: str | None, code: str, message: str, **details: Any
            ) -> dict[str, Any]:
    """A ``warning``; without ``session_id`` for a stream's own (the room's hub), which
    each listener addresses to itself."""
    body: dict[str, Any] = {"type": "warning", "code": code, "message": message, **details}
    if session_id is not None:
        body = {"type": "warning", "session_id": session_id, **body}
    return body


def error(code: str, message: str, session_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if session_id is not None:
        body["session_id"] = session_id
    return body


def encode(message: Mapping[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


def session_init(session_id: str, description: SessionDescription | RoomDescription
                 ) -> dict[str, Any]:
    """``session_init``: the first message of every session and room listener."""
    return {"type": "session_init", "session_id": session_id,
            "protocol_version": PROTOCOL_VERSION, "server": "edge", "version": __version__,
            **_described(description)}


def session_updated(session_id: str, description: SessionDescription) -> dict[str, Any]:
    """``session_updated``: a ``config`` chose the session's language before its audio;
    the session as it is now, with ``session_init``'s keys."""
    return {**session_init(session_id, description), "type": "session_updated"}


def _described(d: SessionDescription | RoomDescription) -> dict[str, Any]:
    """The Live API's keys for a session's or a room listener's description."""
    if isinstance(d, RoomDescription):
        return {"source": "room", "room_id": d.room_id, "state": d.state,
                "last_seq": d.last_seq, "replay_size": d.replay_size, "model": d.model,
                "can_pause": d.can_pause, "speaker_identification": d.speaker_identification,
                "speaker_identification_reason": d.speaker_identification_reason,
                "expires_at": d.expires_at}
    return {
        "model": d.model, "language": d.language, "sample_rate": d.sample_rate,
        "audio_formats": list(d.audio_formats), "max_frame_bytes": d.max_frame_bytes,
        "partial_results": d.partial_results, "transcripts": d.transcripts,
        "speaker_identification": d.speaker_identification,
        "speaker_identification_reason": d.speaker_identification_reason,
        **({"enroll": {"name": d.enroll[0], "role": d.enroll[1]}} if d.enroll else {}),
        "expires_at": d.expires_at, "idle_timeout": d.idle_timeout,
        "max_session_seconds": d.max_session_seconds, "rate_limit": d.rate_limit,
    }


def session_end(session_id: str, reason: str, summary: Mapping[str, Any]) -> dict[str, Any]:
    """``session_end``: the last message of a session that ended without an error."""
    return {"type": "session_end", "session_id": session_id, "reason": reason, **summary}


def enrolled(session_id: str, name: str, role: str | None, utterances: int
             ) -> dict[str, Any]:
    return {"type": "enrolled", "session_id": session_id, "name": name, "role": role,
            "utterances": utterances}


def room_state(session_id: str, state: str) -> dict[str, Any]:
    return {"type": "room_state", "session_id": session_id, "state": state}


def room_message(session_id: str, room_id: str, seq: int | None, event: RoomEvent
                 ) -> dict[str, Any]:
    """A room event as one listener (``session_id``) gets it: ``transcription``,
    ``warning`` or ``room_state``, with the stream's ``seq`` (none for a warning the
    hub made up for this listener) and the ``room_id``."""
    if isinstance(event, Utterance):
        body = transcription(session_id, seq or 0, event)
    elif isinstance(event, RoomState):
        body = room_state(session_id, event.state)
    else:
        body = warning(session_id, event.code, event.message, **event.details)
    if seq is not None:
        body["seq"] = seq
    body["room_id"] = room_id
    return body


def message(event: Started | Described | Result | Notice | Enrolled | Ended
            ) -> dict[str, Any]:
    """The Live API message for a core event."""
    if isinstance(event, Started):
        return session_init(event.session_id, event.description)
    if isinstance(event, Described):
        return session_updated(event.session_id, event.description)
    if isinstance(event, Result):
        return transcription(event.session_id, event.seq, event.utterance)
    if isinstance(event, Notice):
        return warning(event.session_id, event.code, event.message, **event.details)
    if isinstance(event, Enrolled):
        return enrolled(event.session_id, event.name, event.role, event.utterances)
    if event.error is not None:
        return error(*event.error, session_id=event.session_id)
    return session_end(event.session_id, event.reason, event.summary)


class LiveDialect:
    """The Live API as a dialect of the session core: binary frames are audio, text
    frames are JSON control messages, every core event is one JSON text frame, and the
    close code is the core's own (the Live API's codes are the IANA ones)."""

    answers_every_frame = False

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()

    def parse(self, frame: str | bytes) -> ClientEvent:
        if isinstance(frame, bytes | bytearray):
            return Audio(bytes(frame))
        return parse_client_text(frame, self.limits)

    def encode(self, event: CoreEvent) -> list[str | bytes]:
        if isinstance(event, Progress | Flushed):
            return []  # the Live API has neither
        return [encode(message(event))]

    def close_code(self, ended: Ended) -> int:
        return ended.close_code


# --- client messages -----------------------------------------------------------------

ClientMessage = End | KeepAlive | Configure | Pause | Resume

_CONFIG_KEYS = frozenset({"type", "phrases", "sample_rate", "partial_results",
                          "max_turn_silence_ms", "skip_silence", "language"})
MAX_TURN_SILENCE_MS = 60_000


_LIMITS = Limits()


def parse_client_text(text: str, limits: Limits = _LIMITS) -> ClientMessage:
    """Parse one client text frame.

    Raises :class:`ProtocolError` with code ``bad_message``; the session answers it with
    a ``warning`` and goes on (a malformed control message is never fatal), except for
    a ``config.language`` that is no language tag: ``unsupported_language``, which ends
    the session (close 1008) as a language without a model does.
    """
    try:
        data = json_object(text, limits.max_text_chars)
    except JsonTextError as exc:
        raise _bad(f"text message longer than {limits.max_text_chars} characters"
                   if exc.reason == "too_long" else "text messages must be JSON objects"
                   ) from None
    kind = data.get("type")
    if kind == "end":
        return End()
    if kind == "keepalive":
        return KeepAlive()
    if kind == "config":
        return _parse_config(data, limits)
    if kind == "pause":
        return Pause()
    if kind == "resume":
        return Resume()
    if not isinstance(kind, str):
        raise _bad('missing "type"; expected one of "config", "end", "keepalive", "pause", '
                   '"resume"')
    raise _bad(f'unknown message type {kind[:40]!r}; expected "config", "end", "keepalive", '
               '"pause" or "resume"')


def _parse_config(data: Mapping[str, Any], limits: Limits) -> Configure:
    unknown = sorted(set(data) - _CONFIG_KEYS)
    if unknown:
        raise _bad(f"unknown config field {unknown[0][:40]!r}")
    phrases = data.get("phrases")
    if phrases is not None:
        phrases = _parse_phrases(phrases, limits)
    rate = data.get("sample_rate")
    if rate is not None and not is_sample_rate(rate):
        raise _bad(f"config.sample_rate must be an integer between {MIN_SAMPLE_RATE} and "
                   f"{MAX_SAMPLE_RATE}")
    partials = data.get("partial_results")
    if partials is not None and not isinstance(partials, bool):
        raise _bad("config.partial_results must be true or false")
    # Any time, also after audio: a turn with words ends after a pause this long
    # (0: only at Vosk's own endpoint).
    silence = data.get("max_turn_silence_ms")
    if silence is not None and (
        isinstance(silence, bool) or not isinstance(silence, int)
        or not 0 <= silence <= MAX_TURN_SILENCE_MS
    ):
        raise _bad(f"config.max_turn_silence_ms must be an integer between 0 (off) and "
                   f"{MAX_TURN_SILENCE_MS}")
    skip = data.get("skip_silence")  # any time too
    if skip is not None and not isinstance(skip, bool):
        raise _bad("config.skip_silence must be true or false")
    language = data.get("language")
    if language is not None and not (isinstance(language, str)
                                     and is_language_tag(language)):
        # Not a warning: the session must not go on in a language nobody asked for.
        raise ProtocolError("unsupported_language", "config.language must be a language "
                            "tag such as ko or en-US")
    return Configure(phrases=phrases, sample_rate=rate, partial_results=partials,
                     max_turn_silence_ms=silence, skip_silence=skip, language=language)


def _parse_phrases(value: Any, limits: Limits) -> tuple[str, ...]:
    phrases = phrase_list(value, limits, "config.phrases", _bad)
    if not phrases:
        raise _bad("config.phrases is empty")
    return phrases


def _bad(message: str) -> ProtocolError:
    return ProtocolError("bad_message", message)


# --- query parameters ------------------------------------------------------------------

@dataclass(frozen=True)
class ConnectParams:
    """What a client may set in the WebSocket URL's query string (besides ``token``)."""

    sample_rate: int | None = None
    errors_in_band: bool = False
    source: str = "client"  # "client": the client streams audio; "room": the microphone
    since_seq: int | None = None  # room listeners: resume after this seq
    enroll: str | None = None  # enrol this session's voice under this name at ``end``
    role: str | None = None  # the enrolled speaker's role (with ``enroll`` only)
    language: str | None = None  # the language tag asked for (None: the default)


def parse_connect_params(query: Mapping[str, Sequence[str]]) -> ConnectParams:
    """Validate the query parameters of a handshake. Raises ProtocolError(400-worthy)."""
    rate: int | None = None
    if "sample_rate" in query:
        raw = single(query, "sample_rate")
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 6
                and is_sample_rate(int(raw))):
            raise ProtocolError("invalid_parameter", f"sample_rate must be an integer "
                                f"between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE}")
        rate = int(raw)
    in_band = False
    if "errors" in query:
        raw = single(query, "errors")
        if raw not in ("http", "message"):
            raise ProtocolError("invalid_parameter", 'errors must be "http" or "message"')
        in_band = raw == "message"
    if "encoding" in query and single(query, "encoding") not in ("pcm_s16le", "wav"):
        raise ProtocolError("invalid_parameter", 'encoding must be "pcm_s16le" or "wav"')
    source = "client"
    if "source" in query:
        source = single(query, "source")
        if source not in ("client", "room"):
            raise ProtocolError("invalid_parameter", 'source must be "client" or "room"')
    since: int | None = None
    if "since_seq" in query:
        raw = single(query, "since_seq")
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 15):
            raise ProtocolError("invalid_parameter", "since_seq must be a non-negative integer")
        if source != "room":
            raise ProtocolError("invalid_parameter", "since_seq applies to source=room")
        since = int(raw)
    enroll = _name_param(query, "enroll")
    role = _name_param(query, "role")
    if enroll is not None and source != "client":
        raise ProtocolError("invalid_parameter", "enroll applies to client sessions, not to "
                            "source=room")
    if role is not None and enroll is None:
        raise ProtocolError("invalid_parameter", "role applies only with enroll")
    language = single(query, "language") if "language" in query else None
    if language is not None and not is_language_tag(language):
        raise ProtocolError("invalid_parameter", "language must be a language tag such as "
                            "ko or en-US")
    return ConnectParams(sample_rate=rate, errors_in_band=in_band, source=source,
                         since_seq=since, enroll=enroll, role=role, language=language)


MAX_NAME_CHARS = 200  # enrolled names and roles (as edge.speakers.voiceprints.MAX_NAME_CHARS)


def _name_param(query: Mapping[str, Sequence[str]], name: str) -> str | None:
    if name not in query:
        return None
    value = single(query, name).strip()
    if not value or len(value) > MAX_NAME_CHARS or any(ord(ch) < 32 or ord(ch) == 127
                                                       for ch in value):
        raise ProtocolError("invalid_parameter", f"{name} must be 1 to {MAX_NAME_CHARS} "
                            "characters without control characters")
    return value
