"""Scriptix realtime (``/v2/realtime``) as a dialect of the session core.

Pure (sans-IO): the handshake's query and token, client frames into events, core
events into frames; no trio, no sockets. What Scriptix's clients need of the wire
(``client_v2.py`` of scriptix-io/realtime-examples and the realtime WebSocket docs):

* the client sends ``{"action": "start"}`` and gives up unless the *first* message it
  receives contains ``"listening"``: nothing is sent before it (no ``loading`` state,
  and warnings raised before ``start`` wait until after ``listening``);
* binary frames are 16 kHz mono s16le, the first one possibly starting with a
  streaming WAV header (ffmpeg ``-f wav -``); the core's decoder takes both;
* results carry the documented keys (``text``, ``is_final``, ``offset_ms``, ``words``
  as ``[word, start_ms, end_ms, confidence]``, ``speaker``) and the Kaldi-style keys
  current clients read (``partial`` on partials, ``result`` on finals);
* ``{"action": "stop"}`` flushes the finals, then exactly ``{"state":"stopped"}`` and a
  1000 close (the client matches that substring);
* failures are ``{"error": "..."}`` (here with a ``code`` beside it), then a close.

Audio before ``start`` ends the session (``not_started``, close 1008): the client has
not been told the server is listening, so it cannot know whether that audio counts.
Warnings (the Live API's ``warning`` messages: clipping, silence, a malformed control
message, ...) are ``{"warning": "...", "code": "..."}`` and the session goes on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge.core import languages, tokens
from edge.core.close_codes import CLOSE_AUTH, CLOSE_POLICY
from edge.core.errors import ProtocolError
from edge.core.languages import MAX_TAG_CHARS, primary_language
from edge.core.tokens import TokenPlaces
from edge.protocols.events import (
    Audio,
    ClientEvent,
    CoreEvent,
    End,
    Ended,
    Notice,
    Reply,
    Result,
    SessionDescription,
    Started,
    Utterance,
)
from edge.protocols.query import optional
from edge.protocols.text import JsonTextError, json_object

PATH = "/v2/realtime"
#: Stream mode (``/v2/client/{token}?url=``): the server would fetch the URL. Refused.
STREAM_PREFIX = "/v2/client/"
SAMPLE_RATE = 16000  # what Scriptix clients send
MODEL_TYPES = ("fast", "quality")
#: Headers a Scriptix client may carry its key in (the examples use the first).
TOKEN_HEADERS = (b"x-zoom-s2t-key", b"x-api-key", b"api-key")
TOKEN_PLACES = TokenPlaces(headers=TOKEN_HEADERS, repeats_agree=True)


MAX_TEXT_CHARS = 65536
STOPPED = '{"state":"stopped"}'  # exactly: clients match this substring

STREAM_MODE_REFUSED = (
    "stream mode is not served: this device never fetches URLs (a server that fetches "
    "what a client names could be made to reach any address on the clinic network). "
    "Send the audio yourself over /v2/realtime instead.")


def encode(message: Mapping[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


# --- the handshake -----------------------------------------------------------------


def model_language(model_name: str) -> str | None:
    """The language of a Vosk model as Scriptix names languages, the primary subtag of
    :func:`edge.core.languages.model_language` (``vosk-model-small-ko-0.22`` -> ``ko``,
    ``vosk-model-en-us-0.22-lgraph`` -> ``en``, ``vosk-model-cn-0.22`` -> ``zh``); None
    when the name does not say."""
    tag = languages.model_language(model_name)
    return None if tag is None else primary_language(tag)


@dataclass(frozen=True)
class ConnectParams:
    language: str | None  # as the client asked for it; None: the model's
    model_type: str | None  # "fast" or "quality"; the device has one model either way


def parse_connect_params(query: Mapping[str, Sequence[str]], device_language: str | None
                         ) -> ConnectParams:
    """Validate ``language`` and ``type``. ``device_language`` is the model's language
    (None: unknown, any language is accepted). Raises :class:`ProtocolError` (a 400)."""
    language = optional(query, "language")
    if language is not None:
        primary = primary_language(language)
        if not (language.strip() and primary.isascii() and primary.isalpha()
                and len(language) <= MAX_TAG_CHARS):
            raise ProtocolError("invalid_parameter", "language must be a language code "
                                "such as \"en\" or \"nl-NL\"")
        if device_language is not None and primary != device_language:
            raise ProtocolError("unsupported_language", f"this device transcribes only "
                                f"{device_language!r} (its one model); language="
                                f"{language[:MAX_TAG_CHARS]!r} is not available")
    model_type = optional(query, "type")
    if model_type is not None and model_type not in MODEL_TYPES:
        raise ProtocolError("invalid_parameter", 'type must be "fast" or "quality"')
    return ConnectParams(language=language, model_type=model_type)


def extract_token(target: str, headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The token of a handshake: ``?token=``, one of :data:`TOKEN_HEADERS`, or
    ``Authorization: Bearer``. The same token in several places is fine; different
    ones are refused (400), none is 401. Never echoes a token in a message."""
    return tokens.extract_token(target, headers, TOKEN_PLACES)


