"""The journal's values: what its methods return and raise, and the relay states.

Pure (no SQLite here). :class:`~edge.protocols.relay.RelayEvent`, one event as the relay
carries it, is the relay protocol's and is re-exported here with the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.core.errors import EdgeError
from edge.protocols.relay import RelayEvent

__all__ = ["PENDING", "RELAYED", "SHED", "Backlog", "JournalError", "JournalKeyError",
           "RelayEvent", "SessionRow"]

# An event's relay state (``events.relayed``): waiting for the upstream, acknowledged
# by it, or shed from a full outbox (kept here, never sent).
PENDING, RELAYED, SHED = 0, 1, 2


class JournalError(EdgeError):
    """The journal cannot do what was asked: closed, unknown or ended session, a disk
    or permission problem, or (read-only) a missing or damaged file."""


class JournalKeyError(JournalError):
    """The journal exists encrypted and the key given does not open it (a wrong key,
    or a first page too damaged to tell). Never set aside: the data may be fine."""


@dataclass(frozen=True)
class Backlog:
    """Events not yet acknowledged by the upstream and their payload bytes."""

    events: int
    bytes: int


@dataclass(frozen=True)
class SessionRow:
    """A journaled session. ``dialect`` is the wire protocol it spoke (``live``,
    ``assemblyai``, ...); ``None`` for the room and for a relayed session whose start
    did not say (see :mod:`edge.journal.db`). ``language`` is the language tag of the
    model that transcribed it (``ko``, ``en-US``); ``None`` when not known (a session
    journaled before languages whose model the config does not map, or relayed by an
    older device). Fields after ``end_reason`` have defaults
    and come last, so that rows built positionally keep their meaning."""

    session_id: str
    device_id: str
    source: str
    sub: str | None
    organization: str | None
    department: str | None
    model: str | None
    started_at: float
    ended_at: float | None
    end_reason: str | None
    finals: int = 0
    dialect: str | None = None
    language: str | None = None
