"""Keys and identity: the secret or public key tokens are verified with, and the
device's id. Blocking (small file reads); free of trio, vosk and numpy, so that
``edge token`` and ``edge transcripts`` start fast.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from edge.core.config import Config, state_dir
from edge.core.errors import ConfigError

if TYPE_CHECKING:
    from edge.core.auth import AuthSettings

DEV_SECRET_NAME = "dev-jwt-secret"
CREDENTIAL_NAME = "jwt-secret"


def dev_secret_path(config: Config) -> Path:
    return state_dir(config) / DEV_SECRET_NAME


def ensure_dev_secret(config: Config) -> str:
    """The development secret, created (0600, random 256 bits) on first use. Blocking."""
    path = dev_secret_path(config)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def signing_key(config: Config, *, dev: bool = False) -> str:
    """The HS256 secret or RS256 public key the server verifies with. Blocking (files).

    HS256 looks, in order, at ``auth.secret`` (or ``EDGE_JWT_SECRET``),
    ``auth.secret_file``, the systemd credential ``jwt-secret``, and, with ``dev``,
    the generated development secret. Raises :class:`ConfigError` naming the key.
    """
    a = config.auth
    if a.algorithm == "RS256":
        if not a.public_key_file:
            raise ConfigError("auth.public_key_file", "RS256 needs a PEM public key file")
        return _read_key_file("auth.public_key_file", a.public_key_file)
    if a.secret:
        secret = a.secret
    elif a.secret_file:
        secret = _read_key_file("auth.secret_file", a.secret_file).strip()
    elif os.environ.get("CREDENTIALS_DIRECTORY") and (
            Path(os.environ["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME).is_file():
        secret = (Path(os.environ["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME).read_text().strip()
    elif dev:
        secret = ensure_dev_secret(config)
    else:
        raise ConfigError("auth.secret", "no JWT secret configured: set EDGE_JWT_SECRET, "
                          "auth.secret_file, or run `edge serve --dev` for a development secret")
    if len(secret.encode()) < 32:
        raise ConfigError("auth.secret", "the HS256 secret must be at least 32 bytes")
    return secret


def optional_signing_key(config: Config, *, dev: bool = False) -> str | None:
    """:func:`signing_key`, or None when a JWKS URL is configured (``auth.jwks_url``)
    and neither a secret nor a public key is: the identity provider's keys are enough.
    Blocking (files)."""
    a = config.auth
    if a.jwks_url:
        credential = os.environ.get("CREDENTIALS_DIRECTORY")
        configured = (a.public_key_file if a.algorithm == "RS256" else
                      a.secret or a.secret_file or dev or (
                          credential and (Path(credential) / CREDENTIAL_NAME).is_file()))
        if not configured:
            return None
    return signing_key(config, dev=dev)


def auth_settings(config: Config, *, dev: bool = False) -> AuthSettings:
    """How tokens are verified: ``[auth]`` with the key of :func:`signing_key`. Blocking
    (files). Raises :class:`ConfigError` naming the key, ``ValueError`` for a key that
    does not fit the algorithm."""
    from edge.core.auth import AuthSettings  # PyJWT is loaded only where tokens are verified
    from edge.core.jwks import KeyStore

    a = config.auth
    jwks = KeyStore(a.jwks_url, a.algorithms) if a.jwks_url else None
    return AuthSettings(algorithm=a.algorithm, key=optional_signing_key(config, dev=dev),
                        issuer=a.issuer or None, audience=a.audience or None,
                        leeway=a.leeway, max_lifetime=a.max_token_lifetime, jwks=jwks)


def _read_key_file(key: str, path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from exc


def device_id(config: Config) -> str:
    """This device's id in journals (and upstream): ``relay.device_id`` or the host name."""
    return config.relay.device_id or socket.gethostname() or "edge"
