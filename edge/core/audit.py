"""What the audit trail is told: one :class:`Access` per look at patient data or
administrative act.

Pure values (no trio, no I/O). The front door (``edge.net``) and the commands build an
``Access`` and hand it to an :data:`AccessSink`; the journal's audit trail stores it. An
``Access`` never holds transcript text or a token: only who, what, which object, the
outcome and from where.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge.core.auth import Claims

#: Outcomes. A refusal's reason goes in ``Access.reason`` (a Live API error code such as
#: ``auth_failed`` or ``rate_limited``).
OK = "ok"
REFUSED = "refused"
FAILED = "failed"


@dataclass(frozen=True)
class Access:
    """One audited act.

    ``action`` names it as ``<object kind>.<verb>`` (``transcript.read``,
    ``transcript.list``, ``room.listen``, ``session.start``, ``session.end``,
    ``voiceprint.enrol``, ``voiceprint.remove``, ``relay.requeue``, ``key.rotate``,
    ``handshake.refused``, ...). ``object`` is what it was done to (a session id, a
    speaker name); ``peer`` the client's address (``host:port``) or ``cli`` for a
    command run on the device. ``detail`` holds short non-patient facts (the dialect,
    a count), never transcript text or a token.
    """

    action: str
    outcome: str = OK
    sub: str | None = None
    organization: str | None = None
    department: str | None = None
    object: str | None = None
    peer: str | None = None
    reason: str | None = None
    detail: Mapping[str, str | int] = field(default_factory=dict)

    @classmethod
    def by(cls, claims: Claims | None, action: str, **values: Any) -> Access:
        """An ``Access`` done by the holder of ``claims`` (None: nobody authenticated)."""
        who: dict[str, object] = {}
        if claims is not None:
            who = {"sub": claims.sub, "organization": claims.organization,
                   "department": claims.department}
        return cls(action, **who, **values)  # type: ignore[arg-type]


#: Where accesses go. Called on the event loop: it must not block (the journal's audit
#: trail queues the record and writes it in a worker thread).
AccessSink = Callable[[Access], None]


def discard(access: Access) -> None:
    """The sink when nothing records accesses (tools, tests of other parts)."""
