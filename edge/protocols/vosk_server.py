"""vosk-server's WebSocket protocol (alphacep/vosk-server ``websocket/asr_server.py``) as
a dialect of the session core.

Pure (sans-IO). What its clients depend on, and what this module reproduces:

* Binary frames are audio (raw s16le at the configured rate; a WAV header is read if
  there is one). Every binary frame gets exactly one reply: ``{"partial": "..."}``, or,
  when an utterance ended in it, the final ``{"result": [...], "text": "..."}``. The
  clients are lockstep (send a frame, wait for its reply), so no other event may put a
  frame on the wire: warnings and the session's start are not sent at all.
* ``{"config": {...}}`` gets no reply. ``sample_rate``, ``phrase_list`` (a grammar),
  ``words`` and ``max_alternatives`` apply when sent before the first audio frame (as in
  vosk-server, where they take effect when the recogniser is created); other keys are
  ignored as vosk-server ignores them. ``model`` chooses among the installed models
  (``[recognizer.models]``: a language tag, or a model's name or directory) for this
  session only, never for everyone as in vosk-server, and only before the first audio
  frame; any other model, or one named after the audio, ends the session.
* ``{"eof": 1}`` gets the final result (``{"text": ""}`` if there was nothing left), then
  close 1000. ``{"reset": 1}`` gets the final result and the stream goes on.
* A final is ``{"result": [{"conf", "end", "start", "word"}], "spk": [...], "text"}``
  (times in float seconds; ``result`` only with ``words`` on, the default; ``spk`` only
  with a speaker model), or ``{"alternatives": [{"confidence", "result", "text"}]}`` when
  ``max_alternatives`` > 0: edge has no n-best lattice, so the one alternative is the
  final itself, its confidence the mean of its words' (0 to 1, not Kaldi's lattice score).

Anything else a client sends (a text frame that is not one of those objects, a config
value of the wrong type) ends the session: vosk-server itself drops the connection
(close 1011) on such input. Here the client gets ``{"error": "..."}`` and a close code
that says why: 1003 for an unknown message, 1008 for a bad or refused config, 1009 for
a text frame over the limit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge.core.close_codes import (
    CLOSE_AUTH,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED_DATA,
)
from edge.core.errors import ProtocolError
from edge.core.rates import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, is_sample_rate
from edge.protocols.events import (
    Audio,
    ClientEvent,
    Configure,
    CoreEvent,
    End,
    Ended,
    Flushed,
    ForceEndpoint,
    Progress,
    Result,
    Utterance,
)
from edge.protocols.text import JsonTextError, Limits, json_object, phrase_list


class VoskServerDialect:
    """One session in vosk-server's protocol. Keeps the session's output settings
    (``words``, ``max_alternatives``) and the finals of the frame being answered: they
    go out as that frame's one reply (merged, in the rare case of two)."""

    answers_every_frame = True

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.words = True
        self.max_alternatives = 0
        self._audio_seen = False
        self._finals: list[Utterance] = []

    # --- client frames ---------------------------------------------------------------

    def parse(self, frame: str | bytes) -> ClientEvent:
        if isinstance(frame, bytes | bytearray):
            self._audio_seen = True
            return Audio(bytes(frame))
        message = _parse_text(frame, self.limits)
        if "eof" in message:
            return End()
        if "reset" in message:
            return ForceEndpoint()
        config = _parse_config(message["config"], self.limits)
        if not self._audio_seen:  # later, the core ignores a config, and so do we
            if config.words is not None:
                self.words = config.words
            if config.max_alternatives is not None:
                self.max_alternatives = config.max_alternatives
        elif config.model is not None:  # never silently on a model not asked for
            raise ProtocolError("model_not_allowed", "the model is chosen before the first "
                                "audio frame; this session keeps its own",
                                close_code=CLOSE_POLICY)
        return Configure(phrases=config.phrases, sample_rate=config.sample_rate,
                         language=config.model)

    # --- core events -------------------------------------------------------------------

    def encode(self, event: CoreEvent) -> list[str | bytes]:
        if isinstance(event, Result):
            if event.utterance.is_final:  # held for the reply to its frame
                self._finals.append(event.utterance)
            return []  # partials go out as Progress, one per frame
        if isinstance(event, Progress):
            if self._finals:
                return [self._final_frame()]
            return [_dumps({"partial": event.partial})]
        if isinstance(event, Flushed):  # the reply to {"reset": 1}
            return [self._final_frame()]
        if isinstance(event, Ended):
            frames: list[str | bytes] = []
            if self._finals or event.reason == "end":
                frames.append(self._final_frame())
            if event.error is not None:
                frames.append(_dumps({"error": event.error[1]}))
            return frames
        return []  # Started, Notice, Enrolled: the protocol has no such messages

    def close_code(self, ended: Ended) -> int:
        if ended.reason == "end":
            return CLOSE_NORMAL
        if ended.close_code == CLOSE_AUTH:  # vosk clients read 1008 as refused
            return CLOSE_POLICY
        return ended.close_code

    def _final_frame(self) -> str:
        finals, self._finals = self._finals, []
        return _dumps(final_message(finals, words=self.words,
                                    alternatives=self.max_alternatives > 0))


