"""The front door's table: every endpoint the server answers is one row.

A :class:`Route` is a WebSocket endpoint: its :class:`Admitter` looks at the request
head (path, query, headers) and either refuses it (raises
:class:`~edge.core.errors.Refusal` with the HTTP status and close code to use) or
returns what it admits: a client session in a dialect (:class:`Admitted`), a listener
to the room (:class:`Listen`) or a device relaying its journal (:class:`Relayed`).
Everything after that (admission against the books, the session core, the journal,
metrics, the audit trail) is the server's one admit-and-run path, the same for every
row. An :class:`HttpRoute` answers plain GETs; when it declares a :class:`Need` the
server checks the token before the endpoint runs.

Each row says what it is audited as (``action``, ``<object kind>.<verb>`` as in
:class:`edge.core.audit.Access`): a row that reads or writes patient data has one.
Adding an endpoint is adding a row (:func:`edge.net.endpoints.front_door`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from edge.core.auth import Claims
from edge.net import http
from edge.net.http import RequestHead
from edge.protocols.events import Configure, Dialect


class Verify(Protocol):
    """The one token-and-scope check (:class:`edge.net.gate.Gate`): verifies a token
    (signature, claims, lifetime, revocation) and that it holds every one of ``scopes``;
    raises :class:`~edge.core.errors.AuthError`."""

    def __call__(self, token: str, *scopes: str) -> Claims: ...


@dataclass(frozen=True)
class Need:
    """What a token must hold: ``scope``, or ``instead`` (a broader scope that also
    suffices, such as ``transcripts:read`` for ``transcription:read``)."""

    scope: str
    instead: str | None = None


@dataclass(frozen=True)
class Admitted:
    """A client session a route accepted.

    ``dialect_name`` labels the session in the journal, the log and ``/metrics``;
    ``declared_rate`` is the sample rate the client announced (None: the default or its
    WAV header); ``phrases`` a grammar to decode with from the start; ``configure``
    settings the session starts with, as if the client had sent them first; ``enroll``
    the (name, role) to enrol the speaker as; ``in_band`` that refusals go in-band.
    """

    claims: Claims
    dialect: Dialect
    dialect_name: str
    declared_rate: int | None = None
    phrases: tuple[str, ...] | None = None
    configure: Configure | None = None
    enroll: tuple[str, str | None] | None = None
    in_band: bool = False
    language: str | None = None  # the installed language chosen (None: the default)


@dataclass(frozen=True)
class Listen:
    """A client listening to the room microphone (``?source=room``)."""

    claims: Claims
    since_seq: int | None = None
    in_band: bool = False


@dataclass(frozen=True)
class Relayed:
    """A downstream device pushing its journal into ours (``/ws/relay``)."""

    claims: Claims
    in_band: bool = False


Entry = Admitted | Listen | Relayed


class Admitter(Protocol):
    def admit(self, head: RequestHead, verify: Verify, peer: str) -> Entry:
        """Accept or refuse one handshake (pure apart from ``verify``); ``peer`` is the
        client's IP address (for protocols admitted by network)."""
        ...


@dataclass(frozen=True)
class HttpResponse:
    """A whole answer to a plain request (rendered by :func:`edge.net.http.response`)."""

    status: int
    body: Any  # a JSON-able mapping, str or bytes
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str | None = None

    def render(self, *, head_only: bool = False) -> bytes:
        return http.response(self.status, self.body, content_type=self.content_type,
                             headers=self.headers, head_only=head_only)


class Answer(Protocol):
    """What an HTTP endpoint returns: a status and its bytes on the wire."""

    @property
    def status(self) -> int: ...

    def render(self, *, head_only: bool = False) -> bytes: ...


@dataclass(frozen=True)
class HttpRequest:
    """One plain GET or HEAD as an endpoint sees it: ``claims`` are the token's when the
    row declares a :class:`Need` (checked already), else None; ``verify`` is for
    endpoints that read tokens in a peer protocol's own places."""

    head: RequestHead
    verify: Verify
    peer: str
    claims: Claims | None = None


class HttpEndpoint(Protocol):
    def __call__(self, request: HttpRequest) -> Awaitable[Answer]:
        """Answer one plain GET (or HEAD)."""
        ...


@dataclass(frozen=True)
class Route:
    """A WebSocket endpoint. With ``prefix``, ``path`` covers every path that starts
    with it (a path parameter such as a token); ``scope`` is required of whatever
    ``admitter`` admits; ``action`` is what an admitted session is audited as."""

    path: str
    admitter: Admitter
    action: str | None
    scope: str | None = None
    prefix: bool = False


@dataclass(frozen=True)
class HttpRoute:
    """A plain GET (and HEAD) endpoint. ``need``: the token the server checks first;
    ``headers`` go on every answer of the row, refusals included; ``action`` is what a
    request is audited as (its object: what a ``prefix`` row's path is followed by)."""

    path: str
    endpoint: HttpEndpoint
    action: str | None = None
    need: Need | None = None
    headers: tuple[tuple[str, str], ...] = ()
    prefix: bool = False


class Table:
    """The rows, looked up by path: a path's own row, or else the longest ``prefix``
    row whose path it starts with. Two rows of one kind for the same path and reach
    are a mistake (ValueError)."""

    def __init__(self, rows: Iterable[Route | HttpRoute]) -> None:
        self.rows = tuple(rows)
        self._index: dict[tuple[type, str, bool], Route | HttpRoute] = {}
        for row in self.rows:
            key = (type(row), row.path, row.prefix)
            if key in self._index:
                raise ValueError(f"two {type(row).__name__}s for {row.path!r}")
            self._index[key] = row

    def websocket(self, path: str) -> Route | None:
        row = self._find(Route, path)
        return row if isinstance(row, Route) else None

    def http(self, path: str) -> HttpRoute | None:
        row = self._find(HttpRoute, path)
        return row if isinstance(row, HttpRoute) else None

    def _find(self, kind: type, path: str) -> Route | HttpRoute | None:
        if (row := self._index.get((kind, path, False))) is not None:
            return row
        prefixes = [key for key in self._index
                    if key[0] is kind and key[2] and path.startswith(key[1])]
        return self._index[max(prefixes, key=lambda key: len(key[1]))] if prefixes else None
