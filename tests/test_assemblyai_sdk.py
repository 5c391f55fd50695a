"""AssemblyAI Universal-Streaming v3 clients, unmodified, against a real daemon: the
``assemblyai`` Python SDK (1.8.2) and npm SDK (4.41.5), and a raw socket for each client
message and each refusal. Every server message a test receives is checked with the
Python SDK's own pydantic models (a message they reject kills the SDK's reader thread
without a word, so a missing or mistyped field must fail a test here)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import struct
import threading
import time
import wave
from pathlib import Path
from typing import Any

import pytest
import trio
from assemblyai.streaming.v3 import (
    BeginEvent,
    StreamingClient,
    StreamingClientOptions,
    StreamingError,
    StreamingEvents,
    StreamingParameters,
    TerminationEvent,
    TurnEvent,
    models,
)
from conftest import StartServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import BaseModel
from trio_websocket import ConnectionClosed, open_websocket_url

from edge.net.server import Server
from helpers import FIXTURES, READ_WRITE, http_get, make_token

pytestmark = pytest.mark.timeout(120)

WAV = FIXTURES / "speech_ko.wav"
JS_DIR = Path(__file__).parent / "js"
AAI = {"assemblyai": {"enabled": True}}
MODELS: dict[str, type[BaseModel]] = {
    "Begin": models.BeginEvent,
    "Turn": models.TurnEvent,
    "Termination": models.TerminationEvent,
    "Warning": models.WarningEvent,
    "Error": models.ErrorEvent,
}
# Fields our messages must carry although the SDK's models have defaults for them.
REQUIRED = {
    "Turn": {"type", "turn_order", "turn_is_formatted", "end_of_turn",
             "end_of_turn_confidence", "transcript", "utterance", "words"},
    "Termination": {"type", "audio_duration_seconds", "session_duration_seconds"},
    "Begin": {"type", "id", "expires_at"},
}
WORD_FIELDS = {"start", "end", "text", "confidence", "word_is_final"}


def validate(text: str | bytes) -> dict[str, Any]:
    """One server frame, checked with the SDK's own pydantic models (strict about the
    integers the SDK needs) and our own list of required fields. Returns the JSON."""
    assert isinstance(text, str), "AssemblyAI servers send only text frames"
    data = json.loads(text)
    assert isinstance(data, dict)
    kind = data.get("type")
    assert kind in MODELS, f"unexpected message type {kind!r}"
    if kind != "Error":
        assert "error" not in data, data  # the JS SDK takes any "error" key as an error
    MODELS[kind].model_validate(data)
    missing = REQUIRED.get(kind, set()) - set(data)
    assert not missing, f"{kind} lacks {missing}"
    if kind == "Termination":
        for key in ("audio_duration_seconds", "session_duration_seconds"):
            assert type(data[key]) is int, data
    if kind == "Turn":
        assert type(data["turn_order"]) is int
        for word in data["words"]:
            assert set(word) >= WORD_FIELDS, word
            assert type(word["start"]) is int and type(word["end"]) is int, word
    return data


def pcm_chunks(path: Path = WAV, ms: int = 100) -> tuple[int, list[bytes]]:
    """The recording's sample rate and its PCM in ``ms`` chunks."""
    with wave.open(str(path)) as w:
        rate = w.getframerate()
        pcm = w.readframes(w.getnframes())
    size = rate * 2 * ms // 1000
    return rate, [pcm[i:i + size] for i in range(0, len(pcm), size)]


