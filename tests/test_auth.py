"""Tests of edge.core.auth: token extraction, verification, scopes and revocation lists."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from edge.core.auth import (
    ALGORITHMS,
    MAX_TOKEN_LENGTH,
    SCOPE_READ,
    SCOPE_WRITE,
    AuthSettings,
    Claims,
    mint,
    require_scope,
    verify,
)
from edge.core.errors import AuthError
from edge.core.revocations import RevocationFile, Revocations
from edge.core.tokens import extract_token

SECRET = "unit-test-shared-secret-0123456789abcdef"
OTHER_SECRET = "another-shared-secret-0123456789abcdefgh"
ISSUER = "https://auth.example.test"
AUDIENCE = "edge-live-api"
REVOKED = Revocations(jtis=frozenset({"revoked-jti"}), subs=frozenset({"revoked-user"}))
REMOVE = object()  # marks a claim to leave out of a payload


class Keys(NamedTuple):
    private_pem: str
    public_pem: str


@pytest.fixture(scope="module")
def keys() -> Keys:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return Keys(private_pem, public_pem)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def payload(now: float, **changes: Any) -> dict[str, Any]:
    """A valid claim set; keyword arguments replace claims, REMOVE drops one."""
    claims: dict[str, Any] = {
        "sub": "user-id-123",
        "iat": int(now),
        "exp": int(now) + 3600,
        "scope": f"{SCOPE_READ} {SCOPE_WRITE}",
        "user_type": "doctor",
        "jti": "jti-0001",
    }
    for name, value in changes.items():
        if value is REMOVE:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def hs(claims: dict[str, Any], key: str = SECRET, headers: dict[str, Any] | None = None) -> str:
    return jwt.encode(claims, key, algorithm="HS256", headers=headers)


def raw_token(header: dict[str, Any], body: bytes | dict[str, Any], hmac_key: bytes | None) -> str:
    """Assemble a token by hand, HMAC-SHA256 signed with ``hmac_key`` or unsigned."""
    body_bytes = body if isinstance(body, bytes) else json.dumps(body).encode()
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(body_bytes)}"
    if hmac_key is None:
        return signing_input + "."
    mac = hmac.new(hmac_key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def settings_for(kind: str, keys: Keys) -> AuthSettings:
    if kind == "hs":
        return AuthSettings("HS256", SECRET)
    if kind == "rs":
        return AuthSettings("RS256", keys.public_pem)
    if kind == "hs_iss_aud":
        return AuthSettings("HS256", SECRET, issuer=ISSUER, audience=AUDIENCE)
    raise AssertionError(kind)


def swap_payload(token: str, now: float) -> str:
    """Keep the header and signature of ``token`` but replace its payload."""
    header, _, signature = token.split(".")
    forged = b64url(json.dumps(payload(now, user_type="admin")).encode())
    return f"{header}.{forged}.{signature}"


def flip_signature(token: str) -> str:
    head, _, signature = token.rpartition(".")
    middle = len(signature) // 2
    replacement = "A" if signature[middle] != "A" else "B"
    return f"{head}.{signature[:middle]}{replacement}{signature[middle + 1 :]}"


Maker = Callable[[Keys, float], str]


def without(name: str) -> Maker:
    """A maker of an otherwise valid HS256 token that lacks claim ``name``."""

    def make(keys: Keys, now: float) -> str:
        return hs(payload(now, **{name: REMOVE}))

    return make


def case(
    case_id: str,
    make: Maker,
    code: str = "invalid_token",
    *,
    verifier: str = "hs",
    message: str = "",
) -> Any:
    return pytest.param(make, verifier, code, message, id=case_id)


REFUSED = [
    # -- algorithm and signature
    case(
        "alg-none-unsigned",
        lambda k, now: raw_token({"alg": "none", "typ": "JWT"}, payload(now), None),
        message="malformed",
    ),
    case(
        "alg-none-with-signature-part",
        lambda k, now: raw_token({"alg": "none", "typ": "JWT"}, payload(now), None) + "AAAA",
        message="algorithm",
    ),
    case(
        "hs256-signed-with-rsa-public-pem-vs-rs256-verifier",
        lambda k, now: raw_token(
            {"alg": "HS256", "typ": "JWT"}, payload(now), k.public_pem.encode()
        ),
        verifier="rs",
        message="algorithm",
    ),
    case(
        "rs256-token-vs-hs256-verifier",
        lambda k, now: jwt.encode(payload(now), k.private_pem, algorithm="RS256"),
        message="algorithm",
    ),
    case(
        "hs512-token-vs-hs256-verifier",
        lambda k, now: jwt.encode(payload(now), SECRET + SECRET, algorithm="HS512"),
        message="algorithm",
    ),
    case(
        "payload-swapped-bad-signature",
        lambda k, now: swap_payload(hs(payload(now)), now),
        message="signature",
    ),
    case("wrong-secret", lambda k, now: hs(payload(now), key=OTHER_SECRET), message="signature"),
    case(
        "rs256-signature-tampered",
        lambda k, now: flip_signature(jwt.encode(payload(now), k.private_pem, algorithm="RS256")),
        verifier="rs",
        message="signature",
    ),
    case(
        "unknown-crit-header",
        lambda k, now: hs(
            payload(now), headers={"crit": ["urn:example:ext"], "urn:example:ext": 1}
        ),
    ),
    case(
        "payload-not-an-object",
        lambda k, now: raw_token({"alg": "HS256", "typ": "JWT"}, b"[1, 2, 3]", SECRET.encode()),
        message="malformed",
    ),
    # -- shape, checked before PyJWT
    case("garbage-string", lambda k, now: "this is not a token", message="malformed"),
    case(
        "two-part-token",
        lambda k, now: ".".join(hs(payload(now)).split(".")[:2]),
        message="malformed",
    ),
    case("empty-token", lambda k, now: "", message="malformed"),
    case(
        "oversized-token",
        lambda k, now: hs(payload(now, padding="x" * MAX_TOKEN_LENGTH)),
        message="longer than",
    ),
    case("non-ascii-token", lambda k, now: hs(payload(now)) + "é", message="malformed"),
    case(
        "whitespace-in-token",
        lambda k, now: hs(payload(now)).replace(".", ". ", 1),
        message="malformed",
    ),
    # -- time
    case(
        "expired",
        lambda k, now: hs(payload(now, iat=int(now) - 7200, exp=int(now) - 3600)),
        "token_expired",
    ),
    case(
        "expired-just-outside-leeway",
        lambda k, now: hs(payload(now, iat=int(now) - 600, exp=int(now) - 31)),
        "token_expired",
    ),
    case(
        "nbf-in-future", lambda k, now: hs(payload(now, nbf=int(now) + 120)), "token_not_yet_valid"
    ),
    case(
        "iat-in-future",
        lambda k, now: hs(payload(now, iat=int(now) + 120, exp=int(now) + 3600)),
        "token_not_yet_valid",
    ),
    case(
        "lifetime-too-long",
        lambda k, now: hs(payload(now, exp=int(now) + 2 * 86400)),
        message="lifetime exceeds",
    ),
    case(
        "exp-absurdly-large",
        lambda k, now: hs(payload(now, exp=10**30)),
        message="lifetime exceeds",
    ),
    case("exp-infinity", lambda k, now: hs(payload(now, exp=float("inf"))), message="'exp'"),
    case(
        "exp-not-after-iat",
        lambda k, now: hs(payload(now, iat=int(now) + 10, exp=int(now) + 5)),
        message="later than",
    ),
    # -- issuer and audience
    case(
        "wrong-iss",
        lambda k, now: hs(payload(now, iss="https://evil.example", aud=AUDIENCE)),
        verifier="hs_iss_aud",
        message="issuer",
    ),
    case(
        "missing-iss-when-configured",
        lambda k, now: hs(payload(now, aud=AUDIENCE)),
        verifier="hs_iss_aud",
        message="'iss'",
    ),
    case(
        "wrong-aud",
        lambda k, now: hs(payload(now, iss=ISSUER, aud="some-other-api")),
        verifier="hs_iss_aud",
        message="audience",
    ),
    case(
        "missing-aud-when-configured",
        lambda k, now: hs(payload(now, iss=ISSUER)),
        verifier="hs_iss_aud",
        message="'aud'",
    ),
    # -- required claims
    *[
        case(f"missing-{name}", without(name), message=f"'{name}'")
        for name in ("sub", "iat", "exp", "scope", "user_type")
    ],
    case("sub-null", lambda k, now: hs(payload(now, sub=None)), message="'sub'"),
    # -- claim types
    case(
        "exp-as-numeric-string",
        lambda k, now: hs(payload(now, exp=str(int(now) + 3600))),
        message="'exp'",
    ),
    case("exp-as-bool", lambda k, now: hs(payload(now, exp=True)), message="'exp'"),
    case("iat-as-string", lambda k, now: hs(payload(now, iat=str(int(now)))), message="'iat'"),
    case("nbf-as-string", lambda k, now: hs(payload(now, nbf=str(int(now)))), message="'nbf'"),
    case("sub-empty", lambda k, now: hs(payload(now, sub="")), message="'sub'"),
    case("sub-not-a-string", lambda k, now: hs(payload(now, sub=123)), message="'sub'"),
    case("user-type-empty", lambda k, now: hs(payload(now, user_type="")), message="'user_type'"),
    case(
        "scope-not-a-string",
        lambda k, now: hs(payload(now, scope=[SCOPE_READ, SCOPE_WRITE])),
        message="'scope'",
    ),
    case("scope-blank", lambda k, now: hs(payload(now, scope="   ")), message="'scope'"),
    case(
        "scope-with-tab",
        lambda k, now: hs(payload(now, scope=f"{SCOPE_READ}\t{SCOPE_WRITE}")),
        message="'scope'",
    ),
    case("jti-not-a-string", lambda k, now: hs(payload(now, jti=42)), message="'jti'"),
    case(
        "organization-not-a-string",
        lambda k, now: hs(payload(now, organization=7)),
        message="'organization'",
    ),
    case(
        "session-limit-as-string",
        lambda k, now: hs(payload(now, session_limit="5")),
        message="'session_limit'",
    ),
    case(
        "session-limit-zero",
        lambda k, now: hs(payload(now, session_limit=0)),
        message="'session_limit'",
    ),
    case(
        "rate-limit-as-bool",
        lambda k, now: hs(payload(now, rate_limit=True)),
        message="'rate_limit'",
    ),
    case(
        "rate-limit-negative",
        lambda k, now: hs(payload(now, rate_limit=-1)),
        message="'rate_limit'",
    ),
    # -- revocation
    case("revoked-jti", lambda k, now: hs(payload(now, jti="revoked-jti")), "token_revoked"),
    case("revoked-sub", lambda k, now: hs(payload(now, sub="revoked-user")), "token_revoked"),
]


@pytest.mark.parametrize(("make", "verifier", "code", "message"), REFUSED)
def test_refused_tokens(keys: Keys, make: Maker, verifier: str, code: str, message: str) -> None:
    now = time.time()
    token = make(keys, now)
    with pytest.raises(AuthError) as info:
        verify(token, settings_for(verifier, keys), now=now, revoked=REVOKED)
    err = info.value
    assert (err.status, err.close_code, err.code) == (401, 1002, code)
    assert message in err.message
    # Never echo the token, nor any of its parts.
    for part in [token, *token.split(".")]:
        if len(part) > 8:
            assert part not in err.message


def test_refused_table_is_large_enough() -> None:
    assert len(REFUSED) >= 22


def test_refusal_messages_do_not_echo_claim_values() -> None:
    now = time.time()
    secret_sub = "patient-record-4711"
    token = hs(payload(now, sub=secret_sub, exp=str(int(now) + 60)))
    with pytest.raises(AuthError) as info:
        verify(token, AuthSettings("HS256", SECRET), now=now)
    assert secret_sub not in str(info.value)
    assert str(int(now) + 60) not in str(info.value)


def test_unknown_crit_header_is_refused_by_pyjwt() -> None:
    # PyJWT < 2.12 accepted unknown critical extensions (CVE-2026-32597).
    now = time.time()
    headers = {"crit": ["urn:example:ext"], "urn:example:ext": 1}
    with pytest.raises(AuthError) as info:
        verify(hs(payload(now), headers=headers), AuthSettings("HS256", SECRET), now=now)
    assert info.value.code == "invalid_token"
    assert "critical extension" in str(info.value.__cause__)
    assert "urn:example:ext" not in info.value.message
    assert verify(hs(payload(now), headers={"kid": "k1"}), AuthSettings("HS256", SECRET), now=now)


def test_refusal_chains_the_pyjwt_exception() -> None:
    now = time.time()
    with pytest.raises(AuthError) as info:
        verify(hs(payload(now), key=OTHER_SECRET), AuthSettings("HS256", SECRET), now=now)
    assert isinstance(info.value.__cause__, jwt.InvalidSignatureError)


# -- accepted tokens


def test_accepts_token_from_authorization_header() -> None:
    now = time.time()
    token = mint(
        algorithm="HS256",
        key=SECRET,
        sub="user-id-123",
        scope=f"{SCOPE_READ} {SCOPE_WRITE}",
        user_type="doctor",
        ttl=3600,
        now=now,
    )
    headers = [(b"host", b"localhost:8000"), (b"authorization", f"Bearer {token}".encode())]
    claims = verify(
        extract_token("/ws/transcribe", headers),
        AuthSettings("HS256", SECRET),
        now=now,
        revoked=REVOKED,
    )
    assert claims.sub == "user-id-123"
    assert claims.user_type == "doctor"
    assert claims.scopes == frozenset({SCOPE_READ, SCOPE_WRITE})
    assert claims.expires_at - claims.issued_at == 3600
    assert claims.jti is not None and len(claims.jti) == 32


def test_accepts_token_from_query_string() -> None:
    now = time.time()
    token = hs(payload(now))
    path = f"/ws/transcribe?sample_rate=8000&token={token}&language=ko"
    claims = verify(extract_token(path, []), AuthSettings("HS256", SECRET), now=now)
    assert claims.sub == "user-id-123"
    assert claims.jti == "jti-0001"


def test_accepts_expired_token_within_leeway() -> None:
    now = time.time()
    token = hs(payload(now, iat=int(now) - 600, exp=int(now) - 10))
    claims = verify(token, AuthSettings("HS256", SECRET, leeway=30), now=now)
    assert claims.expires_at < now


def test_leeway_zero_refuses_what_leeway_accepts() -> None:
    now = time.time()
    token = hs(payload(now, iat=int(now) - 600, exp=int(now) - 10))
    with pytest.raises(AuthError) as info:
        verify(token, AuthSettings("HS256", SECRET, leeway=0), now=now)
    assert info.value.code == "token_expired"


def test_accepts_iat_and_nbf_slightly_in_future_within_leeway() -> None:
    now = time.time()
    token = hs(payload(now, iat=int(now) + 10, nbf=int(now) + 10, exp=int(now) + 600))
    claims = verify(token, AuthSettings("HS256", SECRET), now=now)
    assert claims.issued_at > now


def test_uses_the_callers_clock() -> None:
    now = time.time()
    token = hs(payload(now))
    settings = AuthSettings("HS256", SECRET)
    assert verify(token, settings, now=now).sub == "user-id-123"
    with pytest.raises(AuthError) as info:
        verify(token, settings, now=now + 7200)
    assert info.value.code == "token_expired"


def test_accepts_aud_when_no_audience_configured() -> None:
    now = time.time()
    token = hs(payload(now, aud="some-other-api", iss="anyone"))
    claims = verify(token, AuthSettings("HS256", SECRET), now=now)
    assert claims.sub == "user-id-123"


def test_accepts_configured_issuer_and_audience_in_list() -> None:
    now = time.time()
    token = hs(payload(now, iss=ISSUER, aud=["other-api", AUDIENCE]))
    settings = AuthSettings("HS256", SECRET, issuer=ISSUER, audience=AUDIENCE)
    assert verify(token, settings, now=now).sub == "user-id-123"


def test_rs256_round_trip(keys: Keys) -> None:
    now = time.time()
    token = mint(
        algorithm="RS256",
        key=keys.private_pem,
        sub="svc-7",
        scope=SCOPE_READ,
        user_type="service",
        ttl=600,
        now=now,
        issuer=ISSUER,
        audience=AUDIENCE,
    )
    settings = AuthSettings("RS256", keys.public_pem, issuer=ISSUER, audience=AUDIENCE)
    claims = verify(token, settings, now=now, revoked=REVOKED)
    assert claims.sub == "svc-7"
    assert claims.has_scope(SCOPE_READ)
    assert not claims.has_scope(SCOPE_WRITE)


def test_optional_claims_are_parsed() -> None:
    now = time.time()
    token = hs(
        payload(
            now,
            organization="hospital-id-456",
            department="cardiology",
            session_limit=5,
            rate_limit=1000,
        )
    )
    claims = verify(token, AuthSettings("HS256", SECRET), now=now)
    assert claims == Claims(
        sub="user-id-123",
        scopes=frozenset({SCOPE_READ, SCOPE_WRITE}),
        user_type="doctor",
        issued_at=float(int(now)),
        expires_at=float(int(now) + 3600),
        jti="jti-0001",
        organization="hospital-id-456",
        department="cardiology",
        session_limit=5,
        rate_limit=1000,
    )


def test_optional_claims_default_to_none() -> None:
    now = time.time()
    claims = verify(hs(payload(now, jti=REMOVE)), AuthSettings("HS256", SECRET), now=now)
    assert (claims.jti, claims.organization, claims.department) == (None, None, None)
    assert (claims.session_limit, claims.rate_limit) == (None, None)


def test_float_timestamps_are_accepted() -> None:
    now = time.time()
    claims = verify(
        hs(payload(now, iat=now, exp=now + 60.5)), AuthSettings("HS256", SECRET), now=now
    )
    assert claims.expires_at - claims.issued_at == pytest.approx(60.5)


def test_lifetime_exactly_at_limit_is_accepted_and_one_second_more_is_not() -> None:
    now = time.time()
    settings = AuthSettings("HS256", SECRET, max_lifetime=3600)
    assert verify(hs(payload(now, exp=int(now) + 3600)), settings, now=now).sub == "user-id-123"
    with pytest.raises(AuthError, match="lifetime exceeds"):
        verify(hs(payload(now, exp=int(now) + 3601)), settings, now=now)


# -- mint


def test_mint_sets_standard_claims_and_extra_overrides() -> None:
    now = time.time()
    token = mint(
        algorithm="HS256",
        key=SECRET,
        sub="u1",
        scope=SCOPE_WRITE,
        user_type="nurse",
        ttl=120,
        now=now,
        issuer=ISSUER,
        audience=AUDIENCE,
        extra={"jti": "fixed-id", "department": "icu"},
    )
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUDIENCE)
    assert decoded["iat"] == int(now)
    assert decoded["exp"] == int(now + 120)
    assert (decoded["iss"], decoded["aud"]) == (ISSUER, AUDIENCE)
    assert (decoded["jti"], decoded["department"]) == ("fixed-id", "icu")
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_mint_gives_each_token_its_own_jti() -> None:
    now = time.time()
    tokens = [
        mint(
            algorithm="HS256", key=SECRET, sub="u", scope=SCOPE_READ, user_type="x", ttl=60, now=now
        )
        for _ in range(2)
    ]
    jtis = {jwt.decode(t, SECRET, algorithms=["HS256"])["jti"] for t in tokens}
    assert len(jtis) == 2


def test_mint_refuses_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        mint(
            algorithm="none",
            key="",
            sub="u",
            scope=SCOPE_READ,
            user_type="x",
            ttl=60,
            now=time.time(),
        )


# -- settings


def test_algorithms_constant() -> None:
    assert ALGORITHMS == ("HS256", "RS256")


@pytest.mark.parametrize("algorithm", ["none", "HS512", "hs256", "ES256", ""])
def test_settings_refuse_unknown_algorithm(algorithm: str) -> None:
    with pytest.raises(ValueError, match="unsupported JWT algorithm"):
        AuthSettings(algorithm, SECRET)


def test_settings_refuse_short_hmac_secret() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        AuthSettings("HS256", "short-secret")


def test_settings_refuse_pem_as_hmac_secret(keys: Keys) -> None:
    with pytest.raises(ValueError, match="HS256 key is not usable"):
        AuthSettings("HS256", keys.public_pem)


def test_settings_refuse_private_key_for_rs256(keys: Keys) -> None:
    with pytest.raises(ValueError, match="public key"):
        AuthSettings("RS256", keys.private_pem)


def test_settings_refuse_non_pem_for_rs256() -> None:
    with pytest.raises(ValueError, match="RS256 key is not usable"):
        AuthSettings("RS256", SECRET)


@pytest.mark.parametrize(
    ("leeway", "max_lifetime"),
    [(-1.0, 60.0), (float("nan"), 60.0), (30.0, 0.0), (30.0, float("inf"))],
)
def test_settings_refuse_bad_durations(leeway: float, max_lifetime: float) -> None:
    with pytest.raises(ValueError, match=r"leeway|max_lifetime"):
        AuthSettings("HS256", SECRET, leeway=leeway, max_lifetime=max_lifetime)


def test_settings_repr_hides_the_key() -> None:
    assert SECRET not in repr(AuthSettings("HS256", SECRET))


# -- extract_token


def bearer(token: str, scheme: str = "Bearer") -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"{scheme} {token}".encode())]


def test_extract_from_header() -> None:
    assert extract_token("/ws/transcribe", bearer("a.b.c")) == "a.b.c"


def test_extract_from_header_scheme_is_case_insensitive() -> None:
    assert extract_token("/ws/transcribe", bearer("a.b.c", scheme="bEaReR")) == "a.b.c"


def test_extract_from_query() -> None:
    assert extract_token("/ws/transcribe?token=a.b.c&sample_rate=8000", []) == "a.b.c"


def test_extract_ignores_other_headers_and_params() -> None:
    headers = [(b"host", b"localhost"), (b"x-token", b"nope"), *bearer("a.b.c")]
    assert extract_token("/ws/transcribe?sample_rate=8000&tokens=x", headers) == "a.b.c"


@pytest.mark.parametrize(
    ("path", "headers", "status", "code"),
    [
        pytest.param(
            "/ws/transcribe?token=q.q.q", bearer("h.h.h"), 400, "invalid_request", id="both"
        ),
        pytest.param("/ws/transcribe", [], 401, "missing_token", id="neither"),
        pytest.param(
            "/ws/transcribe?sample_rate=8000",
            [(b"host", b"x")],
            401,
            "missing_token",
            id="neither-with-other-params",
        ),
        pytest.param(
            "/ws/transcribe",
            bearer("dXNlcjpwYXNz", scheme="Basic"),
            401,
            "invalid_token",
            id="basic-scheme",
        ),
        pytest.param(
            "/ws/transcribe",
            [(b"authorization", b"Bearer")],
            401,
            "invalid_token",
            id="bearer-without-token",
        ),
        pytest.param(
            "/ws/transcribe",
            [(b"authorization", b"")],
            401,
            "invalid_token",
            id="empty-authorization",
        ),
        pytest.param(
            "/ws/transcribe",
            [(b"authorization", b"Bearer a.b.c extra")],
            401,
            "invalid_token",
            id="bearer-with-two-words",
        ),
        pytest.param("/ws/transcribe?token=", [], 401, "invalid_token", id="empty-query-token"),
        pytest.param(
            "/ws/transcribe?token=a.b.c&token=d.e.f",
            [],
            400,
            "invalid_request",
            id="duplicate-query-param",
        ),
        pytest.param(
            "/ws/transcribe",
            bearer("a.b.c") + bearer("d.e.f"),
            400,
            "invalid_request",
            id="duplicate-authorization-header",
        ),
    ],
)
def test_extract_refusals(
    path: str, headers: list[tuple[bytes, bytes]], status: int, code: str
) -> None:
    with pytest.raises(AuthError) as info:
        extract_token(path, headers)
    assert (info.value.status, info.value.code, info.value.close_code) == (status, code, 1002)


# -- scopes


def claims_with(scopes: str) -> Claims:
    now = time.time()
    return verify(hs(payload(now, scope=scopes)), AuthSettings("HS256", SECRET), now=now)


def test_has_scope_matches_whole_words_only() -> None:
    claims = claims_with(f"{SCOPE_WRITE}x {SCOPE_READ}  profile")
    assert claims.has_scope(SCOPE_READ)
    assert claims.has_scope("profile")
    assert not claims.has_scope(SCOPE_WRITE)
    assert not claims.has_scope("transcription")
    assert not claims.has_scope("transcription:read transcription:writex")


def test_require_scope_refuses_with_403_and_1008() -> None:
    claims = claims_with(SCOPE_READ)
    require_scope(claims, SCOPE_READ)  # granted: no exception
    with pytest.raises(AuthError) as info:
        require_scope(claims, SCOPE_WRITE)
    err = info.value
    assert (err.status, err.close_code, err.code) == (403, 1008, "insufficient_scope")
    assert SCOPE_WRITE in err.message


# -- revocation lists


def test_revocations_parse() -> None:
    text = "\n".join(
        [
            "",
            "# revoked after the incident of 2024-05-01",
            "jti:abc123",
            "  sub:user-9  ",
            "bare-jti",
            "sub:",
            "jti:   spaced",
            "urn:example:thing",
            "   ",
            "",
        ]
    )
    revocations = Revocations.parse(text)
    assert revocations.jtis == frozenset({"abc123", "bare-jti", "spaced", "urn:example:thing"})
    assert revocations.subs == frozenset({"user-9"})


def test_revocations_parse_empty_text() -> None:
    assert Revocations.parse("# nothing\n\n") == Revocations(frozenset(), frozenset())


def test_revocations_is_revoked() -> None:
    revocations = Revocations.parse("jti:j1\nsub:s1\n")
    base = claims_with(SCOPE_READ)

    def with_ids(sub: str, jti: str | None) -> Claims:
        return Claims(
            sub=sub,
            scopes=base.scopes,
            user_type=base.user_type,
            issued_at=base.issued_at,
            expires_at=base.expires_at,
            jti=jti,
        )

    assert revocations.is_revoked(with_ids("someone", "j1"))
    assert revocations.is_revoked(with_ids("s1", None))
    assert not revocations.is_revoked(with_ids("someone", None))
    assert not revocations.is_revoked(with_ids("j1", "s1"))


def bump_mtime(path: Path) -> None:
    """Make sure a rewrite is seen even on file systems with coarse timestamps."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_revocation_file_loads_on_construction(tmp_path: Path) -> None:
    path = tmp_path / "revoked.txt"
    path.write_text("jti:one\nsub:someone\n")
    revocations = RevocationFile(path).current
    assert revocations.jtis == frozenset({"one"})
    assert revocations.subs == frozenset({"someone"})