def final_message(finals: list[Utterance], *, words: bool = True,
                  alternatives: bool = False) -> dict[str, Any]:
    """vosk-server's final result for ``finals`` (usually one; none gives the empty
    result), in the shape Vosk's ``Result()`` has for these settings."""
    text = " ".join(u.text for u in finals if u.text)
    items = [w for u in finals for w in u.words]
    if alternatives:
        if not text:
            return {"alternatives": [{"text": "", "confidence": 1.0}]}
        confidence = (sum(w.confidence for w in items) / len(items)) if items else 1.0
        alternative: dict[str, Any] = {"confidence": round(confidence, 6)}
        if words and items:
            alternative["result"] = [{"end": w.end_ms / 1000, "start": w.start_ms / 1000,
                                      "word": w.word} for w in items]
        alternative["text"] = text
        return {"alternatives": [alternative]}
    message: dict[str, Any] = {}
    if words and items:
        message["result"] = [{"conf": round(w.confidence, 6), "end": w.end_ms / 1000,
                              "start": w.start_ms / 1000, "word": w.word} for w in items]
    vectors = [u.speaker_vector for u in finals if u.speaker_vector is not None]
    if text and vectors:
        # vosk-server's clients compare this vector with their own references; it is
        # computed from the audio this client sent, and goes to no one else.
        message["spk"] = list(vectors[-1])
    message["text"] = text
    return message


# --- parsing -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Config:
    phrases: tuple[str, ...] | None
    sample_rate: int | None
    words: bool | None
    max_alternatives: int | None
    model: str | None


_COMMANDS = ("config", "eof", "reset")


def _parse_text(text: str, limits: Limits) -> Mapping[str, Any]:
    """A text frame as one of the three messages (``config``, ``eof``, ``reset``)."""
    try:
        data: dict[str, Any] | None = json_object(text, limits.max_text_chars)
    except JsonTextError as exc:
        if exc.reason == "too_long":
            raise ProtocolError("message_too_long", f"text messages are limited to "
                                f"{limits.max_text_chars} characters",
                                close_code=CLOSE_TOO_BIG) from None
        data = None
    if data is None or len(data) != 1 or next(iter(data)) not in _COMMANDS:
        raise _unsupported()
    for key in ("eof", "reset"):
        if key in data and not (data[key] is True or (type(data[key]) is int
                                                       and data[key] == 1)):
            raise _unsupported()
    return data


def _parse_config(value: Any, limits: Limits) -> _Config:
    if not isinstance(value, dict):
        raise _invalid('"config" must be an object')
    return _Config(
        phrases=_phrases(value["phrase_list"], limits) if "phrase_list" in value else None,
        sample_rate=_rate(value["sample_rate"]) if "sample_rate" in value else None,
        words=_flag(value["words"]) if "words" in value else None,
        max_alternatives=(_count(value["max_alternatives"]) if "max_alternatives" in value
                          else None),
        model=_model(value["model"]) if "model" in value else None,
    )


def _rate(value: Any) -> int:
    # vosk-server takes float(value): 16000, 16000.0 and "16000" all work there.
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 6:
        value = int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if not is_sample_rate(value):
        raise _invalid(f"config.sample_rate must be a whole number of Hz between "
                       f"{MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE}")
    return value


def _phrases(value: Any, limits: Limits) -> tuple[str, ...] | None:
    phrases = phrase_list(value, limits, "config.phrase_list", _invalid)
    return phrases or None  # vosk-server decodes without a grammar for an empty list


def _flag(value: Any) -> bool:
    # vosk-server takes bool(value); its own clients send 0 and 1.
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise _invalid("config.words must be true, false, 0 or 1")


MAX_MODEL_CHARS = 200


def _model(value: Any) -> str:
    if not (isinstance(value, str) and 0 < len(value.strip()) <= MAX_MODEL_CHARS
            and value.isprintable()):
        raise _invalid(f"config.model must name an installed model or language (1 to "
                       f"{MAX_MODEL_CHARS} characters)")
    return value.strip()


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1000:
        raise _invalid("config.max_alternatives must be an integer between 0 and 1000")
    return value


def _unsupported() -> ProtocolError:
    return ProtocolError("unsupported_message", 'text messages must be {"config": {...}}, '
                         '{"eof" : 1} or {"reset" : 1}; audio goes in binary frames',
                         close_code=CLOSE_UNSUPPORTED_DATA)


def _invalid(message: str) -> ProtocolError:
    return ProtocolError("invalid_config", message, close_code=CLOSE_POLICY)


def _dumps(message: Mapping[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False)
