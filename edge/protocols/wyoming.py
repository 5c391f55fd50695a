"""Home Assistant's Wyoming protocol (speech to text): framing, the opening, the dialect.

Pure (sans-IO): bytes in, events out, and back; no trio, no sockets, no vosk.

The framing (a JSON header line, JSON data, a payload; :class:`EventReader` and
:func:`encode_event`) is :mod:`edge.protocols.wyoming_wire`.

A connection has two phases. Before a session, :class:`Opening` answers ``describe``
with ``info`` and ``ping`` with ``pong``, and reads ``transcribe`` (the language); the
first ``audio-start`` (or ``audio-chunk``) begins a session (:class:`Begin`). During the
session, :class:`WyomingDialect` turns ``audio-chunk`` into mono 16-bit PCM for the
session core and ``audio-stop`` into its end, and answers with ``transcript`` (and, for
streaming clients, ``transcript-start``, one ``transcript-chunk`` per final, and
``transcript-stop``). One utterance per connection, as Home Assistant uses it and as
wyoming-faster-whisper serves it: the connection closes after the transcript.

Whatever the peer sends is untrusted: a header that is not a JSON object, a length
that is negative, not an integer or over its bound, data that is not a JSON object, a
field of the wrong type or an event this service does not serve is answered with an
``error`` event (``text``, ``code``) and the connection is closed. Error texts name
fields and types, never their content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge import __version__

# Close codes only for the session core's bookkeeping: TCP has none, the socket closes.
from edge.core.close_codes import CLOSE_UNSUPPORTED_DATA
from edge.core.errors import ProtocolError
from edge.core.languages import MAX_TAG_CHARS, model_language, primary_language
from edge.core.rates import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, is_sample_rate
from edge.protocols.events import (
    Audio,
    ClientEvent,
    CoreEvent,
    End,
    Ended,
    KeepAlive,
    Reply,
    Result,
    Started,
)
from edge.protocols.wyoming_wire import (
    MAX_NAME,
    Malformed,
    WyomingEvent,
    bad_event,
    encode_event,
    error_event,
    unsupported,
)

PROGRAM_NAME = "edge"

MAX_WIDTH = 4  # bytes per sample: 8, 16, 24 and 32-bit integer PCM
MAX_CHANNELS = 8


# --- the service's description ------------------------------------------------------------

_VERSION = re.compile(r"v?\d+(\.\d+)*")


def model_languages(model_name: str) -> tuple[str, ...]:
    """The languages ``info`` lists for a model: the one its name says
    (:func:`edge.core.languages.model_language`), or ``()``, and then the operator
    sets ``[wyoming] language``."""
    language = model_language(model_name)
    return () if language is None else (language,)


@dataclass(frozen=True)
class Service:
    """What ``info`` says: one ``asr`` program (this daemon) with its one model."""

    model_name: str
    languages: tuple[str, ...]
    streaming: bool = True

    def info(self) -> dict[str, Any]:
        """``info``'s data, with every field wyoming's ``Info.from_event`` requires."""
        model = {
            "name": self.model_name,
            "attribution": {"name": "Alpha Cephei", "url": "https://alphacephei.com/vosk/"},
            "installed": True,
            "description": f"Vosk model {self.model_name}",
            "version": _model_version(self.model_name),
            "languages": list(self.languages),
        }
        program = {
            "name": PROGRAM_NAME,
            "attribution": {"name": "edge (speech recognition by Vosk)",
                            "url": "https://alphacephei.com/vosk/"},
            "installed": True,
            "description": "edge: offline speech to text (Vosk)",
            "version": __version__,
            "models": [model],
            "supports_transcript_streaming": self.streaming,
            "requires_external_vad": True,
        }
        return {"asr": [program], "tts": [], "handle": [], "intent": [], "wake": [],
                "mic": [], "snd": []}

    def info_event(self) -> bytes:
        return encode_event("info", self.info())

    def language_for(self, requested: str | None) -> str | None:
        """The language to transcribe for ``transcribe``'s ``language`` (None: the
        model's). Raises ProtocolError when the model is of another language."""
        if requested is None:
            return self.languages[0] if self.languages else None
        if self.languages and primary_language(requested) not in {
                primary_language(tag) for tag in self.languages}:
            raise ProtocolError(
                "unsupported_language", f"this service transcribes "
                f"{', '.join(self.languages)} only (the model cannot change per request)",
                close_code=CLOSE_UNSUPPORTED_DATA)
        return requested


def _model_version(name: str) -> str | None:
    last = name.rsplit("-", 1)[-1]
    return last if "-" in name and _VERSION.fullmatch(last) else None


