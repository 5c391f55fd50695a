"""The network front: TCP/TLS listener, request heads, the route table, handshakes.

The server reads each request head itself, once, with h11 (bounded by
``server.handshake_timeout`` and the head size limit; :mod:`edge.net.http`), looks its
path up in one table of rows (:func:`edge.net.endpoints.front_door`; :mod:`edge.net.routes`),
answers plain HTTP requests on the same port and hands WebSocket upgrades, already
parsed, to trio-websocket (:mod:`edge.net.ws`). Tokens are checked in one place
(:class:`edge.net.gate.Gate`); every admitted client, whatever its row or port, goes
through :meth:`edge.net.boundary.Boundary.admit_and_run`: the admission books, the
audit trail, and a boundary that catches exceptions, so one client can never take the
server down. It
builds nothing long-lived itself: :mod:`edge.app` hands it every part.
:meth:`Server.shutdown` starts a graceful stop.
"""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import Sequence
from typing import Any

import trio

from edge.core.admission import Admission
from edge.core.audit import FAILED, OK, REFUSED, Access, AccessSink, discard
from edge.core.auth import Claims
from edge.core.config import Config
from edge.core.errors import Refusal
from edge.core.jwks import token_kids
from edge.core.stats import Stats
from edge.journal.service import JournalService
from edge.net import http, probes, ws
from edge.net.boundary import Boundary, Engine, Services
from edge.net.channel import Channel
from edge.net.door import ChannelDoor, WebSocketDoor
from edge.net.endpoints import METRICS_TYPE, front_door
from edge.net.gate import Gate, refusal_headers
from edge.net.room import Room
from edge.net.routes import (
    Admitted,
    Answer,
    HttpRequest,
    HttpResponse,
    HttpRoute,
    Need,
    Route,
    Table,
)
from edge.protocols import live as protocol
from edge.speakers import SpeakerIdentification

logger = logging.getLogger(__name__)

_WS_MESSAGE_QUEUE = 4  # frames trio-websocket buffers before TCP pushes back


