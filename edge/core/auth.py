"""JWT authentication: settings, verification, scopes, minting. Where a token is found
in a request is :mod:`edge.core.tokens`; the revocation list :mod:`edge.core.revocations`.

Pure: no trio, no vosk, no I/O. Every refusal is an :class:`~edge.core.errors.AuthError`
carrying the HTTP status for a refused handshake and the WebSocket close code for
in-band errors. Messages never contain the token or claim values; claim *names* are fine.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.exceptions import InvalidJTIError, InvalidSubjectError

from edge.core.close_codes import CLOSE_POLICY
from edge.core.errors import AuthError
from edge.core.jwks import KeyStore

if TYPE_CHECKING:
    from edge.core.revocations import Revocations

SCOPE_READ = "transcription:read"
SCOPE_WRITE = "transcription:write"
SCOPE_ENROLL = "speakers:enroll"  # enrol one's voice (?enroll=NAME)
SCOPE_TRANSCRIPTS = "transcripts:read"  # any session's transcript, not only one's own
SCOPE_RELAY = "relay:write"  # a downstream device relaying its journal into this one
ALGORITHMS = ("HS256", "RS256")

#: Tokens longer than this are refused before any parsing.
MAX_TOKEN_LENGTH = 8192

#: RFC 7518 section 3.2: an HS256 key MUST be at least as long as the hash output.
MIN_HMAC_KEY_BYTES = 32
MIN_RSA_KEY_BITS = 2048

REQUIRED_CLAIMS = ("sub", "iat", "exp", "scope", "user_type")

# Three non-empty base64url segments. JWS compact serialisation never contains padding,
# whitespace or anything outside this alphabet; an unsigned token has an empty third part.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def _invalid(message: str) -> AuthError:
    return AuthError("invalid_token", message, status=401)


@dataclass(frozen=True)
class AuthSettings:
    """How tokens are verified.

    ``key`` is the shared secret for HS256 (at least 32 bytes) or the PEM text of an RSA
    public key (at least 2048 bits) for RS256. ``jwks``, when given, is the identity
    provider's key set: a token that names a key (``kid``) is verified with that key
    and one of the set's ``algorithms``, a token without a ``kid`` with ``key``; with a
    key set, ``key`` may be None (no shared secret). ``issuer`` and ``audience`` are checked
    only when set. ``leeway`` (seconds) absorbs clock skew on ``exp``, ``nbf`` and ``iat``;
    ``max_lifetime`` bounds ``exp - iat``.

    Raises ``ValueError`` for an unknown algorithm, a key that does not fit it, or a
    negative or non-finite leeway or lifetime, so that a bad configuration fails at
    start-up rather than refusing every client.
    """

    algorithm: str
    key: str | bytes | None = field(repr=False)
    issuer: str | None = None
    audience: str | None = None
    leeway: float = 30.0
    max_lifetime: float = 86400.0
    jwks: KeyStore | None = field(default=None, compare=False)
    # The key parsed once; PyJWT would otherwise parse the PEM on every handshake.
    _verify_key: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(
                f"unsupported JWT algorithm {self.algorithm!r}; expected one of "
                + ", ".join(ALGORITHMS)
            )
        if self.key is None and self.jwks is not None:
            object.__setattr__(self, "_verify_key", None)
            self._check_times()
            return
        if not isinstance(self.key, (str, bytes)) or not self.key:
            raise ValueError(f"{self.algorithm} key must be a non-empty string")
        self._check_times()
        try:
            prepared = jwt.get_algorithm_by_name(self.algorithm).prepare_key(self.key)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            # PyJWT's message describes the key type, never the key material.
            raise ValueError(f"{self.algorithm} key is not usable: {exc}") from exc
        if self.algorithm == "HS256":
            if len(prepared) < MIN_HMAC_KEY_BYTES:
                raise ValueError(f"HS256 secret must be at least {MIN_HMAC_KEY_BYTES} bytes")
        else:
            if not isinstance(prepared, RSAPublicKey):
                raise ValueError("RS256 key must be a PEM-encoded RSA public key")
            if prepared.key_size < MIN_RSA_KEY_BITS:
                raise ValueError(f"RS256 key must be at least {MIN_RSA_KEY_BITS} bits")
        object.__setattr__(self, "_verify_key", prepared)

    def _check_times(self) -> None:
        if not math.isfinite(self.leeway) or self.leeway < 0:
            raise ValueError("leeway must be a finite number of seconds >= 0")
        if not math.isfinite(self.max_lifetime) or self.max_lifetime <= 0:
            raise ValueError("max_lifetime must be a finite number of seconds > 0")

    @property
    def can_mint(self) -> bool:
        """True when this device holds a key that signs (an HS256 secret)."""
        return self.algorithm == "HS256" and self.key is not None


@dataclass(frozen=True)
class Claims:
    """The verified claims of a token.

    ``scopes`` holds the space-separated words of the ``scope`` claim; ``issued_at`` and
    ``expires_at`` are Unix timestamps.
    """

    sub: str
    scopes: frozenset[str]
    user_type: str
    issued_at: float
    expires_at: float
    jti: str | None = None
    organization: str | None = None
    department: str | None = None
    session_limit: int | None = None
    rate_limit: int | None = None

    def has_scope(self, scope: str) -> bool:
        """True when ``scope`` is one of the token's scope words (whole words only)."""
        return scope in self.scopes


