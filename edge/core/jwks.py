"""The identity provider's signing keys, from its JWKS URL (RFC 7517 key sets).

What is here: the checks on a configured URL (:func:`check_url`), a parsed key set and
the choice of a token's key by its ``kid`` (:class:`KeySet`, parsed by PyJWT's
``PyJWKSet``: no JWK is parsed by hand), the key set in force and what ``/healthz``
shows of it (:class:`KeyStore`), the blocking fetch of the document
(:func:`fetch_document`) and its copy on disk, sealed with the data key so that nobody
can slip a key in (:func:`save_cache`, :func:`load_cache`).

No trio: the service that fetches on a schedule and on demand is
:mod:`edge.net.jwks`. :func:`fetch_document`, :func:`save_cache` and
:func:`load_cache` block (network, files); everything else is computation. Key sets
hold public keys only; still, no key material and no token reaches a log line or an
exception message, and nothing a client chose (a ``kid``) is echoed.
"""

from __future__ import annotations

import ipaddress
import json
import ssl
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt import PyJWK, PyJWKSet

from edge.core.errors import AuthError

#: The algorithms a key set may be used with: public-key signatures only. A symmetric
#: ("oct") key published in a key set would be a secret known to everyone.
ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
              "ES512", "EdDSA")
DEFAULT_ALGORITHMS = ("RS256", "ES256")

MIN_RSA_KEY_BITS = 2048
#: A key set larger than this is refused (providers publish a few keys: a few KiB).
MAX_DOCUMENT_BYTES = 256 * 1024
#: Tokens a request may carry candidates in (header values, ``?token=``) that are
#: looked at for an unknown ``kid``; more are ignored.
MAX_CANDIDATES = 4

PURPOSE = "jwks"  # the sealed cache's purpose (edge.crypto.sealed)
CACHE_NAME = "jwks.sealed"  # in the state directory

#: ``/metrics`` results of a fetch.
RESULTS = ("ok", "error", "invalid", "timeout")


class JwksError(Exception):
    """A key set that cannot be fetched or used. The message names the URL's host or
    the problem, never key material."""


def check_url(url: str) -> None:
    """Raise ``ValueError`` unless ``url`` is an https URL, or http on a loopback host
    (a provider on the device itself, or a test's)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise ValueError("is not a URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError(f"must be an https:// URL, got {url!r}")
    if parts.username or parts.password:
        raise ValueError("must not carry a user name or password")
    if parts.fragment:
        raise ValueError("must not have a #fragment")
    if parts.scheme == "http" and not _loopback(host):
        raise ValueError("must use https (plain http only on loopback: anyone on the path "
                         "could substitute their own keys)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _invalid(message: str) -> AuthError:
    return AuthError("invalid_token", message, status=401, close_code=1002)


@dataclass(frozen=True)
class KeySet:
    """A parsed key set: the usable keys by ``kid``, and the document they came from
    (kept for the disk cache). ``fetched_at`` is the Unix time it was fetched."""

    keys: Mapping[str, PyJWK]
    document: Mapping[str, Any] = field(repr=False)
    fetched_at: float

    @classmethod
    def parse(cls, document: Any, *, fetched_at: float) -> KeySet:
        """Parse a JWKS document (``{"keys": [...]}``). Keys PyJWT cannot use (unknown
        types, curves, damaged values) and keys without a ``kid`` are left out; the
        first of several keys with one ``kid`` wins. Raises :class:`JwksError` when no
        key is left."""
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise JwksError("not a JWK set (a JSON object with a \"keys\" list)")
        try:
            parsed = PyJWKSet.from_dict(document)
        except jwt.PyJWTError:
            raise JwksError("the key set holds no usable key") from None
        keys: dict[str, PyJWK] = {}
        for key in parsed.keys:
            kid = key.key_id
            if isinstance(kid, str) and kid and kid not in keys:
                keys[kid] = key
        if not keys:
            raise JwksError("the key set holds no key with a \"kid\"")
        return cls(keys=keys, document=document, fetched_at=fetched_at)

    def key_for(self, kid: str, alg: Any, algorithms: Iterable[str]) -> PyJWK:
        """The key a token names, for its header's ``alg``.

        Raises ``AuthError`` (``invalid_token``, 401) for a ``kid`` not in the set, a
        key that is not a public signing key (``kty`` oct, ``use`` other than ``sig``,
        ``key_ops`` with neither ``verify`` nor ``sign``, an RSA key under 2048 bits),
        and an ``alg`` the configuration does not allow or the key contradicts (its own
        ``alg``, or its type and curve). The configuration decides; the token only names its key.
        """
        key = self.keys.get(kid)
        if key is None:
            raise _invalid("the token's key (kid) is not in the identity provider's key set")
        data = key._jwk_data
        ops = data.get("key_ops")
        if key.key_type == "oct":
            raise _invalid("the token's key is a shared secret; only public keys are used")
        # key_ops "sign" is tolerated: providers that export a key pair publish the
        # private half's operations with the public one.
        if key.public_key_use not in (None, "sig") or (ops is not None and (
                not isinstance(ops, list) or not {"verify", "sign"} & set(map(str, ops)))):
            raise _invalid("the token's key is not a signing key (use, key_ops)")
        if isinstance(key.key, RSAPublicKey) and key.key.key_size < MIN_RSA_KEY_BITS:
            raise _invalid(f"the token's key is shorter than {MIN_RSA_KEY_BITS} bits")
        if not isinstance(alg, str) or alg not in set(algorithms) or alg != key.algorithm_name:
            raise _invalid("token algorithm is not accepted")
        return key

    def describe(self) -> list[dict[str, Any]]:
        """The keys as ``/healthz`` shows them: ``kid``, ``kty``, ``alg``, ``use``."""
        return [{"kid": kid, "kty": key.key_type, "alg": key.algorithm_name,
                 "use": key.public_key_use} for kid, key in self.keys.items()]


class KeyStore:
    """The key set in force for one URL, and what became of the last fetches.

    :attr:`current` is replaced whole (one reference assignment), so handshakes read
    it without locks while the service replaces it. Pure: the service
    (:mod:`edge.net.jwks`) fetches and calls :meth:`replace` / :meth:`failed`.
    """

    def __init__(self, url: str, algorithms: Iterable[str] = DEFAULT_ALGORITHMS) -> None:
        self.url = url
        self.algorithms = tuple(algorithms)
        self.current: KeySet | None = None
        self.source: str | None = None  # "network" or "disk"
        self.last_error: str | None = None
        self.last_attempt: float | None = None  # Unix time of the last fetch started
        self.fetches: Counter[str] = Counter({result: 0 for result in RESULTS})

    def knows(self, kid: str) -> bool:
        return self.current is not None and kid in self.current.keys

    def key_for(self, kid: str, alg: Any) -> PyJWK:
        """See :meth:`KeySet.key_for`; with no key set yet, every ``kid`` is unknown."""
        if self.current is None:
            raise _invalid("the identity provider's key set has not been fetched yet")
        return self.current.key_for(kid, alg, self.algorithms)

    def replace(self, keys: KeySet, *, source: str) -> None:
        self.current = keys
        self.source = source
        if source == "network":
            self.last_error = None

    def failed(self, result: str, error: str) -> None:
        self.fetches[result] += 1
        self.last_error = error

    def status(self) -> dict[str, Any]:
        """``/healthz``'s ``auth.jwks``: url, keys, fetched_at (ISO 8601 UTC or None),
        last_error, and where the keys in force came from."""
        keys = self.current
        return {
            "url": self.url,
            "keys": keys.describe() if keys else [],
            "fetched_at": _iso(keys.fetched_at) if keys else None,
            "source": self.source,
            "last_error": self.last_error,
        }


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def token_kids(target: str, headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The ``kid`` of every token a request may carry, unverified: the last word of
    each header value and each ``?token=`` that reads as a JWS. Only to decide whether
    the key set is worth fetching again before the request is verified; at most
    :data:`MAX_CANDIDATES` candidates."""
    candidates: list[str] = []
    for _, raw in headers:
        words = raw.decode("latin-1").split()
        if words and words[-1].count(".") == 2:
            candidates.append(words[-1])
    query = target.partition("?")[2]
    candidates += [v for k, v in parse_qsl(query, keep_blank_values=True) if k == "token"]
    kids = []
    for candidate in candidates[:MAX_CANDIDATES]:
        try:
            kid = jwt.get_unverified_header(candidate).get("kid")
        except (jwt.PyJWTError, ValueError, TypeError):
            continue
        if isinstance(kid, str) and 0 < len(kid) <= 256:
            kids.append(kid)
    return kids


