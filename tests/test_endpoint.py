"""Endpointing you can set: ``recognizer.endpoint_silence_ms`` (the device default) and
the Live API's ``config.max_turn_silence_ms`` (per session), both mapped to the session
core's turn silence. Vosk 0.3.45 has no endpointer delays of its own, so a shorter turn
ends at a pause that long after words, told from the audio (edge.audio.pauses)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from test_session_core import frames_until_first_final

from edge.asr.vosk import LoadedModel
from edge.core.errors import ConfigError, ProtocolError
from edge.protocols.events import Configure
from edge.protocols.live import parse_client_text
from helpers import FIXTURES, connect, make_config, make_token, receive_json, stream


@pytest.mark.parametrize("value, expected", [(300, 300), (0, 0), (60000, 60000)])
def test_the_live_config_message_sets_the_turn_silence(value: int, expected: int) -> None:
    parsed = parse_client_text(json.dumps({"type": "config", "max_turn_silence_ms": value}))
    assert parsed == Configure(max_turn_silence_ms=expected)


@pytest.mark.parametrize("value", [-1, 60001, 1.5, "300", True, None])
def test_a_bad_turn_silence_is_a_bad_message(value: Any) -> None:
    text = json.dumps({"type": "config", "max_turn_silence_ms": value})
    if value is None:  # null: not given
        assert parse_client_text(text) == Configure()
        return
    with pytest.raises(ProtocolError, match="max_turn_silence_ms") as caught:
        parse_client_text(text)
    assert caught.value.code == "bad_message"


def test_the_device_default_is_validated() -> None:
    assert make_config().recognizer.endpoint_silence_ms >= 0
    assert make_config(recognizer={"endpoint_silence_ms": 0}).recognizer.endpoint_silence_ms == 0
    with pytest.raises(ConfigError, match=r"recognizer\.endpoint_silence_ms"):
        make_config(recognizer={"endpoint_silence_ms": -5})


async def _frames_until_first_final(model: LoadedModel, phrases: dict[str, Any],
                                    device_ms: int, commands: list[str]) -> int:
    config = make_config(recognizer={"endpoint_silence_ms": device_ms})
    return await frames_until_first_final(model, phrases, commands, config)


async def test_the_device_default_ends_turns_sooner_and_a_session_can_turn_it_off(
        model: LoadedModel, phrases: dict[str, Any]) -> None:
    endpointer = await _frames_until_first_final(model, phrases, 0, [])
    device = await _frames_until_first_final(model, phrases, 300, [])
    off_for_this_session = await _frames_until_first_final(model, phrases, 300, ["turn:0"])
    longer = await _frames_until_first_final(model, phrases, 300, ["turn:800"])
    # The model dithers its features: an endpoint may move by a frame or two.
    assert device + 5 <= endpointer, (device, endpointer)
    assert device + 5 <= off_for_this_session, (device, off_for_this_session)
    assert device + 3 <= longer, (device, longer)


async def test_a_live_session_sets_its_turn_silence_in_config(
        start_server: Any, phrases: dict[str, Any]) -> None:
    server = await start_server(recognizer={"endpoint_silence_ms": 0})
    with trio.fail_after(120):
        async with connect(server, make_token()) as ws:
            assert (await receive_json(ws))["type"] == "session_init"
            await ws.send_message(json.dumps({"type": "config", "max_turn_silence_ms": "x"}))
            warning = await receive_json(ws)
            assert warning["type"] == "warning" and warning["code"] == "bad_message"
            await ws.send_message(json.dumps({"type": "config",
                                              "phrases": phrases["grammar"],
                                              "max_turn_silence_ms": 400}))
            await stream(ws, (FIXTURES / "speech_ko.raw").read_bytes())
            await ws.send_message(json.dumps({"type": "end"}))
            finals, warnings = [], []
            while (message := await receive_json(ws, timeout=60))["type"] != "session_end":
                if message["type"] == "transcription" and message["is_final"]:
                    finals.append(message["text"])
                elif message["type"] == "warning":
                    warnings.append(message["code"])
    # three phrases 2.2 s apart: a 400 ms turn silence neither splits nor joins them
    assert finals == phrases["utterances"] and warnings == []
