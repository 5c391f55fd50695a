"""The journal's SQLCipher file: keyed connections, the key check, encrypting a
plaintext journal in place, and re-keying.

Encryption. The file is a SQLCipher 4 database: every page (the WAL's too, and any
temporary file, though temporary tables are kept in memory) is encrypted with AES-256
and authenticated with HMAC-SHA512, under the ``journal`` subkey of the device's data
key (:class:`~edge.crypto.datakey.DataKey`; a raw key, so no KDF runs at open). Nothing
is in the clear but the file's size: not table names, session ids or times. A journal
that exists and does not open with the key raises :class:`JournalKeyError`; it is never
set aside or replaced, and no plaintext file is ever created beside it. A plaintext
journal (an edge from before encryption) is encrypted in place at the first read-write
open with a key: exported to ``<name>.encrypting``, which then replaces it; the
plaintext file is kept as ``<name>.plaintext`` until the encrypted one is in place,
then overwritten with zeros and removed. A crash at any point leaves either the
plaintext journal (encrypted again at the next open) or the encrypted one.

Plain blocking code (``sqlcipher3``); no trio.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from sqlcipher3 import dbapi2 as sqlite3

from edge.core.fs import create_private, fsync_dir, shred
from edge.crypto.datakey import DataKey
from edge.journal.records import JournalError, JournalKeyError

# SQLite primary result codes that mean "this file is damaged", not "the world is busy".
SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26

_PLAINTEXT_HEADER = b"SQLite format 3\x00"
_PLAINTEXT_SUFFIX = ".plaintext"  # a plaintext journal while its encrypted copy goes in
_ENCRYPTING_SUFFIX = ".encrypting"  # the encrypted copy being written


def damaged(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)


def key_pragma(key: DataKey) -> str:
    """SQLCipher's form of a raw 256-bit key (no KDF runs at open)."""
    return f"x'{key.subkey('journal').hex()}'"


def keyed(target: str | Path, secret: str, *, uri: bool = False) -> sqlite3.Connection:
    """A SQLCipher connection with the key set and its error log off (it would print
    to stderr). Raises sqlite3.Error."""
    conn = sqlite3.connect(target, uri=uri, timeout=10.0, isolation_level=None,
                           check_same_thread=False)
    try:
        conn.execute("PRAGMA cipher_log_level = NONE")
        conn.execute(f'PRAGMA key = "{secret}"')
    except BaseException:
        conn.close()
        raise
    return conn


def check_key(conn: sqlite3.Connection, path: Path, key: DataKey) -> None:
    """Read the first page, the one place a wrong key shows. Raises JournalKeyError."""
    try:
        conn.execute("PRAGMA user_version").fetchone()  # decrypts page 1, no more
    except sqlite3.Error as exc:
        # SQLCipher reports a page that fails its HMAC as "not a database"; a file cut
        # short or otherwise malformed past its first page is damage, not a key problem.
        code = getattr(exc, "sqlite_errorcode", None)
        if code is None or code & 0xFF != SQLITE_NOTADB:
            raise
        raise JournalKeyError(
            f"the journal {path} does not open with the {key.describe()}: a wrong key, or "
            "a damaged file (it is not set aside: move it away yourself if the key is "
            "right and the data is lost)") from None

def is_plaintext(path: Path) -> bool:
    """Whether ``path`` is a plaintext SQLite database (SQLCipher's first 16 bytes are
    a random salt; SQLite's are its magic string)."""
    try:
        with path.open("rb") as f:
            return f.read(len(_PLAINTEXT_HEADER)) == _PLAINTEXT_HEADER
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise JournalError(f"cannot read the journal {path}: {exc.strerror}") from exc


def sidecars(path: Path) -> list[Path]:
    return [Path(f"{path}{suffix}") for suffix in ("-wal", "-shm", "-journal")]


def recover_encryption(path: Path) -> None:
    """Finish or undo an encryption in place that a crash interrupted."""
    plain = path.with_name(path.name + _PLAINTEXT_SUFFIX)
    partial = path.with_name(path.name + _ENCRYPTING_SUFFIX)
    try:
        if plain.exists():
            if path.exists() and path.stat().st_size and not is_plaintext(path):
                for leftover in (plain, *sidecars(plain)):
                    shred(leftover)  # the encrypted journal is in place: this is stale
            else:
                os.replace(plain, path)  # the swap never happened: start again
                for sidecar, original in zip(sidecars(plain), sidecars(path), strict=True):
                    if sidecar.exists():
                        os.replace(sidecar, original)
                fsync_dir(path.parent)
        for leftover in (partial, *sidecars(partial)):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    except OSError as exc:
        raise JournalError(f"cannot finish encrypting the journal {path}: "
                           f"{exc.strerror}") from exc


