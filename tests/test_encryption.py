"""Patient data at rest: the data key's sources, the SQLCipher journal, the sealed
voiceprint store, encryption of plaintext files in place, the daemon's refusals, and
key rotation (kill -9 at every step). Real SQLCipher, the real model, real sockets."""

from __future__ import annotations

import functools
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from speaker_audio import SPK_MODEL, clip_words, clips_pcm, session

from edge import app
from edge.app import Parts
from edge.asr.vosk import LoadedModel
from edge.cli import main
from edge.core.auth import SCOPE_ENROLL
from edge.core.config import Config
from edge.crypto import datakey
from edge.crypto.datakey import (
    CREDENTIAL,
    DEVELOPMENT,
    FILE,
    SEALED,
    DataKey,
    DataKeyError,
    KeySource,
)
from edge.crypto.rotation import open_key
from edge.crypto.sealed import MAGIC, SealedError, open_sealed, seal
from edge.journal import db as journal_db
from edge.journal import schema as journal_schema
from edge.journal.db import Journal, JournalKeyError
from edge.speakers import VoiceprintStore
from edge.speakers.voiceprints import encrypt_plaintext_store
from helpers import FIXTURES, READ_WRITE, SECRET, TEST_KEY, make_config
from tools.daemon import Daemon

SPEECH = FIXTURES / "speech_ko.wav"
ROOT = Path(__file__).resolve().parent.parent
OTHER_KEY = DataKey(bytes(range(200, 232)), KeySource(FILE, Path("/other"), "journal.key_file"))


def key_in(path: Path, material: bytes | None = None) -> DataKey:
    material = material or datakey.generate()
    datakey.write_key_file(path, material)
    return DataKey(material, KeySource(FILE, path, "journal.key_file"))


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def leaks(directory: Path, needles: list[bytes]) -> list[tuple[str, bytes]]:
    """Which of ``needles`` appear in which file under ``directory``."""
    found = []
    for path in files_under(directory):
        data = path.read_bytes()
        found += [(path.name, n) for n in needles if n in data]
    return found


# --- the key's sources ---------------------------------------------------------------

