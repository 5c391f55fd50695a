"""``edge speakers enroll | list | remove``: the real models, the voiceprint file the
daemon reads, exit codes, and no voice data in the logs."""

from __future__ import annotations

import json
import logging
import stat
import wave
from pathlib import Path
from typing import Any

import pytest
import trio
from speaker_audio import SPK_MODEL, clip_words, clips, conversation, finals, session, turn_of

from edge import cli
from edge.cli import main
from helpers import FIXTURES, read_store

STATE = "state"


@pytest.fixture(autouse=True)
def keep_caplog(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI replaces the root logger's handlers (basicConfig(force=True)), which would
    # detach caplog; set only the level instead.
    monkeypatch.setattr(cli, "setup_logging",
                        lambda level: logging.getLogger().setLevel(level.upper()))


def write_config(tmp_path: Path, *, speaker_model: bool = True) -> Path:
    path = tmp_path / "edge.toml"
    model = f'speaker_model = "{SPK_MODEL}"\n' if speaker_model else ""
    path.write_text(f'[server]\nstate_dir = "{tmp_path / STATE}"\n[recognizer]\n{model}')
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_enroll_list_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    config = str(write_config(tmp_path))
    store = tmp_path / STATE / "voiceprints.json"

    code, out, err = run(capsys, "speakers", "list", "--config", config)
    assert code == 0 and "no speakers enrolled" in out

    code, out, err = run(capsys, "speakers", "enroll", "--name", "Dr. Lee", "--role", "doctor",
                         *map(str, clips("kim")), "--config", config)
    assert code == 0, err
    assert out.startswith("enrolled Dr. Lee (doctor) from 2 utterance(s) in 2 file(s)")
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.parent.stat().st_mode) == 0o700

    phrases = tmp_path / "phrases.json"
    phrases.write_text(json.dumps(clip_words(), ensure_ascii=False))
    code, out, err = run(capsys, "speakers", "enroll", "--name", "park",
                         *map(str, clips("park")), "--phrases", str(phrases),
                         "--config", config)
    assert code == 0, err

    code, out, err = run(capsys, "speakers", "list", "--config", config)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "UTTERANCES", "ENROLLED"]
    assert lines[1].startswith("Dr. Lee") and "doctor" in lines[1]
    assert lines[2].startswith("park")

    # Biometric data stays in the file: not in the output, not in the log.
    data = read_store(store)
    digits = [f"{abs(x):.6f}"[2:] for p in data["voiceprints"] for x in p["vector"]]
    assert len(digits) == 2 * 32
    for text in (caplog.text, out, err):
        assert not any(d in text for d in digits)

    code, out, err = run(capsys, "speakers", "remove", "Dr. Lee", "--config", config)
    assert code == 0 and out.strip() == "removed Dr. Lee"
    code, out, err = run(capsys, "speakers", "remove", "Dr. Lee", "--config", config)
    assert code == 1 and "no speaker named 'Dr. Lee'" in err
    assert [p["name"] for p in read_store(store)["voiceprints"]] == ["park"]
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    # Each enrolment and removal is in the audit trail (a failed removal changed nothing).
    code, out, err = run(capsys, "audit", "list", "--json", "--config", config)
    assert code == 0, err
    assert [(r["action"], r["object"], r["peer"]) for r in map(json.loads, out.splitlines())
            ] == [("voiceprint.enrol", "Dr. Lee", "cli"), ("voiceprint.enrol", "park", "cli"),
                  ("voiceprint.remove", "Dr. Lee", "cli")]


async def test_a_cli_enrolment_names_the_speaker_in_sessions(
        start_server: Any, tmp_path: Path) -> None:
    config = str(write_config(tmp_path))
    code = await trio.to_thread.run_sync(
        main, ["speakers", "enroll", "--name", "park", "--role", "nurse",
               *map(str, clips("park")), "--config", config])
    assert code == 0
    server = await start_server(recognizer={"speaker_model": str(SPK_MODEL)},
                                server={"state_dir": str(tmp_path / STATE)})
    audio, turns = conversation(["kim", "park"])
    _, messages = await session(server, audio)
    got = finals(messages)
    assert sum(f["speaker"] == "park" for f in got) >= sum(t.speaker == "park" for t in turns)
    for f in got:
        if f["speaker"] is not None:
            who = turn_of(turns, f["start_ms"], f["end_ms"]).speaker
            assert f["speaker"] == ("park" if who == "park" else "Speaker 1"), f
            assert f["speaker_role"] == ("nurse" if who == "park" else None)


@pytest.mark.parametrize("argv", [["list"], ["remove", "kim"],
                                  ["enroll", "--name", "kim", "x.wav"]])
def test_no_speaker_model(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          argv: list[str]) -> None:
    config = str(write_config(tmp_path, speaker_model=False))
    code, _, err = run(capsys, "speakers", *argv, "--config", config)
    assert code == 1
    assert "no speaker model configured" in err and "recognizer.speaker_model" in err
    assert not (tmp_path / STATE).exists()


@pytest.mark.parametrize("argv", [["list"], ["remove", "kim"],
                                  ["enroll", "--name", "visitor", *map(str, clips("visitor"))]])
def test_a_damaged_store_is_reported_and_kept(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    config = str(write_config(tmp_path))
    store = tmp_path / STATE / "voiceprints.json"
    store.parent.mkdir()
    store.write_bytes(b"\x00garbage")
    code, _, err = run(capsys, "speakers", *argv, "--config", config)
    assert code == 1
    assert f"voiceprint file {store} is damaged" in err
    assert store.read_bytes() == b"\x00garbage"


def test_enroll_usage_and_input_errors(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    config = str(write_config(tmp_path))
    code, _, err = run(capsys, "speakers", "enroll", "--name", " ", *map(str, clips("kim")),
                         "--config", config)
    assert code == 2 and "--name" in err
    code, _, err = run(capsys, "speakers", "enroll", "--name", "kim",
                         str(FIXTURES / "speech_ko.raw"), "--config", config)
    assert code == 1 and "not a WAV file" in err
    code, _, err = run(capsys, "speakers", "enroll", "--name", "kim",
                         str(tmp_path / "missing.wav"), "--config", config)
    assert code == 1 and "cannot read" in err
    silence = tmp_path / "silence.wav"
    with wave.open(str(silence), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(bytes(32000))
    code, _, err = run(capsys, "speakers", "enroll", "--name", "kim", str(silence),
                         "--config", config)
    assert code == 1 and "nothing to enrol" in err
    assert not (tmp_path / STATE / "voiceprints.json").exists()
    with pytest.raises(SystemExit) as info:
        main(["speakers", "enroll", "--config", config])  # --name and files are required
    assert info.value.code == 2
