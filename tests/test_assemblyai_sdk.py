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
)
from assemblyai.streaming.v3 import models
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
            assert WORD_FIELDS <= set(word), word
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
    status, _, body = await http_get(server.port, f"/transcripts/{session_id}", token)
    assert status == 200, body
    return [f["text"] for f in json.loads(body)["finals"]]


def end_of_turn_texts(seen: Collected, formatted: bool = False) -> list[str]:
    return [t.transcript for t in seen.of(TurnEvent)
            if t.end_of_turn and t.turn_is_formatted == formatted]


async def test_python_sdk_streams_the_recording(start_server: StartServer) -> None:
    server = await start_server(**AAI)
    rate, chunks = pcm_chunks()
    params = StreamingParameters(sample_rate=rate, format_turns=True)
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
    # Checked by hand once: free dictation (the SDK cannot send a grammar) hears three
    # turns, each starting with the first word spoken ("머리가 ...", "엄마 ...", "너무 ...").
    spoken = json.loads((FIXTURES / "phrases.json").read_text())["utterances"]
    assert [f[:2] for f in finals] == [u[:2] for u in spoken], finals
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
