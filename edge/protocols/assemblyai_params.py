"""The query parameters of an AssemblyAI Universal-Streaming v3 handshake (``/v3/ws``).

Pure. What the SDKs send was read in AssemblyAI's own SDKs (PyPI ``assemblyai`` 1.8.2,
npm ``assemblyai`` 4.41.5): only the parameters set, booleans as ``true`` (JS) and
``True`` (Python), lists as JSON. :func:`parse_connect_params` validates them; an
invalid one is a :class:`ProtocolError` (``invalid_parameter``, close code 3006) naming
it, never echoing its value. The dialect itself is :mod:`edge.protocols.assemblyai`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge.core.errors import ProtocolError
from edge.core.languages import is_language_tag, primary_language
from edge.core.model_table import ModelTable
from edge.core.rates import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from edge.protocols.query import optional

CLOSE_INPUT_ERROR = 3006  # AssemblyAI's close code for bad input (edge.protocols.assemblyai)

ENCODINGS = ("pcm_s16le", "pcm_mulaw")

#: Parameters that are read; every other one is accepted and reported as ignored.
_HANDLED = frozenset({
    "sample_rate", "encoding", "format_turns", "formatted_finals", "max_turn_silence",
    "min_turn_silence", "min_end_of_turn_silence_when_confident", "inactivity_timeout",
    "speaker_labels", "token", "language_code", "language_codes", "speech_model",
    "language_detection",
})
#: Read and validated, but they change nothing here (docs/peers.md says why).
_WITHOUT_EFFECT = ("end_of_turn_confidence_threshold", "keyterms_prompt")

MAX_SILENCE_MS = 60_000
MIN_INACTIVITY_S, MAX_INACTIVITY_S = 5, 3600  # AssemblyAI's own bounds
MAX_KEYTERMS, MAX_KEYTERM_CHARS = 1000, 100
MAX_LANGUAGES = 20
MAX_MODEL_CHARS = 64
#: AssemblyAI's speech models that transcribe one language only (the SDK's SpeechModel).
ONE_LANGUAGE_MODELS = {"universal-streaming-english": "en"}


@dataclass(frozen=True)
class ConnectParams:
    """The v3 query parameters, validated. ``ignored``: names accepted without effect."""

    sample_rate: int | None = None
    encoding: str = "pcm_s16le"
    format_turns: bool = False
    max_turn_silence_ms: int | None = None
    min_turn_silence_ms: int | None = None
    inactivity_timeout_s: int | None = None
    speaker_labels: bool = False
    keyterms: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()  # language_codes (or language_code), in order
    speech_model: str | None = None
    language_detection: bool = False

    @property
    def turn_silence_ms(self) -> int | None:
        return turn_silence(self.max_turn_silence_ms, self.min_turn_silence_ms)

    @property
    def asked_languages(self) -> tuple[str, ...]:
        """The languages the session is to be transcribed in, in the client's order:
        ``language_codes``, else the one a one-language ``speech_model`` transcribes."""
        if self.languages:
            return self.languages
        one = ONE_LANGUAGE_MODELS.get(self.speech_model or "")
        return (one,) if one else ()


def session_language(params: ConnectParams, models: ModelTable) -> str:
    """The installed language a v3 session is transcribed in: the first of the
    languages it asks for (:attr:`ConnectParams.asked_languages`) that a model serves
    (``en-US`` by an ``en`` model and the reverse), or the device's default when it asks
    for none. Raises :class:`ProtocolError` ``unsupported_language`` (a 400 at the
    handshake) when it asks only for languages without a model."""
    asked = params.asked_languages
    for tag in asked:
        language = models.choose(tag)
        if language is not None:
            return language
    if asked:
        raise ProtocolError("unsupported_language", f"this device has no model for "
                            f"{', '.join(asked)} (installed: {', '.join(models.languages)})",
                            close_code=CLOSE_INPUT_ERROR)
    return models.default


def turn_silence(max_ms: int | None, min_ms: int | None) -> int | None:
    """The silence that ends a turn: ``min_turn_silence`` (alias
    ``min_end_of_turn_silence_when_confident``) when given, else ``max_turn_silence``.
    edge hears a pause in the audio itself, which is AssemblyAI's confident case; its
    "not confident" case (words still changing) has no counterpart here, and Vosk's own
    endpointer still ends the turns no pause has ended."""
    return min_ms if min_ms is not None else max_ms


def parse_connect_params(query: Mapping[str, Sequence[str]]) -> ConnectParams:
    """Validate a ``/v3/ws`` query. Raises :class:`ProtocolError` (``invalid_parameter``,
    close code 3006) naming the parameter; never echoes a value."""
    rate = _int_param(query, "sample_rate", MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)
    encoding = _param(query, "encoding")
    if encoding is None:
        encoding = "pcm_s16le"
    if encoding not in ENCODINGS:
        raise _invalid_param("encoding must be pcm_s16le or pcm_mulaw (this device "
                             "decodes no compressed audio)")
    fmt = _bool_param(query, "format_turns")
    if fmt is None:
        fmt = _bool_param(query, "formatted_finals")
    max_silence = _int_param(query, "max_turn_silence", 0, MAX_SILENCE_MS)
    min_silence = _int_param(query, "min_turn_silence", 0, MAX_SILENCE_MS)
    if min_silence is None:
        min_silence = _int_param(query, "min_end_of_turn_silence_when_confident", 0,
                                 MAX_SILENCE_MS)
    inactivity = _int_param(query, "inactivity_timeout", MIN_INACTIVITY_S, MAX_INACTIVITY_S)
    if "end_of_turn_confidence_threshold" in query:
        _float_param(query, "end_of_turn_confidence_threshold", 0.0, 1.0)
    keyterms: tuple[str, ...] = ()
    if "keyterms_prompt" in query:
        try:
            value = json.loads(_param(query, "keyterms_prompt") or "")
        except (ValueError, RecursionError):
            raise _invalid_param("keyterms_prompt must be a JSON list of strings") from None
        keyterms = keyterm_list(value, _invalid_param)
    ignored = sorted((set(query) - _HANDLED) | (set(_WITHOUT_EFFECT) & set(query)))
    languages, model = _languages(query)
    return ConnectParams(sample_rate=rate, encoding=encoding, format_turns=bool(fmt),
                         max_turn_silence_ms=max_silence, min_turn_silence_ms=min_silence,
                         inactivity_timeout_s=inactivity,
                         speaker_labels=bool(_bool_param(query, "speaker_labels")),
                         keyterms=keyterms, ignored=tuple(ignored), languages=languages,
                         speech_model=model,
                         language_detection=bool(_bool_param(query, "language_detection")))


def _languages(query: Mapping[str, Sequence[str]]) -> tuple[tuple[str, ...], str | None]:
    """``language_codes`` (a JSON list; the Python SDK's ``language_code`` is its older
    single form) and ``speech_model``, checked against each other."""
    languages: tuple[str, ...] = ()
    raw = _param(query, "language_codes")
    if raw is not None:
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            value = None
        if not (isinstance(value, list) and 1 <= len(value) <= MAX_LANGUAGES
                and all(isinstance(v, str) and is_language_tag(v) for v in value)):
            raise _invalid_param(f"language_codes must be a JSON list of 1 to "
                                 f"{MAX_LANGUAGES} language codes such as [\"en\", \"es\"]")
        languages = tuple(value)
    single = _param(query, "language_code")
    if single is not None and not is_language_tag(single):
        raise _invalid_param("language_code must be a language code such as en or es")
    if not languages and single is not None:
        languages = (single,)
    model = _param(query, "speech_model")
    if model is not None and not (0 < len(model) <= MAX_MODEL_CHARS and model.isascii()
                                  and model.isprintable()):
        raise _invalid_param("speech_model must be a speech model's name")
    one = ONE_LANGUAGE_MODELS.get(model or "")
    if one and any(primary_language(tag) != one for tag in languages):
        raise _invalid_param(f"speech_model {model} transcribes {one} only, and the "
                             f"language codes ask for others")
    return languages, model



# --- validation helpers ---------------------------------------------------------------


def _invalid_param(message: str) -> ProtocolError:
    return ProtocolError("invalid_parameter", message, close_code=CLOSE_INPUT_ERROR)


def _param(query: Mapping[str, Sequence[str]], name: str) -> str | None:
    return optional(query, name, close_code=CLOSE_INPUT_ERROR)


def _int_param(query: Mapping[str, Sequence[str]], name: str, low: int, high: int
               ) -> int | None:
    raw = _param(query, name)
    if raw is None:
        return None
    raw = raw.strip()
    # The Python SDK writes floats it was given as floats ("16000.0"): accept whole ones.
    if raw.endswith(".0"):
        raw = raw[:-2]
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or not low <= int(raw) <= high:
        raise _invalid_param(f"{name} must be an integer from {low} to {high}")
    return int(raw)


def _float_param(query: Mapping[str, Sequence[str]], name: str, low: float, high: float
                 ) -> float:
    raw = (_param(query, name) or "").strip()
    try:
        value = float(raw) if len(raw) <= 32 else math.nan
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high):
        raise _invalid_param(f"{name} must be a number from {low:g} to {high:g}")
    return value


def _bool_param(query: Mapping[str, Sequence[str]], name: str) -> bool | None:
    raw = _param(query, name)
    if raw is None:
        return None
    raw = raw.strip().lower()  # "True" from Python, "true" from JS
    if raw not in ("true", "false"):
        raise _invalid_param(f"{name} must be true or false")
    return raw == "true"


def keyterm_list(value: Any, fail: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fail("keyterms_prompt must be a list of strings")
    if len(value) > MAX_KEYTERMS or any(len(v) > MAX_KEYTERM_CHARS for v in value):
        raise fail(f"keyterms_prompt allows {MAX_KEYTERMS} terms of up to "
                   f"{MAX_KEYTERM_CHARS} characters")
    return tuple(v for v in value if v.strip())
