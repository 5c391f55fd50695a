"""Transport: TLS (wss://) and keepalive of peers that vanish without closing."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import ssl
from pathlib import Path
from typing import Any

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from trio_websocket import open_websocket_url

from helpers import make_token, receive_json


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_tls_serves_wss(start_server: Any, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server = await start_server(server={"tls_cert": str(cert), "tls_key": str(key)})
    context = ssl.create_default_context(cafile=str(cert))
    headers = [(b"authorization", f"Bearer {make_token()}".encode())]
    url = f"wss://127.0.0.1:{server.port}/ws/transcribe"
    async with open_websocket_url(url, ssl_context=context, extra_headers=headers) as ws:
        init = await receive_json(ws)
    assert init["type"] == "session_init"


async def test_tls_port_refuses_plaintext(start_server: Any, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server = await start_server(server={"tls_cert": str(cert), "tls_key": str(key),
                                        "handshake_timeout": 2.0})
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(5):
        reply = await stream.receive_some(4096)
    assert b"HTTP/1.1 200" not in reply  # a TLS alert or a close, never the plain answer
    await stream.aclose()


async def handshake_by_hand(port: int, token: str) -> trio.SocketStream:
    """A client that completes the upgrade and then never reads or answers again."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all(
        (f"GET /ws/transcribe HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
         f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n").encode())
    response = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in response:
            response += await stream.receive_some(4096)
    assert response.startswith(b"HTTP/1.1 101")
    return stream


async def test_a_peer_that_stops_answering_pings_is_dropped(start_server: Any) -> None:
    server = await start_server(server={"ping_interval": 0.5, "ping_timeout": 0.5,
                                        "idle_timeout": 60.0})
    stream = await handshake_by_hand(server.port, make_token())
    assert server.admission.current == 1
    with trio.fail_after(10):
        while server.admission.current:
            await trio.sleep(0.1)
    assert server.stats.closes["dead_peer"] == 1
    await stream.aclose()


async def test_a_peer_that_answers_pings_is_kept(start_server: Any) -> None:
    server = await start_server(server={"ping_interval": 0.3, "ping_timeout": 0.3,
                                        "idle_timeout": 60.0})
    headers = [(b"authorization", f"Bearer {make_token()}".encode())]
    url = f"ws://127.0.0.1:{server.port}/ws/transcribe"
    async with open_websocket_url(url, extra_headers=headers) as ws:
        await receive_json(ws)
        await trio.sleep(2.0)  # several ping rounds, answered by the client library
        assert server.admission.current == 1
        assert ws.closed is None


async def test_the_handshake_deadline_does_not_limit_the_session(start_server: Any) -> None:
    """handshake_timeout bounds the handshake only; sessions live past it."""
    server = await start_server(server={"handshake_timeout": 1.0})
    headers = [(b"authorization", f"Bearer {make_token()}".encode())]
    url = f"ws://127.0.0.1:{server.port}/ws/transcribe"
    async with open_websocket_url(url, extra_headers=headers) as ws:
        await receive_json(ws)
        for _ in range(25):  # 2.5 s of silence at real-time pace
            await ws.send_message(bytes(3200))
            await trio.sleep(0.1)
        await ws.send_message('{"type": "end"}')
        with trio.fail_after(10):
            while (await receive_json(ws))["type"] != "session_end":
                pass
    assert server.stats.refused["handshake_timeout"] == 0
