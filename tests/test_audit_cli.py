"""``edge audit list|verify`` and the commands that record themselves (real journal)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli import main
from edge.journal.db import Journal
from edge.journal.db import connect as connect_journal
from helpers import TEST_KEY


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGE_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("SUDO_USER", "nurse-kim")
    with Journal.open(tmp_path / "journal.db", key=TEST_KEY,
                      device_id=socket.gethostname()) as j:
        j.start_session("s-1", source="client", sub="dr-lee", started_at=1_790_000_000.0)
        j.append_final("s-1", {"type": "transcription", "session_id": "s-1", "seq": 1,
                               "is_final": True, "text": "머리가 아픕니다", "start_ms": 0,
                               "end_ms": 900, "words": [], "speaker": None})
        j.end_session("s-1", reason="end", ended_at=1_790_000_010.0)
    return tmp_path


def lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines()]


def test_reading_transcripts_is_recorded_and_listed(state: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["transcripts", "list"]) == 0
    assert main(["transcripts", "show", "s-1"]) == 0
    assert main(["transcripts", "show", "nope"]) == 1  # a look is recorded all the same
    capsys.readouterr()
    assert main(["audit", "list", "--json"]) == 0
    records = lines(capsys.readouterr().out)
    assert [(r["seq"], r["action"], r["object"], r["sub"], r["peer"], r["outcome"])
            for r in records] == [
        (1, "transcript.list", None, "unix:nurse-kim", "cli", "ok"),
        (2, "transcript.read", "s-1", "unix:nurse-kim", "cli", "ok"),
        (3, "transcript.read", "nope", "unix:nurse-kim", "cli", "ok")]
    assert all(str(r["time"]).endswith("Z") for r in records)
    for r in records:  # the recipe docs/audit.md gives the hospital's IT
        body = {k: r[k] for k in ("seq", "sub", "organization", "department", "action",
                                  "object", "outcome", "reason", "peer", "detail", "prev")}
        body["time_ms"] = round(float(r["unix_time"]) * 1000)  # type: ignore[arg-type]
        assert r["hash"] == hashlib.sha256(json.dumps(
            body, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
    text = json.dumps(records, ensure_ascii=False)
    assert "머리가" not in text  # never transcript text
    assert main(["audit", "list", "--json", "--session", "s-1"]) == 0
    assert [r["seq"] for r in lines(capsys.readouterr().out)] == [2]
    assert main(["audit", "list", "--json", "--sub", "someone-else"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["audit", "list"]) == 0
    assert "transcript.read" in capsys.readouterr().out
    assert main(["audit", "verify"]) == 0
    assert "3 record(s) intact, up to record 3" in capsys.readouterr().out


def test_relay_requeue_is_recorded(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["relay", "requeue", "--all"]) == 0
    capsys.readouterr()
    assert main(["audit", "list", "--json"]) == 0
    (only,) = lines(capsys.readouterr().out)
    assert only["action"] == "relay.requeue" and only["detail"] == {"events": 0}


def edge(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True,
                          text=True, env=env, timeout=60, check=False)


@pytest.mark.parametrize(("statement", "named"), [
    ("DELETE FROM audit WHERE seq = 2", "record 2 is missing"),
    ("UPDATE audit SET object = 's-9' WHERE seq = 3", "record 3 was altered"),
    ("DELETE FROM audit WHERE seq = 4", "record 4 is missing (the trail was written up to 4)"),
])
def test_verify_exits_1_naming_the_first_broken_record(state: Path, statement: str,
                                                       named: str) -> None:
    env = {**os.environ}
    for _ in range(4):
        assert edge("transcripts", "show", "s-1", env=env).returncode == 0
    assert edge("audit", "verify", env=env).returncode == 0
    conn = connect_journal(state / "journal.db", TEST_KEY)
    conn.execute("DROP TRIGGER audit_append_only")
    conn.execute(statement)
    conn.close()
    done = edge("audit", "verify", env=env)
    assert done.returncode == 1
    assert f"the audit trail is broken: {named}" in done.stderr
