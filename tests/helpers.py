"""Helpers for tests: tokens signed like a real issuer would, test configs, and a
small WebSocket client over real sockets."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from edge.core.auth import mint
from edge.core.config import Config, load_config
from edge.crypto.datakey import FILE, DataKey, KeySource
from edge.net.server import Server
from tools.daemon import free_port as free_port  # for daemons started as subprocesses

FIXTURES = Path(__file__).parent / "fixtures"
SECRET = "test-secret-that-is-long-enough-for-hs256!"
READ_WRITE = "transcription:read transcription:write"


def _test_key_file() -> Path:
    """A data key file for the tests' configs, made once per test process (0600)."""
    path = Path(tempfile.mkdtemp(prefix="edge-test-key-")) / "journal.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(TEST_KEY_MATERIAL.hex().encode() + b"\n")
    return path


TEST_KEY_MATERIAL = bytes(range(100, 132))
TEST_KEY_FILE = _test_key_file()
#: The data key of every test config (``journal.key_file``) and of journals tests open.
TEST_KEY = DataKey(TEST_KEY_MATERIAL, KeySource(FILE, TEST_KEY_FILE, "journal.key_file"))


def make_token(
    *, sub: str = "user-1", scope: str = READ_WRITE, user_type: str = "doctor",
    ttl: float = 600, secret: str = SECRET, **extra: Any,
) -> str:
    return mint(algorithm="HS256", key=secret, sub=sub, scope=scope, user_type=user_type,
                ttl=ttl, now=time.time(), extra=extra)


def chromium_args(*extra: str) -> list[str]:
    """Debian's Chromium with a fake microphone and no permission prompt (and no
    sandbox as root, where Chromium refuses to run with it)."""
    args = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream", *extra]
    if os.geteuid() == 0:
        args.append("--no-sandbox")
    return args


def terminate(proc: subprocess.Popen[Any] | None, timeout: float = 10) -> None:
    """SIGTERM a helper process (a broker, a provider), SIGKILL after ``timeout``."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def read_store(path: Path, key: DataKey | None = None) -> Any:
    """A sealed voiceprint store's JSON, opened with the tests' data key."""
    from edge.crypto.sealed import open_sealed

    return json.loads(open_sealed(key or TEST_KEY, "voiceprints", path.read_bytes()))


def make_config(**sections: dict[str, Any]) -> Config:
    """A config for tests: loopback, port 0, the tests' data key, no free-space check on
    the journal's filesystem (a CI machine with little free disk must not degrade every
    server), plus the given overrides by section."""
    overrides: dict[str, Any] = {"server.host": "127.0.0.1", "server.port": 0,
                                 "journal.key_file": str(TEST_KEY_FILE),
                                 "journal.min_free_mb": 0}
    for section, values in sections.items():
        for key, value in values.items():
            overrides[f"{section}.{key}"] = value
    return load_config(None, environ={}, overrides=overrides)


def url(server: Server, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}{server.config.server.path}{query}"


async def receive_json(ws: WebSocketConnection, timeout: float = 30) -> dict[str, Any]:
    with trio.fail_after(timeout):
        message = await ws.get_message()
    assert isinstance(message, str)
    data: dict[str, Any] = json.loads(message)
    return data


async def receive_until_closed(ws: WebSocketConnection, timeout: float = 60
                               ) -> list[dict[str, Any]]:
    """Every message up to the server's close."""
    messages: list[dict[str, Any]] = []
    with trio.fail_after(timeout):
        while True:
            try:
                text = await ws.get_message()
            except ConnectionClosed:
                return messages
            messages.append(json.loads(text))


async def stream(ws: WebSocketConnection, audio: bytes, chunk: int = 3200) -> None:
    """Send ``audio`` in chunks as fast as the server takes them."""
    for i in range(0, len(audio), chunk):
        await ws.send_message(audio[i:i + chunk])


def connect(server: Server, token: str | None = None, query: str = "",
            **kwargs: Any) -> Any:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return open_websocket_url(url(server, query), extra_headers=headers, **kwargs)


async def http_get(port: int, target: str, token: str | None = None
                   ) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP/1.1 GET over a raw socket (the server closes after answering):
    status, headers (lower-case names) and body."""
    sock = await trio.open_tcp_stream("127.0.0.1", port)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    await sock.send_all(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode())
    data = b""
    with trio.fail_after(10):
        while chunk := await sock.receive_some(65536):
            data += chunk
    await sock.aclose()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), headers, body
