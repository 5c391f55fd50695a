"""edge.crypto.clevis against the real parts: Debian's clevis, a Tang server (tangd) and
a software TPM (swtpm), all on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import time

import pytest
from keyparts import (
    SoftwareTPM,
    TangServer,
    processes_mentioning,
    require,
    silent_server,
    swtpm_fixture,  # noqa: F401 (a fixture: pytest finds it by name in this module)
    tang_fixture,  # noqa: F401
    tang_server,
)

from edge.crypto import clevis
from edge.crypto.clevis import ClevisError, Pins

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _clevis() -> None:
    require("clevis", "clevis-encrypt-tang", "clevis-encrypt-tpm2", "clevis-encrypt-sss",
            "jose", "curl")


@pytest.fixture
def secret() -> bytes:
    # NUL and newline at both ends: a raw key is binary, and a shell pipeline that
    # strips a trailing newline would lose a byte of it.
    return b"\n\0" + os.urandom(28) + b"\0\n"


def forms(secret: bytes) -> list[str]:
    """How a secret could show up in a message."""
    return [secret.hex(), base64.b64encode(secret).decode(),
            base64.urlsafe_b64encode(secret).rstrip(b"=").decode(),
            secret[2:-2].decode("latin-1"), repr(secret)[2:-1]]


def assert_hidden(secret: bytes, text: str) -> None:
    for form in forms(secret):
        assert form not in text


def test_tang_round_trip(tang: TangServer, secret: bytes,
                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge.crypto.clevis")
    jwe = clevis.seal(secret, tang=[tang.url])
    assert jwe.count(b".") == 4
    assert secret not in jwe
    assert clevis.pins(jwe) == Pins(tang=(tang.url,), tpm2=False, threshold=1,
                                    tang_signing_keys=((tang.thumbprint,),))
    assert clevis.pins(jwe).describe() == f"tang {tang.url}"
    assert clevis.unseal(jwe) == secret
    # Trust on first use: the thumbprint an operator would pin is logged (computed here
    # as jose does: tangd-keygen names the key's file after it).
    assert tang.thumbprint in caplog.text
    assert_hidden(secret, caplog.text)


def test_stolen_device_cannot_unseal(tang: TangServer, secret: bytes) -> None:
    jwe = clevis.seal(secret, tang=[tang.url])
    tang.stop()
    with pytest.raises(ClevisError) as failed:
        clevis.unseal(jwe)
    message = str(failed.value)
    assert tang.url in message and "unseal" in message
    assert_hidden(secret, message)
    tang.start()
    assert clevis.unseal(jwe) == secret


def test_pinned_thumbprint(tang: TangServer, secret: bytes) -> None:
    jwe = clevis.seal(secret, tang=[tang.url], tang_thumbprints=[tang.thumbprint])
    assert clevis.pins(jwe).tang_signing_keys == ((tang.thumbprint,),)
    assert clevis.unseal(jwe) == secret


def test_wrong_thumbprint_refused_at_seal(tang: TangServer, secret: bytes) -> None:
    # A real server's real key, but not this server's: what an impostor at the URL has.
    with tang_server() as other, pytest.raises(ClevisError) as refused:
        clevis.seal(secret, tang=[tang.url], tang_thumbprints=[other.thumbprint])
    assert tang.url in str(refused.value)
    assert_hidden(secret, str(refused.value))


def test_tpm2_round_trip(swtpm: SoftwareTPM, secret: bytes) -> None:
    jwe = clevis.seal(secret, tpm2=True, env=swtpm.env)
    assert clevis.pins(jwe) == Pins(tang=(), tpm2=True, threshold=1)
    assert clevis.pins(jwe).describe() == "tpm2"
    assert clevis.unseal(jwe, env=swtpm.env) == secret


def test_tpm2_pcr_policy(swtpm: SoftwareTPM, secret: bytes) -> None:
    require("tpm2_pcrextend")
    jwe = clevis.seal(secret, tpm2=True, tpm2_pcrs="7", env=swtpm.env)
    assert clevis.pins(jwe).describe() == "tpm2 (PCR 7)"
    assert clevis.unseal(jwe, env=swtpm.env) == secret
    # A different boot chain (what Secure Boot measures into PCR 7) changes the PCR.
    subprocess.run(["tpm2_pcrextend", "7:sha256=" + "00" * 31 + "01"], check=True,
                   env={**os.environ, **swtpm.env}, capture_output=True, timeout=10)
    with pytest.raises(ClevisError, match="tpm2"):
        clevis.unseal(jwe, env=swtpm.env)


def test_tpm2_absent(secret: bytes) -> None:
    with silent_server() as nothing:
        port = nothing.port
    with pytest.raises(ClevisError, match="tpm2"):
        clevis.seal(secret, tpm2=True, timeout=10,
                    env={"TPM2TOOLS_TCTI": f"swtpm:host=127.0.0.1,port={port}"})


def test_sss_tang_or_tpm2_opens_with_tang_down(tang: TangServer, swtpm: SoftwareTPM,
                                               secret: bytes) -> None:
    jwe = clevis.seal(secret, tang=[tang.url], tpm2=True, threshold=1, env=swtpm.env)
    sealed = clevis.pins(jwe)
    assert sealed == Pins(tang=(tang.url,), tpm2=True, threshold=1,
                          tang_signing_keys=((tang.thumbprint,),))
    assert sealed.describe() == f"1 of: tang {tang.url}, tpm2"
    tang.stop()
    assert clevis.unseal(jwe, env=swtpm.env) == secret


def test_sss_tang_and_tpm2_needs_both(tang: TangServer, swtpm: SoftwareTPM,
                                      secret: bytes) -> None:
    jwe = clevis.seal(secret, tang=[tang.url], tang_thumbprints=[tang.thumbprint],
                      tpm2=True, threshold=2, env=swtpm.env)
    assert clevis.pins(jwe).describe() == f"2 of: tang {tang.url}, tpm2"
    assert clevis.unseal(jwe, env=swtpm.env) == secret
    tang.stop()
    with pytest.raises(ClevisError) as failed:
        clevis.unseal(jwe, env=swtpm.env)
    assert_hidden(secret, str(failed.value))


def test_two_tang_servers(tang: TangServer, secret: bytes) -> None:
    with tang_server() as second:
        jwe = clevis.seal(secret, tang=[tang.url, second.url],
                          tang_thumbprints=[tang.thumbprint, second.thumbprint])
        sealed = clevis.pins(jwe)
        assert sealed.tang == (tang.url, second.url)
        assert sealed.tang_signing_keys == ((tang.thumbprint,), (second.thumbprint,))
        assert sealed.threshold == 1
        tang.stop()
        assert clevis.unseal(jwe) == secret
        second.stop()
        with pytest.raises(ClevisError):
            clevis.unseal(jwe)


def test_seal_timeout_on_a_server_that_never_answers(secret: bytes) -> None:
    with silent_server() as silent:
        started = time.monotonic()
        with pytest.raises(ClevisError, match="timed out") as failed:
            clevis.seal(secret, tang=[silent.url], timeout=1.5)
        assert time.monotonic() - started < 4.0
        assert silent.url in str(failed.value)
        assert_hidden(secret, str(failed.value))
        assert processes_mentioning(f":{silent.port}") == []


def test_unseal_timeout_on_a_server_that_never_answers(tang: TangServer,
                                                        secret: bytes) -> None:
    jwe = clevis.seal(secret, tang=[tang.url])
    tang.stop()
    with silent_server(tang.port):
        started = time.monotonic()
        with pytest.raises(ClevisError, match="timed out"):
            clevis.unseal(jwe, timeout=1.5)
        assert time.monotonic() - started < 4.0
        assert processes_mentioning(f":{tang.port}") == []


def test_sss_returns_without_waiting_for_a_hung_server(tang: TangServer,
                                                       swtpm: SoftwareTPM,
                                                       secret: bytes) -> None:
    jwe = clevis.seal(secret, tang=[tang.url], tpm2=True, threshold=1, env=swtpm.env)
    tang.stop()
    with silent_server(tang.port):
        started = time.monotonic()
        assert clevis.unseal(jwe, timeout=20, env=swtpm.env) == secret
        assert time.monotonic() - started < 10
        # clevis's sss pin leaves the Tang pin's curl behind; its process group is gone.
        assert processes_mentioning(f":{tang.port}") == []


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwe(header: object) -> bytes:
    return f"{_b64(json.dumps(header).encode())}..iv.ct.tag".encode()


@pytest.mark.parametrize("jwe", [
    pytest.param(b"", id="empty"),
    pytest.param(b"not a jwe", id="not-compact"),
    pytest.param(b"!!!!..iv.ct.tag", id="not-base64"),
    pytest.param(b"\xff\xfe..iv.ct.tag", id="not-ascii"),
    pytest.param(f"{_b64(b'hello')}..iv.ct.tag".encode(), id="header-not-json"),
    pytest.param(_jwe([1, 2]), id="header-a-list"),
    pytest.param(_jwe({"alg": "dir"}), id="no-clevis"),
    pytest.param(_jwe({"clevis": []}), id="clevis-a-list"),
    pytest.param(_jwe({"clevis": {"pin": "yubikey"}}), id="unknown-pin"),
    pytest.param(_jwe({"clevis": {"pin": 7}}), id="pin-not-a-string"),
    pytest.param(_jwe({"clevis": {"pin": "tang", "tang": {"url": "http://x"}}}),
                 id="tang-no-adv"),
    pytest.param(_jwe({"clevis": {"pin": "tang", "tang": {"adv": {"keys": []}}}}),
                 id="tang-no-url"),
    pytest.param(_jwe({"clevis": {"pin": "tang", "tang": {
        "url": "http://x", "adv": {"keys": [{"key_ops": ["verify"], "kty": "EC"}]}}}}),
        id="tang-bad-key"),
    pytest.param(_jwe({"clevis": {"pin": "tpm2"}}), id="tpm2-no-config"),
    pytest.param(_jwe({"clevis": {"pin": "sss", "sss": {"t": 1}}}), id="sss-no-jwes"),
    pytest.param(_jwe({"clevis": {"pin": "sss", "sss": {
        "t": 2, "jwe": [_jwe({"clevis": {"pin": "tpm2", "tpm2": {}}}).decode()]}}}),
        id="sss-threshold-too-high"),
    pytest.param(_jwe({"clevis": {"pin": "sss", "sss": {
        "t": True, "jwe": [_jwe({"clevis": {"pin": "tpm2", "tpm2": {}}}).decode()]}}}),
        id="sss-threshold-a-bool"),
    pytest.param(_jwe({"clevis": {"pin": "sss", "sss": {"t": 1, "jwe": [7]}}}),
                 id="sss-jwe-not-a-string"),
    pytest.param(_jwe({"clevis": {"pin": "sss", "sss": {"t": 1, "jwe": [
        _jwe({"clevis": {"pin": "sss", "sss": {"t": 1, "jwe": []}}}).decode()]}}}),
        id="sss-in-sss"),
    pytest.param(_jwe({"clevis": {"pin": "sss", "sss": {"t": 1, "jwe": [
        _jwe({"clevis": {"pin": "null"}}).decode()]}}}), id="sss-unknown-inner-pin"),
    pytest.param(b"a" * (clevis.MAX_JWE_BYTES + 1), id="too-large"),
])
def test_pins_refuses_malformed(jwe: bytes) -> None:
    with pytest.raises(ClevisError):
        clevis.pins(jwe)
    # unseal reads the header first: nothing malformed reaches clevis.
    with pytest.raises(ClevisError):
        clevis.unseal(jwe, timeout=5)


def test_pins_reads_tpm2_pcrs_from_a_header() -> None:
    jwe = _jwe({"clevis": {"pin": "tpm2", "tpm2": {"pcr_bank": "sha256", "pcr_ids": "0,7"}}})
    assert clevis.pins(jwe) == Pins(tang=(), tpm2=True, threshold=1, tpm2_pcrs="0,7")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({}, "no pin"),
    ({"tpm2": True, "threshold": 2}, "threshold"),
    ({"tpm2": True, "threshold": 0}, "threshold"),
    ({"tang": ["http://127.0.0.1:9"], "tang_thumbprints": []}, "thumbprints"),
    ({"tang": ["http://127.0.0.1:9"], "tang_thumbprints": ["not base64!"]}, "base64url"),
    ({"tang": ["127.0.0.1:9"]}, "URL"),
    ({"tang": ["http://127.0.0.1:9", "http://127.0.0.1:9"]}, "twice"),
    ({"tpm2": False, "tpm2_pcrs": "7", "tang": ["http://127.0.0.1:9"]}, "tpm2_pcrs"),
    ({"tpm2": True, "tpm2_pcrs": "7; reboot"}, "tpm2_pcrs"),
])
def test_seal_refuses_bad_arguments(kwargs: dict[str, object], match: str,
                                    secret: bytes) -> None:
    with pytest.raises(ClevisError, match=match) as refused:
        clevis.seal(secret, **kwargs)  # type: ignore[arg-type]
    assert_hidden(secret, str(refused.value))


def test_seal_refuses_an_empty_secret() -> None:
    with pytest.raises(ClevisError, match="non-empty"):
        clevis.seal(b"", tpm2=True)


def test_seal_failure_never_shows_the_secret(secret: bytes) -> None:
    # A port nobody listens on: clevis fails at once, with its stderr in the message.
    with silent_server() as closed:
        url = closed.url
    printable = b"edge-secret-" + secret.hex().encode()
    with pytest.raises(ClevisError) as failed:
        clevis.seal(printable, tang=[url])
    message = str(failed.value)
    assert url in message and "advertisement" in message
    assert printable.decode() not in message
    assert_hidden(printable, message)


def test_available_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert clevis.available() is None
    monkeypatch.setenv("PATH", "/nonexistent")
    why = clevis.available()
    assert why is not None and "clevis" in why and "clevis-encrypt-tang" in why