class Server:
    """The listener and the route table; start with ``await nursery.start(server.run)``.

    The composition root (:mod:`edge.app`) builds every part it uses and hands them in:
    the ``gate`` (tokens), the ``engine`` sessions run on, the optional ``services``,
    the ``peers``' rows for the main port, and the ``audit`` sink every access is told
    to. :meth:`shutdown` starts a graceful stop.
    """

    def __init__(self, config: Config, gate: Gate, engine: Engine,
                 services: Services | None = None, *,
                 peers: Sequence[Route | HttpRoute] = (),
                 audit: AccessSink = discard) -> None:
        self.config = config
        self.gate = gate
        self.engine = engine
        self.services = services = services or Services()
        self.boundary = Boundary(config, engine, services, audit)
        self.table = Table(front_door(self, peers))
        self.peer_ports: dict[str, int] = {}  # peer protocols' own ports, once bound
        self.port: int | None = None

    @property
    def audit(self) -> AccessSink:
        return self.boundary.audit

    @audit.setter
    def audit(self, sink: AccessSink) -> None:
        self.boundary.audit = sink

    @property
    def stopping(self) -> bool:
        return self.boundary.stopping

    def shutdown(self) -> None:
        """Begin a graceful stop: refuse new handshakes (503 with Retry-After, or close
        1012 in band) and ask every live connection to finish its work in hand and
        close with 1012. :meth:`wait_idle` returns when they all have."""
        self.boundary.shutdown()

    @property
    def live_connections(self) -> int:
        return self.boundary.live_connections

    async def wait_idle(self) -> None:
        """Wait until no connection is live after :meth:`shutdown`."""
        await self.boundary.wait_idle()

    # The parts by the names tests, health and the endpoints read them.
    @property
    def model_name(self) -> str:
        return self.engine.model_name

    @property
    def stats(self) -> Stats:
        return self.engine.stats

    @property
    def admission(self) -> Admission:
        return self.engine.admissions.sessions

    @property
    def listeners(self) -> Admission:
        return self.engine.admissions.listeners

    @property
    def journal(self) -> JournalService | None:
        return self.services.journal

    @property
    def speakers(self) -> SpeakerIdentification | None:
        return self.services.speakers

    @property
    def room(self) -> Room | None:
        return self.services.room

    async def run(self, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Bind, report ready (the socket accepts), serve until cancelled."""
        s = self.config.server
        listeners: list[trio.abc.Listener[Any]] = list(
            await trio.open_tcp_listeners(s.port, host=s.host or None))
        self.port = listeners[0].socket.getsockname()[1]  # type: ignore[attr-defined]
        if s.tls_cert:
            context = _ssl_context(s.tls_cert, s.tls_key)
            listeners = [trio.SSLListener(listener, context) for listener in listeners]
        scheme = "wss" if s.tls_cert else "ws"
        logger.info("listening on %s://%s:%d%s", scheme, s.host, self.port, s.path)
        task_status.started(self)
        await trio.serve_listeners(self._handle_stream, listeners)

    # --- connection boundary ---------------------------------------------------------

    async def serve_port(self, host: str, port: int, route: Route, *,
                         task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                         ) -> None:
        """Serve a peer protocol on a port of its own: every WebSocket path goes to
        ``route``, with the main port's limits and boundary. Reports the bound port."""
        listeners = await trio.open_tcp_listeners(port, host=host or None)
        bound: int = listeners[0].socket.getsockname()[1]
        task_status.started(bound)
        await trio.serve_listeners(functools.partial(self._handle_stream, route=route),
                                   listeners)

    async def _handle_stream(self, stream: trio.abc.Stream, route: Route | None = None
                             ) -> None:
        try:
            await self._handle(stream, route)
        except Exception:
            logger.exception("connection from %s failed", _peer(stream))
        finally:
            await trio.aclose_forcefully(stream)

    async def _handle(self, stream: trio.abc.Stream, route: Route | None) -> None:
        # The handshake deadline covers the request head here and the WebSocket
        # handshake in _websocket; never the session that follows.
        deadline = trio.current_time() + self.config.server.handshake_timeout
        read: tuple[http.RequestHead, bytes] | None = None
        with trio.move_on_at(deadline) as scope:
            read = await self._read_head(stream)
        if scope.cancelled_caught:
            self._handshake_timed_out(stream)
            return
        if read is None:
            return
        head, trailing = read
        jwks = self.services.jwks
        if jwks is not None:  # a token naming a new key: fetch the key set first
            await jwks.wait_for(token_kids(head.target, head.headers), deadline)
        if not head.is_websocket_upgrade:
            await stream.send_all(await self._http(head, _peer(stream)))
            return
        await self._websocket(stream, head, trailing, deadline, route)

    def _handshake_timed_out(self, stream: trio.abc.Stream) -> None:
        self.stats.refused["handshake_timeout"] += 1
        logger.info("connection from %s: no complete handshake within %gs; dropped",
                    _peer(stream), self.config.server.handshake_timeout)

    async def _read_head(self, stream: trio.abc.Stream
                         ) -> tuple[http.RequestHead, bytes] | None:
        """The parsed head and the bytes read past it; None once answered (400, 431)
        or at EOF."""
        reader = http.HeadReader()
        try:
            while True:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return None
                if (head := reader.feed(chunk)) is not None:
                    return head, reader.trailing
        except http.BadRequest as exc:
            await stream.send_all(http.response(exc.status, str(exc)))
            return None

    # --- plain HTTP ------------------------------------------------------------------

    async def _http(self, head: http.RequestHead, peer: str) -> bytes:
        """The whole response to a plain request, from its row of the table."""
        if head.method not in ("GET", "HEAD"):
            return http.response(405, {"type": "error", "code": "method",
                                       "message": "only GET is served"},
                                 headers=[("Allow", "GET, HEAD")])
        head_only = head.method == "HEAD"
        row = self.table.http(head.path)
        if row is not None:
            answer = await self._answer(row, head, peer)
        elif self.table.websocket(head.path) is not None:
            answer = HttpResponse(426, protocol.error(
                "upgrade_required", "this endpoint speaks WebSocket"),
                headers=(("Upgrade", "websocket"),))
        else:
            answer = HttpResponse(404, protocol.error("not_found", "no such endpoint"))
        return answer.render(head_only=head_only)

    async def _answer(self, row: HttpRoute, head: http.RequestHead, peer: str) -> Answer:
        """``row``'s answer: its token checked first (a refusal with the challenge),
        then its endpoint; told to the audit trail when the row has an action."""
        claims: Claims | None = None
        try:
            if row.need is not None:
                claims = self.gate.claims(head, row.need)
        except Refusal as exc:
            self.stats.refused[exc.code] += 1
            self.boundary.refused(exc, row.action, peer)
            return HttpResponse(exc.status, protocol.error(exc.code, exc.message),
                                headers=(*refusal_headers(exc), *row.headers))
        answer = await row.endpoint(HttpRequest(head, self.gate, peer, claims))
        if row.action is not None:
            obj = head.path[len(row.path):] if row.prefix else None
            self.audit(Access.by(claims, row.action, outcome=_outcome(answer.status),
                                 object=obj or None, peer=peer,
                                 reason=_reason(answer)))
        if row.headers and isinstance(answer, HttpResponse):
            answer = HttpResponse(answer.status, answer.body,
                                  (*answer.headers, *row.headers), answer.content_type)
        return answer

    def health(self) -> tuple[int, dict[str, Any]]:
        """``/healthz``: 200 when serving, 503 with reasons when degraded or stopping."""
        return probes.health(self)

    def metrics(self) -> str:
        """``/metrics`` in the Prometheus text format."""
        return probes.metrics(self)

    async def health_endpoint(self, request: HttpRequest) -> Answer:
        status, body = self.health()
        return HttpResponse(status, body)

    async def metrics_endpoint(self, request: HttpRequest) -> Answer:
        return HttpResponse(200, self.metrics(), content_type=METRICS_TYPE)

    # --- WebSocket handshake and the one admit-and-run path ----------------------------

    async def _websocket(self, stream: trio.abc.Stream, head: http.RequestHead,
                         trailing: bytes, deadline: float, route: Route | None) -> None:
        s = self.config.server
        async with trio.open_nursery() as nursery:
            with trio.move_on_at(deadline) as scope:
                request = await ws.wrap_server_request(
                    nursery, stream, head, trailing, message_queue_size=_WS_MESSAGE_QUEUE,
                    max_frame_bytes=s.max_frame_bytes)
            if scope.cancelled_caught or request is None:  # None: refused by wsproto
                if scope.cancelled_caught:
                    self._handshake_timed_out(stream)
                nursery.cancel_scope.cancel()
                return
            try:
                door = WebSocketDoor(request, deadline, self.stats)
                await self._serve_handshake(door, head, _peer_address(stream), route)
            finally:
                nursery.cancel_scope.cancel()

    async def _serve_handshake(self, door: WebSocketDoor, head: http.RequestHead,
                               address: tuple[str, int] | None, route: Route | None
                               ) -> None:
        """``route`` (a peer protocol's own port) takes every path; on the main port,
        the table's row for the path."""
        route = route or self.table.websocket(head.path)
        peer = _format_peer(address)
        try:
            if route is None:
                raise Refusal("not_found", "no such endpoint", status=404)
            entry = route.admitter.admit(head, self.gate, address[0] if address else "")
            if route.scope is not None:
                self.gate.require(entry.claims, Need(route.scope))
        except Refusal as exc:
            self.boundary.refused(exc, route.action if route else None, peer)
            await door.refuse(exc)
            return
        await self.boundary.admit_and_run(door, entry, route, peer)

    async def serve_channel(self, channel: Channel, admitted: Admitted, peer: str = ""
                            ) -> None:
        """Run a client session that arrived on a port of its own (a peer protocol's
        listener), through the same admission, core and boundary as the main port's.
        Raises :class:`Refusal` (the caller answers in its protocol) when the daemon
        is stopping or full."""
        await self.boundary.admit_and_run(ChannelDoor(channel), admitted, None, peer)


def _outcome(status: int) -> str:
    return OK if status < 400 else REFUSED if status < 500 else FAILED


def _reason(answer: Answer) -> str | None:
    """The error code of a refused or failed answer (its JSON body's ``code``)."""
    body = getattr(answer, "body", None)
    if answer.status < 400 or not isinstance(body, dict):
        return None
    code = body.get("code")
    return code if isinstance(code, str) else None


def _ssl_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def _peer_address(stream: trio.abc.Stream) -> tuple[str, int] | None:
    inner: Any = stream
    while hasattr(inner, "transport_stream"):
        inner = inner.transport_stream
    try:
        host, port = inner.socket.getpeername()[:2]
    except (AttributeError, OSError):
        return None
    return str(host), int(port)


def _format_peer(address: tuple[str, int] | None) -> str:
    return "?" if address is None else f"{address[0]}:{address[1]}"


def _peer(stream: trio.abc.Stream) -> str:
    return _format_peer(_peer_address(stream))
