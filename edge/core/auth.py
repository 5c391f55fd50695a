"""JWT authentication for the Live API: token extraction, verification, scopes, revocation.

Pure: no trio, no vosk. Every refusal is an :class:`~edge.core.errors.AuthError` carrying the
HTTP status for a refused handshake and the WebSocket close code for in-band errors.
Messages never contain the token or claim values; claim *names* are fine.

Only :meth:`RevocationFile.reload_if_changed` (and the constructor that calls it) touches
the file system; everything else is computation on its arguments.
"""

from __future__ import annotations

import logging
import math
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.exceptions import InvalidJTIError, InvalidSubjectError

from edge.core.close_codes import CLOSE_AUTH, CLOSE_POLICY
from edge.core.errors import AuthError
from edge.core.jwks import KeyStore

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class Revocations:
    """A set of revoked token ids (``jti``) and subjects (``sub``)."""

    jtis: frozenset[str] = frozenset()
    subs: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str) -> Revocations:
        """Parse a revocation list: one entry per line.

        ``jti:<value>`` revokes a token id, ``sub:<value>`` every token of a subject, and a
        bare value is a token id. Blank lines and lines starting with ``#`` are ignored, as
        are prefixed entries with an empty value.
        """
        jtis: set[str] = set()
        subs: set[str] = set()
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("sub:"):
                value = line[4:].strip()
                if value:
                    subs.add(value)
            else:
                value = line[4:].strip() if line.startswith("jti:") else line
                if value:
                    jtis.add(value)
        return cls(jtis=frozenset(jtis), subs=frozenset(subs))

    def is_revoked(self, claims: Claims) -> bool:
        """True when the token's ``jti`` or its subject is revoked."""
        return claims.sub in self.subs or (claims.jti is not None and claims.jti in self.jtis)