def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for 127.0.0.1 and localhost signed by it:
    (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


# --- the Python SDK ------------------------------------------------------------------


def stream_params(**values: Any) -> StreamingParameters:
    """The SDK's parameters (through Any: mypy without pydantic's plugin misreads them)."""
    return StreamingParameters(**values)


class Collected:
    """What the SDK's handlers saw, in order (they run on the SDK's reader thread)."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.errors: list[StreamingError] = []
        self.lock = threading.Lock()

    def of(self, kind: type) -> list[Any]:
        with self.lock:
            return [e for e in self.events if isinstance(e, kind)]


def python_client(host: str, key: str | None, params: StreamingParameters,
                  chunks: list[bytes], *, token: str | None = None,
                  during: Any = None) -> Collected:
    """Stream ``chunks`` with the SDK's StreamingClient, then Terminate and wait for
    Termination (blocking: run it in a thread). ``during(client)`` runs after the audio
    is queued, before the Terminate."""
    seen = Collected()
    client = StreamingClient(StreamingClientOptions(
        api_host=host, api_key=key, token=token, terminate_timeout=30))

    def record(_client: Any, event: Any) -> None:
        with seen.lock:
            seen.events.append(event)

    def failed(_client: Any, error: StreamingError) -> None:
        with seen.lock:
            seen.errors.append(error)

    for kind in (StreamingEvents.Begin, StreamingEvents.Turn, StreamingEvents.Termination,
                 StreamingEvents.Warning):
        client.on(kind, record)
    client.on(StreamingEvents.Error, failed)
    client.connect(params)
    if not seen.errors:
        client.stream(chunks)
        if during is not None:
            during(client)
        client.disconnect(terminate=True)
    return seen


async def wait_ended(server: Server) -> None:
    """Until no session is live (its end is journaled before it stops counting)."""
    with trio.fail_after(10):
        while server.stats.sessions_current:
            await trio.sleep(0.01)


async def journal_finals(server: Server, session_id: str) -> list[str]:
    await wait_ended(server)
    token = make_token(scope=READ_WRITE)
    target = f"/transcripts/{session_id}"
    if server.config.server.tls_cert:  # trusted through SSL_CERT_FILE
        import httpx

        answer = await trio.to_thread.run_sync(lambda: httpx.get(
            f"https://127.0.0.1:{server.port}{target}",
            headers={"Authorization": f"Bearer {token}"}, timeout=10))
        status, body = answer.status_code, answer.content
    else:
        assert server.port is not None
        status, _, body = await http_get(server.port, target, token)
    assert status == 200, body
    return [f["text"] for f in json.loads(body)["finals"]]


def end_of_turn_texts(seen: Collected, formatted: bool = False) -> list[str]:
    return [t.transcript for t in seen.of(TurnEvent)
            if t.end_of_turn and t.turn_is_formatted == formatted]


async def test_python_sdk_streams_the_recording(start_server: StartServer) -> None:
    server = await start_server(**AAI)
    rate, chunks = pcm_chunks()
    params = stream_params(sample_rate=rate, format_turns=True)
    seen = await trio.to_thread.run_sync(
        python_client, f"ws://127.0.0.1:{server.port}", make_token(), params, chunks)

    assert not seen.errors, seen.errors
    begins = seen.of(BeginEvent)
    assert len(begins) == 1 and seen.events[0] is begins[0]
    assert begins[0].expires_at.timestamp() > time.time()
    assert isinstance(seen.events[-1], TerminationEvent)
    assert seen.events[-1].audio_duration_seconds == 9  # the recording: 9.03 s
    turns = seen.of(TurnEvent)
    assert any(not t.end_of_turn for t in turns), "no partial turns"
    finals = end_of_turn_texts(seen)
    # Free dictation (the SDK cannot send a grammar): one turn per spoken phrase, whose
    # words vary between recognisers sharing the model (docs/architecture.md, "Known
    # behaviour of shared Vosk models"), so their text is checked against the journal below.
    spoken = json.loads((FIXTURES / "phrases.json").read_text())["utterances"]
    assert len(finals) == len(spoken) and all(finals), finals
    # What the device journaled is what the client got, turn for turn.
    assert finals == await journal_finals(server, begins[0].id)
    # Each end of turn comes as it is, then formatted, under the same turn_order.
    ends = [t for t in turns if t.end_of_turn]
    assert [t.turn_order for t in ends] == [n // 2 for n in range(len(ends))]
    assert [t.turn_is_formatted for t in ends] == [False, True] * len(finals)
    for plain, formatted in zip(ends[::2], ends[1::2], strict=True):
        assert formatted.transcript == plain.transcript + "."
        assert " ".join(w.text for w in formatted.words) == formatted.transcript
    # Words: the turn's text, with increasing whole-millisecond times within the audio.
    starts = []
    for t in ends[::2]:
        assert " ".join(w.text for w in t.words) == t.transcript
        for w in t.words:
            assert 0 <= w.start <= w.end <= 9100 and w.word_is_final
            assert 0 <= w.confidence <= 1
            starts.append(w.start)
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    # Partial turns belong to the turn they precede.
    order = 0
    for t in turns:
        assert t.turn_order == order
        if t.end_of_turn and t.turn_is_formatted:
            order += 1


def jwt_claims(token: str) -> dict[str, Any]:
    import jwt

    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


@pytest.fixture
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A test CA that this process (SSL_CERT_FILE) and Node (NODE_EXTRA_CA_CERTS) trust,
    and the server section for a certificate it signed."""
    ca, cert, key = make_tls(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", str(ca))
    return {"tls_cert": str(cert), "tls_key": str(key)}


async def test_python_sdk_temporary_token_over_tls(start_server: StartServer,
                                                   tls: dict[str, str]) -> None:
    server = await start_server(server=tls, **AAI)
    host = f"127.0.0.1:{server.port}"  # a bare host: the SDK uses https and wss
    device = make_token(ttl=600, organization="clinic-7")

    def temporary() -> str:
        client = StreamingClient(StreamingClientOptions(api_host=host, api_key=device))
        token: str = client.create_temporary_token(expires_in_seconds=60)
        return token

    before = time.time()
    temp = await trio.to_thread.run_sync(temporary)
    claims, parent = jwt_claims(temp), jwt_claims(device)
    assert claims["sub"] == parent["sub"] and claims["scope"] == parent["scope"]
    assert claims["organization"] == "clinic-7" and claims["jti"] == parent["jti"]
    assert int(before) <= claims["iat"] and claims["exp"] - claims["iat"] <= 60
    assert claims["exp"] <= parent["exp"]

    rate, chunks = pcm_chunks()
    seen = await trio.to_thread.run_sync(
        lambda: python_client(host, None, stream_params(sample_rate=rate), chunks,
                              token=temp))
    assert not seen.errors, seen.errors
    assert isinstance(seen.events[0], BeginEvent)
    assert isinstance(seen.events[-1], TerminationEvent)
    # The session core ends a session when its token expires: Begin says so.
    assert seen.events[0].expires_at.timestamp() == claims["exp"]
    finals = end_of_turn_texts(seen)
    assert len(finals) == 3 and finals == await journal_finals(server, seen.events[0].id)


async def test_token_endpoint_refusals(start_server: StartServer) -> None:
    server = await start_server(assemblyai={"enabled": True, "max_token_seconds": 30})

    async def get(target: str, authorization: str | None) -> tuple[int, dict[str, Any]]:
        sock = await trio.open_tcp_stream("127.0.0.1", server.port)
        auth = f"Authorization: {authorization}\r\n" if authorization else ""
        await sock.send_all(f"GET {target} HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
        data = b""
        with trio.fail_after(10):
            while chunk := await sock.receive_some(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)

    status, body = await get("/v3/token?expires_in_seconds=600", make_token())
    assert status == 200
    claims = jwt_claims(body["token"])
    assert claims["exp"] - claims["iat"] <= 30  # assemblyai.max_token_seconds
    status, body = await get("/v3/token?expires_in_seconds=600", "Bearer " + make_token(
        ttl=10))
    assert status == 200 and jwt_claims(body["token"])["exp"] <= time.time() + 11
    for target, authorization, expected in [
        ("/v3/token?expires_in_seconds=60", None, 401),
        ("/v3/token?expires_in_seconds=60", "not-a-jwt", 401),
        ("/v3/token?expires_in_seconds=60", make_token(scope="transcription:read"), 403),
        ("/v3/token", make_token(), 400),
        ("/v3/token?expires_in_seconds=601", make_token(), 400),
        ("/v3/token?expires_in_seconds=" + "9" * 5000, make_token(), 400),
    ]:
        status, body = await get(target, authorization)
        assert status == expected and set(body) == {"error"}, (target, body)


async def test_rs256_device_cannot_mint(start_server: StartServer, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from edge.core.auth import AuthSettings

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    server = await start_server(auth_settings=AuthSettings("RS256", public.decode()), **AAI)
    status, _, body = await http_get(server.port, "/v3/token?expires_in_seconds=60",
                                     make_token())
    assert status == 501 and "RS256" in json.loads(body)["error"]


# --- the npm SDK -----------------------------------------------------------------------


async def test_npm_sdk_temporary_token_and_stream_over_wss(start_server: StartServer,
                                                           tls: dict[str, str]) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: install Node.js 18 or later (.ci/setup does)")
    if not (JS_DIR / "node_modules" / "assemblyai" / "package.json").is_file():
        pytest.fail(f"the assemblyai npm package is missing: run `npm ci` in {JS_DIR}")
    server = await start_server(server=tls, **AAI)
    with trio.fail_after(60):
        done = await trio.run_process(
            [node, str(JS_DIR / "assemblyai_client.js"), f"https://127.0.0.1:{server.port}",
             make_token(), str(WAV)],
            capture_stdout=True, capture_stderr=True, check=False, env=dict(os.environ))
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, stdout + stderr
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert not [x for x in lines if "error" in x], lines
    assert lines[-1] == {"done": True}
    assert jwt_claims(lines[0]["token"])["sub"] == "user-1"
    begin = lines[1]["begin"]
    BeginEvent.model_validate(begin)
    frames = [validate(x["frame"]) for x in lines if "frame" in x]
    assert frames[-1]["type"] == "Termination"
    turns = [x["turn"] for x in lines if "turn" in x]
    assert turns == [f for f in frames if f["type"] == "Turn"]
    finals = [t["transcript"] for t in turns if t["end_of_turn"] and not t["turn_is_formatted"]]
    formatted = [t["transcript"] for t in turns if t["turn_is_formatted"]]
    assert formatted == [f + "." for f in finals]
    assert len(finals) == 3 and finals == await journal_finals(server, begin["id"])


# --- raw sockets: each client message, each refusal ----------------------------------


def ws_url(server: Server, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}/v3/ws?sample_rate=16000{query}"


def raw(server: Server, query: str = "", token: str | None = None) -> Any:
    """A plain WebSocket with the token as AssemblyAI's SDKs send it (no Bearer word)."""
    headers = [(b"authorization", (token or make_token()).encode())]
    return open_websocket_url(ws_url(server, query), extra_headers=headers)


async def next_message(ws: Any, timeout: float = 30) -> dict[str, Any]:
    with trio.fail_after(timeout):
        return validate(await ws.get_message())


async def until_closed(ws: Any, timeout: float = 60) -> tuple[list[dict[str, Any]], int]:
    """Every message to the server's close, and its close code."""
    out = []
    with trio.fail_after(timeout):
        while True:
            try:
                out.append(validate(await ws.get_message()))
            except ConnectionClosed as closed:
                assert closed.reason is not None
                return out, closed.reason.code


async def test_force_endpoint_ends_the_turn_in_progress(start_server: StartServer) -> None:
    server = await start_server(**AAI)
    _, chunks = pcm_chunks()
    async with raw(server) as ws:
        assert (await next_message(ws))["type"] == "Begin"
        for chunk in chunks[:12]:  # 1.2 s: inside the first phrase (0.45 s to 1.65 s)
            await ws.send_message(chunk)
        await ws.send_message('{"type":"ForceEndpoint"}')
        # (a Warning may come between Turns: realtime_lag on a busy machine)
        while not (message := await next_message(ws)).get("end_of_turn"):
            assert message["type"] in ("Turn", "Warning"), message
        assert message["turn_order"] == 0 and message["words"]
        assert message["words"][-1]["end"] <= 1200
        for chunk in chunks[12:]:
            await ws.send_message(chunk)
        await ws.send_message('{"type":"Terminate"}')
        messages, code = await until_closed(ws)
    assert code == 1000 and messages[-1]["type"] == "Termination"
    ends = [m for m in messages if m.get("end_of_turn")]
    assert ends and ends[0]["turn_order"] == 1  # the rest of the stream goes on


async def test_update_configuration_turns_formatting_on(start_server: StartServer) -> None:
    server = await start_server(**AAI)
    _, chunks = pcm_chunks()
    async with raw(server, "&format_turns=False") as ws:
        assert (await next_message(ws))["type"] == "Begin"
        await ws.send_message(json.dumps({"type": "UpdateConfiguration", "format_turns": True,
                                          "max_turn_silence": 2000, "min_turn_silence": 200}))
        for chunk in chunks:
            await ws.send_message(chunk)
        await ws.send_message('{"type":"Terminate"}')
        messages, code = await until_closed(ws)
    assert code == 1000
    formatted = [m for m in messages if m["type"] == "Turn" and m["turn_is_formatted"]]
    assert len(formatted) == 3


async def test_keepalive_keeps_an_idle_session(start_server: StartServer) -> None:
    server = await start_server(server={"idle_timeout": 1.0}, **AAI)
    async with raw(server) as ws:
        assert (await next_message(ws))["type"] == "Begin"
        for _ in range(8):  # 2 s without audio, kept alive by the client's pace
            await ws.send_message('{"type":"KeepAlive"}')
            await trio.sleep(0.25)
        await ws.send_message('{"type":"Terminate"}')
        messages, code = await until_closed(ws)
    assert code == 1000 and [m["type"] for m in messages] == ["Termination"]


async def test_idle_and_inactivity_timeout_close_with_4031(start_server: StartServer
                                                           ) -> None:
    server = await start_server(server={"idle_timeout": 1.0}, **AAI)
    async with raw(server) as ws:
        assert (await next_message(ws))["type"] == "Begin"
        messages, code = await until_closed(ws, timeout=10)
    assert code == 4031 and messages == [
        {"type": "Error", "error_code": 4031, "error": "no audio or keepalive for 1 seconds"}]

    server = await start_server(server={"idle_timeout": 60.0}, **AAI)
    async with raw(server, "&inactivity_timeout=5") as ws:
        started = trio.current_time()
        assert (await next_message(ws))["type"] == "Begin"
        messages, code = await until_closed(ws, timeout=15)
    assert code == 4031 and messages[0]["error_code"] == 4031
    assert trio.current_time() - started < 30  # the client's 5 s, not the device's 60


def lin2ulaw(pcm: bytes) -> bytes:
    """G.711 mu-law encoding (the reference algorithm), for a test recording."""
    out = bytearray()
    for (sample,) in struct.iter_unpack("<h", pcm):
        sign = 0x80 if sample < 0 else 0
        magnitude = min(abs(sample), 32635) + 0x84
        exponent = max(0, magnitude.bit_length() - 8)
        mantissa = (magnitude >> (exponent + 3)) & 0x0F
        out.append(~(sign | (exponent << 4) | mantissa) & 0xFF)
    return bytes(out)


async def test_mulaw_audio(start_server: StartServer) -> None:
    server = await start_server(**AAI)
    with wave.open(str(FIXTURES / "speech_ko_8k.wav")) as w:
        assert w.getframerate() == 8000
        mulaw = lin2ulaw(w.readframes(w.getnframes()))
    url = f"ws://127.0.0.1:{server.port}/v3/ws?sample_rate=8000&encoding=pcm_mulaw"
    async with open_websocket_url(url, extra_headers=[
            (b"authorization", make_token().encode())]) as ws:
        assert (await next_message(ws))["type"] == "Begin"
        for i in range(0, len(mulaw), 800):
            await ws.send_message(mulaw[i:i + 800])
        await ws.send_message('{"type":"Terminate"}')
        messages, code = await until_closed(ws)
    assert code == 1000
    finals = [m["transcript"] for m in messages if m.get("end_of_turn")]
    assert finals and all(finals) and messages[-1]["audio_duration_seconds"] == 9


@pytest.mark.parametrize("frame", [
    "not json", '{"type":"Foo"}', '{"type":"UpdateConfiguration","max_turn_silence":"x"}',
    '{"n":' + "1" * 5000 + "}",
])
async def test_bad_messages_close_with_3006(start_server: StartServer, frame: str) -> None:
    server = await start_server(**AAI)
    async with raw(server) as ws:
        assert (await next_message(ws))["type"] == "Begin"
        await ws.send_message(frame)
        messages, code = await until_closed(ws)
    assert code == 3006 and [m["error_code"] for m in messages] == [3006]


async def test_refusals(start_server: StartServer) -> None:
    server = await start_server(server={"max_sessions": 1}, **AAI)
    cases = [
        ("", "not-a-jwt", 401),
        ("", make_token(secret="another-secret-that-is-long-enough-for-hs256"), 401),
        ("", make_token(scope="transcription:read"), 403),
        ("&encoding=opus", None, 400),
        ("&sample_rate=abc", None, 400),
        ("&format_turns=maybe", None, 400),
    ]
    for query, token, status in cases:
        with pytest.raises(Exception) as caught:  # trio-websocket's ConnectionRejected
            async with raw(server, query, token):
                pass
        assert getattr(caught.value, "status_code", None) == status, (query, caught.value)
    # ?token= (the JS SDK's way) and "Bearer" are accepted as well.
    for url, headers in [(ws_url(server, "&token=" + make_token()), []),
                         (ws_url(server), [(b"authorization",
                                            b"Bearer " + make_token().encode())])]:
        async with open_websocket_url(url, extra_headers=headers) as ws:
            assert (await next_message(ws))["type"] == "Begin"
            await ws.send_message('{"type":"Terminate"}')
            assert (await until_closed(ws))[1] == 1000
        await wait_ended(server)
    # Over capacity: the second session is refused with 429.
    async with raw(server) as first:
        assert (await next_message(first))["type"] == "Begin"
        with pytest.raises(Exception) as caught:
            async with raw(server):
                pass
        assert getattr(caught.value, "status_code", None) == 429


async def test_python_sdk_reports_refusals(start_server: StartServer) -> None:
    server = await start_server(**AAI)
    host = f"ws://127.0.0.1:{server.port}"
    for key, status in [("not-a-jwt", 401), (make_token(scope="transcription:read"), 403)]:
        seen = await trio.to_thread.run_sync(
            python_client, host, key, stream_params(sample_rate=16000), [])
        assert [e.code for e in seen.errors] == [status] and not seen.events
