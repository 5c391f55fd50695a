"""Sealed files: a whole file's bytes encrypted and authenticated with AES-256-GCM.

For small files with patient data that are not SQLite (the voiceprint store): the file
is ``MAGIC || nonce (12 bytes) || ciphertext+tag``, under a subkey of the data key
(:meth:`~edge.crypto.datakey.DataKey.subkey`) and with ``MAGIC || purpose`` as
associated data, so that a file sealed for one purpose does not open as another. A
fresh random nonce per write (files are written whole, a few times a day at most: far
below the 2**32 messages a random 96-bit nonce allows per key).

Pure functions over bytes (``cryptography``); no files, no trio.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.crypto.datakey import DataKey

MAGIC = b"edge-sealed-v1\n"
_NONCE = 12
_TAG = 16


class SealedError(ValueError):
    """Bytes that are not a sealed file, or that do not open with the key given
    (a wrong key, or a damaged or altered file: GCM cannot tell them apart)."""


def is_sealed(data: bytes) -> bool:
    return data.startswith(MAGIC)


def seal(key: DataKey, purpose: str, plaintext: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    aesgcm = AESGCM(key.subkey(purpose))
    return MAGIC + nonce + aesgcm.encrypt(nonce, plaintext, MAGIC + purpose.encode())


def open_sealed(key: DataKey, purpose: str, data: bytes) -> bytes:
    """The plaintext of ``data``; raises :class:`SealedError`."""
    if not is_sealed(data):
        raise SealedError("not a sealed file")
    body = data[len(MAGIC):]
    if len(body) < _NONCE + _TAG:
        raise SealedError("a sealed file cut short")
    nonce, ciphertext = body[:_NONCE], body[_NONCE:]
    try:
        return AESGCM(key.subkey(purpose)).decrypt(nonce, ciphertext,
                                                   MAGIC + purpose.encode())
    except InvalidTag:
        raise SealedError("does not open with this key (a wrong key, or a damaged "
                          "file)") from None
