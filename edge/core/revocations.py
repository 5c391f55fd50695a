"""Revoked tokens: the list (token ids and subjects) and the file it is read from.

Pure apart from :meth:`RevocationFile.reload_if_changed` (and the constructor that
calls it), which reads the file; the daemon calls it from a worker thread
(:mod:`edge.net.revocation`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from edge.core.auth import Claims

logger = logging.getLogger(__name__)


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