def export(source: sqlite3.Connection, target: Path, secret: str) -> None:
    """Copy the database open on ``source`` into a new file ``target`` keyed by
    ``secret`` (``sqlcipher_export``): same schema, rows and ``user_version``, WAL mode,
    0600, fsynced. Raises sqlite3.Error or OSError; ``target`` must not exist."""
    create_private(target)
    (version,) = source.execute("PRAGMA user_version").fetchone()
    source.execute("ATTACH DATABASE ? AS rekeyed KEY ?", (str(target), secret))
    try:
        source.execute("SELECT sqlcipher_export('rekeyed')").fetchall()
        source.execute(f"PRAGMA rekeyed.user_version = {int(version)}")
    finally:
        source.execute("DETACH DATABASE rekeyed")
    check = keyed(target, secret)
    try:
        (mode,) = check.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise JournalError(f"the filesystem does not support WAL mode (got {mode!r})")
    finally:
        check.close()  # the last connection: its WAL is checkpointed and removed
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encrypt_plaintext(path: Path, secret: str) -> None:
    """Encrypt a plaintext journal in place (see the module doc). Raises JournalError."""
    partial = path.with_name(path.name + _ENCRYPTING_SUFFIX)
    plain = path.with_name(path.name + _PLAINTEXT_SUFFIX)
    try:
        source = sqlite3.connect(path, timeout=10.0, isolation_level=None,
                                 check_same_thread=False)
        try:
            source.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            export(source, partial, secret)
        finally:
            source.close()
        os.replace(path, plain)
        for sidecar in sidecars(path):  # normally gone with the last connection
            if sidecar.exists():
                os.replace(sidecar, Path(f"{plain}{sidecar.name[len(path.name):]}"))
        os.replace(partial, path)
        fsync_dir(path.parent)
        for leftover in (plain, *sidecars(plain)):
            shred(leftover)
    except (OSError, sqlite3.Error) as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        detail = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise JournalError(f"cannot encrypt the plaintext journal {path}: {detail}"
                           ) from exc


def key_opens(path: str | os.PathLike[str], key: DataKey) -> bool | None:
    """Whether ``key`` opens the journal at ``path`` (None: there is no journal, or it
    is plaintext). Reads the first page only; blocking."""
    path = Path(path)
    if not path.is_file() or not path.stat().st_size or is_plaintext(path):
        return None
    try:
        # immutable: no locks, no -wal or -shm made beside the file; the first page,
        # all this reads, is in the main file once the journal has been opened.
        conn = keyed(path.resolve().as_uri() + "?mode=ro&immutable=1", key_pragma(key),
                      uri=True)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open the journal {path}: {exc}") from exc
    try:
        check_key(conn, path, key)
    except JournalKeyError:
        return False
    except sqlite3.Error as exc:
        raise JournalError(f"cannot read the journal {path}: {exc}") from exc
    finally:
        conn.close()
    return True


def export_rekeyed(path: str | os.PathLike[str], old: DataKey, new: DataKey,
                   target: str | os.PathLike[str]) -> None:
    """Write the journal at ``path`` (keyed by ``old``) to a new file ``target`` keyed by
    ``new``, holding an exclusive lock meanwhile: raises JournalError if another process
    (a running daemon, ``edge transcripts``) has the journal open. Leaves ``path`` as it
    was, with its WAL checkpointed and removed. Blocking."""
    path, target = Path(path), Path(target)
    for leftover in (target, *sidecars(target)):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
    try:
        conn = keyed(path, key_pragma(old))
        conn.execute("PRAGMA busy_timeout = 100")
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open the journal {path}: {exc}") from exc
    try:
        check_key(conn, path, old)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        try:
            conn.execute("BEGIN EXCLUSIVE")
            conn.execute("COMMIT")
        except sqlite3.OperationalError:
            raise JournalError(f"the journal {path} is in use by another process: stop "
                               "the daemon first (systemctl stop edge)") from None
        export(conn, target, key_pragma(new))
    except sqlite3.Error as exc:
        raise JournalError(f"cannot re-encrypt the journal {path}: {exc}") from exc
    finally:
        conn.close()
    for sidecar in sidecars(path):
        if sidecar.exists() and sidecar.name.endswith("-wal") and sidecar.stat().st_size:
            raise JournalError(f"the journal's WAL {sidecar} was not emptied")


def connect(path: str | os.PathLike[str], key: DataKey) -> sqlite3.Connection:
    """A bare connection to the journal at ``path``, keyed, for tools and tests that
    inspect the file (autocommit; the caller closes it). Raises JournalKeyError when
    the key does not open it."""
    path = Path(path)
    conn = keyed(path, key_pragma(key))
    try:
        check_key(conn, path, key)
    except BaseException:
        conn.close()
        raise
    return conn
