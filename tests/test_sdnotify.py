"""systemd notification against a real unix datagram socket, and the unit's hardening."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path

import trio

from edge.ops.sdnotify import notify, watchdog_interval
from tools.daemon import Daemon

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "edge.service"


def test_notify_is_a_no_op_outside_systemd() -> None:
    assert notify("READY=1", environ={}) is False


def test_notify_sends_a_datagram(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        assert notify("READY=1", environ={"NOTIFY_SOCKET": str(path)}) is True
        assert sock.recv(256) == b"READY=1"


def test_watchdog_interval_is_half_the_period() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "4000000"}) == 2.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None


async def test_daemon_reports_ready_after_loading_then_feeds_the_watchdog(
    tmp_path: Path,
) -> None:
    path = tmp_path / "notify"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await sock.bind(str(path))
    daemon = Daemon(tmp_path, secret="s" * 40,
                    env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"})
    daemon.spawn()
    try:
        with trio.fail_after(60):
            first = await sock.recv(256)
        assert first == b"READY=1"
        # Ready means accepting: the socket is already bound.
        stream = await trio.open_tcp_stream("127.0.0.1", daemon.port)
        await stream.aclose()
        watchdogs = 0
        with trio.fail_after(10):
            while watchdogs < 3:
                if await sock.recv(256) == b"WATCHDOG=1":
                    watchdogs += 1
        daemon.signal(signal.SIGTERM)
        with trio.fail_after(10):
            exit_code = await trio.to_thread.run_sync(daemon.wait, 10)
            stopping = await sock.recv(256)
            while stopping == b"WATCHDOG=1":
                stopping = await sock.recv(256)
        assert stopping == b"STOPPING=1"
        assert exit_code == 0, daemon.log_tail()
    finally:
        await trio.to_thread.run_sync(daemon.stop)
        sock.close()


def test_unit_security_score_is_2_or_better() -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze missing: run .ci/setup"
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(UNIT)],
        capture_output=True, text=True, check=False)
    line = next(x for x in result.stdout.splitlines() if "Overall exposure level" in x)
    score = float(line.split(":")[1].split()[0])
    assert score <= 2.0, line
