"""Who may open a session now: the global cap, per-subject limits, live-session lookup.

Pure bookkeeping (no trio, no I/O), shared by the server and the revocation watcher.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from edge.core.auth import Claims
from edge.core.close_codes import CLOSE_TRY_AGAIN_LATER
from edge.core.errors import Refusal
from edge.core.revocations import Revocations


@dataclass
class Ticket:
    """A place held for one live session; release it by leaving its ``with`` block."""

    session_id: str
    claims: Claims
    revoke: Callable[[], None]
    _release: Callable[[], None]

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._release()


@dataclass
class Admission:
    """Counts sessions; refuses with 429 over ``max_sessions`` or a token's ``session_limit``."""

    max_sessions: int
    retry_after: int
    _live: dict[str, Ticket] = field(default_factory=dict)
    _by_sub: Counter[str] = field(default_factory=Counter)

    def admit(self, session_id: str, claims: Claims, revoke: Callable[[], None]) -> Ticket:
        """Hold a place for one session until the returned ticket's ``with`` block ends.

        Raises :class:`Refusal` (429 / close 1013, with ``retry_after``) when full.
        """
        if len(self._live) >= self.max_sessions:
            raise Refusal("server_busy", "the server is at its session capacity; retry later",
                            status=429, close_code=CLOSE_TRY_AGAIN_LATER,
                            retry_after=self.retry_after)
        limit = claims.session_limit
        if limit is not None and self._by_sub[claims.sub] >= limit:
            raise Refusal("session_limit", f"this token allows {limit} concurrent "
                            "session(s) and they are in use", status=429,
                            close_code=CLOSE_TRY_AGAIN_LATER, retry_after=self.retry_after)

        def release() -> None:
            if self._live.pop(session_id, None) is not None:
                self._by_sub[claims.sub] -= 1
                if not self._by_sub[claims.sub]:
                    del self._by_sub[claims.sub]

        ticket = Ticket(session_id, claims, revoke, release)
        self._live[session_id] = ticket
        self._by_sub[claims.sub] += 1
        return ticket

    def revoke_matching(self, revocations: Revocations) -> int:
        """Ask every live session whose token is now revoked to close; returns how many."""
        hits = [s for s in self._live.values() if revocations.is_revoked(s.claims)]
        for live in hits:
            live.revoke()
        return len(hits)

    @property
    def current(self) -> int:
        return len(self._live)

    def sessions_of(self, sub: str) -> int:
        return self._by_sub[sub]


@dataclass
class Admissions:
    """The daemon's three admission books: client sessions, room listeners, and
    downstream devices relaying into this one."""

    sessions: Admission
    listeners: Admission
    relays: Admission

    def revoke_matching(self, revocations: Revocations) -> int:
        return sum(book.revoke_matching(revocations)
                   for book in (self.sessions, self.listeners, self.relays))