class RevocationFile:
    """A revocation list file reloaded when it changes (stat: mtime_ns, size, inode).

    A missing file means nothing is revoked (a warning is logged once each time it goes
    missing). A file that cannot be read or decoded as UTF-8 leaves the previous list in
    force, with a warning.

    The constructor reads the file once, so it blocks like :meth:`reload_if_changed`.
    :attr:`current` never blocks; replacing the list is a single reference assignment, so
    reading it from one thread while another reloads is safe.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        self._current = Revocations()
        # (mtime_ns, size, inode) of the content in force; None = missing / never read.
        self._stamp: tuple[int, int, int] | None = None
        self._missing = False
        self._last_problem: str | None = None
        self.reload_if_changed()

    @property
    def path(self) -> str:
        """The path of the revocation list."""
        return self._path

    @property
    def current(self) -> Revocations:
        """The revocation list in force."""
        return self._current

    def reload_if_changed(self) -> bool:
        """Re-read the file if its stat changed; True when the list in force changed.

        Blocks on file I/O: call it from a worker thread in async code.
        """
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            if not self._missing:
                logger.warning("revocation list %s is missing; nothing is revoked", self._path)
                self._missing = True
            self._stamp = None
            self._last_problem = None
            return self._replace(Revocations())
        except OSError as exc:
            self._warn_once(f"cannot stat revocation list {self._path}: {exc.strerror}")
            return False
        self._missing = False
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return False
        try:
            with open(self._path, "rb") as f:
                data = f.read()
        except OSError as exc:
            # Not recording the stamp: the same file may become readable without changing.
            self._warn_once(f"cannot read revocation list {self._path}: {exc.strerror}")
            return False
        # The content will not change without the stamp changing, so remember it either way.
        self._stamp = stamp
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is None or "\x00" in text:
            self._warn_once(
                f"revocation list {self._path} is not UTF-8 text; keeping the previous list"
            )
            return False
        self._last_problem = None
        return self._replace(Revocations.parse(text))

    def _replace(self, revocations: Revocations) -> bool:
        if revocations == self._current:
            return False
        self._current = revocations
        logger.info(
            "revocation list: %d token ids, %d subjects",
            len(revocations.jtis),
            len(revocations.subs),
        )
        return True

    def _warn_once(self, problem: str) -> None:
        # Called on every poll while the problem lasts; say it once.
        if problem != self._last_problem:
            logger.warning("%s", problem)
            self._last_problem = problem


@dataclass(frozen=True)
class TokenPlaces:
    """Where a protocol's clients may put their token. Every client may use ``?token=``
    and ``Authorization: Bearer <token>``; ``headers`` are more headers that carry the
    bare token (Scriptix's ``x-api-key``, ...); with ``bare_authorization``,
    ``Authorization: <token>`` without the Bearer word is read too (AssemblyAI's SDKs
    send their key so).

    A token in two places is refused (400), unless ``repeats_agree``: then the same
    token in several places is one token and only different ones are refused
    (Scriptix's clients may send it in a header and in the URL). ``close_code`` goes
    with every refusal, for clients that take their errors in-band.
    """

    headers: tuple[bytes, ...] = ()
    bare_authorization: bool = False
    repeats_agree: bool = False
    close_code: int = CLOSE_AUTH

    def describe(self) -> str:
        """Where a token may be, in words, for the refusal of a request without one."""
        names = ["?token=", "the Authorization header" if self.bare_authorization
                 else "Authorization: Bearer", *(f"the {h.decode()} header" for h in self.headers)]
        return f"{', '.join(names[:-1])} or {names[-1]}"


#: The Live API's places, and those of every endpoint that is not a peer's.
BEARER = TokenPlaces()

_AUTHORIZATION = "the Authorization header"


def extract_token(target: str, headers: Iterable[tuple[bytes, bytes]],
                  places: TokenPlaces = BEARER) -> str:
    """Return the token of a handshake request.

    ``target`` is the request target including the query string; ``headers`` are
    ``(name, value)`` byte pairs. The token comes from ``?token=``, ``Authorization``
    (scheme case-insensitive) or another of ``places``'s headers.

    Raises ``AuthError`` with ``places.close_code``: ``invalid_request`` (400) when the
    token is given in more than one place (or, where ``places.repeats_agree``, when
    they differ), ``missing_token`` (401) when it is given nowhere, ``invalid_token``
    (401) for another authorization scheme or an empty or malformed token. Messages
    never quote a token.
    """
    found: list[tuple[str, str]] = []  # (where, the value as sent)
    for key, value in parse_qsl(urlsplit(target).query, keep_blank_values=True):
        if key == "token":
            found.append(("?token=", value))
    for name, raw in headers:
        lname = name.lower()
        if lname == b"authorization":
            found.append((_AUTHORIZATION, raw.decode("latin-1")))
        elif lname in places.headers:
            found.append((f"the {lname.decode('latin-1')} header", raw.decode("latin-1")))
    if not found:
        raise AuthError("missing_token", f"a token is required: {places.describe()}",
                        status=401, close_code=places.close_code)
    places_used = ", ".join(sorted({where for where, _ in found}))
    if len(found) > 1 and not places.repeats_agree:
        raise AuthError("invalid_request", f"the token is given more than once "
                        f"({places_used}); give it once", status=400,
                        close_code=places.close_code)
    tokens = {_token_in(where, value, places) for where, value in found}
    if len(tokens) > 1:
        raise AuthError("invalid_request", f"different tokens ({places_used}); give one",
                        status=400, close_code=places.close_code)
    return tokens.pop()


def _token_in(where: str, value: str, places: TokenPlaces) -> str:
    token = value.strip()
    if where == _AUTHORIZATION:
        scheme, _, credentials = token.partition(" ")
        if scheme.lower() == "bearer":
            token = credentials.strip()
        elif not places.bare_authorization:
            raise AuthError("invalid_token", "the Authorization header must be "
                            "\"Bearer <token>\"", status=401, close_code=places.close_code)
    if not token:
        raise AuthError("invalid_token", f"empty token in {where}", status=401,
                        close_code=places.close_code)
    if any(c.isspace() for c in token):
        raise AuthError("invalid_token", f"malformed token in {where}", status=401,
                        close_code=places.close_code)
    return token


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

    claims = Claims(
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
    )
    if revoked is not None and revoked.is_revoked(claims):
        raise AuthError("token_revoked", "token has been revoked", status=401)
    return claims


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