# --- audio -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    rate: int
    width: int
    channels: int

    @property
    def frame_bytes(self) -> int:
        return self.width * self.channels


def parse_format(event: WyomingEvent) -> Format:
    """``audio-start``'s or ``audio-chunk``'s ``rate``, ``width``, ``channels``."""
    rate = _int_field(event, "rate")
    width = _int_field(event, "width")
    channels = _int_field(event, "channels")
    if not is_sample_rate(rate):
        raise unsupported(f"{event.type}: rate must be {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz")
    if not 1 <= width <= MAX_WIDTH:
        raise unsupported(f"{event.type}: width must be 1-{MAX_WIDTH} bytes (integer PCM)")
    if not 1 <= channels <= MAX_CHANNELS:
        raise unsupported(f"{event.type}: channels must be 1-{MAX_CHANNELS}")
    return Format(rate, width, channels)


def _int_field(event: WyomingEvent, key: str) -> int:
    value = event.data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_event(f'{event.type}: "{key}" must be an integer')
    return value


def to_mono_s16(pcm: bytes, fmt: Format) -> bytes:
    """Whole frames of ``fmt`` (little-endian integer PCM; 8-bit is unsigned, as in
    WAV) as mono signed 16-bit: samples rescaled, channels averaged."""
    if fmt.width == 2 and fmt.channels == 1:
        return pcm
    if fmt.width == 1:
        samples = (np.frombuffer(pcm, dtype=np.uint8).astype(np.int32) - 128) << 8
    elif fmt.width == 2:
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    elif fmt.width == 3:  # the two high bytes of each 24-bit sample are its 16-bit value
        raw = np.frombuffer(pcm, dtype=np.uint8).reshape(-1, 3)[:, 1:]
        samples = np.ascontiguousarray(raw).view("<i2").reshape(-1).astype(np.int32)
    else:
        samples = np.frombuffer(pcm, dtype="<i4") >> 16
    if fmt.channels > 1:
        samples = samples.reshape(-1, fmt.channels).mean(axis=1).round()
    return bytes(samples.astype("<i2").tobytes())


# --- the opening: before a session -------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What a session starts with: the audio's rate and the language to report."""

    rate: int
    language: str | None


@dataclass(frozen=True)
class Answer:
    """Send these frames; the connection stays in its opening."""

    frames: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Begin:
    """Start a session for ``request``; ``replay``: an event the session reads first
    (an ``audio-chunk`` that came without an ``audio-start``)."""

    request: Request
    replay: WyomingEvent | None = None


@dataclass(frozen=True)
class Refuse:
    """Send ``error`` and close."""

    code: str
    message: str

    def frames(self) -> tuple[bytes, ...]:
        return (error_event(self.code, self.message),)


Step = Answer | Begin | Refuse


class Opening:
    """A connection before its session: the table of what each event does.

    ============== ============================================================
    describe       ``info``
    ping           ``pong`` (its ``text`` copied)
    select-program accepted if it names this program (``edge``), else refused
    transcribe     its ``language`` is checked against the model's and kept;
                   ``name`` must be this program's or the model's
    audio-start    a session begins (its format checked)
    audio-chunk    a session begins with this chunk (no ``audio-start`` came)
    audio-stop     refused: no audio was started
    anything else  refused (this service does speech to text only)
    ============== ============================================================
    """

    def __init__(self, service: Service) -> None:
        self.service = service
        self.language: str | None = service.language_for(None)

    def step(self, event: WyomingEvent | Malformed) -> Step:
        if isinstance(event, Malformed):
            return Refuse(event.code, event.message)
        try:
            return self._step(event)
        except ProtocolError as exc:
            return Refuse(exc.code, exc.message)

    def _step(self, event: WyomingEvent) -> Step:
        kind = event.type
        if kind == "describe":
            return Answer((self.service.info_event(),))
        if kind == "ping":
            return Answer((pong(event),))
        if kind == "select-program":
            name = event.data.get("name")
            if name != PROGRAM_NAME:
                raise ProtocolError("unknown_program", f'this service has one program, '
                                    f'"{PROGRAM_NAME}"')
            return Answer()
        if kind == "transcribe":
            self.language = parse_transcribe(event, self.service)
            return Answer()
        if kind == "audio-start":
            return Begin(Request(parse_format(event).rate, self.language))
        if kind == "audio-chunk":
            return Begin(Request(parse_format(event).rate, self.language), replay=event)
        if kind == "audio-stop":
            raise ProtocolError("no_audio", "audio-stop before audio-start")
        raise unsupported_event(kind)


