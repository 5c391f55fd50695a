"""The data key sealed with Clevis, end to end: ``edge keys init`` against a real Tang
server and a software TPM, ``edge serve`` unsealing it from the systemd credential
``journal-key.jwe`` (and refusing, exit 2, when Tang cannot be reached: a device taken
off the hospital's network), ``edge keys status`` and ``edge keys rotate``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from keyparts import SoftwareTPM, TangServer
from keyparts import swtpm_fixture as swtpm_fixture
from keyparts import tang_fixture as tang_fixture

from edge.crypto import clevis
from edge.crypto.datakey import DataKey
from edge.crypto.sealed import MAGIC
from edge.journal.db import Journal
from helpers import FIXTURES, SECRET, make_token, receive_json, stream
from tools.daemon import Daemon

ROOT = Path(__file__).resolve().parent.parent


def edge(*args: str, env: dict[str, str] | None = None, timeout: float = 90
         ) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    return subprocess.run([sys.executable, "-m", "edge", *args], cwd=ROOT,
                          env={**clean, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "edge.toml"
    config.write_text(f'[server]\nhost = "127.0.0.1"\nport = 0\n'
                      f'state_dir = "{tmp_path / "state"}"\n')
    return config


async def one_session(daemon: Daemon) -> list[str]:
    """Stream the fixture through one Live API session; the finals' texts."""
    from trio_websocket import open_websocket_url

    texts = []
    async with open_websocket_url(daemon.url, extra_headers=[
            (b"Authorization", f"Bearer {make_token()}".encode())]) as ws:
        await receive_json(ws)
        await stream(ws, (FIXTURES / "speech_ko.wav").read_bytes())
        await ws.send_message(json.dumps({"type": "end"}))
        while (message := await receive_json(ws))["type"] != "session_end":
            if message["type"] == "transcription" and message["is_final"]:
                texts.append(message["text"])
    return texts


async def test_a_tang_sealed_key_opens_only_on_the_network(tmp_path: Path,
                                                           tang: TangServer) -> None:
    config = write_config(tmp_path)
    made = edge("keys", "init", "--tang", tang.url, "--tang-thp", tang.thumbprint,
                "--config", str(config))
    assert made.returncode == 0, made.stderr
    jwe = tmp_path / "state" / "journal-key.jwe"
    assert f"tang {tang.url}" in made.stdout and jwe.is_file()
    assert clevis.pins(jwe.read_bytes()).tang == (tang.url,)
    status = edge("keys", "status", "--json", "--config", str(config))
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["sealed_with"] == f"tang {tang.url}"

    # As the unit hands it over: LoadCredential=journal-key.jwe:/etc/edge/journal-key.jwe
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    shutil.move(jwe, credentials / "journal-key.jwe")
    daemon = Daemon(tmp_path, secret=SECRET, env={"CREDENTIALS_DIRECTORY": str(credentials),
                                                  "EDGE_JOURNAL_KEY_FILE": ""})
    try:
        await trio.to_thread.run_sync(daemon.start, 90)
        assert "Clevis-sealed systemd credential journal-key.jwe" in daemon.log_tail(100_000)
        texts = await one_session(daemon)
        assert texts
    finally:
        assert await trio.to_thread.run_sync(daemon.stop) == 0
    journal = daemon.state / "journal.db"
    assert all(t.encode() not in journal.read_bytes() for t in texts if t)

    tang.stop()  # the device is away from the hospital's network
    refused = edge("serve", "--config", str(daemon.config_path),
                   env={"CREDENTIALS_DIRECTORY": str(credentials), "EDGE_JWT_SECRET": SECRET})
    assert refused.returncode == 2, refused.stderr[-2000:]
    errors = [line for line in refused.stderr.splitlines() if line.startswith("edge:")]
    assert len(errors) == 1
    assert "cannot unseal the Clevis-sealed systemd credential journal-key.jwe" in errors[0]
    tang.start()
    env = {"CREDENTIALS_DIRECTORY": str(credentials)}
    key_jwe = credentials / "journal-key.jwe"
    with Journal.open(journal, key=_open(key_jwe), device_id="reader",
                      readonly=True) as reader:
        assert [f["text"] for r in reader.sessions()
                for f in reader.finals(r.session_id, r.device_id)] == texts
    assert edge("keys", "status", "--config", str(daemon.config_path), env=env
                ).returncode == 0


def _open(jwe: Path) -> DataKey:
    from edge.crypto.datakey import SEALED, KeySource, read

    return read(KeySource(SEALED, jwe, "journal.key_jwe"))


def test_a_tpm_sealed_key_rotates(tmp_path: Path, swtpm: SoftwareTPM,
                                  tang: TangServer) -> None:
    config = write_config(tmp_path)
    env = swtpm.env
    made = edge("keys", "init", "--tpm2", "--config", str(config), env=env)
    assert made.returncode == 0, made.stderr
    assert edge("keys", "init", "--tpm2", "--config", str(config), env=env
                ).returncode == 2  # never overwritten
    jwe = tmp_path / "state" / "journal-key.jwe"
    old = _open_env(jwe, env)
    Journal.open(tmp_path / "state" / "journal.db", key=old, device_id="d").close()
    store = tmp_path / "state" / "voiceprints.json"
    from edge.speakers import VoiceprintStore

    VoiceprintStore(store, key=old).enroll("Dr. Han", None, [(0.3, 0.1, 0.2)])
    assert store.read_bytes().startswith(MAGIC)

    # Rotate onto both pins: the TPM or the Tang server opens it.
    rotated = edge("keys", "rotate", "--tpm2", "--tang", tang.url, "--config", str(config),
                   env=env)
    assert rotated.returncode == 0, rotated.stderr
    pins = clevis.pins(jwe.read_bytes())
    assert pins.tpm2 and pins.tang == (tang.url,) and pins.threshold == 1
    swtpm.flush_transient()  # the tpm2 pin may have been stopped with Tang's answer first
    new = _open_env(jwe, env)
    assert new.material != old.material
    tang.stop()
    swtpm.flush_transient()
    status = edge("keys", "status", "--json", "--config", str(config), env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["journal"] == report["voiceprints"] == "opens"
    assert report["fingerprint"] == new.fingerprint
    assert not any(p.name.endswith((".next", ".rekey")) for p in jwe.parent.iterdir())


def _open_env(jwe: Path, env: dict[str, str]) -> DataKey:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return _open(jwe)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.parametrize("args", [["--tang"], ["--file", "x", "--tpm2"], []])
def test_init_usage_errors_name_the_flag(tmp_path: Path, args: list[str]) -> None:
    done = edge("keys", "init", *args, "--config", str(write_config(tmp_path)))
    assert done.returncode == 2
    assert "--tang" in done.stderr or "--file" in done.stderr or "expected" in done.stderr
