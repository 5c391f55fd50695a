"""The daemon capturing a real ALSA device (ALSA -> PortAudio -> PyAudio) from a
file-backed PCM defined in a test .asoundrc, serving two listeners over real sockets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio
from alsa_file_device import FileDevice, child_env, make_home, write_atomically
from trio_websocket import open_websocket_url

from edge.core.auth import SCOPE_READ
from helpers import FIXTURES, SECRET, free_port, http_get, make_token, receive_json
from tools.daemon import Daemon

SPEECH = (FIXTURES / "speech_ko.raw").read_bytes()


def room_daemon(tmp_path: Path, infile: Path, *, command: Any = None,
                env: dict[str, str] | None = None) -> Daemon:
    home = make_home(tmp_path / "home", [FileDevice("edgemic", infile)])
    return Daemon(tmp_path, "edge", secret=SECRET, command=command,
                  env={**child_env(home), **(env or {})}, sections={
                      # No keepalive pings during these short tests: trio-websocket's
                      # client can fail to answer a ping that crosses its own close
                      # ("Pong cannot be sent in LOCAL_CLOSING"), a client-library race
                      # unrelated to the daemon.
                      "server": {"ping_interval": 600.0},
                      "microphone": {"enabled": True, "device": "edgemic",
                                     "retry_max": 0.5},
                      "audio": {"silence_seconds": 60.0},
                      "log": {"level": "debug"}})


async def collect(url: str, done: Any, out: list[dict[str, Any]], timeout: float = 60) -> None:
    headers = [(b"authorization", f"Bearer {make_token(scope=SCOPE_READ)}".encode())]
    async with open_websocket_url(url, extra_headers=headers) as ws:
        with trio.fail_after(timeout):
            while not done(out):
                out.append(await receive_json(ws, timeout))


def finals(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == "transcription" and m["is_final"]]


async def test_room_speech_reaches_two_listeners(tmp_path: Path) -> None:
    infile = tmp_path / "mic.raw"
    infile.write_bytes(SPEECH)
    daemon = room_daemon(tmp_path, infile)
    try:
        await trio.to_thread.run_sync(daemon.start)
        a: list[dict[str, Any]] = []
        b: list[dict[str, Any]] = []
        three = lambda out: len(finals(out)) >= 3  # noqa: E731
        async with trio.open_nursery() as nursery:
            # since_seq=0: what was said before the listener connected is replayed.
            nursery.start_soon(collect, daemon.url + "?source=room&since_seq=0", three, a)
            nursery.start_soon(collect, daemon.url + "?source=room&since_seq=0", three, b)
        assert a[0]["type"] == "session_init" and a[0]["room_id"] == b[0]["room_id"]
        texts_a = [(m["seq"], m["text"]) for m in finals(a)][:3]
        texts_b = [(m["seq"], m["text"]) for m in finals(b)][:3]
        assert texts_a == texts_b and all(text for _, text in texts_a)
        # The three phrases, in order, at about their places in the recording.
        starts = [m["start_ms"] for m in finals(a)][:3]
        speech_ms = len(SPEECH) // 32
        assert starts == sorted(starts) and starts[0] >= 300 and starts[2] < speech_ms - 1000
    finally:
        assert daemon.stop() == 0


async def test_a_lost_device_is_reported_and_capture_resumes(tmp_path: Path) -> None:
    infile = tmp_path / "mic.raw"  # absent at start: the device cannot be opened
    daemon = room_daemon(tmp_path, infile)
    try:
        await trio.to_thread.run_sync(daemon.start)
        seen: list[dict[str, Any]] = []

        def lost_then_speech(out: list[dict[str, Any]]) -> bool:
            states = [m.get("state") for m in out if m["type"] in ("room_state",
                                                                    "session_init")]
            if "mic_lost" in states and not infile.exists():
                write_atomically(infile, SPEECH)  # plug the microphone back in
            return len(finals(out)) >= 2

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, daemon.url + "?source=room&since_seq=0",
                               lost_then_speech, seen, 90)
        init = seen[0]
        assert init["type"] == "session_init"
        warnings = [m["code"] for m in seen if m["type"] == "warning"]
        assert init["state"] == "mic_lost" or "mic_lost" in warnings
        states = [m["state"] for m in seen if m["type"] == "room_state"]
        assert "listening" in states
        assert len(finals(seen)) >= 2
        health = json.loads((await http_get(daemon.port, "/healthz"))[2])
        assert health["microphone"]["state"] == "listening"
        assert health["microphone"]["restarts"] >= 1
    finally:
        assert daemon.stop() == 0


def test_devices_and_check_see_the_alsa_device(tmp_path: Path) -> None:
    infile = tmp_path / "mic.raw"
    infile.write_bytes(SPEECH)
    home = make_home(tmp_path / "home", [FileDevice("edgemic", infile)])
    env = {**child_env(home), "EDGE_JWT_SECRET": SECRET,
           "EDGE_STATE_DIR": str(tmp_path / "state")}
    listing = subprocess.run([sys.executable, "-m", "edge", "devices"], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert listing.returncode == 0 and "edgemic" in listing.stdout

    for device, expected in [("edgemic", "ok   microphone: edgemic"),
                             ("no-such-mic", "FAIL microphone:")]:
        config = tmp_path / f"{device}.toml"
        config.write_text(f'[server]\nhost = "127.0.0.1"\nport = {free_port()}\n'
                          f'[microphone]\nenabled = true\ndevice = "{device}"\n')
        check = subprocess.run(
            [sys.executable, "-m", "edge", "check", "--config", str(config), "--no-load"],
            env=env, capture_output=True, text=True, timeout=60, check=False)
        assert expected in check.stdout, check.stdout
        assert check.returncode == (0 if device == "edgemic" else 1)


async def test_a_failing_room_recogniser_is_restarted_and_sessions_go_on(
    tmp_path: Path, phrases: dict[str, Any]
) -> None:
    infile = tmp_path / "mic.raw"
    infile.write_bytes(SPEECH * 2)
    fault = Path(__file__).parent / "faults" / "room_recognizer_fails.py"
    daemon = room_daemon(tmp_path, infile, env={"EDGE_TEST_FAIL_AT": "40"},
                         command=[sys.executable, str(fault), "serve", "--config", "{config}"])
    try:
        await trio.to_thread.run_sync(daemon.start)
        seen: list[dict[str, Any]] = []

        def restarted_then_finals(out: list[dict[str, Any]]) -> bool:
            states = [m["state"] for m in out if m["type"] == "room_state"]
            if "restarting" not in states:
                return False
            after = out[[m.get("state") for m in out].index("restarting"):]
            return "listening" in [m.get("state") for m in after] and bool(finals(after))

        client: dict[str, Any] = {}

        async def client_session() -> None:
            # A client streaming its own audio while the room fails and restarts.
            headers = [(b"authorization", f"Bearer {make_token()}".encode())]
            async with open_websocket_url(daemon.url, extra_headers=headers) as ws:
                await receive_json(ws)
                await ws.send_message(json.dumps({"type": "config",
                                                  "phrases": phrases["grammar"]}))
                for i in range(0, len(SPEECH), 3200):
                    await ws.send_message(SPEECH[i:i + 3200])
                    await trio.sleep(0.05)
                await ws.send_message(json.dumps({"type": "end"}))
                messages = []
                while (m := await receive_json(ws))["type"] != "session_end":
                    messages.append(m)
                client.update(end=m, finals=finals(messages))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, daemon.url + "?source=room&since_seq=0",
                               restarted_then_finals, seen, 90)
            nursery.start_soon(client_session)
        states = [m["state"] for m in seen if m["type"] == "room_state"]
        assert states[states.index("restarting"):][:2] == ["restarting", "listening"]
        assert client["end"]["reason"] == "end"
        assert [f["text"] for f in client["finals"]] == phrases["utterances"]
        health = json.loads((await http_get(daemon.port, "/healthz"))[2])
        assert health["services"]["room"]["state"] == "running"
        assert health["services"]["room"]["restarts"] == 1
        assert "injected fault" in health["services"]["room"]["last_error"]
        metrics = (await http_get(daemon.port, "/metrics"))[2].decode()
        assert 'edge_service_restarts_total{service="room"} 1' in metrics
        log = daemon.log_tail(1_000_000)
        assert log.count("service room failed") == 1
        assert "Traceback" in log
    finally:
        assert daemon.stop() == 0
    # The failed run's journal segment was closed, and a new one opened.
    listing = subprocess.run(
        [sys.executable, "-m", "edge", "transcripts", "list", "--config",
         str(daemon.config_path)], capture_output=True, text=True, timeout=60, env=daemon.env)
    assert listing.returncode == 0, listing.stderr
    rows = [line for line in listing.stdout.splitlines() if " room " in f" {line} "]
    assert any("restarting" in row for row in rows), listing.stdout
    assert len(rows) >= 2, listing.stdout
