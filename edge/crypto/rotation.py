"""Opening the data key as the daemon and every tool do, and rotating it crash-safely.

:func:`open_key` finds the key (:func:`~edge.crypto.datakey.locate`), finishes or undoes
a rotation that a crash interrupted, and reads it.

:func:`rotate` re-encrypts the journal and the voiceprint store under a new key. The
steps, each durable before the next:

1. the new key is written beside the current one as ``<key>.next`` (sealed the same
   way, or as asked) and read back (a Tang server that does not answer stops the
   rotation here, before any data is touched);
2. the journal is copied, re-encrypted, to ``<journal>.rekey`` (under an exclusive
   lock: the daemon must be stopped) and the voiceprint store to
   ``<voiceprints>.rekey``;
3. **the commit**: ``<journal>.rekey`` replaces the journal (one rename);
4. ``<voiceprints>.rekey`` replaces the store, then ``<key>.next`` replaces the key.

Whatever the step a ``kill -9`` or a power cut stops it at, :func:`open_key` then finds
a journal that opens with the current key (no commit: the ``.rekey`` and ``.next`` files
are removed) or with the ``.next`` key (committed: steps 4 are finished). Without a
journal, the voiceprint store's rename is the commit. Blocking; no trio.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from edge.core.config import Config, journal_path, voiceprints_path
from edge.core.fs import atomic_write, fsync_dir
from edge.crypto import datakey
from edge.crypto.datakey import (
    CREDENTIAL,
    DataKey,
    DataKeyError,
    KeySource,
    encode,
    generate,
    locate,
    read,
)
from edge.crypto.sealed import SealedError, is_sealed, open_sealed, seal
from edge.journal.db import JournalError, export_rekeyed, key_opens
from edge.speakers.voiceprints import PURPOSE as VOICEPRINTS

logger = logging.getLogger(__name__)

REKEY_SUFFIX = ".rekey"


@dataclass(frozen=True)
class Sealing:
    """How to seal a new key with Clevis: Tang servers and/or a TPM2."""

    tang: tuple[str, ...] = ()
    tang_thumbprints: tuple[str, ...] | None = None
    tpm2: bool = False
    threshold: int = 1

    @property
    def empty(self) -> bool:
        return not self.tang and not self.tpm2


def open_key(config: Config, *, dev: bool = False, dev_existing: bool = False,
             timeout: float = 30.0) -> DataKey:
    """The data key, with any interrupted rotation settled (see
    :func:`~edge.crypto.datakey.locate` for ``dev`` and ``dev_existing``). Raises
    DataKeyError."""
    source = locate(config, dev=dev, dev_existing=dev_existing)
    return settle(source, journal_path(config), voiceprints_path(config), timeout=timeout)


def settle(source: KeySource, journal: Path, voiceprints: Path, *,
           timeout: float = 30.0) -> DataKey:
    """Read the key at ``source``, first finishing or undoing a rotation that was
    interrupted (see the module doc). Raises DataKeyError."""
    nxt = source.next_path
    if source.kind == CREDENTIAL or not nxt.exists():
        return read(source, timeout=timeout)
    current = read(source, timeout=timeout)
    committed = _committed(current, journal, voiceprints)
    _remove_temporaries(_rekey(voiceprints), nxt)
    if committed is False:
        for leftover in (_rekey(journal), _rekey(voiceprints), nxt):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        logger.warning("an interrupted key rotation was undone: the data stays under the "
                       "%s", source.describe())
        return current
    new = read(source, nxt, timeout=timeout)
    if not _opens_all(new, journal, voiceprints):
        raise DataKeyError(source.config_key,
                           f"neither the {source.describe()} nor its rotation's new key "
                           f"({nxt}) opens the journal and voiceprints")
    _finish(source, voiceprints)
    logger.warning("an interrupted key rotation was finished: the data is under the new "
                   "%s", source.describe())
    return DataKey(new.material, source)


def _committed(current: DataKey, journal: Path, voiceprints: Path) -> bool | None:
    """False when the data still opens with ``current`` (no commit), True when it does
    not, None when there is nothing to tell by."""
    try:
        opens = key_opens(journal, current)
    except JournalError as exc:
        raise DataKeyError(current.source.config_key, str(exc)) from None
    if opens is not None:
        return not opens
    if _rekey(voiceprints).exists():
        return False  # without a journal, the store's rename is the commit
    store = _store_opens(voiceprints, current)
    return None if store is None else not store


def _opens_all(key: DataKey, journal: Path, voiceprints: Path) -> bool:
    try:
        journal_ok = key_opens(journal, key)
    except JournalError:
        return False
    # Once the journal is committed, the store's new copy may not be in place yet.
    store = _rekey(voiceprints) if _rekey(voiceprints).exists() else voiceprints
    store_ok = _store_opens(store, key)
    return journal_ok is not False and store_ok is not False


def _store_opens(path: Path, key: DataKey) -> bool | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DataKeyError(key.source.config_key,
                           f"cannot read {path}: {exc.strerror}") from None
    if not is_sealed(data):
        return None
    try:
        open_sealed(key, VOICEPRINTS, data)
    except SealedError:
        return False
    return True


def _finish(source: KeySource, voiceprints: Path) -> None:
    if _rekey(voiceprints).exists():
        os.replace(_rekey(voiceprints), voiceprints)
        fsync_dir(voiceprints.parent)
    os.replace(source.next_path, source.path)
    fsync_dir(source.path.parent)


def _remove_temporaries(*paths: Path) -> None:
    """What :func:`~edge.core.fs.atomic_write` leaves when killed before its rename."""
    for path in paths:
        for leftover in path.parent.glob(f".{path.name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def _rekey(path: Path) -> Path:
    return path.with_name(path.name + REKEY_SUFFIX)


def rotate(config: Config, *, sealing: Sealing | None = None,
           timeout: float = 60.0) -> tuple[DataKey, DataKey]:
    """Re-encrypt the journal and voiceprints under a new key and make it the key
    (see the module doc); returns (old, new). ``sealing`` seals the new key another
    way (a sealed key only); by default as the current one is. The daemon must be
    stopped. Raises DataKeyError (nothing changed, or a state :func:`open_key` settles).
    """
    source = locate(config, dev_existing=True)
    if source.kind == CREDENTIAL:
        raise DataKeyError(source.config_key, f"the key comes from the {source.describe()}, "
                           "which edge cannot rewrite: rotate the file it is loaded from "
                           "(set journal.key_file or journal.key_jwe to it)")
    journal, voiceprints = journal_path(config), voiceprints_path(config)
    old = settle(source, journal, voiceprints, timeout=timeout)
    material = generate()
    nxt = source.next_path
    if source.sealed:
        sealed = _seal(material, old, sealing, timeout=timeout)
        atomic_write(nxt, sealed, mode=0o600)
    else:
        if sealing is not None and not sealing.empty:
            raise DataKeyError("--tang", f"the key is a plain key file ({source.path}): "
                               "seal a new one with `edge keys init --tang/--tpm2` instead")
        datakey.write_key_file(nxt, material)
    try:
        new = read(source, nxt, timeout=timeout)
        if new.material != material:
            raise DataKeyError(source.config_key, f"the new key read back from {nxt} "
                               "differs from the one written")
        store = _sealed_store(voiceprints, old, new)
        if journal.exists():
            export_rekeyed(journal, old, new, _rekey(journal))
        if store is not None:
            atomic_write(_rekey(voiceprints), store, mode=0o600)
    except (DataKeyError, JournalError, OSError) as exc:
        for leftover in (_rekey(journal), _rekey(voiceprints), nxt):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        if isinstance(exc, DataKeyError):
            raise
        detail = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise DataKeyError(source.config_key, f"rotation stopped, nothing changed: "
                           f"{detail}") from None
    if journal.exists():
        os.replace(_rekey(journal), journal)  # the commit
        fsync_dir(journal.parent)
    _finish(source, voiceprints)
    logger.info("data key rotated: %s now holds key %s (was %s)", source.describe(),
                new.fingerprint, old.fingerprint)
    return old, DataKey(new.material, source)


def _sealed_store(path: Path, old: DataKey, new: DataKey) -> bytes | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    plaintext = data
    if is_sealed(data):
        try:
            plaintext = open_sealed(old, VOICEPRINTS, data)
        except SealedError as exc:
            raise DataKeyError(old.source.config_key,
                               f"voiceprint file {path}: {exc}") from None
    return seal(new, VOICEPRINTS, plaintext)


def _seal(material: bytes, old: DataKey, sealing: Sealing | None, *,
          timeout: float) -> bytes:
    from edge.crypto import clevis

    try:
        if sealing is None or sealing.empty:
            # As the current key is sealed, pinned to the Tang keys it was sealed
            # with: a server whose keys changed since needs --tang-thp.
            pins = clevis.pins(old.source.path.read_bytes())
            keys = pins.tang_signing_keys
            pinned = (tuple(k[0] for k in keys)
                      if len(keys) == len(pins.tang) and all(keys) else None)
            sealing = Sealing(tang=tuple(pins.tang), tang_thumbprints=pinned,
                              tpm2=pins.tpm2, threshold=pins.threshold)
        return clevis.seal(encode(material), tang=sealing.tang,
                           tang_thumbprints=sealing.tang_thumbprints, tpm2=sealing.tpm2,
                           threshold=sealing.threshold, timeout=timeout)
    except (clevis.ClevisError, OSError) as exc:
        raise DataKeyError(old.source.config_key,
                           f"cannot seal a new key: {exc}") from None


def seal_new(material: bytes, sealing: Sealing, *, timeout: float = 60.0) -> bytes:
    """A new key sealed with Clevis as ``sealing`` says (for ``edge keys init``)."""
    from edge.crypto import clevis

    try:
        return clevis.seal(encode(material), tang=sealing.tang,
                           tang_thumbprints=sealing.tang_thumbprints, tpm2=sealing.tpm2,
                           threshold=sealing.threshold, timeout=timeout)
    except clevis.ClevisError as exc:
        raise DataKeyError("--tang" if sealing.tang else "--tpm2",
                           f"cannot seal a new key: {exc}") from None
