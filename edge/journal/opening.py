"""Opening the journal's file: checked, configured and migrated connections, and
setting aside a damaged file.

Files. The journal lives where the caller says (normally ``<state dir>/journal.db``).
Its directory is created 0700, the database 0600; SQLite gives its ``-wal`` and ``-shm``
files the database's mode (and owner, when run as root).

Recovery. :func:`connect` runs ``PRAGMA quick_check``. A file that is not a database,
is malformed, fails the check, or carries a schema from a newer edge raises
:class:`~edge.journal.schema.Unusable`, and :meth:`Journal.open
<edge.journal.db.Journal.open>` moves it aside with :func:`set_aside` to
``<name>.corrupt-<UTC time>`` (with its ``-wal``/``-shm``) and starts a fresh journal.
A WAL cut mid-write needs nothing from us: SQLite replays the frames up to the last
intact commit.

Plain blocking code (``sqlcipher3``); no trio.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from pathlib import Path

from sqlcipher3 import dbapi2 as sqlite3

from edge.core.fs import create_private, fsync_dir
from edge.crypto.datakey import DataKey
from edge.journal.records import JournalError, JournalKeyError
from edge.journal.schema import OLDEST_READABLE, SCHEMA_VERSION, Unusable, configure, prepare
from edge.journal.sqlcipher import check_key, damaged, is_plaintext, keyed


def make_private(path: Path) -> None:
    # Created 0600 before SQLite opens it: SQLite creates -wal and -shm with the
    # database's mode. Files of an older edge may be looser: tightened.
    create_private(path)
    for name in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(FileNotFoundError):
            if name.stat().st_mode & 0o077:
                name.chmod(0o600)


def connect(path: Path, secret: str, key: DataKey,
            model_languages: Mapping[str, str] | None = None) -> sqlite3.Connection:
    """Open, check, configure and migrate (``model_languages``: see
    :func:`~edge.journal.schema.prepare`). Raises Unusable, JournalKeyError or
    JournalError."""
    try:
        make_private(path)
    except OSError as exc:
        raise JournalError(f"cannot create the journal {path}: {exc.strerror}") from exc
    try:
        conn = keyed(path, secret)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open the journal {path}: {exc}") from exc
    try:
        check_key(conn, path, key)
        prepare(conn, model_languages)
    except sqlite3.Error as exc:
        conn.close()
        if damaged(exc):
            raise Unusable(str(exc)) from exc
        raise JournalError(f"cannot open the journal {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def connect_hot(path: Path, secret: str) -> sqlite3.Connection:
    """A second connection to a journal :func:`connect` just checked and migrated.

    Its commits hardly ever checkpoint (which would make a final wait for the WAL to be
    copied into the database): the bulk link's commits and
    :meth:`Journal.checkpoint` do that; 10,000 pages is a bound for a journal whose
    service never runs one."""
    try:
        conn = keyed(path, secret)
        try:
            configure(conn, autocheckpoint=10000)
        except BaseException:
            conn.close()
            raise
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open the journal {path}: {exc}") from exc
    return conn


def connect_readonly(path: Path, secret: str, key: DataKey
                      ) -> tuple[sqlite3.Connection, int]:
    if not path.is_file():
        raise JournalError(f"no journal at {path}")
    if is_plaintext(path):
        raise JournalError(f"the journal {path} is not encrypted yet: the daemon encrypts "
                           "it at its next start")
    uri = path.resolve().as_uri() + "?mode=ro"
    try:
        conn = keyed(uri, secret, uri=True)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open the journal {path}: {exc}") from exc
    try:
        check_key(conn, path, key)
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        conn.execute("PRAGMA trusted_schema = OFF")
    except JournalKeyError:
        conn.close()
        raise
    except sqlite3.Error as exc:
        conn.close()
        hint = "; the daemon sets it aside at its next start" if damaged(exc) else ""
        raise JournalError(f"cannot read the journal {path}: {exc}{hint}") from exc
    if not OLDEST_READABLE <= version <= SCHEMA_VERSION:
        conn.close()
        raise JournalError(f"{path} is not an edge journal of schema version "
                           f"{OLDEST_READABLE} to {SCHEMA_VERSION} (found {version})")
    return conn, version


def set_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    try:
        os.replace(path, target)
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{path}{suffix}", f"{target}{suffix}")
        fsync_dir(path.parent)
    except OSError as exc:
        raise JournalError(f"journal {path} is unusable and cannot be moved aside: "
                           f"{exc.strerror}") from exc
    return target
