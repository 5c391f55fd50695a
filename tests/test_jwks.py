"""Tokens verified with an identity provider's key set (edge.core.jwks, edge.net.jwks).

The pure parts are tested synchronously: the choice of a key by ``kid``, every refusal
(unknown key, ``alg: none``, HS/RS confusion, a key whose ``use``/``alg``/type
contradicts the token, an algorithm the configuration does not allow), the sealed copy
on disk, the URL and config checks. The service is tested with a stand-in fetch
(counted, failing, hanging), and the daemon in-process with real handshakes against a
loopback key set server that counts its requests: a flood of made-up ``kid``s costs
one fetch. The real OpenID provider is in ``test_oidc.py``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from trio_websocket import ConnectionRejected, open_websocket_url

from edge import app
from edge.core.auth import AuthSettings, verify
from edge.core.config import load_config
from edge.core.errors import AuthError, ConfigError
from edge.core.jwks import (
    CACHE_NAME,
    JwksError,
    KeySet,
    KeyStore,
    check_url,
    token_kids,
)
from edge.crypto.datakey import FILE, DataKey, KeySource
from edge.net import jwks as jwks_service
from edge.net.jwks import JwksRefresher, load_cache, save_cache
from helpers import SECRET, TEST_KEY, http_get, make_token

pytestmark = pytest.mark.timeout(60)

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC384_KEY = ec.generate_private_key(ec.SECP384R1())
URL = "https://idp.example/keys"


def public_jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    jwk: dict[str, Any] = algorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, **extra}


def document(*keys: dict[str, Any]) -> dict[str, Any]:
    return {"keys": list(keys)}


def store_of(doc: dict[str, Any], algorithms: tuple[str, ...] = ("RS256", "ES256")
             ) -> KeyStore:
    store = KeyStore(URL, algorithms)
    store.replace(KeySet.parse(doc, fetched_at=time.time()), source="network")
    return store


def settings(store: KeyStore, key: str | None = None) -> AuthSettings:
    return AuthSettings(algorithm="HS256", key=key, jwks=store)


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    payload = {"sub": "dr-kim", "scope": "transcription:write", "user_type": "doctor",
               "organization": "clinic-1", "department": "cardiology",
               "iat": now, "exp": now + 600}
    payload.update(changes)
    return payload


def signed(key: Any, alg: str, kid: str | None, **changes: Any) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(**changes), key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


STANDARD = document(public_jwk(RSA_KEY, "rsa-1", alg="RS256", use="sig"),
                    public_jwk(EC_KEY, "ec-1"))


def refusal(token: str, s: AuthSettings) -> AuthError:
    with pytest.raises(AuthError) as info:
        verify(token, s, now=time.time())
    assert (info.value.code, info.value.status) == ("invalid_token", 401)
    return info.value


# --- choosing the key -------------------------------------------------------------------

@pytest.mark.parametrize(("key", "alg", "kid"), [(RSA_KEY, "RS256", "rsa-1"),
                                                 (EC_KEY, "ES256", "ec-1")])
def test_a_token_is_verified_with_the_key_its_kid_names(key: Any, alg: str, kid: str) -> None:
    got = verify(signed(key, alg, kid), settings(store_of(STANDARD)), now=time.time())
    assert (got.sub, got.user_type, got.organization, got.department) == (
        "dr-kim", "doctor", "clinic-1", "cardiology")


def test_a_signature_by_another_key_under_a_known_kid_is_refused() -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    error = refusal(signed(other, "RS256", "rsa-1"), settings(store_of(STANDARD)))
    assert "signature" in error.message


def test_an_unknown_kid_is_refused_without_echoing_it() -> None:
    error = refusal(signed(RSA_KEY, "RS256", "made-up-kid-4242"), settings(store_of(STANDARD)))
    assert "not in the identity provider's key set" in error.message
    assert "4242" not in error.message


def test_before_any_fetch_every_kid_is_unknown() -> None:
    error = refusal(signed(RSA_KEY, "RS256", "rsa-1"), settings(KeyStore(URL)))
    assert "not been fetched" in error.message


def test_alg_none_is_refused() -> None:
    header = b64(json.dumps({"alg": "none", "kid": "rsa-1", "typ": "JWT"}).encode())
    token = f"{header}.{b64(json.dumps(claims()).encode())}.{b64(b'x')}"
    refusal(token, settings(store_of(STANDARD)))


def test_hs256_signed_with_the_published_public_key_is_refused() -> None:
    # The classic confusion: the attacker HMACs with the RSA public key's PEM text.
    pem = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    header = b64(json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims()).encode())
    signature = b64(hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest())
    error = refusal(f"{header}.{body}.{signature}", settings(store_of(STANDARD)))
    assert error.message == "token algorithm is not accepted"
    # The same without a kid goes to the device's own secret, and fails there.
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signature = b64(hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest())
    refusal(f"{header}.{body}.{signature}", settings(store_of(STANDARD), key=SECRET))


@pytest.mark.parametrize(("jwk", "token", "words"), [
    (public_jwk(RSA_KEY, "k", use="enc"), "RS256", "not a signing key"),
    (public_jwk(RSA_KEY, "k", key_ops=["encrypt"]), "RS256", "not a signing key"),
    (public_jwk(RSA_KEY, "k", alg="RS384"), "RS256", "algorithm is not accepted"),
    (public_jwk(RSA_KEY, "k"), "PS256", "algorithm is not accepted"),  # not configured
    (public_jwk(EC384_KEY, "k"), "ES256", "algorithm is not accepted"),  # P-384: ES384
    (public_jwk(EC_KEY, "k"), "RS256", "algorithm is not accepted"),  # EC key, RSA alg
    ({"kty": "oct", "kid": "k", "k": b64(SECRET.encode())}, "HS256", "shared secret"),
])
def test_a_key_that_contradicts_the_token_is_refused(jwk: dict[str, Any], token: str,
                                                     words: str) -> None:
    if token.startswith("HS"):
        key: Any = SECRET
    elif token.startswith("ES"):
        key = EC_KEY
    else:
        key = RSA_KEY
    error = refusal(signed(key, token, "k"), settings(store_of(document(jwk))))
    assert words in error.message


def test_only_the_configured_algorithms_are_admitted() -> None:
    store = store_of(STANDARD, algorithms=("RS256",))
    verify(signed(RSA_KEY, "RS256", "rsa-1"), settings(store), now=time.time())
    refusal(signed(EC_KEY, "ES256", "ec-1"), settings(store))


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_a_weak_rsa_key_in_the_set_is_refused() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    error = refusal(signed(weak, "RS256", "weak"), settings(store_of(
        document(public_jwk(weak, "weak")))))
    assert "2048" in error.message


def test_tokens_without_a_kid_use_the_static_key_or_are_refused() -> None:
    store = store_of(STANDARD)
    verify(make_token(), settings(store, key=SECRET), now=time.time())
    error = refusal(make_token(), settings(store))
    assert "names no key" in error.message


@pytest.mark.parametrize("alg", [["RS256"], {"RS256": 1}, 256, None])
def test_an_alg_that_is_not_a_string_is_refused(alg: Any) -> None:
    header = b64(json.dumps({"alg": alg, "kid": "rsa-1"}).encode())
    body = b64(json.dumps(claims()).encode())
    signature = jwt.get_algorithm_by_name("RS256").sign(f"{header}.{body}".encode(), RSA_KEY)
    refusal(f"{header}.{body}.{b64(signature)}", settings(store_of(STANDARD)))


def test_a_kid_that_is_not_a_string_is_refused() -> None:
    header = b64(json.dumps({"alg": "RS256", "kid": 7}).encode())
    body = b64(json.dumps(claims()).encode())
    signature = jwt.get_algorithm_by_name("RS256").sign(f"{header}.{body}".encode(), RSA_KEY)
    refusal(f"{header}.{body}.{b64(signature)}", settings(store_of(STANDARD)))


def test_the_claims_checks_still_apply() -> None:
    s = settings(store_of(STANDARD))
    with pytest.raises(AuthError) as info:
        verify(signed(RSA_KEY, "RS256", "rsa-1", exp=int(time.time()) - 3600,
                      iat=int(time.time()) - 4000), s, now=time.time())
    assert info.value.code == "token_expired"
    assert "user_type" in refusal(jwt.encode({k: v for k, v in claims().items()
                                              if k != "user_type"}, RSA_KEY, "RS256",
                                             headers={"kid": "rsa-1"}), s).message


# --- parsing ----------------------------------------------------------------------------

@pytest.mark.parametrize("doc", [[], {"keys": {}}, {"keys": []}, {"nope": 1},
                                 {"keys": [{"kty": "RSA", "kid": "x", "n": "AQ"}]},
                                 {"keys": [public_jwk(RSA_KEY, "")]}])
def test_a_document_without_usable_keys_is_refused(doc: Any) -> None:
    with pytest.raises(JwksError):
        KeySet.parse(doc, fetched_at=0)


def test_unusable_keys_are_left_out_and_the_first_of_a_kid_wins() -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = KeySet.parse(document({"kty": "XYZ", "kid": "odd"}, public_jwk(RSA_KEY, "a"),
                                 public_jwk(other, "a"), public_jwk(EC_KEY, "b")),
                        fetched_at=0)
    assert sorted(keys.keys) == ["a", "b"]
    verify(signed(RSA_KEY, "RS256", "a"), settings(store_of(dict(keys.document))),
           now=time.time())
    assert [k["kid"] for k in keys.describe()] == ["a", "b"]


def test_token_kids_reads_headers_and_the_query_and_ignores_the_rest() -> None:
    a, b = signed(RSA_KEY, "RS256", "kid-a"), signed(EC_KEY, "ES256", "kid-b")
    assert token_kids(f"/ws?x=1&token={b}", [(b"authorization", f"Bearer {a}".encode()),
                                             (b"user-agent", b"curl/8 a.b.c")]) == [
        "kid-a", "kid-b"]
    assert token_kids("/ws?token=not.a.jwt", [(b"x-api-key", b"garbage")]) == []
    assert token_kids("/ws", [(b"authorization", make_token().encode())]) == []


# --- URLs and config --------------------------------------------------------------------

@pytest.mark.parametrize("url", ["https://login.microsoftonline.com/t/discovery/v2.0/keys",
                                 "http://127.0.0.1:8080/certs", "http://localhost/jwks",
                                 "http://[::1]:9/jwks"])
def test_urls_that_are_accepted(url: str) -> None:
    check_url(url)


@pytest.mark.parametrize(("url", "words"), [
    ("http://idp.hospital.example/jwks", "https"), ("ftp://x/jwks", "https"),
    ("https://user:pw@idp/jwks", "password"), ("https:///jwks", "https"),
    ("http://10.0.0.5/jwks", "https")])
def test_urls_that_are_refused(url: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        check_url(url)


@pytest.mark.parametrize(("overrides", "key"), [
    ({"auth.jwks_url": "http://idp.example/jwks"}, "auth.jwks_url"),
    ({"auth.jwks_cafile": "/etc/ca.pem"}, "auth.jwks_cafile"),
    ({"auth.algorithms": "HS256"}, "auth.algorithms"),
    ({"auth.algorithms": ""}, "auth.algorithms"),
    ({"auth.jwks_cooldown": "0.5"}, "auth.jwks_cooldown"),
    ({"auth.jwks_refresh": "0"}, "auth.jwks_refresh"),
    ({"auth.jwks_timeout": "120"}, "auth.jwks_timeout"),
])
def test_config_mistakes_name_their_key(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={}, overrides=overrides)
    assert info.value.key == key


def test_config_from_toml_environment_and_command_line(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text('[auth]\njwks_url = "https://idp/keys"\nalgorithms = ["ES256"]\n')
    config = load_config(path, environ={})
    assert (config.auth.jwks_url, config.auth.algorithms) == ("https://idp/keys", ("ES256",))
    config = load_config(None, environ={"EDGE_JWKS_URL": "https://idp/k"},
                         overrides={"auth.algorithms": "RS256, PS256"})
    assert (config.auth.jwks_url, config.auth.algorithms) == ("https://idp/k",
                                                              ("RS256", "PS256"))
    path.write_text('[auth]\nalgorithms = "RS256"\n')
    with pytest.raises(ConfigError, match=r"auth\.algorithms"):
        load_config(path, environ={})


def test_with_a_key_set_no_secret_is_needed(tmp_path: Path) -> None:
    config = load_config(None, environ={}, overrides={
        "auth.jwks_url": "https://idp/keys", "server.state_dir": str(tmp_path)})
    s = app.auth_settings(config)
    assert s.key is None and s.jwks is not None and not s.can_mint
    assert s.jwks.algorithms == ("RS256", "ES256")
    with pytest.raises(ConfigError, match=r"auth\.secret"):
        app.auth_settings(load_config(None, environ={}, overrides={
            "server.state_dir": str(tmp_path)}))
    both = app.auth_settings(load_config(None, environ={"EDGE_JWT_SECRET": SECRET},
                                         overrides={"auth.jwks_url": "https://idp/keys"}))
    assert both.key == SECRET and both.jwks is not None and both.can_mint


# --- the sealed copy --------------------------------------------------------------------

def test_the_saved_key_set_opens_only_unaltered_and_for_its_url(tmp_path: Path) -> None:
    path = tmp_path / CACHE_NAME
    assert load_cache(path, TEST_KEY, URL) is None
    keys = KeySet.parse(STANDARD, fetched_at=1_800_000_000.0)
    save_cache(path, TEST_KEY, URL, keys)
    data = path.read_bytes()
    assert b"rsa-1" not in data  # sealed: nothing to read, nothing to edit
    loaded = load_cache(path, TEST_KEY, URL)
    assert loaded is not None
    assert (sorted(loaded.keys), loaded.fetched_at) == (["ec-1", "rsa-1"], 1_800_000_000.0)
    assert load_cache(path, TEST_KEY, "https://other.example/keys") is None
    other = DataKey(bytes(32), KeySource(FILE, tmp_path / "k", "journal.key_file"))
    with pytest.raises(JwksError, match="does not open"):
        load_cache(path, other, URL)
    altered = bytearray(data)
    altered[-20] ^= 1
    path.write_bytes(bytes(altered))
    with pytest.raises(JwksError, match="does not open"):
        load_cache(path, TEST_KEY, URL)


# --- the service, with a stand-in fetch -------------------------------------------------

class Fetches:
    """A stand-in for fetch_document: counts calls; can fail or hang."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.calls = 0
        self.error: Exception | None = None
        self.hang = 0.0
        self.release = threading.Event()  # ends a hang early

    def __call__(self, url: str, *, context: Any, timeout: float, user_agent: str) -> Any:
        self.calls += 1
        if self.hang:
            self.release.wait(self.hang)
        if self.error is not None:
            raise self.error
        return self.doc


