"""A full disk under a running daemon, then room on it again.

The real daemon (``edge serve`` in a subprocess, real model, real ALSA capture from a
file-backed device for the room, real SQLite) keeps its journal on a small tmpfs
mounted under its state directory. While client sessions and a room listener run, a
filler file takes every free block; later it is deleted. Throughout, the daemon stays
up and every client gets its captions; while the disk is full, clients and room
listeners get ``journal_error`` and ``/healthz`` says the journal is failing and short
of space (503, a reason for each); afterwards the next finals (a client's and the
room's) are in the journal and ``/healthz`` is ok again.

Mounting needs root (or ``sudo -n``): CI runs as root. Without either the test fails
saying so; it never skips.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from alsa_file_device import FileDevice, child_env, make_home, write_atomically
from trio_websocket import open_websocket_url

from edge.crypto.datakey import DataKey
from edge.journal.db import Journal
from helpers import FIXTURES, SECRET, http_get, make_token, receive_json
from tools.daemon import Daemon

SPEECH = (FIXTURES / "speech_ko.raw").read_bytes()
TMPFS_MIB = 16  # room for the journal, its WAL and checkpoints at start
MIN_FREE_MB = 1  # journal.min_free_mb for this daemon: the empty tmpfs is well above it
FAILING_SECONDS = 3.0  # journal.failing_seconds, so that recovery shows within the test
MIB = 1048576


def _as_root(*command: str) -> list[str]:
    if os.geteuid() == 0:
        return list(command)
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"],
                                               capture_output=True).returncode == 0:
        return ["sudo", "-n", *command]
    pytest.fail("mounting a tmpfs needs root or passwordless sudo (CI runs as root); "
                "run the tests as root")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A ``TMPFS_MIB`` tmpfs at ``<tmp>/edge-state/journal`` (the daemon's state
    directory, see :class:`Daemon`), unmounted after the test."""
    state = tmp_path / "edge-state"
    state.mkdir(mode=0o700)
    mountpoint = state / "journal"
    mountpoint.mkdir(mode=0o700)
    mounted = subprocess.run(
        _as_root("mount", "-t", "tmpfs", "-o", f"size={TMPFS_MIB}m,mode=0700", "tmpfs",
                 str(mountpoint)), capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {mountpoint}: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(_as_root("umount", str(mountpoint))).returncode != 0:
            subprocess.run(_as_root("umount", "-l", str(mountpoint)))


def fill(directory: Path) -> Path:
    """A file that takes every free block of ``directory``'s filesystem."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (MIB, 4096, 1):
            block = b"\0" * size
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler


def finals(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == "transcription" and m["is_final"]]


def journal_errors(messages: list[dict[str, Any]]) -> int:
    return sum(1 for m in messages if m["type"] == "warning" and m["code"] == "journal_error")


async def client_session(daemon: Daemon, grammar: list[str]) -> list[dict[str, Any]]:
    """One Live API session streaming the fixture (fast), to its end: every message."""
    headers = [(b"authorization", f"Bearer {make_token()}".encode())]
    async with open_websocket_url(daemon.url, extra_headers=headers) as ws:
        messages = [await receive_json(ws)]
        await ws.send_message(json.dumps({"type": "config", "phrases": grammar}))
        for i in range(0, len(SPEECH), 3200):
            await ws.send_message(SPEECH[i:i + 3200])
        await ws.send_message(json.dumps({"type": "end"}))
        with trio.fail_after(60):
            while messages[-1]["type"] != "session_end":
                messages.append(await receive_json(ws))
    return messages


async def health(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    status, _, body = await http_get(daemon.port, "/healthz")
    data: dict[str, Any] = json.loads(body)
    return status, data


async def wait_health(daemon: Daemon, predicate: Callable[[int, dict[str, Any]], bool],
                      timeout: float = 30) -> tuple[int, dict[str, Any]]:
    with trio.fail_after(timeout):
        while True:
            status, body = await health(daemon)
            if predicate(status, body):
                return status, body
            await trio.sleep(0.1)


async def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.05)


def journaled(path: Path, key: DataKey) -> dict[str, list[dict[str, Any]]]:
    """Every session's finals in the journal right now, as another process reads it."""
    with Journal.open(path, key=key, device_id="reader", readonly=True) as reader:
        return {row.session_id: reader.finals(row.session_id, row.device_id)
                for row in reader.sessions()}


def spoken(message: dict[str, Any]) -> tuple[str, int, int]:
    return message["text"], message["start_ms"], message["end_ms"]


async def test_a_full_disk_is_reported_survived_and_recovered_from(
    tmp_path: Path, small_disk: Path, phrases: dict[str, Any]
) -> None:
    grammar = [p for p in phrases["grammar"] if p != "[unk]"]
    infile = tmp_path / "mic.raw"  # absent: the room hears speech once the disk is full
    home = make_home(tmp_path / "home", [FileDevice("edgemic", infile)])
    journal_path = small_disk / "journal.db"
    # child_env copies this process's environment, EDGE_JOURNAL_KEY_FILE (the tests'
    # key) included: the daemon keeps its own key, which the test reads its journal with.
    env = {k: v for k, v in child_env(home).items() if not k.startswith("EDGE_")}
    daemon = Daemon(tmp_path, "edge", secret=SECRET, env=env, sections={
        "server": {"ping_interval": 600.0},
        "microphone": {"enabled": True, "device": "edgemic", "retry_max": 0.5},
        "audio": {"silence_seconds": 600.0},
        "journal": {"path": str(journal_path), "min_free_mb": MIN_FREE_MB,
                    "failing_seconds": FAILING_SECONDS}})
    room: list[dict[str, Any]] = []
    try:
        await trio.to_thread.run_sync(daemon.start)
        status, body = await health(daemon)
        assert status == 200 and body["journal"]["state"] == "ok", body
        assert body["journal"]["free_bytes"] > MIN_FREE_MB * MIB
        assert not body["journal"]["low_space"] and body["journal"]["failures"] == 0
        assert body["journal"]["encrypted"] and body["journal"]["key_source"]
        assert daemon.data_key.material.hex() not in json.dumps(body)

        headers = [(b"authorization", f"Bearer {make_token()}".encode())]
        async with open_websocket_url(daemon.url + "?source=room&since_seq=0",
                                      extra_headers=headers) as listener, \
                trio.open_nursery() as nursery:

            async def listen() -> None:
                while True:
                    room.append(await receive_json(listener, 120))

            nursery.start_soon(listen)

            # --- the disk fills up -------------------------------------------------
            filler = await trio.to_thread.run_sync(fill, small_disk)
            status, body = await wait_health(daemon, lambda s, b: b["journal"]["low_space"])
            assert status == 503 and body["status"] == "degraded"
            assert any("journal.min_free_mb" in r for r in body["reasons"]), body
            # SQLite may fit a few writes into WAL pages it already has: sessions go
            # on until one is refused. Each gets all its captions either way.
            full_sessions: list[list[dict[str, Any]]] = []
            with trio.fail_after(90):
                while not any(journal_errors(m) for m in full_sessions):
                    full_sessions.append(await client_session(daemon, grammar))
            for messages in full_sessions:
                assert [f["text"] for f in finals(messages)] == phrases["utterances"]
                assert messages[-1]["reason"] == "end"
            status, body = await health(daemon)
            assert status == 503 and body["journal"]["state"] == "failing", body
            assert body["journal"]["last_error"] == "SQLITE_FULL: the disk is full"
            assert any("cannot save finals" in r for r in body["reasons"])
            assert not any(u in json.dumps(body, ensure_ascii=False)
                           for u in phrases["utterances"])

            # The room's microphone comes in: its finals reach the listener, each it
            # could not keep with journal_error.
            write_atomically(infile, SPEECH)
            await wait_for(lambda: journal_errors(room) >= 1 and len(finals(room)) >= 2, 90)

            # --- room again --------------------------------------------------------
            os.unlink(filler)
            recovered = await client_session(daemon, grammar)
            assert [f["text"] for f in finals(recovered)] == phrases["utterances"]
            assert journal_errors(recovered) == 0
            stored = await trio.to_thread.run_sync(journaled, journal_path, daemon.data_key)
            assert stored[recovered[0]["session_id"]] == finals(recovered)

            # The room replays its microphone from the start after a pause.
            heard_before = len(room)
            await listener.send_message(json.dumps({"type": "pause"}))
            await wait_for(lambda: any(m.get("state") == "paused"
                                       for m in room[heard_before:]), 30)
            await listener.send_message(json.dumps({"type": "resume"}))
            resumed = len(room)
            await wait_for(lambda: len(finals(room[resumed:])) >= 2, 60)
            after = room[resumed:]
            assert journal_errors(after) == 0
            stored = await trio.to_thread.run_sync(journaled, journal_path, daemon.data_key)
            kept = {spoken(f) for session in stored.values() for f in session}
            assert all(spoken(f) in kept for f in finals(after)), (finals(after), stored)

            status, body = await wait_health(
                daemon, lambda s, b: s == 200, timeout=FAILING_SECONDS + 30)
            journal = body["journal"]
            assert journal["state"] == "ok" and not journal["low_space"]
            assert journal["failures"] >= 1 + journal_errors(room)
            assert journal["last_error"] == "SQLITE_FULL: the disk is full"
            _, _, metrics = await http_get(daemon.port, "/metrics")
            text = metrics.decode()
            assert f"edge_journal_write_failures_total {journal['failures']}" in text
            assert "edge_journal_failing 0" in text and "edge_journal_free_bytes " in text
            assert 'edge_warnings_total{code="journal_error"}' in text
            assert daemon.proc is not None and daemon.proc.poll() is None
            nursery.cancel_scope.cancel()
    finally:
        assert await trio.to_thread.run_sync(daemon.stop) == 0
