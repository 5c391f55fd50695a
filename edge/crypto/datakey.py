"""The data key: the 256-bit key that encrypts patient data at rest.

One random key per device protects everything with transcripts or voiceprints on it:
the journal (SQLCipher) and the voiceprint store (AES-256-GCM). Each use gets its own
subkey, derived with HKDF-SHA256 (``info`` names the use), so that no two ciphers ever
share a key. The key is random (``secrets``), never a password: no slow KDF is needed
and none is used.

Where it comes from (:func:`locate`), in order; the first that is configured or present
wins:

1. ``journal.key_file`` (or ``$EDGE_JOURNAL_KEY_FILE``): a file holding the key as 64
   hex digits. For development and tests; on a device this file is on the card.
2. ``journal.key_jwe`` (or ``$EDGE_JOURNAL_KEY_JWE``): the key sealed with Clevis (a
   Tang server, a TPM2, or both), opened with ``clevis decrypt`` at start.
3. The systemd credentials ``journal-key`` (the key itself, e.g. from
   ``LoadCredentialEncrypted=``) or ``journal-key.jwe`` (a Clevis JWE, from
   ``LoadCredential=``) in ``$CREDENTIALS_DIRECTORY``: picked up without configuration.
4. ``<state dir>/journal-key.jwe``, where ``edge keys init --tang/--tpm2`` puts a
   sealed key by default.
5. With ``edge serve --dev`` only: a development key generated once in
   ``<state dir>/dev-journal-key`` (0600), beside the development JWT secret.

Key files hold the key itself; a sealed key has a ``.next`` sibling while
``edge keys rotate`` runs (see :mod:`edge.crypto.rotation`).

Blocking (file reads, ``clevis`` in a subprocess); no trio. Key material never reaches
a log line, a repr or an exception message: errors name the key's *source*.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge.core.config import Config, state_dir
from edge.core.errors import ConfigError
from edge.core.fs import atomic_write

KEY_BYTES = 32
CREDENTIAL_NAME = "journal-key"
SEALED_CREDENTIAL_NAME = "journal-key.jwe"
SEALED_NAME = "journal-key.jwe"  # in the state directory
DEV_KEY_NAME = "dev-journal-key"
NEXT_SUFFIX = ".next"

#: The kinds of source, as shown by ``edge keys status`` and ``/healthz``.
FILE, SEALED, CREDENTIAL, DEVELOPMENT = "file", "clevis", "credential", "development"


class DataKeyError(ConfigError):
    """The key cannot be found, read, unsealed, or does not open the data.

    A :class:`ConfigError` (exit code 2): restarting will not fix it. ``key`` is the
    config key an operator looks at; the message names the source, never the key."""


@dataclass(frozen=True)
class KeySource:
    """Where the key is read from, before it is read."""

    kind: str  # FILE, SEALED, CREDENTIAL or DEVELOPMENT
    path: Path
    config_key: str  # what an operator sets to change it ("journal.key_file", ...)

    @property
    def sealed(self) -> bool:
        return self.path.name.endswith(".jwe")

    @property
    def next_path(self) -> Path:
        """Where a rotation keeps the new key until the data is re-encrypted."""
        return self.path.with_name(self.path.name + NEXT_SUFFIX)

    def describe(self) -> str:
        if self.kind == CREDENTIAL:
            how = "Clevis-sealed " if self.sealed else ""
            return f"{how}systemd credential {self.path.name}"
        if self.kind == SEALED:
            return f"Clevis-sealed key {self.path} ({self.config_key})"
        if self.kind == DEVELOPMENT:
            return f"development key {self.path}"
        return f"key file {self.path} ({self.config_key})"


@dataclass(frozen=True)
class DataKey:
    """The key, and where it came from. ``material`` is never shown."""

    material: bytes = field(repr=False)
    source: KeySource

    def __post_init__(self) -> None:
        if len(self.material) != KEY_BYTES:
            raise ValueError("a data key is 32 bytes")

    def subkey(self, purpose: str) -> bytes:
        """A 256-bit key for one use (``"journal"``, ``"voiceprints"``): HKDF-SHA256."""
        return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                    info=b"edge data key v1: " + purpose.encode()).derive(self.material)

    @property
    def fingerprint(self) -> str:
        """16 hex digits that tell keys apart without revealing them (for status)."""
        return hmac.new(self.material, b"edge key fingerprint", hashlib.sha256
                        ).hexdigest()[:16]

    @property
    def development(self) -> bool:
        return self.source.kind == DEVELOPMENT

    def describe(self) -> str:
        return self.source.describe()


def generate() -> bytes:
    """A new random key."""
    return secrets.token_bytes(KEY_BYTES)


def encode(material: bytes) -> bytes:
    """A key as a key file holds it: 64 hex digits and a newline."""
    return material.hex().encode() + b"\n"


def decode(text: bytes, source: str) -> bytes:
    """The key in a key file's (or an unsealed JWE's) bytes. Raises ValueError naming
    ``source`` (never the bytes)."""
    stripped = text.strip()
    if len(stripped) != 2 * KEY_BYTES:
        raise ValueError(f"{source} does not hold a key (64 hex digits)")
    try:
        return binascii.unhexlify(stripped)
    except (binascii.Error, ValueError):
        raise ValueError(f"{source} does not hold a key (64 hex digits)") from None


def locate(config: Config, *, dev: bool = False, dev_existing: bool = False,
           environ: Mapping[str, str] | None = None) -> KeySource:
    """Where the key comes from (see the module doc); raises :class:`DataKeyError`
    saying how to make one when there is none. ``dev`` allows a development key
    (created if need be: ``edge serve --dev``); ``dev_existing`` one that exists
    already (the tools that read what a development daemon wrote). Blocking (looks at
    files)."""
    env = os.environ if environ is None else environ
    j = config.journal
    if j.key_file:
        return KeySource(FILE, Path(j.key_file), "journal.key_file")
    if j.key_jwe:
        return KeySource(SEALED, Path(j.key_jwe), "journal.key_jwe")
    credentials = env.get("CREDENTIALS_DIRECTORY")
    if credentials:
        for name in (CREDENTIAL_NAME, SEALED_CREDENTIAL_NAME):
            path = Path(credentials) / name
            if path.is_file():
                return KeySource(CREDENTIAL, path, f"systemd credential {name}")
    default_sealed = state_dir(config) / SEALED_NAME
    if default_sealed.is_file() or default_sealed.with_name(
            default_sealed.name + NEXT_SUFFIX).is_file():
        return KeySource(SEALED, default_sealed, "journal.key_jwe")
    dev_key = state_dir(config) / DEV_KEY_NAME
    if dev or (dev_existing and dev_key.is_file()):
        return KeySource(DEVELOPMENT, dev_key, "journal.key_file")
    raise DataKeyError(
        "journal.key_file",
        "no key for the journal and voiceprints: seal one with `edge keys init --tang URL` "
        "(or --tpm2), give a key file (journal.key_file, EDGE_JOURNAL_KEY_FILE, "
        "`edge keys init --file PATH`) or the systemd credential journal-key, or run "
        "`edge serve --dev` for a development key")


def read(source: KeySource, path: Path | None = None, *, timeout: float = 30.0) -> DataKey:
    """Read (and unseal) the key at ``source`` (or at ``path``, a rotation's ``.next``
    file of the same kind). A development key is created on first use. Raises
    :class:`DataKeyError` naming the source. Blocking: a sealed key asks its Tang
    server or TPM, bounded by ``timeout``."""
    path = source.path if path is None else path
    where = source.describe() if path == source.path else f"{source.describe()} ({path})"
    if source.kind == DEVELOPMENT and not path.exists():
        _create_development_key(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataKeyError(source.config_key,
                           f"cannot read the {where}: {exc.strerror}") from None
    if path.name.endswith(".jwe") or path.name.endswith(".jwe" + NEXT_SUFFIX):
        from edge.crypto.clevis import ClevisError, unseal

        try:
            data = unseal(data, timeout=timeout)
        except ClevisError as exc:
            raise DataKeyError(source.config_key,
                               f"cannot unseal the {where}: {exc}") from None
    try:
        material = decode(data, f"the {where}")
    except ValueError as exc:
        raise DataKeyError(source.config_key, str(exc)) from None
    return DataKey(material, source)


def load(config: Config, *, dev: bool = False, timeout: float = 30.0) -> DataKey:
    """:func:`locate` then :func:`read`: the key the daemon and every tool use."""
    return read(locate(config, dev=dev), timeout=timeout)


def write_key_file(path: Path, material: bytes) -> None:
    """Write a key file (0600, atomically, durably); its directory is created 0700."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(path, encode(material), mode=0o600)


def _create_development_key(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return  # another process made it first
    with os.fdopen(fd, "wb") as f:
        f.write(encode(generate()))
        f.flush()
        os.fsync(f.fileno())