def refresher(monkeypatch: pytest.MonkeyPatch, fetches: Fetches, tmp_path: Path,
              **kwargs: Any) -> JwksRefresher:
    monkeypatch.setattr(jwks_service, "fetch_document", fetches)
    options: dict[str, Any] = {"refresh": 3600.0, "cooldown": 3600.0, "timeout": 5.0,
                               "cache_path": tmp_path / CACHE_NAME, "data_key": TEST_KEY}
    options.update(kwargs)
    return JwksRefresher(KeyStore(URL), context=None, **options)


async def test_a_flood_of_unknown_kids_costs_one_fetch(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, nursery: trio.Nursery) -> None:
    fetches = Fetches(STANDARD)
    service = refresher(monkeypatch, fetches, tmp_path, cooldown=0.5)
    await nursery.start(service.run)
    assert fetches.calls == 1 and service.store.knows("rsa-1")
    assert service.store.fetches["ok"] == 1
    with trio.fail_after(10):
        async with trio.open_nursery() as flood:
            for i in range(200):
                flood.start_soon(service.wait_for, [f"made-up-{i}"], trio.current_time() + 5)
        await service.wait_for(["rsa-1"], trio.current_time() + 5)  # known: no fetch
    assert fetches.calls <= 2  # the first unknown kid may find the cooldown over
    calls = fetches.calls
    with trio.fail_after(10):
        for i in range(50):
            await service.wait_for([f"again-{i}"], trio.current_time() + 5)
    assert fetches.calls <= calls + 1
    # A new key published: the first token naming it, after the cooldown, gets it.
    fetches.doc = document(*STANDARD["keys"], public_jwk(EC384_KEY, "ec-2"))
    with trio.fail_after(10):
        while not service.store.knows("ec-2"):
            await service.wait_for(["ec-2"], trio.current_time() + 5)
            await trio.sleep(0.1)


