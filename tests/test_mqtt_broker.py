"""A real Mosquitto for the MQTT relay's tests and bench: one broker per test, on a free
loopback port, persisting into the test's own directory (killed and restarted on it).

Also tests of the broker facts the relay is built on (checked here, not assumed)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from helpers import terminate
from tools.daemon import free_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


# conftest's mosquitto_installed fails (never skips) a test when the broker is missing.
needs_mosquitto = pytest.mark.usefixtures("mosquitto_installed")


class Broker:
    """``mosquitto -c FILE`` in ``directory``; ``passwords`` turns anonymous access off."""

    def __init__(self, directory: Path, *, passwords: dict[str, str] | None = None,
                 extra: str = "", port: int | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.config = self.directory / "mosquitto.conf"
        self.log = self.directory / "mosquitto.log"
        lines = [f"listener {self.port} 127.0.0.1", "persistence true",
                 f"persistence_location {self.directory}/", f"log_dest file {self.log}",
                 "log_type error", "log_type warning", "log_type notice",
                 "log_type information"]
        if os.getuid() == 0:
            lines.append("user root")  # it otherwise drops to a user that cannot write here
        if passwords:
            pwfile = self.directory / "passwords"
            pwfile.write_text("")
            for user, password in passwords.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pwfile), user, password],
                               check=True, capture_output=True)
            pwfile.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        self.config.write_text("\n".join(lines) + "\n" + extra)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Self:
        """Start and wait until the port accepts (polling: readiness, not a delay)."""
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: "
                                   f"{self.log_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5):
                return self
            time.sleep(0.02)
        raise TimeoutError(f"mosquitto not listening on {self.port}: {self.log_text()}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        terminate(self.proc)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _publish(broker: Broker, payload: bytes, topic: str = "t/x") -> str:
    """One QoS 1 publish with paho's threaded loop: the PUBACK's reason code, or why
    the connection dropped first."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="probe",
                         protocol=paho.MQTTv5, reconnect_on_failure=False)
    codes: list[str] = []
    client.on_publish = lambda c, u, mid, rc, p: codes.append(f"puback 0x{rc.value:02x}")
    client.on_disconnect = lambda c, u, f, rc, p: codes.append(f"disconnect {rc}")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, properties=Properties(PacketTypes.PUBLISH))
        deadline = time.monotonic() + 10
        while not codes and time.monotonic() < deadline:
            time.sleep(0.01)
        return codes[0]
    finally:
        client.disconnect()
        client.loop_stop()


@needs_mosquitto
@pytest.mark.timeout(30)
def test_broker_facts_the_relay_relies_on(tmp_path: Path) -> None:
    """No subscriber: 0x10 in a PUBACK that paho reports as published. Over
    ``message_size_limit``, Mosquitto 2.0.11 answers PUBACK 0x95 (Packet too large,
    which MQTT 5 allows only in CONNACK and DISCONNECT): paho 2.2.0 calls that a
    protocol error and drops the connection, and never reports the publish."""
    with Broker(tmp_path / "b", extra="message_size_limit 1000\n") as broker:
        assert _publish(broker, b"x" * 10) == "puback 0x10"
        assert _publish(broker, b"x" * 5000) == "disconnect Protocol error"
