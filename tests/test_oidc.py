"""The device against a real OpenID provider: oidc-provider (an OpenID-certified server,
``tests/oidc/provider.mjs``) on 127.0.0.1 over TLS from a CA made here, issuing
client-credentials access tokens as JWTs with the Live API's claims, and ``edge serve``
in a subprocess trusting that CA (``auth.jwks_cafile``) with no shared secret.

The provider rotates its keys as an identity provider does: the old key alone, then
the new one published beside it (tokens of both are admitted; the first token of the
new key has the set fetched during its handshake), then the new one alone (the old
key's tokens are refused once the device has refreshed on its schedule). Restarted with the provider
down, the device admits the current key's tokens from its sealed copy of the set.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import trio
from oidc_provider import RESOURCE, OidcProvider, ec_jwk, require_node, rsa_jwk
from trio_websocket import ConnectionRejected, open_websocket_url

from edge.core.jwks import CACHE_NAME
from helpers import receive_json
from tools.daemon import Daemon, http_get

pytestmark = pytest.mark.timeout(120)

CLAIMS = {"user_type": "doctor", "organization": "clinic-1", "department": "cardiology"}
COOLDOWN = 1.0


async def admitted(daemon: Daemon, token: str) -> dict[str, Any]:
    """Open a Live API session with ``token``; its session_init."""
    with trio.fail_after(20):
        async with open_websocket_url(f"{daemon.url}?token={token}") as ws:
            return await receive_json(ws, timeout=10)


async def refused(daemon: Daemon, token: str) -> dict[str, Any]:
    """A handshake the daemon must refuse with 401; the error body."""
    with trio.fail_after(20), pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(f"{daemon.url}?token={token}"):
            pass
    assert info.value.status_code == 401
    body: dict[str, Any] = json.loads(info.value.body or b"{}")
    return body


async def health(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    status, body = await trio.to_thread.run_sync(http_get, daemon.port)
    return status, body


async def fetches(daemon: Daemon) -> dict[str, int]:
    def get() -> str:
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data.decode()

    text = await trio.to_thread.run_sync(get)
    out = {}
    for line in text.splitlines():
        if line.startswith("edge_auth_jwks_fetch_total{"):
            result = line.split('"')[1]
            out[result] = int(line.rsplit(" ", 1)[1])
    return out


def device(tmp_path: Path, provider: OidcProvider, *, refresh: float) -> Daemon:
    """``edge serve`` trusting the provider, with no shared secret; the same state
    directory and data key each time it is made again for ``tmp_path``."""
    return Daemon(tmp_path, secret="", sections={"auth": {
        "jwks_url": provider.jwks_url, "jwks_cafile": str(provider.ca_path),
        "issuer": provider.issuer, "audience": RESOURCE,
        "jwks_cooldown": COOLDOWN, "jwks_refresh": refresh}})


async def kids(daemon: Daemon) -> list[str]:
    _, body = await health(daemon)
    return [k["kid"] for k in body["auth"]["jwks"]["keys"]]


async def test_keys_rotate_at_a_real_provider_and_the_device_follows(tmp_path: Path) -> None:
    require_node()
    provider = OidcProvider(tmp_path / "idp")
    old, new = rsa_jwk("2026-09-rsa"), ec_jwk("2026-12-ec")
    # No scheduled refresh during the first steps: a new key is found by its token.
    daemon = device(tmp_path, provider, refresh=3600.0)
    try:
        # 1. The old key alone.
        await trio.to_thread.run_sync(provider.start, [old],
                                      {"exam-room-1": (old["kid"], CLAIMS)})
        await trio.to_thread.run_sync(daemon.start)
        old_token = await trio.to_thread.run_sync(provider.token, "exam-room-1")
        init = await admitted(daemon, old_token)
        assert init["type"] == "session_init"
        status, body = await health(daemon)
        assert status == 200
        jwks = body["auth"]["jwks"]
        assert (jwks["url"], jwks["last_error"], jwks["source"]) == (
            provider.jwks_url, None, "network")
        assert await kids(daemon) == [old["kid"]]

        # 2. The new key published beside it. The device does not know it until a
        # token names it: that handshake has the set fetched (the cooldown since the
        # last fetch waited out) and is admitted. Both keys' tokens are admitted.
        await trio.to_thread.run_sync(provider.start, [new, old], {
            "exam-room-1": (old["kid"], CLAIMS), "exam-room-2": (new["kid"], CLAIMS)})
        await trio.sleep(COOLDOWN + 0.2)
        assert await kids(daemon) == [old["kid"]]
        new_token = await trio.to_thread.run_sync(provider.token, "exam-room-2")
        await admitted(daemon, new_token)
        assert await kids(daemon) == [new["kid"], old["kid"]]
        assert (await fetches(daemon))["ok"] == 2
        await admitted(daemon, old_token)
        await admitted(daemon, await trio.to_thread.run_sync(provider.token, "exam-room-1"))

        # 3. The old key withdrawn; the device (now refreshing every 2 s) refuses its
        # tokens once it has refreshed.
        await trio.to_thread.run_sync(daemon.stop)
        daemon = device(tmp_path, provider, refresh=2.0)
        await trio.to_thread.run_sync(daemon.start)
        await admitted(daemon, old_token)
        await trio.to_thread.run_sync(provider.start, [new],
                                      {"exam-room-2": (new["kid"], CLAIMS)})
        with trio.fail_after(30):
            while await kids(daemon) != [new["kid"]]:
                await trio.sleep(0.2)
        error = await refused(daemon, old_token)
        assert error["code"] == "invalid_token"
        await admitted(daemon, new_token)

        # 4. Restarted with the provider down: the sealed copy admits the new key's
        # tokens, and not the old key's.
        await trio.to_thread.run_sync(provider.stop)
        await trio.to_thread.run_sync(daemon.stop)
        assert (daemon.state / CACHE_NAME).is_file()
        assert new["kid"].encode() not in (daemon.state / CACHE_NAME).read_bytes()
        await trio.to_thread.run_sync(daemon.start)
        await admitted(daemon, new_token)
        await refused(daemon, old_token)
        status, body = await health(daemon)
        jwks = body["auth"]["jwks"]
        assert jwks["source"] == "disk"
        assert "cannot reach" in jwks["last_error"]
        assert [k["kid"] for k in jwks["keys"]] == [new["kid"]]
        assert status == 200 and any("key set" in note for note in body["notes"])
        assert (await fetches(daemon))["error"] >= 1
        log = daemon.log_tail(100_000)
        assert new_token not in log and old_token not in log
    finally:
        await trio.to_thread.run_sync(daemon.stop)
        await trio.to_thread.run_sync(provider.stop)
