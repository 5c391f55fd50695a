"""The WebSocket handshake over real sockets: who is refused (and how), who gets in.

Every test runs the real server on 127.0.0.1 port 0. Refusals are checked as a client
sees them: the HTTP status, the headers and the JSON body of the rejection, or, for
clients that opt in with ``?errors=message``, an ``error`` message and a close code.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from edge import __version__
from edge.asr.vosk import LoadedModel
from edge.core.auth import SCOPE_READ, AuthSettings
from edge.net.server import Server
from helpers import SECRET, connect, make_token, receive_json, url

ISSUER = "https://auth.example.test"
AUDIENCE = "edge-live-api"
OTHER_SECRET = "another-secret-that-is-long-enough-for-hs256"
REVOKED_JTI = "revoked-jti"
REVOKED_SUB = "revoked-user"
REMOVE = object()  # marks a claim to leave out of a payload


# --- tokens --------------------------------------------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**changes: Any) -> dict[str, Any]:
    """A valid payload for the default server; ``REMOVE`` drops a claim."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "sub": "user-1",
        "scope": "transcription:read transcription:write",
        "user_type": "doctor",
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not REMOVE}


def sign(payload: Mapping[str, Any], key: str = SECRET) -> str:
    return jwt.encode(dict(payload), key, algorithm="HS256")


def hand_signed(payload: Mapping[str, Any], *, alg: str, key: bytes | None) -> str:
    """A compact JWS built by hand, for what PyJWT refuses to produce.

    ``key`` is the HMAC-SHA256 key; ``None`` leaves the signature empty (``alg: none``).
    """
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps(dict(payload)).encode())
    signature = b""
    if key is not None:
        signature = hmac.new(key, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(signature)}"