def test_revocation_file_reloads_changed_content(tmp_path: Path) -> None:
    path = tmp_path / "revoked.txt"
    path.write_text("jti:one\n")
    revocations = RevocationFile(path)
    assert revocations.reload_if_changed() is False
    path.write_text("jti:one\njti:two\n")
    bump_mtime(path)
    assert revocations.reload_if_changed() is True
    assert revocations.current.jtis == frozenset({"one", "two"})
    assert revocations.reload_if_changed() is False


def test_revocation_file_unchanged_stat_is_not_reread(tmp_path: Path) -> None:
    path = tmp_path / "revoked.txt"
    path.write_text("jti:aaa\n")
    revocations = RevocationFile(path)
    st = path.stat()
    # Same inode, same size, same mtime: by design the file is not read again.
    path.write_text("jti:bbb\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert revocations.reload_if_changed() is False
    assert revocations.current.jtis == frozenset({"aaa"})
    bump_mtime(path)
    assert revocations.reload_if_changed() is True
    assert revocations.current.jtis == frozenset({"bbb"})


def test_revocation_file_same_entries_rewritten_is_not_a_change(tmp_path: Path) -> None:
    path = tmp_path / "revoked.txt"
    path.write_text("jti:one\n")
    revocations = RevocationFile(path)
    path.write_text("# comment added\njti:one\n")
    bump_mtime(path)
    assert revocations.reload_if_changed() is False
    assert revocations.current.jtis == frozenset({"one"})


def test_revocation_file_deleted_means_nothing_revoked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "revoked.txt"
    path.write_text("sub:someone\n")
    revocations = RevocationFile(path)
    path.unlink()
    with caplog.at_level(logging.WARNING, logger="edge.core.auth"):
        assert revocations.reload_if_changed() is True
        assert revocations.reload_if_changed() is False
    assert revocations.current == Revocations()
    assert len([r for r in caplog.records if "missing" in r.getMessage()]) == 1


def test_revocation_file_missing_at_start_then_created(tmp_path: Path) -> None:
    path = tmp_path / "revoked.txt"
    revocations = RevocationFile(path)
    assert revocations.current == Revocations()
    path.write_text("jti:late\n")
    assert revocations.reload_if_changed() is True
    assert revocations.current.jtis == frozenset({"late"})


def test_revocation_file_garbage_keeps_previous_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "revoked.txt"
    path.write_text("jti:one\n")
    revocations = RevocationFile(path)
    path.write_bytes(b"\xff\xfe\x00\x81garbage\xc3")
    bump_mtime(path)
    with caplog.at_level(logging.WARNING, logger="edge.core.auth"):
        assert revocations.reload_if_changed() is False
        assert revocations.reload_if_changed() is False
    assert revocations.current.jtis == frozenset({"one"})
    assert len([r for r in caplog.records if "not UTF-8" in r.getMessage()]) == 1
    # Once repaired, the new content is picked up.
    path.write_text("jti:two\n")
    bump_mtime(path)
    assert revocations.reload_if_changed() is True
    assert revocations.current.jtis == frozenset({"two"})


def test_revocation_file_replaced_by_rename_is_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "revoked.txt"
    path.write_text("jti:aaa\n")
    revocations = RevocationFile(path)
    new = tmp_path / "revoked.txt.new"
    new.write_text("jti:bbb\n")  # same size: only the inode tells them apart
    os.replace(new, path)
    assert revocations.reload_if_changed() is True
    assert revocations.current.jtis == frozenset({"bbb"})


def test_revoked_token_from_file_is_refused(tmp_path: Path) -> None:
    now = time.time()
    path = tmp_path / "revoked.txt"
    path.write_text("jti:jti-0001\n")
    revocations = RevocationFile(path)
    with pytest.raises(AuthError) as info:
        verify(
            hs(payload(now)), AuthSettings("HS256", SECRET), now=now, revoked=revocations.current
        )
    assert info.value.code == "token_revoked"