async def test_a_failing_fetch_keeps_the_keys_and_the_daemon(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, nursery: trio.Nursery) -> None:
    fetches = Fetches(STANDARD)
    service = refresher(monkeypatch, fetches, tmp_path, refresh=0.2, cooldown=0.1)
    await nursery.start(service.run)
    fetches.error = JwksError("HTTP 503 from idp.example")
    with trio.fail_after(10):
        while service.store.fetches["error"] < 2:
            await trio.sleep(0.05)
    assert service.store.knows("rsa-1")
    status = service.store.status()
    assert status["last_error"] == "HTTP 503 from idp.example"
    assert [k["kid"] for k in status["keys"]] == ["rsa-1", "ec-1"]
    fetches.error = None
    fetches.doc = {"keys": "no"}
    with trio.fail_after(10):
        while service.store.fetches["invalid"] < 1:
            await trio.sleep(0.05)
    assert service.store.knows("rsa-1")


async def test_a_hanging_fetch_holds_a_handshake_no_longer_than_its_timeout(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, nursery: trio.Nursery) -> None:
    fetches = Fetches(STANDARD)
    service = refresher(monkeypatch, fetches, tmp_path, cooldown=0.1, timeout=0.5)
    await nursery.start(service.run)
    fetches.hang = 30.0
    await trio.sleep(0.2)
    with trio.fail_after(5):  # the timeout plus the grace, with room
        await service.wait_for(["new-kid"], trio.current_time() + 60)
    assert service.store.fetches["timeout"] == 1
    assert service.store.knows("rsa-1")
    fetches.hang = 0.0
    fetches.release.set()  # the abandoned thread ends while the test's loop still runs
    await trio.sleep(0.1)


