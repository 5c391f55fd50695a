"""The MQTT relay against a TLS Mosquitto (a CA made here, mutual TLS with
``require_certificate``) and against one with a ``password_file``."""

from __future__ import annotations

import datetime
import ipaddress
import logging
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from test_mqtt_broker import Broker, needs_mosquitto
from test_mqtt_relay import (  # noqa: F401 (nodes: a fixture)
    RECEIPTS,
    SHARED,
    TOPIC,
    Node,
    client,
    drained,
    journal_sessions,
    nodes,
)

from edge.core.config import load_config
from edge.core.errors import ConfigError
from edge.relay.mqtt import MqttClientSettings, MqttRelay, MqttRelaySettings, client_settings
from edge.relay.mqtt_ingest import MqttIngest

pytestmark = needs_mosquitto


class CA:
    """A certificate authority for one test: it signs a server and client certificates."""

    def __init__(self, directory: Path, name: str = "edge test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256()))
        self.path = directory / "ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, *, server: bool) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path = self.directory / f"{common_name}.pem"
        key_path = self.directory / f"{common_name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
        return cert_path, key_path


def tls_broker(directory: Path, ca: CA, *, mutual: bool) -> Broker:
    cert, key = ca.issue("broker", server=True)
    extra = f"cafile {ca.path}\ncertfile {cert}\nkeyfile {key}\n"
    if mutual:
        extra += "require_certificate true\n"
    return Broker(directory, extra=extra)


def tls_url(broker: Broker) -> str:
    return f"mqtts://127.0.0.1:{broker.port}"


def relay_over(a: Node, settings: MqttClientSettings) -> MqttRelay:
    return MqttRelay(MqttRelaySettings(client=settings, topic=TOPIC, receipt_topic=RECEIPTS,
                                       receipt_timeout=3.0, backoff_base=0.05,
                                       backoff_max=0.3), a.service)


def ingest_over(b: Node, settings: MqttClientSettings) -> MqttIngest:
    return MqttIngest(settings, b.service, subscription=SHARED, backoff_max=0.3)


async def test_mqtts_with_the_ca_relays(
    nursery: trio.Nursery, nodes: tuple[Node, Node], tmp_path: Path,  # noqa: F811
) -> None:
    a, b = nodes
    ca = CA(tmp_path / "ca")
    journal_sessions(a, 2, 3)
    with tls_broker(tmp_path / "broker", ca, mutual=False) as broker:
        ingest = ingest_over(b, client(tls_url(broker), "clinic-ingest",
                                       cafile=str(ca.path)))
        await nursery.start(ingest.run)
        with trio.fail_after(10):
            await ingest.subscribed.wait()
        relay = relay_over(a, client(tls_url(broker), "room-a", cafile=str(ca.path)))
        await nursery.start(relay.run)
        await drained(a, relay)
    assert b.events() == a.events() and len(b.events()) == 10
    assert relay.last_error is None and relay.failures == 0


async def test_a_wrong_ca_fails_with_a_clear_warning_and_backs_off(
    nursery: trio.Nursery, nodes: tuple[Node, Node], tmp_path: Path,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, _ = nodes
    ca, other = CA(tmp_path / "ca"), CA(tmp_path / "other", "another CA")
    journal_sessions(a, 1, 2)
    with tls_broker(tmp_path / "broker", ca, mutual=False) as broker:
        relay = relay_over(a, client(tls_url(broker), "room-a", cafile=str(other.path)))
        await nursery.start(relay.run)
        with trio.fail_after(20):
            while not relay.circuit_open:
                await trio.sleep(0.05)
        attempts = relay.failures
        with trio.fail_after(10):
            while relay.failures == attempts:  # it keeps trying, after a backoff
                assert relay.state in ("backoff", "starting")
                await trio.sleep(0.02)
    assert "CERTIFICATE_VERIFY_FAILED" in (relay.last_error or "")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("TLS with the broker failed" in w and "CERTIFICATE_VERIFY_FAILED" in w
               for w in warnings) == 3  # then DEBUG, with the circuit open
    assert any("circuit open" in w for w in warnings)
    assert (await a.service.backlog()).events == 4 and relay.sent_events == 0


async def test_mutual_tls_works_with_the_client_certificate_and_is_refused_without(
    nursery: trio.Nursery, nodes: tuple[Node, Node], tmp_path: Path,  # noqa: F811
) -> None:
    a, b = nodes
    ca = CA(tmp_path / "ca")
    device_cert, device_key = ca.issue("room-a", server=False)
    ingest_cert, ingest_key = ca.issue("clinic-ingest", server=False)
    journal_sessions(a, 1, 3)
    with tls_broker(tmp_path / "broker", ca, mutual=True) as broker:
        without = relay_over(a, client(tls_url(broker), "room-a", cafile=str(ca.path)))
        async with trio.open_nursery() as inner:
            await inner.start(without.run)
            with trio.fail_after(20):
                while without.failures < 2:
                    await trio.sleep(0.05)
            inner.cancel_scope.cancel()
        assert without.sent_events == 0
        assert "before accepting it" in (without.last_error or "")
        assert "client certificate" in (without.last_error or "")
        assert (await a.service.backlog()).events == 5

        ingest = ingest_over(b, client(tls_url(broker), "clinic-ingest", cafile=str(ca.path),
                                       certfile=str(ingest_cert), keyfile=str(ingest_key)))
        await nursery.start(ingest.run)
        with trio.fail_after(10):
            await ingest.subscribed.wait()
        relay = relay_over(a, client(tls_url(broker), "room-a", cafile=str(ca.path),
                                     certfile=str(device_cert), keyfile=str(device_key)))
        await nursery.start(relay.run)
        await drained(a, relay)
    assert b.events() == a.events() and len(b.events()) == 5


# --- password_file ------------------------------------------------------------------

def _config(tmp_path: Path, url: str, **relay_mqtt: str) -> str:
    lines = ["[journal]", "enabled = true", "[relay]", "enabled = true",
             'transport = "mqtt"', 'device_id = "room-a"', "[relay.mqtt]", f'url = "{url}"',
             'site = "test"']
    lines += [f'{k} = "{v}"' for k, v in relay_mqtt.items()]
    path = tmp_path / "edge.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


async def test_password_file_and_environment_against_a_broker_with_a_password_file(
    nursery: trio.Nursery, nodes: tuple[Node, Node], tmp_path: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = nodes
    journal_sessions(a, 1, 2)
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret-device\n")  # a trailing newline, as editors leave it
    secret.chmod(0o600)
    with Broker(tmp_path / "auth", passwords={"room-a": "s3cret-device",
                                              "ingest": "s3cret-ingest"}) as broker:
        config = load_config(_config(tmp_path, broker.url, username="room-a",
                                     password_file=str(secret)))
        settings = client_settings("relay.mqtt", config.relay.mqtt, "room-a")
        assert settings.password == "s3cret-device"
        monkeypatch.setenv("EDGE_INGEST_MQTT_PASSWORD", "s3cret-ingest")
        ingest_config = load_config(None, overrides={
            "journal.enabled": True, "ingest.mqtt.enabled": True,
            "ingest.mqtt.url": broker.url, "ingest.mqtt.username": "ingest"})
        ingest_settings = client_settings("ingest.mqtt", ingest_config.ingest.mqtt, "x")
        assert ingest_settings.password == "s3cret-ingest"
        ingest = ingest_over(b, client(broker.url, "clinic-ingest", username="ingest",
                                       password=ingest_settings.password))
        await nursery.start(ingest.run)
        with trio.fail_after(10):
            await ingest.subscribed.wait()
        relay = relay_over(a, client(broker.url, "room-a", username="room-a",
                                     password=settings.password))
        await nursery.start(relay.run)
        await drained(a, relay)
    assert b.events() == a.events() and relay.failures == 0


def test_an_unreadable_password_file_names_the_key(tmp_path: Path) -> None:
    unreadable = tmp_path / "mqtt-password"
    unreadable.mkdir()  # unreadable as a file even for root (tests may run as root)
    config = load_config(_config(tmp_path, "mqtt://127.0.0.1:1",
                                 password_file=str(unreadable)))
    with pytest.raises(ConfigError) as info:
        client_settings("relay.mqtt", config.relay.mqtt, "room-a")
    assert info.value.key == "relay.mqtt.password_file"
    assert "Is a directory" in str(info.value)


def test_a_missing_password_file_names_the_key(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "mqtt-password"
    config = load_config(_config(tmp_path, "mqtt://127.0.0.1:1", password_file=str(missing)))
    with pytest.raises(ConfigError) as info:
        client_settings("relay.mqtt", config.relay.mqtt, "room-a")
    assert info.value.key == "relay.mqtt.password_file"
    assert str(missing) in str(info.value) and "No such file" in str(info.value)