@functools.cache
def rsa_keys() -> tuple[str, str]:
    """(private PEM, public PEM) of one RSA key shared by the tests of this module."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private_pem, public_pem


def signed_with_public_pem() -> str:
    """HS256 keyed with the RSA public key: the classic algorithm-confusion forgery."""
    return hand_signed(claims(), alg="HS256", key=rsa_keys()[1].encode())


def with_signature(token: str, signature: bytes) -> str:
    header, body, _ = token.split(".")
    return f"{header}.{body}.{b64url(signature)}"


def with_payload(token: str, payload: Mapping[str, Any]) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{b64url(json.dumps(dict(payload)).encode())}.{signature}"


def jti_of(token: str) -> str:
    jti: str = jwt.decode(token, options={"verify_signature": False})["jti"]
    return jti


# --- servers -------------------------------------------------------------------------

# The servers a refusal case can run against.
DEFAULT, PINNED, REVOKING, RS256 = "default", "pinned", "revoking", "rs256"


@pytest.fixture
def start_profile(start_server: Any, nursery: trio.Nursery, model: LoadedModel,
                  tmp_path: Path) -> Callable[[str], Any]:
    """``await start_profile(name)`` -> a running Server configured as ``name`` says."""

    async def start(profile: str) -> Server:
        if profile == PINNED:
            server: Server = await start_server(auth={"issuer": ISSUER, "audience": AUDIENCE})
        elif profile == REVOKING:
            revoked = tmp_path / "revoked.txt"
            revoked.write_text(f"# revoked\njti:{REVOKED_JTI}\nsub:{REVOKED_SUB}\n")
            server = await start_server(revocation_file=revoked)
        elif profile == RS256:
            server = await start_server(
                auth={"algorithm": "RS256"},
                auth_settings=AuthSettings(algorithm="RS256", key=rsa_keys()[1]))
        else:
            server = await start_server()
        return server

    return start


def valid_token_for(profile: str) -> str:
    if profile == PINNED:
        return sign(claims(iss=ISSUER, aud=AUDIENCE))
    if profile == RS256:
        return jwt.encode(claims(), rsa_keys()[0], algorithm="RS256")
    return make_token()


# --- clients -------------------------------------------------------------------------

def bearer(token: str) -> tuple[bytes, bytes]:
    return (b"authorization", f"Bearer {token}".encode())


async def rejection(target: str, headers: list[tuple[bytes, bytes]] | None = None
                    ) -> ConnectionRejected:
    """Attempt a handshake with ``target`` (a ws:// URL) that the server must refuse."""
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(target, extra_headers=headers or []):
            pass
    return info.value


def headers_of(rejected: ConnectionRejected) -> dict[str, str]:
    return {name.decode().lower(): value.decode() for name, value in rejected.headers}


def error_body(rejected: ConnectionRejected) -> dict[str, Any]:
    assert rejected.body is not None, "a refusal must carry a JSON body"
    body: dict[str, Any] = json.loads(rejected.body)
    return body


async def in_band_error(server: Server, token: str, query: str = "?errors=message"
                        ) -> tuple[dict[str, Any], int | None]:
    """Open a session that the server accepts only to refuse in-band.

    Returns the one message received and the close code of the server's close.
    """
    async with connect(server, token, query) as ws:
        message = await receive_json(ws, timeout=10)
        with trio.fail_after(10), pytest.raises(ConnectionClosed):
            await ws.get_message()
        assert ws.closed is not None
        return message, ws.closed.code


def upgrade_request(target: str, headers: Mapping[str, str] | None = None) -> bytes:
    """The head of a WebSocket upgrade request, written out by hand."""
    lines = [
        f"GET {target} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_head(stream: trio.abc.Stream) -> bytes:
    """Bytes up to the end of an HTTP response head (or EOF)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return data


async def http_exchange(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send ``request`` over a raw TCP stream; (status line, headers, body) up to EOF."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            data = b""
            while chunk := await stream.receive_some(4096):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


async def wait_for_sessions(server: Server, count: int) -> None:
    """Until the server counts ``count`` live sessions (a close is seen before release)."""
    with trio.fail_after(10):
        while server.health()[1]["sessions"] != count:
            await trio.sleep(0.01)


# --- refused handshakes: the table ---------------------------------------------------

@dataclass(frozen=True)
class Refusal:
    """A handshake the server must refuse, and the refusal it must send.

    ``token`` makes the token when the test runs (tokens are minted against the wall
    clock); ``send`` says how it travels: ``header`` (Bearer), ``query`` (``?token=``),
    ``both``, ``header_twice`` or ``basic`` (an ``Authorization: Basic`` instead).
    """

    id: str
    status: int
    code: str
    token: Callable[[], str] | None = make_token
    send: str = "header"
    query: str = ""
    path: str | None = None
    server: str = DEFAULT


def _now() -> int:
    return int(time.time())


REFUSALS = [
    # Signatures and algorithms.
    Refusal("alg-none", 401, "invalid_token",
            lambda: hand_signed(claims(), alg="none", key=None)),
    Refusal("alg-none-with-signature", 401, "invalid_token",
            lambda: with_signature(hand_signed(claims(), alg="none", key=None), b"sig")),
    Refusal("hs256-keyed-with-public-pem-vs-hs256", 401, "invalid_token",
            signed_with_public_pem),
    Refusal("hs256-keyed-with-public-pem-vs-rs256", 401, "invalid_token",
            signed_with_public_pem, server=RS256),
    Refusal("bad-signature", 401, "invalid_token",
            lambda: with_signature(make_token(), bytes(32))),
    Refusal("tampered-payload", 401, "invalid_token",
            lambda: with_payload(make_token(), claims(sub="admin"))),
    Refusal("wrong-secret", 401, "invalid_token",
            lambda: make_token(secret=OTHER_SECRET)),
    Refusal("garbage", 401, "invalid_token", lambda: "not-a-jwt"),
    Refusal("too-long", 401, "invalid_token", lambda: "a." + "b" * 9000 + ".c"),
    # Time.
    Refusal("expired", 401, "token_expired",
            lambda: sign(claims(iat=_now() - 7200, exp=_now() - 3600))),
    Refusal("nbf-in-future", 401, "token_not_yet_valid",
            lambda: sign(claims(nbf=_now() + 3600, exp=_now() + 7200))),
    Refusal("iat-in-future", 401, "token_not_yet_valid",
            lambda: sign(claims(iat=_now() + 3600, exp=_now() + 7200))),
    Refusal("exp-as-string", 401, "invalid_token",
            lambda: sign(claims(exp=str(_now() + 600)))),
    Refusal("lifetime-too-long", 401, "invalid_token",
            lambda: sign(claims(exp=_now() + 2 * 86400))),
    # Issuer and audience, on a server that pins both.
    Refusal("wrong-issuer", 401, "invalid_token",
            lambda: sign(claims(iss="https://evil.example", aud=AUDIENCE)), server=PINNED),
    Refusal("wrong-audience", 401, "invalid_token",
            lambda: sign(claims(iss=ISSUER, aud="someone-else")), server=PINNED),
    Refusal("missing-issuer", 401, "invalid_token",
            lambda: sign(claims(aud=AUDIENCE)), server=PINNED),
    # Required and typed claims.
    *(Refusal(f"missing-{name}", 401, "invalid_token",
              functools.partial(lambda n: sign(claims(**{n: REMOVE})), name))
      for name in ("sub", "iat", "exp", "scope", "user_type")),
    Refusal("session-limit-zero", 401, "invalid_token",
            lambda: sign(claims(session_limit=0))),
    # Scope: the endpoint streams audio, so it needs write.
    Refusal("scope-writex", 403, "insufficient_scope",
            lambda: make_token(scope="transcription:writex")),
    Refusal("scope-read-only", 403, "insufficient_scope",
            lambda: make_token(scope=SCOPE_READ)),
    # Revocation, from a list written before the server started.
    Refusal("revoked-jti", 401, "token_revoked",
            lambda: make_token(jti=REVOKED_JTI), server=REVOKING),
    Refusal("revoked-sub", 401, "token_revoked",
            lambda: make_token(sub=REVOKED_SUB), server=REVOKING),
    # Where the token travels.
    Refusal("missing-token", 401, "missing_token", None),
    Refusal("basic-scheme", 401, "invalid_token", None, send="basic"),
    Refusal("empty-query-token", 401, "invalid_token", None, query="?token="),
    Refusal("header-and-query", 400, "invalid_request", send="both"),
    Refusal("two-query-tokens", 400, "invalid_request", send="query",
            query="?token=a.b.c"),
    Refusal("two-authorization-headers", 400, "invalid_request", send="header_twice"),
    Refusal("explicit-http-errors", 401, "invalid_token", lambda: "not-a-jwt",
            query="?errors=http"),
    # Query parameters and path.
    Refusal("sample-rate-not-a-number", 400, "invalid_parameter", query="?sample_rate=abc"),
    Refusal("sample-rate-out-of-range", 400, "invalid_parameter", query="?sample_rate=7999"),
    Refusal("errors-unknown-value", 400, "invalid_parameter", query="?errors=bogus"),
    Refusal("wrong-path", 404, "not_found", path="/ws/other"),
]


def handshake_of(case: Refusal, server: Server) -> tuple[str, list[tuple[bytes, bytes]]]:
    """The URL and headers a client sends for ``case``."""
    token = case.token() if case.token is not None else None
    query, headers = case.query, []
    if token is not None and case.send in ("header", "both", "header_twice"):
        headers.append(bearer(token))
    if case.send == "header_twice":
        headers.append(bearer(make_token()))
    if case.send == "basic":
        headers.append((b"authorization", b"Basic " + base64.b64encode(b"user-1:password")))
    if token is not None and case.send in ("query", "both"):
        query = f"{query}&token={token}" if query else f"?token={token}"
    path = case.path or server.config.server.path
    return f"ws://127.0.0.1:{server.port}{path}{query}", headers


def test_the_table_is_wide_enough() -> None:
    assert len(REFUSALS) >= 22
    assert len({case.id for case in REFUSALS}) == len(REFUSALS)


@pytest.mark.parametrize("case", REFUSALS, ids=lambda case: case.id)
async def test_refused_handshake(case: Refusal, start_profile: Any) -> None:
    server = await start_profile(case.server)
    target, headers = handshake_of(case, server)

    rejected = await rejection(target, headers)

    assert rejected.status_code == case.status
    body = error_body(rejected)
    assert body["type"] == "error"
    assert body["code"] == case.code
    assert isinstance(body["message"], str) and body["message"]
    assert set(body) == {"type", "code", "message"}
    fields = headers_of(rejected)
    assert fields["content-type"] == "application/json"
    assert fields["cache-control"] == "no-store"
    challenge = fields.get("www-authenticate", "")
    if case.status == 401:
        assert challenge.startswith("Bearer ")
        assert 'error="invalid_token"' in challenge
    elif case.status == 403:
        assert challenge.startswith("Bearer ")
        assert 'error="insufficient_scope"' in challenge
        assert 'scope="transcription:write"' in challenge
    elif case.status == 404:
        assert not challenge
    assert server.stats.refused[case.code] == 1


@pytest.mark.parametrize("profile", [DEFAULT, PINNED, REVOKING, RS256])
async def test_each_server_of_the_table_accepts_a_valid_token(
        profile: str, start_profile: Any) -> None:
    # The control for the table: each refusal is down to what its case changes.
    server = await start_profile(profile)
    async with connect(server, valid_token_for(profile)) as ws:
        init = await receive_json(ws)
    assert init["type"] == "session_init"


# --- accepted handshakes -------------------------------------------------------------

@pytest.mark.parametrize(("send", "query", "rate"), [
    ("header", "", 16000),
    ("query", "", 16000),
    ("query", "?sample_rate=8000", 8000),
])
async def test_accepted_handshake_gets_session_init(
        start_server: Any, model: LoadedModel, send: str, query: str, rate: int) -> None:
    server = await start_server()
    token = make_token()
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    if send == "query":
        query = f"{query}&token={token}" if query else f"?token={token}"
        client = open_websocket_url(url(server, query))
    else:
        client = connect(server, token, query)

    async with client as ws:
        init = await receive_json(ws)
        assert server.health()[1]["sessions"] == 1

    assert init["type"] == "session_init"
    session_id = uuid.UUID(init["session_id"])
    assert session_id.version == 4
    assert str(session_id) == init["session_id"]
    assert init["model"] == model.name
    assert init["sample_rate"] == rate
    assert init["version"] == __version__
    assert init["expires_at"] == exp
    assert init["transcripts"] is True


async def test_each_session_gets_its_own_id(start_server: Any) -> None:
    server = await start_server()
    async with connect(server, make_token()) as a, connect(server, make_token()) as b:
        first, second = await receive_json(a), await receive_json(b)
    assert first["session_id"] != second["session_id"]


# --- in-band refusals (?errors=message) ----------------------------------------------

@pytest.mark.parametrize(("token", "close_code", "code"), [
    pytest.param(lambda: "not-a-jwt", 1002, "invalid_token", id="bad-token"),
    pytest.param(lambda: make_token(secret=OTHER_SECRET), 1002, "invalid_token",
                 id="wrong-secret"),
    pytest.param(lambda: sign(claims(iat=_now() - 7200, exp=_now() - 3600)), 1002,
                 "token_expired", id="expired"),
    pytest.param(lambda: make_token(scope=SCOPE_READ), 1008, "insufficient_scope",
                 id="insufficient-scope"),
])
async def test_in_band_refusal(start_server: Any, token: Callable[[], str],
                               close_code: int, code: str) -> None:
    server = await start_server()
    message, closed_with = await in_band_error(server, token())
    assert message["type"] == "error"
    assert message["code"] == code
    assert message["message"]
    assert closed_with == close_code
    assert server.health()[1]["sessions"] == 0


@pytest.mark.parametrize(("limits", "second", "code"), [
    pytest.param({"max_sessions": 1}, {"sub": "user-2"}, "server_busy", id="global-cap"),
    pytest.param({}, {"session_limit": 1}, "session_limit", id="session-limit"),
])
async def test_in_band_refusal_over_a_limit(start_server: Any, limits: dict[str, Any],
                                            second: dict[str, Any], code: str) -> None:
    server = await start_server(server=limits)
    async with connect(server, make_token(session_limit=1)) as held:
        assert (await receive_json(held))["type"] == "session_init"
        message, closed_with = await in_band_error(server, make_token(**second))
    assert (message["type"], message["code"]) == ("error", code)
    assert message["message"]
    assert closed_with == 1013


# --- 429: capacity and per-token limits ----------------------------------------------

async def test_global_cap_refuses_with_429_and_retry_after(start_server: Any) -> None:
    server = await start_server(server={"max_sessions": 1, "retry_after": 7})
    async with connect(server, make_token()) as held:
        assert (await receive_json(held))["type"] == "session_init"
        rejected = await rejection(url(server), [bearer(make_token(sub="user-2"))])
    assert rejected.status_code == 429
    assert headers_of(rejected)["retry-after"] == "7"
    body = error_body(rejected)
    assert body["type"] == "error"
    assert body["code"] == "server_busy"
    assert body["message"]

    await wait_for_sessions(server, 0)
    async with connect(server, make_token(sub="user-2")) as ws:
        assert (await receive_json(ws))["type"] == "session_init"


async def test_session_limit_claim_is_per_subject(start_server: Any) -> None:
    server = await start_server()
    async with connect(server, make_token(session_limit=1)) as first:
        assert (await receive_json(first))["type"] == "session_init"

        rejected = await rejection(url(server), [bearer(make_token(session_limit=1))])
        assert rejected.status_code == 429
        assert headers_of(rejected)["retry-after"] == "30"
        body = error_body(rejected)
        assert (body["type"], body["code"]) == ("error", "session_limit")
        assert body["message"]

        async with connect(server, make_token(sub="user-2", session_limit=1)) as other:
            assert (await receive_json(other))["type"] == "session_init"

    await wait_for_sessions(server, 0)
    async with connect(server, make_token(session_limit=1)) as again:
        assert (await receive_json(again))["type"] == "session_init"


# --- tokens stay out of the logs -----------------------------------------------------

async def test_tokens_never_reach_the_logs(start_server: Any,
                                           caplog: pytest.LogCaptureFixture) -> None:
    # Raw requests rather than trio-websocket's client: that client logs the URL it
    # connects to at DEBUG, query string included, and this test is about the server.
    caplog.set_level(logging.DEBUG)
    server = await start_server()
    refused, accepted = make_token(scope=SCOPE_READ), make_token(sub="user-2")

    status, _, _ = await http_exchange(
        server.port, upgrade_request(f"/ws/transcribe?token={refused}"))
    assert status.startswith("HTTP/1.1 403")

    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(upgrade_request(f"/ws/transcribe?token={accepted}"))
            assert (await read_head(stream)).startswith(b"HTTP/1.1 101")
            await wait_for_sessions(server, 1)
    await wait_for_sessions(server, 0)

    messages = [record.getMessage() for record in caplog.records]
    assert any("handshake refused" in m for m in messages)
    assert any("user-2" in m and "started" in m for m in messages)
    for record in caplog.records:
        for token in (refused, accepted):
            assert token not in record.getMessage(), record.name
            assert token not in repr(record.args), record.name


# --- revocation of a live session ----------------------------------------------------

async def test_revoking_a_live_session_closes_it(start_server: Any, tmp_path: Path) -> None:
    revocations = tmp_path / "revoked.txt"
    revocations.write_text("")
    server = await start_server(revocation_file=revocations)
    token = make_token()

    async with connect(server, token) as ws:
        assert (await receive_json(ws))["type"] == "session_init"
        revocations.write_text(f"jti:{jti_of(token)}\n")
        later = time.time() + 5
        os.utime(revocations, (later, later))  # a new mtime even on a coarse clock

        messages = []
        with trio.fail_after(6), pytest.raises(ConnectionClosed):
            while True:
                messages.append(json.loads(await ws.get_message()))
        assert ws.closed is not None
        assert ws.closed.code == 1002

    assert [m["code"] for m in messages if m["type"] == "error"] == ["token_revoked"]
    await wait_for_sessions(server, 0)
    assert server.stats.closes["revoked"] == 1


# --- plain HTTP and slow clients on the same port ------------------------------------

async def test_healthz_over_raw_tcp(start_server: Any, model: LoadedModel) -> None:
    server = await start_server()
    status, headers, body = await http_exchange(
        server.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert status.startswith("HTTP/1.1 200")
    assert headers["content-type"] == "application/json"
    health = json.loads(body)
    assert health["status"] == "ok"
    assert health["model"] == model.name
    assert health["sessions"] == 0


async def test_endpoint_without_upgrade_gets_426(start_server: Any) -> None:
    server = await start_server()
    status, headers, body = await http_exchange(
        server.port, b"GET /ws/transcribe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert status.startswith("HTTP/1.1 426")
    assert headers["upgrade"].lower() == "websocket"
    assert json.loads(body)["code"] == "upgrade_required"


async def test_slowloris_is_dropped_after_the_handshake_timeout(start_server: Any) -> None:
    server = await start_server(server={"handshake_timeout": 1.0})
    head = upgrade_request("/ws/transcribe", {"Authorization": f"Bearer {make_token()}"})
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)

    async def dribble() -> None:
        # Never the final blank line: one byte every 100 ms.
        for byte in head[:-2]:
            try:
                await stream.send_all(bytes([byte]))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            await trio.sleep(0.1)

    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(dribble)
        with trio.fail_after(3):
            try:
                answer = await stream.receive_some(4096)
            except trio.BrokenResourceError:
                answer = b""
        nursery.cancel_scope.cancel()

    assert answer == b"", "the server must drop the connection without answering"
    assert server.stats.refused["handshake_timeout"] == 1