async def test_a_start_without_the_network_uses_the_saved_copy(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, nursery: trio.Nursery) -> None:
    first = refresher(monkeypatch, Fetches(STANDARD), tmp_path)
    async with trio.open_nursery() as once:
        await once.start(first.run)
        once.cancel_scope.cancel()
    assert (tmp_path / CACHE_NAME).exists()
    down = Fetches(STANDARD)
    down.error = JwksError("cannot reach idp.example: Connection refused")
    second = refresher(monkeypatch, down, tmp_path)
    await nursery.start(second.run)
    assert second.store.knows("rsa-1") and second.store.status()["source"] == "disk"
    verify(signed(RSA_KEY, "RS256", "rsa-1"), settings(second.store), now=time.time())
    with trio.fail_after(10):
        while second.store.fetches["error"] < 1:
            await trio.sleep(0.02)
    assert down.calls == 1
    assert second.store.status()["last_error"].startswith("cannot reach")


# --- the daemon, with real handshakes ---------------------------------------------------

async def serve_jwks(doc: dict[str, Any], requests: list[str], *,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """A loopback HTTP server answering every GET with ``doc``; records the targets."""
    body = json.dumps(doc).encode()

    async def handle(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            data += chunk
        requests.append(data.split(b" ", 2)[1].decode())
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                              b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                              % (len(body), body))
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def test_made_up_kids_over_real_handshakes_cause_no_fetch_storm(
        start_server: Callable[..., Any], nursery: trio.Nursery) -> None:
    requests: list[str] = []
    port = await nursery.start(functools.partial(serve_jwks, STANDARD, requests))
    url = f"http://127.0.0.1:{port}/jwks"
    store = KeyStore(url)
    server = await start_server(auth={"jwks_url": url},
                                auth_settings=AuthSettings(algorithm="HS256", key=None,
                                                           jwks=store))
    assert requests == ["/jwks"]  # fetched once at start (no saved copy yet)
    base = f"ws://127.0.0.1:{server.port}/ws/transcribe"

    async def refused(token: str) -> None:
        with pytest.raises(ConnectionRejected) as info:
            async with open_websocket_url(f"{base}?token={token}"):
                pass
        assert info.value.status_code == 401
        assert json.loads(info.value.body or b"{}")["code"] == "invalid_token"

    with trio.fail_after(30):
        async with trio.open_nursery() as flood:
            for i in range(40):
                flood.start_soon(refused, signed(RSA_KEY, "RS256", f"made-up-{i}"))
    # The set was fetched less than jwks_cooldown (30 s) ago: the flood fetches nothing.
    assert len(requests) == 1
    assert server.stats.refused["invalid_token"] == 40
    with trio.fail_after(10):
        async with open_websocket_url(f"{base}?token={signed(EC_KEY, 'ES256', 'ec-1')}"):
            pass
    status, _, body = await http_get(server.port, "/healthz")
    health = json.loads(body)
    assert health["auth"]["jwks"]["url"] == url
    assert {k["kid"] for k in health["auth"]["jwks"]["keys"]} == {"rsa-1", "ec-1"}
    assert health["auth"]["jwks"]["last_error"] is None
    assert status == 200
    _, _, metrics = await http_get(server.port, "/metrics")
    assert b'edge_auth_jwks_fetch_total{result="ok"} 1' in metrics
    assert b'edge_auth_jwks_fetch_total{result="error"} 0' in metrics
    assert b"edge_auth_jwks_keys 2" in metrics


async def test_edge_check_fetches_the_key_set_once(nursery: trio.Nursery,
                                                   tmp_path: Path) -> None:
    from edge.ops.check import OK, WARN, check_keys
    from tools.daemon import free_port

    requests: list[str] = []
    port = await nursery.start(functools.partial(serve_jwks, STANDARD, requests))
    config = load_config(None, environ={}, overrides={
        "auth.jwks_url": f"http://127.0.0.1:{port}/jwks", "auth.algorithms": "ES256",
        "server.state_dir": str(tmp_path)})
    finding = await trio.to_thread.run_sync(check_keys, config)
    assert finding.level == OK and "2 key(s), 1 for ES256" in finding.message
    assert requests == ["/jwks"]
    down = load_config(None, environ={}, overrides={
        "auth.jwks_url": f"http://127.0.0.1:{free_port()}/jwks",
        "server.state_dir": str(tmp_path)})
    finding = await trio.to_thread.run_sync(check_keys, down)
    assert finding.level == WARN and "cannot reach" in finding.message