def ssl_context(cafile: str | None) -> ssl.SSLContext:
    """The TLS context of fetches: the system's CAs, or ``cafile`` (a private CA).
    Blocking (reads the file); raises ``OSError`` or ``ssl.SSLError``."""
    return ssl.create_default_context(cafile=cafile or None)


class _SameSchemeRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects are followed only to the same scheme: never from https down to http."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        if urlsplit(newurl).scheme != urlsplit(req.full_url).scheme:
            raise urllib.error.HTTPError(req.full_url, code, "redirect to another scheme "
                                         "refused", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_document(url: str, *, context: ssl.SSLContext | None, timeout: float,
                   user_agent: str = "edge") -> Any:
    """GET the key set at ``url`` and return its JSON. Blocking, at most ``timeout``
    seconds in all (connect, TLS, every read), so a worker thread running it ends by
    itself. Raises ``TimeoutError`` or :class:`JwksError` (HTTP status, TLS, size,
    not JSON); messages name the problem, not the body."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={
        "Accept": "application/jwk-set+json, application/json", "User-Agent": user_agent})
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context),
                                         _SameSchemeRedirects())
    try:
        with opener.open(request, timeout=timeout) as response:
            chunks: list[bytes] = []
            size = 0
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError
                chunk = response.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_DOCUMENT_BYTES:
                    raise JwksError(f"the key set is larger than {MAX_DOCUMENT_BYTES} bytes")
                chunks.append(chunk)
    except urllib.error.HTTPError as exc:
        raise JwksError(f"HTTP {exc.code} from {_host(url)}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise TimeoutError from None
        raise JwksError(f"cannot reach {_host(url)}: {_reason(exc.reason)}") from None
    except (TimeoutError, JwksError):
        raise
    except OSError as exc:  # a reset or TLS error after the response started
        raise JwksError(f"cannot read from {_host(url)}: {_reason(exc)}") from None
    if time.monotonic() > deadline:
        raise TimeoutError
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        raise JwksError(f"{_host(url)} did not answer with JSON") from None


def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc or url


def _reason(reason: object) -> str:
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({reason.verify_message})"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__

