"""How a peer protocol plugs into the server: a route per WebSocket path (or per port),
deciding who may connect and in which dialect the session is spoken.

A :class:`Route` looks at a request head (path, query, headers) and either refuses it
(raises :class:`~edge.core.errors.AuthError` with the HTTP status and close code to
use) or returns an :class:`Admitted`: the verified claims and a fresh dialect for the
session. Everything after that (admission against ``server.max_sessions``, the session
core, the journal, the relay, metrics) is the server's, the same for every dialect.
Routes for plain HTTP GETs (a peer's token endpoint, say) are :class:`HttpRoute`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from edge.core.auth import Claims
from edge.net.http import RequestHead
from edge.protocols.events import Configure, Dialect

#: Verifies a token (signature, claims, lifetime, revocation); raises AuthError.
Verify = Callable[[str], Claims]


@dataclass(frozen=True)
class Admitted:
    """A handshake a route accepted.

    ``dialect_name`` labels the session in the journal, the log and ``/metrics``;
    ``declared_rate`` is the sample rate the client announced (None: the default or its
    WAV header); ``phrases`` a grammar to decode with from the start; ``configure``
    settings the session starts with, as if the client had sent them first.
    """

    claims: Claims
    dialect: Dialect
    dialect_name: str
    declared_rate: int | None = None
    phrases: tuple[str, ...] | None = None
    configure: Configure | None = None


class Route(Protocol):
    def admit(self, head: RequestHead, verify: Verify, peer: str) -> Admitted:
        """Accept or refuse one handshake (pure apart from ``verify``); ``peer`` is the
        client's IP address (for protocols admitted by network)."""
        ...


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: Any  # a JSON-able mapping, str or bytes
    headers: tuple[tuple[str, str], ...] = ()


class HttpRoute(Protocol):
    def __call__(self, head: RequestHead, verify: Verify) -> Awaitable[HttpResponse]:
        """Answer one plain GET (or HEAD)."""
        ...
