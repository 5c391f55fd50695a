"""AssemblyAI Universal-Streaming v3 as a dialect of the session core.

Pure (sans-IO): query strings and frames in, events out; core events in, JSON text out.
What the clients need was read in AssemblyAI's own SDKs (PyPI ``assemblyai`` 1.8.2,
npm ``assemblyai`` 4.41.5) and is checked against them in the tests:

* the handshake's query parameters (:func:`parse_connect_params`); booleans arrive as
  ``true`` (JS) and ``True`` (Python), lists as JSON;
* binary frames are audio (``pcm_s16le``, or G.711 ``pcm_mulaw``, decoded here);
  text frames are ``Terminate``, ``ForceEndpoint``, ``KeepAlive`` and
  ``UpdateConfiguration``; anything else ends the session with 3006, as AssemblyAI's
  server does;
* server messages ``Begin``, ``Turn``, ``Warning``, ``Error`` and ``Termination``,
  each exactly as the SDKs' models validate them (a message that fails the Python SDK's
  validation silently kills its reader thread, so every field is typed here with care);
* close codes from AssemblyAI's table, mapped from the core's end reasons.

Vosk has no end-of-turn model: a turn ends at Vosk's endpoint, at a ``ForceEndpoint``,
or after ``min_turn_silence`` (else ``max_turn_silence``) of audio without speech once
words were heard (the core's ``Configure(max_turn_silence_ms=...)``, pauses told from
the audio by :mod:`edge.audio.pauses`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.core.close_codes import (
    CLOSE_AUTH,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_SERVICE_RESTART,
    CLOSE_UNSUPPORTED_DATA,
)
from edge.core.errors import ProtocolError
from edge.core.languages import primary_language
from edge.core.tokens import TokenPlaces
from edge.protocols.assemblyai_params import CLOSE_INPUT_ERROR as CLOSE_INPUT_ERROR
from edge.protocols.assemblyai_params import MAX_SILENCE_MS, keyterm_list, turn_silence
from edge.protocols.assemblyai_params import ConnectParams as ConnectParams
from edge.protocols.assemblyai_params import parse_connect_params as parse_connect_params
from edge.protocols.events import (
    Audio,
    ClientEvent,
    Configure,
    CoreEvent,
    Described,
    End,
    Ended,
    ForceEndpoint,
    KeepAlive,
    Notice,
    Reply,
    Result,
    RoomDescription,
    SessionDescription,
    Started,
    Utterance,
    Word,
)
from edge.protocols.text import JsonTextError, json_object

# AssemblyAI's close codes (the SDKs' tables); it uses IANA's 1000, 1008, 1012, 1013 too.
CLOSE_SERVER_ERROR = 3005
CLOSE_SESSION_EXPIRED = 3008  # maximum session duration exceeded
CLOSE_TOO_MANY_SESSIONS = 3009
CLOSE_NOT_AUTHORIZED = 4001
CLOSE_TOO_FAST = 4029
CLOSE_IDLE = 4031

#: The SDKs send ``Authorization: <key>`` (Python) or ``?token=`` (JS), never both.
TOKEN_PLACES = TokenPlaces(bare_authorization=True, close_code=CLOSE_NOT_AUTHORIZED)

#: The core's end reasons, as AssemblyAI's close codes.
_CLOSE_FOR_REASON = {
    "end": CLOSE_NORMAL,
    "idle": CLOSE_IDLE,
    "max_session_length": CLOSE_SESSION_EXPIRED,
    "token_expired": CLOSE_NOT_AUTHORIZED,
    "revoked": CLOSE_NOT_AUTHORIZED,
    "rate_limited": CLOSE_TOO_FAST,
    "internal_error": CLOSE_SERVER_ERROR,
    "shutdown": CLOSE_SERVICE_RESTART,
}
#: The core's (IANA) close codes, for reasons not in the table above.
_CLOSE_FOR_CODE = {
    CLOSE_AUTH: CLOSE_NOT_AUTHORIZED,
    CLOSE_UNSUPPORTED_DATA: CLOSE_INPUT_ERROR,  # audio that cannot be decoded
    CLOSE_INTERNAL_ERROR: CLOSE_SERVER_ERROR,
}

#: ``Warning.warning_code`` for the core's notices (AssemblyAI's SDKs only log the
#: code and hand the message to the application; these numbers are edge's own).
WARNING_CODES = {
    "ignored_parameter": 100,
    "bad_message": 101,
    "audio_format": 200,
    "sample_rate_mismatch": 201,
    "clipping": 202,
    "silence": 203,
    "realtime_lag": 300,
    "token_expiring": 400,
    "journal_error": 500,
}
_OTHER_WARNING = 999


# --- the dialect ---------------------------------------------------------------------


@dataclass
class AssemblyAIDialect:
    """One v3 session: the parameters it was opened with, its turn counter, and the
    settings ``UpdateConfiguration`` may change.

    ``expires_at``: when the session will be ended at the latest (Unix seconds: the
    token's expiry or the maximum session length, whichever comes first), for Begin.
    ``language``: the installed language the session is to run in, when the session
    starts on another model and moves to it after Begin (a model loading takes longer
    than the SDKs wait for a handshake); what is said of the language parameters waits
    for it.
    """

    params: ConnectParams = field(default_factory=ConnectParams)
    expires_at: int = 0
    max_text_chars: int = 65536
    language: str = ""
    answers_every_frame: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.turn_order = 0
        self.format_turns = self.params.format_turns
        self._max_silence = self.params.max_turn_silence_ms
        self._min_silence = self.params.min_turn_silence_ms
        self._told_language = False

    # client -> core

    def parse(self, frame: str | bytes) -> ClientEvent:
        if isinstance(frame, bytes | bytearray):
            if self.params.encoding == "pcm_mulaw":
                return Audio(mulaw_to_pcm(bytes(frame)))
            return Audio(bytes(frame))
        try:
            data = json_object(frame, self.max_text_chars)
        except JsonTextError as exc:
            raise _input_error(
                f"text message longer than {self.max_text_chars} characters"
                if exc.reason == "too_long"
                else "Invalid JSON: text messages must be JSON objects") from None
        kind = data.get("type")
        if kind == "Terminate":
            return End()
        if kind == "ForceEndpoint":
            return ForceEndpoint()
        if kind == "KeepAlive":
            return KeepAlive()
        if kind == "UpdateConfiguration":
            return self._update(data)
        if not isinstance(kind, str):
            raise _input_error('Invalid Message: missing "type"')
        raise _input_error(f"Invalid Message Type: {kind[:40]!r}")

    def _update(self, data: Mapping[str, Any]) -> ClientEvent:
        fmt = _json_bool(data, "format_turns")
        max_silence = _json_int(data, "max_turn_silence", 0, MAX_SILENCE_MS)
        min_silence = _json_int(data, "min_turn_silence", 0, MAX_SILENCE_MS)
        if min_silence is None:
            min_silence = _json_int(data, "min_end_of_turn_silence_when_confident", 0,
                                    MAX_SILENCE_MS)
        threshold = data.get("end_of_turn_confidence_threshold")
        if threshold is not None and not (_is_number(threshold) and 0 <= threshold <= 1):
            raise _input_error("end_of_turn_confidence_threshold must be a number from 0 "
                               "to 1")
        if data.get("keyterms_prompt") is not None:
            keyterm_list(data["keyterms_prompt"], _input_error)
        codes = data.get("language_codes")
        if codes is not None and not (isinstance(codes, list)
                                      and all(isinstance(c, str) for c in codes)):
            raise _input_error("language_codes must be a list of language codes")
        if fmt is not None:
            self.format_turns = fmt
        before = turn_silence(self._max_silence, self._min_silence)
        if max_silence is not None:
            self._max_silence = max_silence
        if min_silence is not None:
            self._min_silence = min_silence
        after = turn_silence(self._max_silence, self._min_silence)
        if after is not None and after != before:
            return Configure(max_turn_silence_ms=after)
        if codes and primary_language(self.language) not in map(primary_language, codes):
            # The session's model cannot change under its recogniser.
            return Reply((_text(warning("ignored_parameter", "language_codes: a session's "
                                        "language is chosen when it opens; this session "
                                        f"stays in {self.language}")),))
        return Reply(())  # nothing for the core to do

    # core -> client

    def encode(self, event: CoreEvent) -> list[str | bytes]:
        if isinstance(event, Started):
            return [_text(begin(event.session_id, self.expires_at)),
                    *self._start_warnings(event.description),
                    *self._language_notes(event.description)]
        if isinstance(event, Described):  # on the model of the language asked for
            return self._language_notes(event.description)
        if isinstance(event, Result):
            return [_text(turn) for turn in self._turns(event.utterance)]
        if isinstance(event, Notice):
            return [_text(warning(event.code, event.message))]
        if isinstance(event, Ended):
            if event.error is not None:
                return [_text(error(self.close_code(event), event.error[1]))]
            return [_text(termination(event.summary))]
        return []  # Progress, Flushed, Enrolled: v3 has no such messages

    def close_code(self, ended: Ended) -> int:
        if ended.reason in _CLOSE_FOR_REASON:
            return _CLOSE_FOR_REASON[ended.reason]
        if 3000 <= ended.close_code <= 4999:
            return ended.close_code  # this dialect's own ProtocolErrors
        return _CLOSE_FOR_CODE.get(ended.close_code, ended.close_code)

    def _start_warnings(self, description: SessionDescription | RoomDescription
                        ) -> list[str | bytes]:
        out: list[str | bytes] = []
        if self.params.keyterms:
            out.append(_text(warning("ignored_parameter", "keyterms_prompt is ignored: "
                                     "this device's recogniser (Vosk) cannot boost words")))
        rest = [name for name in self.params.ignored if name != "keyterms_prompt"]
        if rest:
            out.append(_text(warning("ignored_parameter", "parameters accepted without "
                                     "effect on this device: " + ", ".join(rest)[:300])))
        if self.params.speaker_labels and not description.speaker_identification:
            out.append(_text(warning("ignored_parameter", "speaker_labels: this device "
                                     "has no speaker model; turns carry no speaker label")))
        return out

    def _language_notes(self, description: SessionDescription | RoomDescription
                        ) -> list[str | bytes]:
        """:func:`language_notes`, once the session runs in the language asked for."""
        if not isinstance(description, SessionDescription) or self._told_language or (
                self.language and description.language != self.language):
            return []
        self._told_language, self.language = True, description.language
        return [_text(warning("ignored_parameter", text))
                for text in language_notes(self.params, description)]

    def _turns(self, utterance: Utterance) -> list[dict[str, Any]]:
        if not utterance.is_final:
            return [turn(self.turn_order, utterance.text, (), end_of_turn=False)]
        label = utterance.speaker.label if utterance.speaker else None
        speaker = label if self.params.speaker_labels else None
        turns = [turn(self.turn_order, utterance.text, utterance.words, end_of_turn=True,
                      speaker=speaker, with_speaker=self.params.speaker_labels)]
        if self.format_turns:
            turns.append(turn(self.turn_order, format_text(utterance.text),
                              format_words(utterance.words), end_of_turn=True,
                              formatted=True, speaker=speaker,
                              with_speaker=self.params.speaker_labels))
        self.turn_order += 1
        return turns


def language_notes(params: ConnectParams, description: SessionDescription) -> list[str]:
    """What the client is told of the language parameters it gave that this device
    cannot honour as AssemblyAI would: it detects no language and has one model a
    language, so a session is transcribed in one language, by a model of its own."""
    where = f"this session is transcribed in {description.language} by {description.model}"
    notes = []
    if len(params.asked_languages) > 1:
        notes.append(f"language_codes: this device detects no language, so one model "
                     f"transcribes the whole session: {where}")
    if params.language_detection:
        notes.append(f"language_detection: this device detects no language; {where}")
    if params.speech_model is not None:
        notes.append(f"speech_model {params.speech_model}: {where}")
    return notes


# --- messages --------------------------------------------------------------------------


def begin(session_id: str, expires_at: int) -> dict[str, Any]:
    return {"type": "Begin", "id": session_id, "expires_at": int(expires_at)}


def turn(order: int, text: str, words: Sequence[Word], *, end_of_turn: bool,
         formatted: bool = False, speaker: str | None = None, with_speaker: bool = False
         ) -> dict[str, Any]:
    """A ``Turn``. Partial turns carry their text in ``transcript`` and no words (Vosk's
    partial results have no word times); ``utterance`` is the text once the turn ends."""
    body: dict[str, Any] = {
        "type": "Turn",
        "turn_order": order,
        "turn_is_formatted": formatted,
        "end_of_turn": end_of_turn,
        "end_of_turn_confidence": 1.0 if end_of_turn else 0.0,
        "transcript": text,
        "utterance": text if end_of_turn else "",
        "words": [{"start": int(w.start_ms), "end": int(w.end_ms), "text": w.word,
                   "confidence": round(float(w.confidence), 4), "word_is_final": True,
                   **({"speaker": speaker} if with_speaker else {})}
                  for w in words],
    }
    if with_speaker:
        body["speaker_label"] = speaker
    return body


def warning(code: str, message: str) -> dict[str, Any]:
    return {"type": "Warning", "warning_code": WARNING_CODES.get(code, _OTHER_WARNING),
            "warning": message}


def error(code: int, message: str) -> dict[str, Any]:
    return {"type": "Error", "error_code": code, "error": message}


def termination(summary: Mapping[str, Any]) -> dict[str, Any]:
    """``Termination`` with whole seconds (the Python SDK's model wants integers)."""
    return {"type": "Termination",
            "audio_duration_seconds": _seconds(summary.get("audio_ms")),
            "session_duration_seconds": _seconds(summary.get("duration_ms"))}


def format_text(text: str) -> str:
    """What ``format_turns`` means for a Vosk model, which gives lower-case words without
    punctuation: the first letter upper-cased and a full stop at the end. Korean has no
    case, so there only the full stop is added."""
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".?!" else text + "."


def format_words(words: Sequence[Word]) -> tuple[Word, ...]:
    """The words of a formatted turn: the same times, their texts as
    :func:`format_text` changes them (so that joined, they are the transcript)."""
    if not words:
        return ()
    out = list(words)
    first = out[0]
    out[0] = Word(first.word[:1].upper() + first.word[1:], first.start_ms, first.end_ms,
                  first.confidence)
    last = out[-1]
    if last.word and last.word[-1] not in ".?!":
        out[-1] = Word(last.word + ".", last.start_ms, last.end_ms, last.confidence)
    return tuple(out)


def _seconds(ms: Any) -> int:
    return round(ms / 1000) if isinstance(ms, int | float) and math.isfinite(ms) else 0


def _text(message: Mapping[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


# --- G.711 mu-law ------------------------------------------------------------------------


def _mulaw_sample(byte: int) -> int:
    byte = ~byte & 0xFF
    magnitude = ((((byte & 0x0F) << 3) + 0x84) << ((byte >> 4) & 0x07)) - 0x84
    return -magnitude if byte & 0x80 else magnitude


#: The 256 mu-law codes as s16 samples (as ``audioop.ulaw2lin`` gave them).
MULAW_TABLE = np.array([_mulaw_sample(b) for b in range(256)], dtype="<i2")


def mulaw_to_pcm(data: bytes) -> bytes:
    """G.711 mu-law bytes as s16le PCM (one sample per byte)."""
    return MULAW_TABLE[np.frombuffer(data, dtype=np.uint8)].tobytes()


# --- validation helpers ---------------------------------------------------------------


def _input_error(message: str) -> ProtocolError:
    return ProtocolError("invalid_message", message, close_code=CLOSE_INPUT_ERROR)


def _is_number(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, int | float)
            and math.isfinite(value))


def _json_int(data: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _input_error(f"{name} must be an integer from {low} to {high}")
    return value


def _json_bool(data: Mapping[str, Any], name: str) -> bool | None:
    value = data.get(name)
    if value is not None and not isinstance(value, bool):
        raise _input_error(f"{name} must be true or false")
    return value