def parse_transcribe(event: WyomingEvent, service: Service) -> str | None:
    """``transcribe``: the language to report (checked against the model's). Its
    ``context``, ``vad_sensitivity``, ``transcript_names`` and ``transcript_terms`` are
    ignored: Vosk cannot bias towards words, only restrict itself to a grammar, and
    restricting a command to the names in it would lose the rest of the command."""
    data = event.data
    language = data.get("language")
    if language is not None and (not isinstance(language, str) or not language
                                 or len(language) > MAX_TAG_CHARS):
        raise bad_event(f'transcribe: "language" must be a language tag of at most '
                         f"{MAX_TAG_CHARS} characters")
    name = data.get("name")
    if name is not None and name not in (PROGRAM_NAME, service.model_name):
        raise ProtocolError("unknown_model", f'transcribe: this service has one model, '
                            f'"{service.model_name}"', close_code=CLOSE_UNSUPPORTED_DATA)
    return service.language_for(language)


def pong(ping: WyomingEvent) -> bytes:
    text = ping.data.get("text")
    return encode_event("pong", {"text": text if isinstance(text, str) else None})


def unsupported_event(kind: str) -> ProtocolError:
    return ProtocolError("unsupported_event", f"event type {kind[:MAX_NAME]!r} is not "
                         "served here (speech to text only: describe, transcribe, "
                         "audio-start, audio-chunk, audio-stop)",
                         close_code=CLOSE_UNSUPPORTED_DATA)


# --- the session's dialect ---------------------------------------------------------------


class WyomingDialect:
    """Wyoming as a dialect of the session core, for one utterance.

    Frames in are :class:`WyomingEvent` (or :class:`Malformed`) values, frames out are
    encoded events. Finals are kept (for ``transcript``) and, when streaming, each
    goes out at once as a ``transcript-chunk``: only stable text, so that the chunks
    joined equal the transcript. Partials and warnings have no Wyoming event and are
    not sent.
    """

    answers_every_frame = False

    def __init__(self, service: Service, request: Request) -> None:
        self.service = service
        self.request = request
        self._finals: list[str] = []
        self._carry = b""  # bytes of a chunk that did not make a whole frame

    def parse(self, frame: object) -> ClientEvent:
        if isinstance(frame, Malformed):
            raise frame.error()
        if not isinstance(frame, WyomingEvent):  # pragma: no cover - the channel's type
            raise bad_event("not a Wyoming event")
        kind = frame.type
        if kind == "audio-chunk":
            return self._audio(frame)
        if kind == "audio-stop":
            return End()
        if kind == "describe":
            return Reply((self.service.info_event(),))
        if kind == "ping":
            return Reply((pong(frame),))
        if kind in ("transcribe", "audio-start", "select-program"):
            raise ProtocolError("bad_message", f"{kind} after the audio started; ignored")
        raise unsupported_event(kind)

    def _audio(self, event: WyomingEvent) -> ClientEvent:
        fmt = parse_format(event)
        if fmt.rate != self.request.rate:
            raise unsupported(f"audio-chunk: rate {fmt.rate} Hz differs from the "
                               f"stream's {self.request.rate} Hz")
        data = self._carry + event.payload
        usable = len(data) - len(data) % fmt.frame_bytes
        self._carry = data[usable:]
        if not usable:
            return KeepAlive()
        return Audio(to_mono_s16(data[:usable], fmt))

    def encode(self, event: CoreEvent) -> list[str | bytes]:
        language = self.request.language
        if isinstance(event, Started):
            if not self.service.streaming:
                return []
            return [encode_event("transcript-start", _language(language))]
        if isinstance(event, Result):
            text = event.utterance.text.strip()
            if not event.utterance.is_final or not text:
                return []
            chunk = f" {text}" if self._finals else text
            self._finals.append(text)
            return [encode_event("transcript-chunk", {"text": chunk})] \
                if self.service.streaming else []
        if isinstance(event, Ended):
            if event.error is not None:
                return [error_event(*event.error)]
            frames: list[str | bytes] = [encode_event(
                "transcript", {"text": " ".join(self._finals), **_language(language)})]
            if self.service.streaming:
                frames.append(encode_event("transcript-stop"))
            return frames
        return []  # Notice, Progress, Flushed, Enrolled: nothing in Wyoming

    def close_code(self, ended: Ended) -> int:
        return ended.close_code


def _language(language: str | None) -> dict[str, Any]:
    return {} if language is None else {"language": language}