def _translate(exc: Exception) -> AuthError:
    """Map a PyJWT (or key handling) exception to a refusal with a safe message.

    PyJWT messages may echo header values chosen by the client, so they are not reused.
    """
    if isinstance(exc, jwt.ExpiredSignatureError):
        return AuthError("token_expired", "token has expired", status=401)
    if isinstance(exc, jwt.ImmatureSignatureError):
        return AuthError(
            "token_not_yet_valid", "token is not yet valid", status=401
        )
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return _invalid(f"token lacks the required claim {exc.claim!r}")
    if isinstance(exc, jwt.InvalidSignatureError):
        return _invalid("token signature is invalid")
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return _invalid("token algorithm is not accepted")
    if isinstance(exc, jwt.InvalidIssuerError):
        return _invalid("token issuer is not accepted")
    if isinstance(exc, jwt.InvalidAudienceError):
        return _invalid("token audience is not accepted")
    if isinstance(exc, InvalidSubjectError):
        return _invalid("claim 'sub' must be a string")
    if isinstance(exc, InvalidJTIError):
        return _invalid("claim 'jti' must be a string")
    if isinstance(exc, jwt.DecodeError):
        return _invalid("token is malformed")
    return _invalid("token is invalid")


def _timestamp(payload: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim as a finite float, or None when absent.

    PyJWT coerces with ``int()``, which accepts ``"123"`` and ``True``; we do not.
    """
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _invalid(f"claim {name!r} must be a number")
    try:
        result = float(value)
    except OverflowError:
        result = math.inf
    if not math.isfinite(result):
        raise _invalid(f"claim {name!r} must be a finite number")
    return result


def _required_text(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise _invalid(f"claim {name!r} must be a non-empty string")
    return value


def _optional_text(payload: Mapping[str, Any], name: str) -> str | None:
    value = payload.get(name)
    if value is not None and not isinstance(value, str):
        raise _invalid(f"claim {name!r} must be a string")
    return value


def _positive_int(payload: Mapping[str, Any], name: str) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _invalid(f"claim {name!r} must be a positive integer")
    return value


def _scopes(payload: Mapping[str, Any]) -> frozenset[str]:
    value = payload.get("scope")
    if not isinstance(value, str):
        raise _invalid("claim 'scope' must be a string")
    words = [w for w in value.split(" ") if w]
    if not words or not all(_SCOPE_TOKEN.fullmatch(w) for w in words):
        raise _invalid("claim 'scope' must be space-separated scope words")
    return frozenset(words)


def verify(
    token: str,
    settings: AuthSettings,
    *,
    now: float,
    revoked: Revocations | None = None,
) -> Claims:
    """Verify ``token`` and return its claims.

    ``now`` is the current Unix time (``time.time()``, not a monotonic clock); all time
    checks use it, with ``settings.leeway``. With a key set (``settings.jwks``), a
    token's ``kid`` picks its key from the set in force, never a fetch: the caller
    refreshes the set beforehand (:mod:`edge.net.jwks`). ``revoked``, when given,
    refuses listed token ids and subjects. CPU only; an RS256 check takes well under a millisecond.

    Raises ``AuthError`` (401, close code 1002) with code ``invalid_token``,
    ``token_expired``, ``token_not_yet_valid`` or ``token_revoked``.
    """
    payload = _decode(token, settings)
    claims, nbf = _claims(payload)
    _check_times(claims, nbf, settings, now)
    if revoked is not None and revoked.is_revoked(claims):
        raise AuthError("token_revoked", "token has been revoked", status=401)
    return claims


def _decode(token: str, settings: AuthSettings) -> dict[str, Any]:
    """The payload of ``token`` once its form and signature are checked."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise _invalid(f"token is longer than {MAX_TOKEN_LENGTH} characters")
    if not token.isascii() or _COMPACT_JWS.fullmatch(token) is None:
        raise _invalid("token is malformed")

    options: dict[str, Any] = {
        "require": list(REQUIRED_CLAIMS),
        # Time claims are checked below against the caller's ``now``, after their types:
        # PyJWT would read the wall clock and coerce "123" or true with int().
        "verify_exp": False,
        "verify_nbf": False,
        "verify_iat": False,
        # With no audience configured, a token that names one is still accepted: the
        # issuer may serve several audiences and this deployment has chosen not to pin
        # one. PyJWT would otherwise refuse every token carrying ``aud``.
        "verify_aud": settings.audience is not None,
    }
    key, algorithms = _key_for(token, settings)
    try:
        payload = jwt.decode(
            token,
            key,
            # From the configuration, never from the token header: this is what stops
            # "alg": "none" and HS256/RS256 confusion.
            algorithms=algorithms,
            options=options,  # type: ignore[arg-type]
            audience=settings.audience,
            issuer=settings.issuer,
        )
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise _translate(exc) from exc
    return payload


def _claims(payload: dict[str, Any]) -> tuple[Claims, float | None]:
    """The claims of a verified payload, each of its type, and its ``nbf``."""
    sub = _required_text(payload, "sub")
    user_type = _required_text(payload, "user_type")
    scopes = _scopes(payload)
    iat = _timestamp(payload, "iat")
    exp = _timestamp(payload, "exp")
    nbf = _timestamp(payload, "nbf")
    # "require" above guarantees both; the check keeps the types honest.
    if iat is None or exp is None:
        raise _invalid("token lacks a required claim")
    jti = _optional_text(payload, "jti")
    organization = _optional_text(payload, "organization")
    department = _optional_text(payload, "department")
    session_limit = _positive_int(payload, "session_limit")
    rate_limit = _positive_int(payload, "rate_limit")
    return Claims(
        sub=sub,
        scopes=scopes,
        user_type=user_type,
        issued_at=iat,
        expires_at=exp,
        jti=jti,
        organization=organization,
        department=department,
        session_limit=session_limit,
        rate_limit=rate_limit,
    ), nbf


def _check_times(claims: Claims, nbf: float | None, settings: AuthSettings,
                 now: float) -> None:
    """Refuse a token expired, not yet valid, issued in the future or too long-lived."""
    iat, exp = claims.issued_at, claims.expires_at
    leeway = settings.leeway
    if exp <= now - leeway:
        raise AuthError("token_expired", "token has expired", status=401)
    if nbf is not None and nbf > now + leeway:
        raise AuthError(
            "token_not_yet_valid", "token is not yet valid", status=401
        )
    if iat > now + leeway:
        raise AuthError(
            "token_not_yet_valid", "token is issued in the future", status=401
        )
    if exp <= iat:
        raise _invalid("claim 'exp' must be later than 'iat'")
    if exp - iat > settings.max_lifetime:
        raise _invalid(f"token lifetime exceeds {settings.max_lifetime:g} seconds")


def _key_for(token: str, settings: AuthSettings) -> tuple[Any, list[str]]:
    """The key to verify ``token`` with and the algorithms allowed with it.

    A token that names a key (``kid``) when a key set is configured gets that key,
    checked against the configured algorithms (:meth:`KeyStore.key_for`); any other
    token gets the configured secret or public key with the configured algorithm.
    """
    if settings.jwks is not None:
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise _translate(exc) from exc
        kid = header.get("kid")
        if kid is not None:
            if not isinstance(kid, str):
                raise _invalid("header 'kid' must be a string")
            jwks = settings.jwks
            return jwks.key_for(kid, header.get("alg")), list(jwks.algorithms)
        if settings._verify_key is None:
            raise _invalid("the token names no key (kid)")
    return settings._verify_key, [settings.algorithm]


def require_scope(claims: Claims, scope: str) -> None:
    """Raise ``AuthError("insufficient_scope")`` (403, close code 1008) unless granted."""
    if not claims.has_scope(scope):
        raise AuthError(
            "insufficient_scope",
            f"token lacks the {scope!r} scope",
            status=403,
            close_code=CLOSE_POLICY,
            scope=scope,
        )


def mint(
    *,
    algorithm: str,
    key: str | bytes,
    sub: str,
    scope: str,
    user_type: str,
    ttl: float,
    now: float,
    issuer: str | None = None,
    audience: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Sign a token: HS256 with a shared secret, RS256 with a PEM RSA private key.

    Sets ``sub``, ``scope``, ``user_type``, ``iat`` (``now``), ``exp`` (``now + ttl``),
    ``jti`` (a random hex id) and ``iss``/``aud`` when given, all as whole seconds where
    they are times; ``extra`` is merged last and overrides any of them. For tools and
    tests; the daemon only verifies.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"unsupported JWT algorithm {algorithm!r}; expected one of " + ", ".join(ALGORITHMS)
        )
    payload: dict[str, Any] = {
        "sub": sub,
        "scope": scope,
        "user_type": user_type,
        "iat": int(now),
        "exp": int(now + ttl),
        "jti": uuid.uuid4().hex,
    }
    if issuer is not None:
        payload["iss"] = issuer
    if audience is not None:
        payload["aud"] = audience
    if extra:
        payload.update(extra)
    return jwt.encode(payload, key, algorithm=algorithm)
