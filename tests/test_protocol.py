"""The Live API wire protocol: client messages, server messages, connect parameters."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from edge.core.errors import ProtocolError
from edge.protocols.events import Speaker, TermMatch, Utterance, Word
from edge.protocols.live import (
    CLOSE_AUTH,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN_LATER,
    Configure,
    ConnectParams,
    End,
    KeepAlive,
    Limits,
    encode,
    error,
    parse_client_text,
    parse_connect_params,
    transcription,
    warning,
)

INVALID_PARAMETER = "invalid_parameter"  # docs/protocol.md's refusals: a bad query parameter


def msg(**fields: Any) -> str:
    return json.dumps(fields)


# --- client text messages ---------------------------------------------------------------

def test_end() -> None:
    assert parse_client_text('{"type":"end"}') == End()


def test_keepalive() -> None:
    assert parse_client_text('{"type": "keepalive"}') == KeepAlive()


def test_config_empty() -> None:
    assert parse_client_text(msg(type="config")) == Configure()


def test_config_all_fields() -> None:
    parsed = parse_client_text(msg(type="config", phrases=["혈압 측정", "  맥박  ", ""],
                                   sample_rate=8000, partial_results=False))
    assert parsed == Configure(phrases=("혈압 측정", "맥박"), sample_rate=8000,
                               partial_results=False)
    assert isinstance(parsed, Configure)
    assert isinstance(parsed.phrases, tuple)


def test_config_nulls_mean_unset() -> None:
    parsed = parse_client_text(msg(type="config", phrases=None, sample_rate=None,
                                   partial_results=None))
    assert parsed == Configure()


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 192000])
def test_config_sample_rate_bounds(rate: int) -> None:
    assert parse_client_text(msg(type="config", sample_rate=rate)) == \
        Configure(sample_rate=rate)


@pytest.mark.parametrize("value", [True, False])
def test_config_partial_results(value: bool) -> None:
    parsed = parse_client_text(msg(type="config", partial_results=value))
    assert isinstance(parsed, Configure)
    assert parsed.partial_results is value


def test_config_phrase_limits_are_inclusive() -> None:
    limits = Limits(max_phrases=3, max_phrase_chars=5)
    parsed = parse_client_text(msg(type="config", phrases=["aaaaa", "b", "c"]), limits)
    assert isinstance(parsed, Configure)
    assert parsed.phrases == ("aaaaa", "b", "c")


@pytest.mark.parametrize("language", ["ko", "en-US", "ko_KR", "zh-Hant-TW"])
def test_config_language(language: str) -> None:
    assert parse_client_text(msg(type="config", language=language)) == \
        Configure(language=language)


@pytest.mark.parametrize("language", ["", "fr!", "english", 7, ["ko"], "k"])
def test_config_language_that_is_no_tag_ends_the_session(language: Any) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_client_text(msg(type="config", language=language))
    # Not bad_message (a warning, the session going on in a language nobody asked for).
    assert (caught.value.code, caught.value.close_code) == ("unsupported_language",
                                                             CLOSE_POLICY)


def test_session_updated_has_the_keys_of_session_init() -> None:
    from edge.protocols.events import Described, SessionDescription, Started
    from edge.protocols.live import LiveDialect

    description = SessionDescription("vosk-model-xx", 16000, True, 0, 3600, language="xx")
    dialect = LiveDialect()
    [init] = dialect.encode(Started("s1", description))
    [updated] = dialect.encode(Described("s1", description))
    assert json.loads(updated) == {**json.loads(init), "type": "session_updated"}
    assert json.loads(updated)["language"] == "xx"


def test_text_limit_is_inclusive() -> None:
    text = msg(type="keepalive", pad="x" * 10)
    assert parse_client_text(text, Limits(max_text_chars=len(text))) == KeepAlive()


LIMITS = Limits(max_phrases=3, max_phrase_chars=10, max_text_chars=500)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("not json", "JSON"),
        ("", "JSON"),
        ("{", "JSON"),
        ('["end"]', "JSON objects"),
        ('"end"', "JSON objects"),
        ("null", "JSON objects"),
        ("NaN", "JSON objects"),
        ("{}", "type"),
        ('{"typ": "end"}', "type"),
        ('{"type": null}', "type"),
        ('{"type": 3}', "type"),
        ('{"type": "End"}', "'End'"),
        ('{"type": "stop"}', "'stop'"),
        (msg(type="config", phrase=["a"]), "'phrase'"),
        (msg(type="config", lang="ko"), "'lang'"),
        (msg(type="config", phrases="a b"), "list of strings"),
        (msg(type="config", phrases={"a": 1}), "list of strings"),
        (msg(type="config", phrases=["a", 1]), "list of strings"),
        (msg(type="config", phrases=[]), "empty"),
        (msg(type="config", phrases=["  ", ""]), "empty"),
        (msg(type="config", phrases=["a", "b", "c", "d"]), "more than 3"),
        (msg(type="config", phrases=["x" * 11]), "longer than 10"),
        (msg(type="config", sample_rate=True), "sample_rate"),
        (msg(type="config", sample_rate="16000"), "sample_rate"),
        (msg(type="config", sample_rate=16000.0), "sample_rate"),
        (msg(type="config", sample_rate=7999), "sample_rate"),
        (msg(type="config", sample_rate=192001), "sample_rate"),
        (msg(type="config", sample_rate=-16000), "sample_rate"),
        (msg(type="config", partial_results="true"), "partial_results"),
        (msg(type="config", partial_results=1), "partial_results"),
        (msg(type="end", pad="x" * 600), "longer than 500"),
    ],
)
def test_bad_messages(text: str, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_text(text, LIMITS)
    assert info.value.code == "bad_message"
    assert fragment in info.value.message
    assert info.value.close_code == CLOSE_POLICY


def test_deeply_nested_json_is_a_bad_message() -> None:
    text = "[" * 100_000 + "]" * 100_000
    with pytest.raises(ProtocolError) as info:
        parse_client_text(text, Limits(max_text_chars=len(text)))
    assert info.value.code == "bad_message"
    assert "JSON" in info.value.message


def test_default_limits() -> None:
    limits = Limits()
    with pytest.raises(ProtocolError):
        parse_client_text(msg(type="config", phrases=["a"] * (limits.max_phrases + 1)))
    with pytest.raises(ProtocolError):
        parse_client_text(msg(type="config", phrases=["a" * (limits.max_phrase_chars + 1)]))
    with pytest.raises(ProtocolError):
        parse_client_text(" " * (limits.max_text_chars + 1))


def test_unknown_type_is_truncated_in_message() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_text(msg(type="z" * 1000))
    assert len(info.value.message) < 200


# --- server messages --------------------------------------------------------------------

def test_transcription_shape() -> None:
    utterance = Utterance(
        is_final=True, text="혈압 측정", start_ms=120, end_ms=1500,
        words=(Word("혈압", 120, 700, 0.987654321), Word("측정", 700, 1500, 1.0)),
    )
    body = transcription("sess-1", 7, utterance)
    assert body == {
        "type": "transcription",
        "session_id": "sess-1",
        "seq": 7,
        "is_final": True,
        "text": "혈압 측정",
        "start_ms": 120,
        "end_ms": 1500,
        "words": [
            {"word": "혈압", "start_ms": 120, "end_ms": 700, "confidence": 0.9877},
            {"word": "측정", "start_ms": 700, "end_ms": 1500, "confidence": 1.0},
        ],
        "speaker": None,
        "speaker_id": None,
        "speaker_confidence": None,
        "speaker_role": None,
        "terms": [],
    }
    with_terms = dataclasses.replace(utterance, terms=(
        TermMatch("혈압", "혈압", 120, 700, "procedure", None),
        TermMatch("측정", "측정", 700, 1500, "procedure", "X-1")))
    assert transcription("sess-1", 7, with_terms)["terms"] == [
        {"text": "혈압", "term": "혈압", "start_ms": 120, "end_ms": 700,
         "category": "procedure", "code": None},
        {"text": "측정", "term": "측정", "start_ms": 700, "end_ms": 1500,
         "category": "procedure", "code": "X-1"}]


def test_transcription_partial_without_words() -> None:
    body = transcription("s", 0, Utterance(is_final=False, text="혈", start_ms=0, end_ms=10))
    assert body["is_final"] is False
    assert body["words"] == []
    assert body["speaker"] is None
    assert "terms" not in body


def test_transcription_with_speaker() -> None:
    body = transcription("s", 1, Utterance(True, "네", 0, 10),
                         Speaker(label="doctor", id="spk-1", confidence=0.8))
    assert body["speaker"] == "doctor"
    assert body["speaker_id"] == "spk-1"
    assert body["speaker_confidence"] == 0.8


def test_transcription_omits_speaker_vector() -> None:
    body = transcription("s", 1, Utterance(True, "네", 0, 10, speaker_vector=(0.1, 0.2)))
    assert "speaker_vector" not in json.dumps(body)


def test_speaker_vector_is_not_in_the_repr() -> None:
    # Biometric data: a log line that prints an utterance must not carry it.
    assert "0.123" not in repr(Utterance(True, "네", 0, 10, speaker_vector=(0.123, 0.2)))


def test_transcription_takes_the_utterance_speaker_and_role() -> None:
    who = Speaker(label="Dr. Lee", id="enrolled:Dr. Lee", confidence=0.91, role="doctor")
    body = transcription("s", 1, Utterance(True, "네", 0, 10, speaker=who))
    assert (body["speaker"], body["speaker_id"], body["speaker_confidence"],
            body["speaker_role"]) == ("Dr. Lee", "enrolled:Dr. Lee", 0.91, "doctor")
    # An explicit speaker wins over the utterance's.
    assert transcription("s", 1, Utterance(True, "네", 0, 10, speaker=who),
                         Speaker(label="Speaker 1"))["speaker_role"] is None


def test_enroll_parameters() -> None:
    params = parse_connect_params({"enroll": [" Dr. Lee "], "role": ["doctor"]})
    assert (params.enroll, params.role) == ("Dr. Lee", "doctor")
    assert parse_connect_params({"enroll": ["김 선생님"]}).role is None


@pytest.mark.parametrize(("query", "fragment"), [
    ({"enroll": [""]}, "enroll must be"),
    ({"enroll": ["   "]}, "enroll must be"),
    ({"enroll": ["a\nb"]}, "enroll must be"),
    ({"enroll": ["x" * 201]}, "enroll must be"),
    ({"enroll": ["a", "b"]}, "more than once"),
    ({"role": ["doctor"]}, "role applies only with enroll"),
    ({"enroll": ["Lee"], "role": ["\x7f"]}, "role must be"),
    ({"enroll": ["Lee"], "source": ["room"]}, "not to source=room"),
])
def test_bad_enroll_parameters(query: dict[str, list[str]], fragment: str) -> None:
    with pytest.raises(ProtocolError, match=fragment) as info:
        parse_connect_params(query)
    assert info.value.code == "invalid_parameter"


def test_warning_and_error_shapes() -> None:
    assert warning("s", "silence", "no audio", seconds=15.0) == {
        "type": "warning", "session_id": "s", "code": "silence", "message": "no audio",
        "seconds": 15.0,
    }
    assert error("token_expired", "gone") == {"type": "error", "code": "token_expired",
                                              "message": "gone"}
    assert error("x", "y", session_id="s")["session_id"] == "s"


def test_encode_keeps_non_ascii_and_is_compact() -> None:
    text = encode({"type": "transcription", "text": "혈압 측정"})
    assert "혈압 측정" in text
    assert "\\u" not in text
    assert text == '{"type":"transcription","text":"혈압 측정"}'
    assert json.loads(text) == {"type": "transcription", "text": "혈압 측정"}


def test_encode_round_trips_a_transcription() -> None:
    body = transcription("s", 3, Utterance(True, "맥박", 0, 500, (Word("맥박", 0, 500, 0.5),)))
    assert json.loads(encode(body)) == body


def test_close_codes() -> None:
    assert CLOSE_AUTH == 1002
    assert CLOSE_POLICY == 1008
    assert CLOSE_TRY_AGAIN_LATER == 1013


# --- connect parameters -----------------------------------------------------------------

def test_connect_params_empty() -> None:
    assert parse_connect_params({}) == ConnectParams(sample_rate=None, errors_in_band=False)


def test_connect_params_ignore_token_and_unknown() -> None:
    assert parse_connect_params({"token": ["abc"], "foo": ["1", "2"]}) == ConnectParams()


@pytest.mark.parametrize("rate", ["8000", "16000", "48000", "192000"])
def test_connect_sample_rate(rate: str) -> None:
    assert parse_connect_params({"sample_rate": [rate]}).sample_rate == int(rate)


@pytest.mark.parametrize("rate", ["", "abc", "16k", "-16000", "16000.0", "7999", "192001",
                                  " 16000", "0"])
def test_connect_bad_sample_rate(rate: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_connect_params({"sample_rate": [rate]})
    assert info.value.code == INVALID_PARAMETER
    assert "sample_rate" in info.value.message


@pytest.mark.parametrize("rate", ["²", "1" * 5000])
def test_connect_sample_rate_that_int_cannot_parse(rate: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_connect_params({"sample_rate": [rate]})
    assert info.value.code == INVALID_PARAMETER


def test_connect_duplicated_sample_rate() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_connect_params({"sample_rate": ["16000", "16000"]})
    assert info.value.code == INVALID_PARAMETER
    assert "more than once" in info.value.message


@pytest.mark.parametrize(("value", "in_band"), [("message", True), ("http", False)])
def test_connect_errors(value: str, in_band: bool) -> None:
    assert parse_connect_params({"errors": [value]}).errors_in_band is in_band


@pytest.mark.parametrize("values", [["bogus"], ["MESSAGE"], [""], ["message", "http"]])
def test_connect_bad_errors(values: list[str]) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_connect_params({"errors": values})
    assert info.value.code == INVALID_PARAMETER


@pytest.mark.parametrize("encoding", ["pcm_s16le", "wav"])
def test_connect_encoding(encoding: str) -> None:
    assert parse_connect_params({"encoding": [encoding]}) == ConnectParams()


@pytest.mark.parametrize("values", [["opus"], ["WAV"], ["wav", "wav"]])
def test_connect_bad_encoding(values: list[str]) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_connect_params({"encoding": values})
    assert info.value.code == INVALID_PARAMETER


def test_connect_all_params() -> None:
    params = parse_connect_params({"sample_rate": ["8000"], "errors": ["message"],
                                   "encoding": ["wav"], "token": ["t"]})
    assert params == ConnectParams(sample_rate=8000, errors_in_band=True)


@pytest.mark.parametrize(("text", "reason"), [
    ('{"type": "end"' + " " * 100, "too_long"),
    ("not json", "not_json"),
    ('{"sample_rate": ' + "9" * 5000 + "}", "not_json"),  # past int's digit limit
    ("[" * 100_000 + "]" * 100_000, "too_long"),
    ("[" * 50 + "]" * 50, "not_object"),
    ('"end"', "not_object"),
])
def test_json_text_is_read_once_and_safely(text: str, reason: str) -> None:
    from edge.protocols.text import JsonTextError, json_object

    limit = 100 if reason == "too_long" and len(text) < 1000 else 20_000
    with pytest.raises(JsonTextError) as exc:
        json_object(text, limit)
    assert exc.value.reason == reason
    assert json_object('{"type": "end"}', 100) == {"type": "end"}