# --- messages ------------------------------------------------------------------------


def result(utterance: Utterance) -> dict[str, Any]:
    """A partial or a final, in both key sets (documented and Kaldi-style)."""
    if not utterance.is_final:
        return {"partial": utterance.text, "text": utterance.text, "is_final": False,
                "offset_ms": utterance.start_ms}
    words = [[w.word, w.start_ms, w.end_ms, round(w.confidence, 4)]
             for w in utterance.words]
    speaker = utterance.speaker.label if utterance.speaker is not None else None
    return {"text": utterance.text, "is_final": True, "offset_ms": utterance.start_ms,
            "words": words, "result": words, "speaker": speaker}


def warning(code: str, message: str) -> dict[str, Any]:
    if code == "sample_rate_mismatch":  # the core's text speaks of a URL parameter
        message = (f"Scriptix audio is {SAMPLE_RATE} Hz but the WAV header gives another "
                   "rate; the header's rate is used")
    return {"warning": message, "code": code}


def error(code: str, message: str) -> dict[str, Any]:
    return {"error": message, "code": code}


def _bad(message: str) -> ProtocolError:
    return ProtocolError("bad_message", message)


class ScriptixDialect:
    """One Scriptix session. State: whether ``start`` has come (audio is refused
    before it) and what the core said about the session (for ``listening``)."""

    answers_every_frame = False

    def __init__(self, params: ConnectParams, device_language: str | None) -> None:
        self.params = params
        self.device_language = device_language
        self.started = False
        self._session: Started | None = None  # what the core said (before any start)
        self._held: list[str] = []  # warnings raised before ``listening`` went out
        if device_language is None and params.language is not None:
            self._held.append(encode(warning(
                "language_unverified", "the device cannot tell its model's language from "
                f"its name; transcribing {params.language[:MAX_TAG_CHARS]!r} with the one model "
                "it has")))

    def parse(self, frame: str | bytes) -> ClientEvent:
        if isinstance(frame, bytes | bytearray):
            if not self.started:
                raise ProtocolError("not_started", 'audio before {"action": "start"}: send '
                                    'start and wait for {"state":"listening"} first',
                                    close_code=CLOSE_POLICY)
            return Audio(bytes(frame))
        try:
            data = json_object(frame, MAX_TEXT_CHARS)
        except JsonTextError as exc:
            if exc.reason == "too_long":
                raise _bad(f"text message longer than {MAX_TEXT_CHARS} characters; "
                           "ignored") from None
            raise _bad("text messages must be JSON objects; ignored") from None
        action = data.get("action")
        if action == "start":
            if self.started:
                raise _bad("the session has already started; ignored")
            self.started = True
            held, self._held = self._held, []
            return Reply((self._listening(), *held))
        if action == "stop":
            return End()
        if not isinstance(data, dict):
            raise _bad("text messages must be JSON objects; ignored")
        if not isinstance(action, str):
            raise _bad('missing "action"; expected "start" or "stop"; ignored')
        raise _bad(f'unknown action {action[:40]!r}; expected "start" or "stop"; ignored')

    def _listening(self) -> str:
        language = self.params.language or self.device_language
        body: dict[str, Any] = {
            "state": "listening", "session_id": None, "language": language,
            "type": self.params.model_type, "model": None, "sample_rate": SAMPLE_RATE,
            "transcripts": None, "expires_at": None, "max_session_seconds": None,
        }
        if self._session is not None and isinstance(d := self._session.description,
                                                    SessionDescription):
            body.update(session_id=self._session.session_id, model=d.model,
                        sample_rate=d.sample_rate, transcripts=d.transcripts,
                        expires_at=d.expires_at, max_session_seconds=d.max_session_seconds)
        return encode(body)

    def encode(self, event: CoreEvent) -> list[str | bytes]:
        if isinstance(event, Started):
            self._session = event
            return []
        if isinstance(event, Result):
            return [encode(result(event.utterance))]
        if isinstance(event, Notice):
            frame = encode(warning(event.code, event.message))
            if not self.started:
                self._held.append(frame)
                return []
            return [frame]
        if isinstance(event, Ended):
            if event.error is not None:
                held, self._held = self._held, []
                return [*held, encode(error(*event.error))]
            return [STOPPED]
        return []  # Enrolled, Progress, Flushed: nothing in Scriptix's protocol

    def close_code(self, ended: Ended) -> int:
        if ended.close_code == CLOSE_AUTH:
            return CLOSE_POLICY  # a token that expired or was revoked mid-session
        return ended.close_code