def test_sources_in_order(tmp_path: Path) -> None:
    state = tmp_path / "state"
    base: dict[str, Any] = {"server": {"state_dir": str(state)},
                            "journal": {"key_file": ""}}
    config = make_config(**base)
    with pytest.raises(DataKeyError, match="edge keys init --tang URL") as refused:
        datakey.locate(config, environ={})
    assert refused.value.key == "journal.key_file"
    dev = datakey.locate(config, dev=True, environ={})
    assert dev.kind == DEVELOPMENT and dev.path == state / "dev-journal-key"
    # An existing development key is for tools only, never taken without --dev.
    datakey.read(dev)
    assert datakey.locate(config, dev_existing=True, environ={}).kind == DEVELOPMENT
    with pytest.raises(DataKeyError):
        datakey.locate(config, environ={})

    (state / "journal-key.jwe").write_text("sealed")
    assert datakey.locate(config, environ={}).kind == SEALED
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "journal-key.jwe").write_text("sealed")
    found = datakey.locate(config, environ={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert found.kind == CREDENTIAL and found.sealed
    (credentials / "journal-key").write_text("00" * 32)
    found = datakey.locate(config, environ={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert found.kind == CREDENTIAL and not found.sealed
    assert found.describe() == "systemd credential journal-key"
    jwe = make_config(**{**base, "journal": {"key_file": "",
                                             "key_jwe": "/etc/edge/journal-key.jwe"}})
    assert datakey.locate(jwe, environ={"CREDENTIALS_DIRECTORY": str(credentials)}
                          ).kind == SEALED
    both = make_config(**{**base, "journal": {"key_file": "/k", "key_jwe": "/j.jwe"}})
    assert datakey.locate(both, environ={}).kind == FILE  # the explicit file wins


@pytest.mark.parametrize("content", [b"", b"short", b"zz" * 32, b"00" * 33])
def test_a_key_file_that_holds_no_key_is_named_not_shown(tmp_path: Path,
                                                          content: bytes) -> None:
    path = tmp_path / "k"
    path.write_bytes(content)
    source = KeySource(FILE, path, "journal.key_file")
    with pytest.raises(DataKeyError, match=f"key file {path}") as refused:
        datakey.read(source)
    assert content.decode() not in str(refused.value) or not content
    with pytest.raises(DataKeyError, match="cannot read"):
        datakey.read(KeySource(FILE, tmp_path / "missing", "journal.key_file"))


def test_development_key_is_made_once_private(tmp_path: Path) -> None:
    source = KeySource(DEVELOPMENT, tmp_path / "state" / "dev-journal-key", "journal.key_file")
    first = datakey.read(source)
    assert stat.S_IMODE(source.path.stat().st_mode) == 0o600
    assert datakey.read(source).material == first.material
    assert first.material.hex() not in repr(first) and first.development


def test_subkeys_are_separate_and_stable() -> None:
    assert TEST_KEY.subkey("journal") != TEST_KEY.subkey("voiceprints")
    assert TEST_KEY.subkey("journal") == TEST_KEY.subkey("journal") != TEST_KEY.material
    assert TEST_KEY.fingerprint != OTHER_KEY.fingerprint and len(TEST_KEY.fingerprint) == 16


def test_sealed_bytes_are_authenticated() -> None:
    blob = seal(TEST_KEY, "voiceprints", b"vector")
    assert blob.startswith(MAGIC) and b"vector" not in blob
    assert open_sealed(TEST_KEY, "voiceprints", blob) == b"vector"
    assert seal(TEST_KEY, "voiceprints", b"vector") != blob  # a fresh nonce each time
    for bad in (lambda: open_sealed(OTHER_KEY, "voiceprints", blob),
                lambda: open_sealed(TEST_KEY, "journal", blob),
                lambda: open_sealed(TEST_KEY, "voiceprints", blob[:-1] + b"\0"),
                lambda: open_sealed(TEST_KEY, "voiceprints", MAGIC + b"short"),
                lambda: open_sealed(TEST_KEY, "voiceprints", b"{}")):
        with pytest.raises(SealedError):
            bad()


# --- plaintext files from an older edge ----------------------------------------------

def plaintext_journal(path: Path, text: str) -> None:
    """A journal as an edge before encryption wrote it (stdlib sqlite3, no key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    journal_schema.prepare(conn)
    conn.execute("INSERT INTO sessions (session_id, device_id, source, started_at) "
                 "VALUES ('old', 'room-1', 'client', 1.0)")
    payload = json.dumps({"type": "transcription", "is_final": True, "text": text,
                          "start_ms": 0, "end_ms": 10}, ensure_ascii=False)
    conn.execute("INSERT INTO events (device_id, session_id, seq, kind, created_at, "
                 "payload, size) VALUES ('room-1', 'old', 1, 'final', 1.5, ?, ?)",
                 (payload, len(payload)))
    conn.close()


def test_a_plaintext_journal_is_encrypted_in_place(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "journal.db"
    plaintext_journal(path, "두통이 심합니다")
    assert "두통이".encode() in path.read_bytes()
    with Journal.open(path, key=TEST_KEY, device_id="room-1") as journal:
        assert [f["text"] for f in journal.finals("old")] == ["두통이 심합니다"]
    assert [p.name for p in files_under(tmp_path)] == ["journal.db"]
    assert leaks(tmp_path, ["두통이".encode(), b"SQLite format 3"]) == []
    with pytest.raises(sqlite3.DatabaseError, match="not a database"):
        sqlite3.connect(path).execute("SELECT * FROM events").fetchall()
    assert "was not encrypted: encrypted it in place" in caplog.text
    with pytest.raises(JournalKeyError):
        Journal.open(path, key=OTHER_KEY, device_id="room-1")


@pytest.mark.parametrize("swapped", [False, True])
def test_an_interrupted_encryption_in_place_is_finished(tmp_path: Path,
                                                        swapped: bool) -> None:
    # A crash after the plaintext was moved aside: before the encrypted copy took its
    # place (it is redone), or after (the plaintext is overwritten and removed).
    path = tmp_path / "journal.db"
    plaintext_journal(path, "흉통")
    aside = tmp_path / "journal.db.plaintext"
    if swapped:
        with Journal.open(path, key=TEST_KEY, device_id="room-1"):
            pass
        plaintext_journal(aside, "흉통")
    else:
        os.replace(path, aside)
        (tmp_path / "journal.db.encrypting").write_bytes(b"half")
    with Journal.open(path, key=TEST_KEY, device_id="room-1") as journal:
        assert [f["text"] for f in journal.finals("old")] == ["흉통"]
    assert [p.name for p in files_under(tmp_path)] == ["journal.db"]
    assert leaks(tmp_path, ["흉통".encode()]) == []


def test_readonly_tools_never_read_plaintext_silently(tmp_path: Path) -> None:
    plaintext_journal(tmp_path / "journal.db", "x")
    with pytest.raises(journal_db.JournalError, match="not encrypted yet"):
        Journal.open(tmp_path / "journal.db", key=TEST_KEY, device_id="r", readonly=True)


def plaintext_store(path: Path) -> bytes:
    body = {"version": 1, "dim": 3, "voiceprints": [
        {"name": "Dr. Kim", "role": "doctor", "count": 2, "created": "2026-12-01T00:00:00Z",
         "vector": [0.6, 0.8, 0.0]}]}
    raw = json.dumps(body).encode()
    path.write_bytes(raw)
    return raw


def test_a_plaintext_voiceprint_store_is_sealed_in_place(tmp_path: Path) -> None:
    path = tmp_path / "voiceprints.json"
    plaintext_store(path)
    store = VoiceprintStore(path, key=TEST_KEY)
    store.load()  # an older edge's file reads as it is
    assert [p.name for p in store.list()] == ["Dr. Kim"]
    assert encrypt_plaintext_store(path, TEST_KEY)
    assert not encrypt_plaintext_store(path, TEST_KEY)  # once
    assert [p.name for p in files_under(tmp_path)] == ["voiceprints.json"]
    assert leaks(tmp_path, [b"Dr. Kim", b"0.8", b"voiceprints"]) == []
    again = VoiceprintStore(path, key=TEST_KEY)
    again.load()
    assert again.get("Dr. Kim") is not None
    with pytest.raises(Exception, match="cannot be read with the key file /other"):
        VoiceprintStore(path, key=OTHER_KEY).load()
    # A crash between moving the plaintext aside and sealing: the plaintext comes back.
    raw = plaintext_store(tmp_path / "other.json")
    os.replace(tmp_path / "other.json", tmp_path / "other.json.plaintext")
    assert encrypt_plaintext_store(tmp_path / "other.json", TEST_KEY)
    assert open_sealed(TEST_KEY, "voiceprints",
                       (tmp_path / "other.json").read_bytes()) == raw
    assert not (tmp_path / "other.json.plaintext").exists()


# --- the daemon -----------------------------------------------------------------------

async def test_nothing_on_disk_holds_a_final_or_a_voiceprint_in_the_clear(
    model: LoadedModel, tmp_path: Path, phrases: dict[str, Any]
) -> None:
    state = tmp_path / "state"
    config = make_config(server={"state_dir": str(state)},
                         recognizer={"speaker_model": str(SPK_MODEL)})
    from conftest import test_auth

    grammar = [p for p in phrases["grammar"] if p != "[unk]"]
    texts: list[str] = []
    async with trio.open_nursery() as nursery:
        server = await nursery.start(functools.partial(
            app.run, config, parts=Parts(auth=test_auth(config), model=model)))
        _, messages = await session(server, clips_pcm("kim"), phrases=clip_words(),
                                    query="?enroll=Dr.%20Kim",
                                    scope=f"{READ_WRITE} {SCOPE_ENROLL}")
        assert any(m["type"] == "enrolled" for m in messages), messages[-3:]
        for _ in range(2):
            _, messages = await session(server, SPEECH.read_bytes(), phrases=grammar)
            texts += [m["text"] for m in messages
                      if m["type"] == "transcription" and m["is_final"] and m["text"]]
        assert texts
        needles = [*sorted({t.encode() for t in texts} | {
            w.encode() for t in texts for w in t.split() if len(w) >= 2}), b"Dr. Kim"]
        running = files_under(state)
        assert {"journal.db", "voiceprints.json"} <= {p.name for p in running}
        assert leaks(state, needles) == []
        nursery.cancel_scope.cancel()
    assert leaks(state, needles) == []
    for path in files_under(state):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    with Journal.open(state / "journal.db", key=TEST_KEY, device_id="x",
                      readonly=True) as journal:
        stored = [f["text"] for row in journal.sessions() for f in
                  journal.finals(row.session_id, row.device_id)]
    assert set(texts) <= set(stored)


def serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    environment.update({"EDGE_JWT_SECRET": SECRET, "XDG_STATE_HOME": str(tmp_path / "xdg"),
                        **(env or {})})
    config = tmp_path / "edge.toml"
    if not config.exists():
        config.write_text(f'[server]\nhost = "127.0.0.1"\nport = 0\nstate_dir = '
                          f'"{tmp_path / "state"}"\n')
    return subprocess.run([sys.executable, "-m", "edge", "serve", "--config", str(config),
                           *args], cwd=ROOT, env=environment, capture_output=True,
                          text=True, timeout=timeout)


def test_serve_without_a_key_or_with_a_wrong_one_exits_2(tmp_path: Path) -> None:
    done = serve(tmp_path)
    assert done.returncode == 2
    assert "journal.key_file" in done.stderr and "edge keys init" in done.stderr
    assert not (tmp_path / "state" / "journal.db").exists()

    right = key_in(tmp_path / "right.key")
    (tmp_path / "state").mkdir(mode=0o700)
    Journal.open(tmp_path / "state" / "journal.db", key=right, device_id="d").close()
    before = (tmp_path / "state" / "journal.db").read_bytes()
    wrong = key_in(tmp_path / "wrong.key")
    done = serve(tmp_path, env={"EDGE_JOURNAL_KEY_FILE": str(wrong.source.path)})
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("edge:")]
    assert len(errors) == 1 and str(wrong.source.path) in errors[0]
    assert "does not open" in errors[0]
    assert wrong.material.hex() not in done.stderr and right.material.hex() not in done.stderr
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["journal.db"]
    assert (tmp_path / "state" / "journal.db").read_bytes() == before
    # A wrong credential is named as such.
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "journal-key").write_bytes(datakey.encode(wrong.material))
    done = serve(tmp_path, env={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert done.returncode == 2 and "systemd credential journal-key" in done.stderr


async def test_dev_serve_makes_a_development_key_beside_the_dev_secret(
        tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, secret=SECRET, env={"EDGE_JOURNAL_KEY_FILE": ""},
                    command=(sys.executable, "-m", "edge", "serve", "--dev", "--config",
                             "{config}"))
    try:
        await trio.to_thread.run_sync(daemon.start, 60)
        key = daemon.state / "dev-journal-key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert "the journal's key is a development key" in daemon.log_tail(100_000)
        health = await trio.to_thread.run_sync(daemon.health)
        assert health["status"] in ("ok", "degraded")
    finally:
        assert await trio.to_thread.run_sync(daemon.stop) == 0
    # The tools find it as the daemon left it.
    config = make_config(server={"state_dir": str(daemon.state)}, journal={"key_file": ""})
    assert open_key(config, dev_existing=True).source.kind == DEVELOPMENT


# --- rotation ---------------------------------------------------------------------------

def filled_state(tmp_path: Path) -> tuple[Config, Path]:
    state = tmp_path / "state"
    key_file = tmp_path / "journal.key"
    key = key_in(key_file)
    config = make_config(server={"state_dir": str(state)},
                         journal={"key_file": str(key_file)})
    with Journal.open(state / "journal.db", key=key, device_id="room-1") as journal:
        for n in range(3):
            journal.start_session(f"s{n}", source="client", sub="u", started_at=1.0 + n)
            journal.append_final(f"s{n}", {"type": "transcription", "is_final": True,
                                           "text": f"복통 {n}", "start_ms": 0, "end_ms": 9})
    store = VoiceprintStore(state / "voiceprints.json", key=key)
    store.enroll("Dr. Park", "doctor", [(0.1, 0.2, 0.3)])
    return config, key_file


def contents(config: Config, key: DataKey) -> tuple[list[str], list[str]]:
    state = Path(config.server.state_dir)
    with Journal.open(state / "journal.db", key=key, device_id="r", readonly=True) as j:
        texts = [f["text"] for n in range(3) for f in j.finals(f"s{n}", "room-1")]
    store = VoiceprintStore(state / "voiceprints.json", key=key)
    store.load()
    return texts, [p.name for p in store.list()]


EXPECTED = (["복통 0", "복통 1", "복통 2"], ["Dr. Park"])


def data_files(state: Path) -> list[str]:
    """The files in ``state`` but the WAL's (a reader leaves them): no ``.rekey``,
    ``.next``, temporary or plaintext file."""
    return sorted(p.name for p in state.iterdir()
                  if p.name not in ("journal.db-wal", "journal.db-shm"))


def test_rotate_reencrypts_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_JOURNAL_KEY_FILE")  # the config file's key, not the tests'
    config, key_file = filled_state(tmp_path)
    old = open_key(config)
    toml = tmp_path / "edge.toml"
    toml.write_text(f'[server]\nstate_dir = "{config.server.state_dir}"\n[journal]\n'
                    f'key_file = "{key_file}"\n')
    assert main(["keys", "status", "--config", str(toml)]) == 0
    assert "journal:      opens" in capsys.readouterr().out
    assert main(["keys", "rotate", "--config", str(toml)]) == 0
    assert "now holds key" in capsys.readouterr().out
    new = open_key(config)
    assert new.material != old.material
    assert contents(config, new) == EXPECTED
    state = Path(config.server.state_dir)
    assert data_files(state) == ["journal.db", "voiceprints.json"]
    with pytest.raises(JournalKeyError):
        contents(config, old)
    assert not Path(f"{key_file}.next").exists()
    with Journal.open(state / "journal.db", key=new, device_id="x", readonly=True) as j:
        (rotated,) = [r for r in j.audit_records() if r.action == "key.rotate"]
        assert rotated.object == new.fingerprint and rotated.peer == "cli"
        assert rotated.detail == {"previous": old.fingerprint}
        assert j.audit_verify()[1] is None
    assert main(["keys", "status", "--json", "--config", str(toml)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["fingerprint"] == new.fingerprint and status["voiceprints"] == "opens"


def test_rotate_refuses_while_the_journal_is_open(tmp_path: Path) -> None:
    config, key_file = filled_state(tmp_path)
    before = key_file.read_bytes()
    from edge.crypto.rotation import rotate

    with Journal.open(Path(config.server.state_dir) / "journal.db", key=open_key(config),
                      device_id="room-1"), pytest.raises(DataKeyError, match="in use"):
        rotate(config)
    assert key_file.read_bytes() == before
    assert contents(config, open_key(config)) == EXPECTED
    assert not Path(f"{key_file}.next").exists()


KILLER = """
import os, signal, sys
calls = {"n": 0}
real = os.replace
def replace(*args, **kwargs):
    calls["n"] += 1
    if calls["n"] == int(os.environ["KILL_AT_REPLACE"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
os.replace = replace
from edge.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_rotation_killed_at_any_step_leaves_data_that_opens(tmp_path: Path) -> None:
    # os.replace is every durable step of a rotation (the new key, the copies, the
    # commit, the swaps): kill -9 before each in turn, then open as the daemon does.
    step = 1
    while True:
        work = tmp_path / f"run{step}"
        config, key_file = filled_state(work)
        old = open_key(config)
        toml = work / "edge.toml"
        toml.write_text(f'[server]\nstate_dir = "{config.server.state_dir}"\n[journal]\n'
                        f'key_file = "{key_file}"\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
        done = subprocess.run([sys.executable, "-c", KILLER, "keys", "rotate", "--config",
                               str(toml)], cwd=ROOT, capture_output=True, text=True,
                              env={**env, "KILL_AT_REPLACE": str(step)}, timeout=60)
        key = open_key(config)  # settles what the kill left
        assert contents(config, key) == EXPECTED, (step, done.stderr)
        assert not Path(f"{key_file}.next").exists()
        assert data_files(Path(config.server.state_dir)) == [
            "journal.db", "voiceprints.json"]
        if done.returncode == 0:
            assert key.material != old.material
            break
        assert done.returncode == -signal.SIGKILL, done.stderr
        step += 1
    assert step >= 4  # the key, the two copies' commit and the swaps were each cut
