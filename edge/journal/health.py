"""Whether the journal is keeping what it is given, told without patient data.

Pure (no trio, no SQLite connection): :class:`WriteHealth` is fed the outcome of each
hot-path write (a session's start, a final, an end) with the time, and says ``ok`` or
``failing``; :func:`describe` turns a failed write's exception into a line that is safe
to show on ``/healthz``, which needs no token; :func:`free_bytes` is one ``statvfs``
(blocking: a hung network filesystem could hold it, so the daemon calls it in a worker
thread).

The rule. The journal is ``failing`` while the last hot-path write failed, and for
``failing_seconds`` (60 by default) after any failure, even if a later write went
through. Someone watching ``/healthz`` for a clinic wants two things from it: to see
every episode in which finals were lost, even one that a poll every minute would
otherwise fall between (a disk at the edge of full lets one write through and refuses
the next); and an ``ok`` that means "finals are being kept", which only a write that
went through can show. A device with no session since its last failure therefore stays
``failing`` until a write succeeds: nothing has shown it recovered.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: How long ``/healthz`` keeps saying ``failing`` after a failed write (the default of
#: ``journal.failing_seconds``).
FAILING_SECONDS = 60.0

OK, FAILING = "ok", "failing"

# What SQLite's result codes mean for an operator. The text of a sqlite3 exception is
# never shown: it is SQLite's own message, which names statements and (in some
# versions' constraint errors) values, and a value may be a transcript.
_SQLITE_MEANINGS = {
    "SQLITE_FULL": "the disk is full",
    "SQLITE_IOERR": "disk I/O error",
    "SQLITE_READONLY": "the journal's file or filesystem is read-only",
    "SQLITE_CANTOPEN": "the journal's file cannot be opened",
    "SQLITE_PERM": "permission denied",
    "SQLITE_CORRUPT": "the journal's file is damaged",
    "SQLITE_NOTADB": "the journal's file is not a database (or the key is wrong)",
    "SQLITE_BUSY": "the journal is locked by another process",
    "SQLITE_LOCKED": "the journal is locked",
    "SQLITE_NOMEM": "out of memory",
    "SQLITE_CONSTRAINT": "a constraint of the journal's schema refused the write",
}
# Ids in our own messages ("unknown session <id>"): not patient data, but not for a
# page that needs no token either.
_SESSION_ID = re.compile(r"\bsession \S+")
_MAX_LINE = 200


class WriteHealth:
    """The outcomes of the journal's hot-path writes, and the state they add up to.

    Times are the caller's: ``now`` on a monotonic clock (the daemon passes
    ``trio.current_time()``), ``wall`` in seconds since the epoch (for display only).
    """

    def __init__(self, failing_seconds: float = FAILING_SECONDS) -> None:
        self.failing_seconds = failing_seconds
        self.failures = 0  # since start
        self.last_error: str | None = None  # from describe(): no transcript text
        self.last_failure_wall: float | None = None
        self._last_failure: float | None = None  # monotonic
        self._last_failed = False  # the most recent write's outcome

    def failed(self, error: str, *, now: float, wall: float) -> None:
        self.failures += 1
        self.last_error = error
        self.last_failure_wall = wall
        self._last_failure = now
        self._last_failed = True

    def succeeded(self) -> None:
        self._last_failed = False

    def state(self, now: float) -> str:
        """``failing`` while the last write failed or one failed within
        ``failing_seconds`` before ``now``; ``ok`` otherwise."""
        if self._last_failed:
            return FAILING
        if self._last_failure is not None and now - self._last_failure < self.failing_seconds:
            return FAILING
        return OK


def describe(exc: BaseException) -> str:
    """A one-line account of a failed journal write with no text from its payload.

    A SQLite error is given by its result code's name and meaning (``SQLITE_FULL: the
    disk is full``), never by its message; any other error (ours: a closed journal, an
    unknown session) by its message with session ids left out.
    """
    cause = exc.__cause__
    if cause is None and not exc.__suppress_context__:
        cause = exc.__context__
    code = getattr(cause, "sqlite_errorname", None)
    if isinstance(code, str) and code.startswith("SQLITE_"):
        base = "_".join(code.split("_")[:2])  # SQLITE_IOERR_WRITE -> SQLITE_IOERR
        meaning = _SQLITE_MEANINGS.get(base)
        return f"{code}: {meaning}" if meaning else code
    if cause is not None and type(cause).__module__.split(".")[0] in (
            "sqlite3", "sqlcipher3", "pysqlite3"):
        # A driver error without a result code: its class says enough.
        return f"{type(cause).__name__} (see the daemon's log)"
    text = _SESSION_ID.sub("session <id>", str(exc)).splitlines()
    return (text[0] if text else type(exc).__name__)[:_MAX_LINE]


def free_bytes(directory: str | os.PathLike[str]) -> int:
    """Bytes an unprivileged writer may still use on ``directory``'s filesystem
    (``f_bavail * f_frsize``, as ``df`` shows). Blocks on a ``statvfs``; raises
    OSError (a directory that is gone, a filesystem that does not answer)."""
    st = os.statvfs(Path(directory))
    return st.f_bavail * st.f_frsize
