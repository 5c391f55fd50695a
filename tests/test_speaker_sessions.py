"""Speaker identification over real sockets: the Korean Vosk model with the committed
test speaker model, the generated multi-voice conversation, enrolment by WebSocket and
the voiceprint file shared with ``edge speakers``."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import trio
from speaker_audio import (
    SPK_MODEL,
    Turn,
    best_mapping_accuracy,
    clip_words,
    clips_pcm,
    conversation,
    finals,
    session,
    turn_of,
)
from trio_websocket import ConnectionRejected

from edge import cli
from edge.cli import main
from edge.core.audit import OK, Access
from edge.core.auth import SCOPE_ENROLL
from edge.crypto.sealed import open_sealed
from edge.net.server import Server
from helpers import (
    READ_WRITE,
    TEST_KEY,
    connect,
    make_token,
    read_store,
    receive_json,
    receive_until_closed,
)

ENROLL = f"{READ_WRITE} {SCOPE_ENROLL}"


async def start_speaker_server(start_server: Any, state: Path, **sections: Any) -> Server:
    server: Server = await start_server(
        recognizer={"speaker_model": str(SPK_MODEL)}, server={"state_dir": str(state)},
        **sections)
    return server


async def enroll_by_socket(server: Server, name: str, voice: str, role: str | None = None
                           ) -> list[dict[str, Any]]:
    query = f"?enroll={name}" + (f"&role={role}" if role else "")
    _, messages = await session(server, clips_pcm(voice), phrases=clip_words(), query=query,
                                scope=ENROLL)
    return messages


def state_config(tmp_path: Path, state: Path, *, speaker_model: bool = True) -> Path:
    path = tmp_path / "edge.toml"
    model = f'speaker_model = "{SPK_MODEL}"\n' if speaker_model else ""
    path.write_text(f'[server]\nstate_dir = "{state}"\n[recognizer]\n{model}')
    return path


# --- diarization --------------------------------------------------------------------------

def labelled_by_turn(got: list[dict[str, Any]], turns: list[Turn]
                     ) -> list[tuple[str, str | None]]:
    """(true speaker, label) of each final; finals too short for a speaker vector (Vosk
    gives none under 50 frames of speech) must be unlabelled, and only those."""
    out = []
    for f in got:
        turn = turn_of(turns, f["start_ms"], f["end_ms"])
        if f["speaker"] is None:
            assert f["end_ms"] - f["start_ms"] < 1000, f
            assert f["speaker_id"] is None and f["speaker_confidence"] is None
        out.append((turn.speaker, f["speaker"]))
    return out


async def test_two_voices_get_two_stable_labels(start_server: Any, tmp_path: Path) -> None:
    server = await start_speaker_server(start_server, tmp_path)
    audio, turns = conversation(["kim", "park"])
    init, messages = await session(server, audio)
    assert init["speaker_identification"] is True
    assert init["speaker_identification_reason"] is None
    got = finals(messages)
    pairs = labelled_by_turn(got, turns)
    labelled = [(who, label) for who, label in pairs if label is not None]
    assert len(labelled) >= len(turns)  # every turn has a labelled final
    assert {label for _, label in labelled} == {"Speaker 1", "Speaker 2"}
    # Stable, in order of appearance: kim speaks first.
    assert all(label == ("Speaker 1" if who == "kim" else "Speaker 2")
               for who, label in labelled), pairs
    for f in got:
        if f["speaker"] is not None:
            assert f["speaker_id"] == "session:" + f["speaker"].split()[-1]
            assert 0 < f["speaker_confidence"] <= 1 and f["speaker_role"] is None
    partials = [m for m in messages if m["type"] == "transcription" and not m["is_final"]]
    assert partials and all(p["speaker"] is None for p in partials)


async def test_three_voices_of_the_conversation(start_server: Any, tmp_path: Path) -> None:
    server = await start_speaker_server(start_server, tmp_path)
    audio, turns = conversation()
    _, messages = await session(server, audio)
    pairs = labelled_by_turn(finals(messages), turns)
    labels = [label for _, label in pairs]
    assert best_mapping_accuracy(labels, [who for who, _ in pairs]) >= 0.9, pairs
    assert {label for label in labels if label} == {"Speaker 1", "Speaker 2", "Speaker 3"}


# --- enrolment and names ------------------------------------------------------------------

def vector_digits(store: Path) -> list[str]:
    """Distinctive digits of every stored vector entry, to look for in logs."""
    data = read_store(store)
    return [f"{abs(x):.6f}"[2:] for p in data["voiceprints"] for x in p["vector"]]


async def test_enrolled_voice_is_named_until_removed(
        start_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    # `edge speakers remove` below would replace the root logger's handlers.
    monkeypatch.setattr(cli, "setup_logging", lambda level: None)
    state = tmp_path / "state"
    server = await start_speaker_server(start_server, state)
    seen: list[Access] = []
    server.audit = seen.append

    messages = await enroll_by_socket(server, "kim", "kim", role="nurse")
    kinds = [m["type"] for m in messages]
    assert kinds[-2:] == ["enrolled", "session_end"], kinds
    with trio.fail_after(10):
        while not any(a.action == "voiceprint.enrol" for a in seen):
            await trio.sleep(0.02)
    enrol = next(a for a in seen if a.action == "voiceprint.enrol")
    assert (enrol.outcome, enrol.object, enrol.sub) == (OK, "kim", seen[0].sub)
    enrolled = messages[-2]
    assert enrolled == {"type": "enrolled", "session_id": enrolled["session_id"],
                        "name": "kim", "role": "nurse", "utterances": 2}
    store = state / "voiceprints.json"
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert [p["name"] for p in read_store(store)["voiceprints"]] == ["kim"]
    assert not any(d in caplog.text for d in vector_digits(store))

    audio, turns = conversation(["kim", "park"])
    _, messages = await session(server, audio)
    got = finals(messages)
    pairs = labelled_by_turn(got, turns)
    assert all(label == ("kim" if who == "kim" else "Speaker 1")
               for who, label in pairs if label is not None), pairs
    named = [f for f in got if f["speaker"] == "kim"]
    assert len(named) >= sum(t.speaker == "kim" for t in turns)
    assert all(f["speaker_id"] == "enrolled:kim" and f["speaker_role"] == "nurse"
               and 0.7 <= f["speaker_confidence"] <= 1 for f in named)

    # Removed by the command line (another process, as far as the server knows).
    config = state_config(tmp_path, state)
    assert await trio.to_thread.run_sync(main, ["speakers", "remove", "kim",
                                                "--config", str(config)]) == 0
    init, messages = await session(server, audio)
    assert init["speaker_identification"] is True
    pairs = labelled_by_turn(finals(messages), turns)
    assert all(label == ("Speaker 1" if who == "kim" else "Speaker 2")
               for who, label in pairs if label is not None), pairs


async def test_enrolment_needs_its_scope_and_a_speaker_model(
        start_server: Any, tmp_path: Path) -> None:
    server = await start_speaker_server(start_server, tmp_path)
    with pytest.raises(ConnectionRejected) as info:
        async with connect(server, make_token(), "?enroll=kim"):
            pass
    assert info.value.status_code == 403
    assert json.loads(info.value.body or b"{}")["code"] == "insufficient_scope"
    assert SCOPE_ENROLL.encode() in dict(info.value.headers)[b"www-authenticate"]
    # In band, for browsers: the policy close code.
    async with connect(server, make_token(), "?enroll=kim&errors=message") as ws:
        error = await receive_json(ws)
        assert error["code"] == "insufficient_scope"
        await receive_until_closed(ws)
        assert ws.closed is not None and ws.closed.code == 1008
    with pytest.raises(ConnectionRejected) as info:
        async with connect(server, make_token(scope=ENROLL), "?role=doctor"):
            pass
    assert info.value.status_code == 400
    assert not (tmp_path / "voiceprints.json").exists()

    plain = await start_server()
    with pytest.raises(ConnectionRejected) as info:
        async with connect(plain, make_token(scope=ENROLL), "?enroll=kim"):
            pass
    assert info.value.status_code == 404
    assert json.loads(info.value.body or b"{}")["code"] == "no_speaker_model"


async def test_enrolment_without_speech_says_so(start_server: Any, tmp_path: Path) -> None:
    server = await start_speaker_server(start_server, tmp_path)
    init, messages = await session(server, bytes(32000), query="?enroll=Dr.%20Lee",
                                   scope=ENROLL)
    assert init["enroll"] == {"name": "Dr. Lee", "role": None}
    assert [m["type"] for m in messages] == ["warning", "session_end"]
    assert messages[0]["code"] == "enrollment_failed"
    assert "half a second of speech" in messages[0]["message"]
    assert not (tmp_path / "voiceprints.json").exists()


async def test_a_damaged_voiceprint_store(start_server: Any, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    store = tmp_path / "voiceprints.json"
    store.write_text('{"version": 1, "voiceprints": [{"name": "kim", "vector": [1, ')
    os.chmod(store, 0o600)
    before = store.read_bytes()
    server = await start_speaker_server(start_server, tmp_path)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "damaged" in errors[0].getMessage()
    assert str(store) in errors[0].getMessage()

    audio, turns = conversation(["kim", "park"])
    init, messages = await session(server, audio)
    assert init["speaker_identification"] is True
    assert "damaged" in init["speaker_identification_reason"]
    assert str(store) not in init["speaker_identification_reason"]
    got = finals(messages)
    assert got and all(f["text"] for f in got)
    pairs = labelled_by_turn(got, turns)
    assert {label for _, label in pairs if label} == {"Speaker 1", "Speaker 2"}

    with pytest.raises(ConnectionRejected) as info:
        async with connect(server, make_token(scope=ENROLL), "?enroll=kim"):
            pass
    assert info.value.status_code == 503
    assert json.loads(info.value.body or b"{}")["code"] == "voiceprints_unavailable"
    # Never overwritten: sealed as it was at the start (an older edge wrote it plain).
    assert open_sealed(TEST_KEY, "voiceprints", store.read_bytes()) == before
    # Logged once, not once per session.
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


async def test_without_a_speaker_model(start_server: Any) -> None:
    server = await start_server()
    audio, _ = conversation(["kim", "park"])
    init, messages = await session(server, audio[:16000 * 2 * 6])
    assert init["speaker_identification"] is False
    assert init["speaker_identification_reason"] == "no speaker model configured"
    got = finals(messages)
    assert got and all(f["speaker"] is None and f["speaker_role"] is None for f in got)
