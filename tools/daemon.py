"""``edge serve`` in a subprocess, for tests and benchmarks: the one way both start a
real daemon.

A :class:`Daemon` has its own config file and state directory (kept across restarts,
so a test can kill it and start it again on the same journal), takes its secret from
``EDGE_JWT_SECRET`` and its data key from a key file of its own
(``EDGE_JOURNAL_KEY_FILE``, made once, kept across restarts) as a deployed device
does, logs to a file, and is ready when ``/healthz`` answers (200, or 503 for a
degraded device: the model is loaded and the socket accepts). Everything here blocks;
async tests call it through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(port: int, target: str = "/healthz", *, timeout: float = 5.0
             ) -> tuple[int, Any]:
    """A plain GET on loopback: the status and the JSON body (None if not JSON)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, None


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def config_text(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """TOML for ``{"server": {"port": 8000}, ...}`` (flat sections of plain values)."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


#: Inherited variables that would override the daemon's own config file or make it
#: talk to a systemd that is not there. ``EDGE_MODEL`` (where this machine keeps the
#: model) is the one ``EDGE_*`` variable passed through.
FOREIGN = ("NOTIFY_SOCKET", "JOURNAL_STREAM", "WATCHDOG_USEC", "WATCHDOG_PID",
           "STATE_DIRECTORY", "CREDENTIALS_DIRECTORY")


def sigterm_on_parent_death() -> None:
    """(In a child, before exec.) Get SIGTERM when the thread that started us ends."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Daemon:
    """``edge serve --config FILE`` on a free loopback port, in ``directory``.

    ``sections`` are merged over a loopback config (the server's host, port and state
    directory are set here). ``command`` replaces ``python -m edge serve --config
    {config}`` (``{config}`` stands for the file). ``env`` adds to the environment,
    which is this process's without its ``EDGE_*`` and systemd variables (see
    :data:`FOREIGN`). ``log_path`` defaults to ``{name}.log`` in ``directory``.

    With ``die_with_parent`` the daemon gets SIGTERM when the *thread* that spawned it
    ends (Linux's parent-death signal): right for a script's main thread, wrong for a
    worker thread of ``trio.to_thread``, which may end while the daemon should live.
    """

    def __init__(self, directory: Path, name: str = "edge", *, secret: str,
                 sections: Mapping[str, Mapping[str, Any]] | None = None,
                 env: Mapping[str, str] | None = None, port: int | None = None,
                 command: Sequence[str] | None = None, log_path: Path | None = None,
                 die_with_parent: bool = False) -> None:
        self.directory = Path(directory)
        self.name = name
        self.port = port or free_port()
        self.state = self.directory / f"{name}-state"
        self.config_path = self.directory / f"{name}.toml"
        self.log_path = log_path or self.directory / f"{name}.log"
        self.die_with_parent = die_with_parent
        merged: dict[str, dict[str, Any]] = {
            "server": {"host": "127.0.0.1", "port": self.port, "state_dir": str(self.state)},
            # Warming the recogniser pool at start costs CPU that tests and benchmarks
            # measure or wait on; those about the warm-up turn it on.
            "recognizer": {"warm_at_start": False},
            # The state directory is a test's or benchmark's temporary one: a machine
            # with little free disk must not make every daemon degraded. Those about
            # free space set their own threshold.
            "journal": {"min_free_mb": 0}}
        for section, values in (sections or {}).items():
            merged[section] = {**merged.get(section, {}), **values}
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(config_text(merged))
        inherited = {key: value for key, value in os.environ.items()
                     if key not in FOREIGN and (key == "EDGE_MODEL"
                                                or not key.startswith("EDGE_"))}
        self.key_file = self.directory / f"{name}-journal.key"
        if not self.key_file.exists():
            fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
        self.env = {**inherited, "EDGE_JWT_SECRET": secret, "PYTHONUNBUFFERED": "1",
                    "EDGE_JOURNAL_KEY_FILE": str(self.key_file), **(env or {})}
        self.command = [a.replace("{config}", str(self.config_path)) for a in command or (
            sys.executable, "-m", "edge", "serve", "--config", "{config}")]
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0  # time.monotonic() of the last spawn
        self.ready_at = 0.0  # and of the last start's readiness

    @property
    def data_key(self) -> Any:
        """The daemon's data key (a :class:`~edge.crypto.datakey.DataKey`), to open its
        journal from the test or benchmark."""
        from edge.crypto.datakey import FILE, DataKey, KeySource, decode

        path = Path(self.env.get("EDGE_JOURNAL_KEY_FILE") or self.key_file)
        return DataKey(decode(path.read_bytes(), str(path)),
                       KeySource(FILE, path, "journal.key_file"))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/transcribe"

    def spawn(self) -> None:
        """Start the process (the log is appended to, across restarts)."""
        with self.log_path.open("ab") as log:
            self.spawned_at = time.monotonic()
            self.proc = subprocess.Popen(
                self.command, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=sigterm_on_parent_death if self.die_with_parent else None)

    def start(self, timeout: float = 120.0) -> Self:
        """Spawn and wait until it serves (see :meth:`wait_ready`)."""
        self.spawn()
        self.ready_at = self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 120.0, *, interval: float = 0.05) -> float:
        """Block until ``/healthz`` answers, polling every ``interval`` seconds; returns
        ``time.monotonic()`` then. Raises RuntimeError with the log's tail if the process
        exits first, TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before "
                                   f"it was ready:\n{self.log_tail()}")
            with contextlib.suppress(OSError, ValueError, IndexError):
                status, _ = http_get(self.port, timeout=1.0)
                if status in (200, 503):
                    return time.monotonic()
            time.sleep(interval)
        raise TimeoutError(f"{self.name}: not serving on port {self.port} within "
                           f"{timeout:g}s:\n{self.log_tail()}")

    def health(self) -> dict[str, Any]:
        _, body = http_get(self.port)
        return body if isinstance(body, dict) else {}

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; its exit code."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
