"""vosk-server's protocol as a dialect, without a socket: frames in, events out, and
core events in, frames out, compared with what vosk-server (asr_server.py over Vosk's
own result JSON) sends."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge.core.errors import ProtocolError
from edge.protocols.events import (
    Audio,
    Configure,
    End,
    Ended,
    Enrolled,
    Flushed,
    ForceEndpoint,
    Notice,
    Progress,
    Result,
    SessionDescription,
    Started,
    Utterance,
    Word,
)
from edge.protocols.vosk_server import Limits, VoskServerDialect, final_message

SID = "s1"

DESCRIPTION = SessionDescription("m", 16000, True, 0, 3600)


def utterance(text: str = "머리가 아픕니다", start: int = 450, *, final: bool = True,
              vector: tuple[float, ...] | None = None) -> Utterance:
    words = tuple(Word(w, start + 300 * i, start + 300 * (i + 1), 0.5 + 0.25 * i)
                  for i, w in enumerate(text.split()))
    return Utterance(is_final=final, text=text, start_ms=start, end_ms=start + 300 * len(words),
                     words=words, speaker_vector=vector)


def result(u: Utterance, seq: int = 1) -> Result:
    return Result(SID, seq, u)


def frames(dialect: VoskServerDialect, *events: Any) -> list[Any]:
    """The JSON of every frame the dialect sends for ``events``, in order."""
    out = []
    for event in events:
        out += [json.loads(f) for f in dialect.encode(event)]
    return out


def ended(reason: str = "end", code: int = 1000,
          error: tuple[str, str] | None = None) -> Ended:
    return Ended(SID, reason, code, error, {"duration_ms": 10})


# --- client frames -----------------------------------------------------------------------

PARSE_TABLE: list[tuple[str | bytes, Any]] = [
    (b"\x01\x00\x02\x00", Audio(b"\x01\x00\x02\x00")),
    (b"", Audio(b"")),
    (b'{"eof" : 1}', Audio(b'{"eof" : 1}')),  # binary is always audio, as in vosk-server
    ('{"eof" : 1}', End()),
    ('{"eof":1}', End()),
    ('{"eof": true}', End()),
    ('{"reset" : 1}', ForceEndpoint()),
    ('{ "config" : { "sample_rate" : 8000 } }', Configure(sample_rate=8000)),
    ('{"config": {"sample_rate": 44100.0}}', Configure(sample_rate=44100)),
    ('{"config": {"sample_rate": "16000"}}', Configure(sample_rate=16000)),
    ('{"config": {"phrase_list": ["너무 추워", " ", "엄마 도와줘 "], "sample_rate": 16000}}',
     Configure(phrases=("너무 추워", "엄마 도와줘"), sample_rate=16000)),
    ('{"config": {"phrase_list": []}}', Configure()),  # no grammar, as in vosk-server
    ('{"config": {"words": 0, "max_alternatives": 3}}', Configure()),
    ('{"config": {"num_channels": 1, "nlsml": true}}', Configure()),  # ignored keys
    # A model for this session: the core resolves it against [recognizer.models].
    ('{"config": {"model": "/opt/vosk-model-xx", "sample_rate": 8000}}',
     Configure(sample_rate=8000, language="/opt/vosk-model-xx")),
    ('{"config": {"model": "xx"}}', Configure(language="xx")),
]


@pytest.mark.parametrize(("frame", "event"), PARSE_TABLE)
def test_client_frames_become_events(frame: str | bytes, event: Any) -> None:
    assert VoskServerDialect().parse(frame) == event


def test_words_and_alternatives_are_set_by_a_config_before_the_audio() -> None:
    dialect = VoskServerDialect()
    dialect.parse('{"config": {"words": 0, "max_alternatives": 20}}')
    assert (dialect.words, dialect.max_alternatives) == (False, 20)
    dialect.parse('{"config": {"words": true}}')
    assert dialect.words is True
    dialect.parse(b"\x00\x00")
    # vosk-server applies a config when it creates the recogniser: later ones are ignored
    assert dialect.parse('{"config": {"words": false, "max_alternatives": 0, '
                         '"sample_rate": 8000}}') == Configure(sample_rate=8000)
    assert (dialect.words, dialect.max_alternatives) == (True, 20)


REFUSALS: list[tuple[str, str, int]] = [
    ("not json", "unsupported_message", 1003),
    ("[1, 2]", "unsupported_message", 1003),
    ('"config"', "unsupported_message", 1003),
    ("{}", "unsupported_message", 1003),
    ('{"type": "end"}', "unsupported_message", 1003),
    ('{"eof": 0}', "unsupported_message", 1003),
    ('{"eof": 1.0}', "unsupported_message", 1003),
    ('{"reset": "1"}', "unsupported_message", 1003),
    ('{"eof": 1, "config": {}}', "unsupported_message", 1003),
    ('{"eof": ' + "9" * 5000 + "}", "unsupported_message", 1003),  # past 4300 digits
    ("[" * 100_000, "message_too_long", 1009),
    ('{"config": ' + "[" * 30_000 + "]" * 30_000 + "}", "unsupported_message", 1003),
    ('{"config": {"sample_rate": 16000, "model": null}}', "invalid_config", 1008),
    ('{"config": {"model": " "}}', "invalid_config", 1008),
    ('{"config": {"model": "' + "m" * 201 + '"}}', "invalid_config", 1008),
    ('{"config": "sample_rate=16000"}', "invalid_config", 1008),
    ('{"config": {"sample_rate": 100}}', "invalid_config", 1008),
    ('{"config": {"sample_rate": 16000.5}}', "invalid_config", 1008),
    ('{"config": {"sample_rate": true}}', "invalid_config", 1008),
    ('{"config": {"sample_rate": ' + "1" * 4000 + "}}", "invalid_config", 1008),
    ('{"config": {"sample_rate": 1e400}}', "invalid_config", 1008),
    ('{"config": {"phrase_list": "너무 추워"}}', "invalid_config", 1008),
    ('{"config": {"phrase_list": [1, 2]}}', "invalid_config", 1008),
    ('{"config": {"phrase_list": ["' + "가" * 201 + '"]}}', "invalid_config", 1008),
    ('{"config": {"words": "yes"}}', "invalid_config", 1008),
    ('{"config": {"words": 2}}', "invalid_config", 1008),
    ('{"config": {"max_alternatives": -1}}', "invalid_config", 1008),
    ('{"config": {"max_alternatives": 2.5}}', "invalid_config", 1008),
]


@pytest.mark.parametrize(("frame", "code", "close_code"), REFUSALS)
def test_hostile_text_frames_end_the_session_with_a_reason(frame: str, code: str,
                                                           close_code: int) -> None:
    dialect = VoskServerDialect()
    with pytest.raises(ProtocolError) as info:
        dialect.parse(frame)
    assert (info.value.code, info.value.close_code) == (code, close_code)
    assert info.value.code != "bad_message"  # a lockstep client would wait forever
    assert (dialect.words, dialect.max_alternatives) == (True, 0)  # nothing half-applied


def test_a_model_after_the_audio_ends_the_session() -> None:
    dialect = VoskServerDialect()
    dialect.parse(b"\x00\x00")
    with pytest.raises(ProtocolError) as info:
        dialect.parse('{"config": {"model": "xx"}}')
    assert (info.value.code, info.value.close_code) == ("model_not_allowed", 1008)
    assert "before the first audio frame" in info.value.message


def test_the_phrase_count_is_limited() -> None:
    dialect = VoskServerDialect(Limits(max_phrases=2))
    frame = json.dumps({"config": {"phrase_list": ["a", "b", "c"]}})
    with pytest.raises(ProtocolError, match="more than 2"):
        dialect.parse(frame)


# --- core events -------------------------------------------------------------------------

def test_only_the_one_reply_per_frame_reaches_the_wire() -> None:
    dialect = VoskServerDialect()
    silent = [Started(SID, DESCRIPTION), Notice(SID, "silence", "no sound"),
              Enrolled(SID, "kim", None, 2), result(utterance("머리", final=False))]
    assert frames(dialect, *silent) == []
    assert frames(dialect, Progress(SID, "")) == [{"partial": ""}]
    assert frames(dialect, Progress(SID, "머리 다")) == [{"partial": "머리 다"}]


def test_a_frame_with_a_final_is_answered_by_the_final() -> None:
    dialect = VoskServerDialect()
    assert frames(dialect, result(utterance()), Progress(SID, "")) == [{
        "result": [{"conf": 0.5, "end": 0.75, "start": 0.45, "word": "머리가"},
                   {"conf": 0.75, "end": 1.05, "start": 0.75, "word": "아픕니다"}],
        "text": "머리가 아픕니다"}]
    assert frames(dialect, Progress(SID, "")) == [{"partial": ""}]  # the final went once


def test_two_finals_in_one_frame_are_one_reply() -> None:
    dialect = VoskServerDialect()
    out = frames(dialect, result(utterance("너무 추워")), result(utterance("엄마", 2000), 2),
                 Progress(SID, "도"))
    assert len(out) == 1 and out[0]["text"] == "너무 추워 엄마"
    assert [w["word"] for w in out[0]["result"]] == ["너무", "추워", "엄마"]


def test_reset_and_eof_are_answered_even_with_nothing_to_finalise() -> None:
    dialect = VoskServerDialect()
    assert frames(dialect, Flushed(SID)) == [{"text": ""}]
    assert frames(dialect, result(utterance("너무 추워")), Flushed(SID)) == [
        final_message([utterance("너무 추워")])]
    assert frames(dialect, ended()) == [{"text": ""}]
    assert dialect.close_code(ended()) == 1000
    assert frames(dialect, result(utterance("엄마")), ended()) == [
        final_message([utterance("엄마")])]


def test_words_off_leaves_the_text_alone() -> None:
    dialect = VoskServerDialect()
    dialect.parse('{"config": {"words": 0}}')
    assert frames(dialect, result(utterance()), Progress(SID, "")) == [
        {"text": "머리가 아픕니다"}]
    assert frames(dialect, ended()) == [{"text": ""}]


def test_alternatives_are_one_alternative_built_from_the_final() -> None:
    dialect = VoskServerDialect()
    dialect.parse('{"config": {"max_alternatives": 20}}')
    assert frames(dialect, result(utterance()), Progress(SID, "")) == [{"alternatives": [{
        "confidence": 0.625,
        "result": [{"end": 0.75, "start": 0.45, "word": "머리가"},
                   {"end": 1.05, "start": 0.75, "word": "아픕니다"}],
        "text": "머리가 아픕니다"}]}]
    assert frames(dialect, ended()) == [{"alternatives": [{"text": "", "confidence": 1.0}]}]
    assert frames(dialect, Progress(SID, "너")) == [{"partial": "너"}]  # as Vosk's partials
    dialect = VoskServerDialect()
    dialect.parse('{"config": {"max_alternatives": 1, "words": false}}')
    assert frames(dialect, result(utterance("너무")), Flushed(SID)) == [
        {"alternatives": [{"confidence": 0.5, "text": "너무"}]}]


def test_a_speaker_vector_goes_out_as_spk() -> None:
    dialect = VoskServerDialect()
    out = frames(dialect, result(utterance("너무", vector=(0.25, -1.0))), Progress(SID, ""))
    assert out[0]["spk"] == [0.25, -1.0] and list(out[0]) == ["result", "spk", "text"]


def test_an_error_end_says_why_after_the_last_final() -> None:
    dialect = VoskServerDialect()
    stop = ended("shutdown", 1012, ("server_shutdown", "the server is restarting"))
    assert frames(dialect, result(utterance("엄마")), stop) == [
        final_message([utterance("엄마")]), {"error": "the server is restarting"}]
    assert dialect.close_code(stop) == 1012
    refused = ended("model_not_allowed", 1008, ("model_not_allowed", "no"))
    assert frames(dialect, refused) == [{"error": "no"}]  # no empty final: not an eof
    assert dialect.close_code(ended("token_expired", 1002, ("token_expired", "x"))) == 1008
    assert dialect.close_code(ended("idle", 1001, ("idle_timeout", "x"))) == 1001
