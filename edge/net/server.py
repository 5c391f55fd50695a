"""The network front: TCP/TLS listener, request heads, the route table, the one
admit-and-run path, the connection boundary.

The server reads each request head itself, once, with h11 (bounded by
``server.handshake_timeout`` and the head size limit; :mod:`edge.net.http`), looks its
path up in one table of rows (:func:`edge.net.endpoints.front_door`; :mod:`edge.net.routes`),
answers plain HTTP requests on the same port and hands WebSocket upgrades, already
parsed, to trio-websocket (:mod:`edge.net.ws`). Tokens are checked in one place
(:class:`edge.net.gate.Gate`); every admitted client, whatever its row or port, goes
through :meth:`Server.admit_and_run`: the admission books, the audit trail, and a
boundary that catches exceptions, so one client can never take the server down. It
builds nothing long-lived itself: :mod:`edge.app` hands it every part.
:meth:`Server.shutdown` starts a graceful stop.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import ssl
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from edge.asr.memory import MemoryBudget
from edge.asr.recognizer import RecognizerFactory
from edge.core.admission import Admission, Admissions
from edge.core.audit import FAILED, OK, REFUSED, Access, AccessSink, discard
from edge.core.auth import Claims
from edge.core.close_codes import CLOSE_SERVICE_RESTART, CLOSE_TRY_AGAIN_LATER
from edge.core.config import Config
from edge.core.errors import Refusal
from edge.core.jwks import token_kids
from edge.core.stats import Stats
from edge.journal.service import JournalService
from edge.net import http, probes, ws
from edge.net.channel import Channel
from edge.net.connection import Connection, SessionInfo
from edge.net.door import ChannelDoor, Door, Handle, WebSocketDoor
from edge.net.endpoints import METRICS_TYPE, front_door
from edge.net.gate import Gate, refusal_headers
from edge.net.listener import RoomListener
from edge.net.room import Room
from edge.net.routes import (
    Admitted,
    Answer,
    Entry,
    HttpRequest,
    HttpResponse,
    HttpRoute,
    Listen,
    Need,
    Relayed,
    Route,
    Table,
)
from edge.net.session import Session
from edge.ops.supervisor import Supervisor
from edge.protocols import live as protocol
from edge.relay.ingest import RelayIngest
from edge.relay.outbox import OutboxRelay as Relay
from edge.speakers import UNAVAILABLE, SpeakerIdentification, SpeakerStatus

if TYPE_CHECKING:
    from edge.net.jwks import JwksRefresher
    from edge.relay.mqtt_ingest import MqttIngest

logger = logging.getLogger(__name__)

_WS_MESSAGE_QUEUE = 4  # frames trio-websocket buffers before TCP pushes back
_INTERNAL_CLOSE_TIMEOUT = 2.0


@dataclass(frozen=True)
class Engine:
    """What every session runs on: the model's name, the counters, the limiter every
    Vosk call takes, the recognisers (the pool, or a stand-in), the admission books and
    the memory budget recognisers are counted against (None: not counted)."""

    model_name: str
    stats: Stats
    limiter: trio.CapacityLimiter
    recognizers: RecognizerFactory
    admissions: Admissions
    memory: MemoryBudget | None = None


@dataclass(frozen=True)
class Services:
    """The daemon's optional parts the server routes to or reports on (None: off)."""

    journal: JournalService | None = None
    speakers: SpeakerIdentification | None = None  # None: no speaker model
    room: Room | None = None
    relay: Relay | None = None  # not relaying upstream
    ingest: MqttIngest | None = None  # not consuming from an MQTT broker
    supervisor: Supervisor | None = None
    jwks: JwksRefresher | None = None  # no identity provider key set (auth.jwks_url)


class Server:
    """The listener and the connection boundary; start with ``await nursery.start(server.run)``.

    The composition root (:mod:`edge.app`) builds every part it uses and hands them in:
    the ``gate`` (tokens), the ``engine`` sessions run on, the optional ``services``,
    the ``peers``' rows for the main port, and the ``audit`` sink every access is told
    to. :meth:`shutdown` starts a graceful stop.
    """

    def __init__(self, config: Config, gate: Gate, engine: Engine,
                 services: Services = Services(), *,
                 peers: Sequence[Route | HttpRoute] = (),
                 audit: AccessSink = discard) -> None:
        self.config = config
        self.gate = gate
        self.engine = engine
        self.services = services
        self.audit = audit
        # Sessions' recognisers are counted against the memory budget and recycled.
        memory = engine.memory
        self._session_recognizers = (memory.factory(engine.recognizers) if memory
                                     else engine.recognizers)
        self.table = Table(front_door(self, peers))
        self.peer_ports: dict[str, int] = {}  # peer protocols' own ports, once bound
        self.port: int | None = None
        self.stopping = False
        self._live: set[Handle] = set()
        self._idle = trio.Event()

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

    def shutdown(self) -> None:
        """Begin a graceful stop: refuse new handshakes (503 with Retry-After, or close
        1012 in band) and ask every live connection to finish its work in hand and
        close with 1012. :meth:`wait_idle` returns when they all have."""
        self.stopping = True
        for handle in list(self._live):
            handle.shutdown()
        if not self._live:
            self._idle.set()

    @property
    def live_connections(self) -> int:
        return len(self._live)

    async def wait_idle(self) -> None:
        """Wait until no connection is live after :meth:`shutdown`."""
        await self._idle.wait()

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
            self._refused(exc, row.action, peer)
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
            self._refused(exc, route.action if route else None, peer)
            await door.refuse(exc)
            return
        await self.admit_and_run(door, entry, route, peer)

    async def serve_channel(self, channel: Channel, admitted: Admitted, peer: str = ""
                            ) -> None:
        """Run a client session that arrived on a port of its own (a peer protocol's
        listener), through the same admission, core and boundary as the main port's.
        Raises :class:`Refusal` (the caller answers in its protocol) when the daemon
        is stopping or full."""
        await self.admit_and_run(ChannelDoor(channel), admitted, None, peer)

    async def admit_and_run(self, door: Door, entry: Entry, route: Route | None,
                            peer: str) -> None:
        """The one way in, whatever the row or port: admit ``entry`` against its book
        (a session also against the memory budget), open the door, run the connection
        in the boundary until it ends; every step told to the audit trail."""
        handle = Handle()
        action = _action(entry)
        try:
            self._check_running()
            if isinstance(entry, Admitted):
                self._check_memory()
            ticket = self._book(entry).admit(str(uuid.uuid4()), entry.claims,
                                             handle.revoke)
        except Refusal as exc:
            exc.in_band = entry.in_band
            self._refused(exc, action, peer, entry.claims)
            await door.refuse(exc)
            return
        with ticket, self._live_while(handle):
            channel = await door.open()
            if channel is None:
                return
            connection = await self._connect(entry, channel, ticket.session_id)
            handle.attach(connection)
            detail: dict[str, str | int] = {"dialect": _dialect(entry)}
            if route is not None:
                detail["route"] = route.path
            self.audit(Access.by(entry.claims, action, object=ticket.session_id, peer=peer,
                                 detail=detail))
            outcome = await self._run_session(connection, entry)
            if isinstance(connection, Session):
                self.audit(Access.by(entry.claims, "session.end", outcome=outcome,
                                     object=ticket.session_id, peer=peer, detail={
                                         "audio_seconds": round(connection.audio_seconds)}))

    def _book(self, entry: Entry) -> Admission:
        books = self.engine.admissions
        return (books.sessions if isinstance(entry, Admitted)
                else books.listeners if isinstance(entry, Listen) else books.relays)

    async def _connect(self, entry: Entry, channel: Channel, session_id: str) -> Connection:
        """The connection ``entry`` runs as, on ``channel``."""
        if isinstance(entry, Relayed):
            assert self.journal is not None  # RelayAdmitter admits none without one
            info = SessionInfo(session_id=session_id, claims=entry.claims,
                               model_name=self.model_name,
                               default_rate=self.config.recognizer.sample_rate)
            return RelayIngest(channel, info, self.config, self.stats, self.journal)
        if isinstance(entry, Listen):
            assert self.room is not None  # LiveAdmitter admits no listener without one
            info = await self._session_info(session_id, entry.claims, None)
            return RoomListener(channel, info, self.config, self.stats, self.room,
                                entry.since_seq)
        info = await self._session_info(session_id, entry.claims, entry.declared_rate)
        return Session(channel, info, self.config, self._session_recognizers,
                       self.engine.limiter, self.stats, self.journal, speakers=self.speakers,
                       enroll=entry.enroll, dialect=entry.dialect,
                       dialect_name=entry.dialect_name, phrases=entry.phrases,
                       configure=entry.configure)

    async def _session_info(self, session_id: str, claims: Claims,
                            declared_rate: int | None) -> SessionInfo:
        speakers = await self._speaker_status()
        return SessionInfo(session_id=session_id, claims=claims, model_name=self.model_name,
                           default_rate=self.config.recognizer.sample_rate,
                           declared_rate=declared_rate,
                           speaker_identification=speakers.enabled,
                           speaker_reason=speakers.reason)

    def _check_running(self) -> None:
        if self.stopping:
            raise Refusal("server_shutdown", "the server is restarting; retry shortly",
                          status=503, close_code=CLOSE_SERVICE_RESTART,
                          retry_after=self.config.server.retry_after)

    def _check_memory(self) -> None:
        """A live session needs a recogniser: refused (503) when the memory budget
        cannot hold one more (:meth:`MemoryBudget.refuses`)."""
        memory = self.engine.memory
        why = memory.refuses(self.admission.current) if memory else None
        if why is not None:
            raise Refusal("memory_budget", why, status=503, close_code=CLOSE_TRY_AGAIN_LATER,
                          retry_after=self.config.server.retry_after)

    def _refused(self, exc: Refusal, action: str | None, peer: str,
                 claims: Claims | None = None) -> None:
        """Tell the audit trail of a refusal on a route that reads or writes patient
        data (``action``); the refusals of other paths are only counted."""
        if action is not None:
            self.audit(Access.by(claims, "handshake.refused", outcome=REFUSED,
                                 peer=peer, reason=exc.code, detail={"action": action}))

    @contextlib.contextmanager
    def _live_while(self, handle: Handle) -> Iterator[None]:
        """Count ``handle`` as live (for :meth:`shutdown`) for the ``with`` block."""
        self._live.add(handle)
        if self.stopping:
            handle.shutdown()
        try:
            yield
        finally:
            self._live.discard(handle)
            if self.stopping and not self._live:
                self._idle.set()

    async def _speaker_status(self) -> SpeakerStatus:
        """Speaker labelling as a new session will get it (re-reads changed voiceprints)."""
        if self.speakers is None:
            return UNAVAILABLE
        return await trio.to_thread.run_sync(self.speakers.refresh)

    async def _run_session(self, session: Connection, entry: Entry) -> str:
        """Run ``session`` to its end inside the boundary; its audit outcome."""
        dialect = _dialect(entry)
        self.stats.count_session(dialect)
        self.stats.sessions_current += 1
        kind = ("room listener" if isinstance(entry, Listen)
                else "relay from device" if isinstance(entry, Relayed)
                else f"{dialect} session")
        claims = entry.claims
        logger.info("%s %s started: sub=%s user_type=%s organization=%s department=%s",
                    kind, session.id, claims.sub, claims.user_type,
                    claims.organization or "-", claims.department or "-")
        try:
            stop = await session.run()
        except Exception:
            logger.exception("session %s failed", session.id)
            self.stats.closes["internal_error"] += 1
            with trio.move_on_after(_INTERNAL_CLOSE_TIMEOUT):
                await session.fail()
            return FAILED
        finally:
            self.stats.sessions_current -= 1
        self.stats.closes[stop.reason] += 1
        if stop.notify:
            logger.info("session %s ended: %s (close %d)", session.id, stop.reason,
                        stop.close_code)
        else:
            logger.info("session %s ended: %s", session.id, stop.reason)
        return OK


def _action(entry: Entry) -> str:
    return ("session.start" if isinstance(entry, Admitted)
            else "room.listen" if isinstance(entry, Listen) else "relay.ingest")


def _dialect(entry: Entry) -> str:
    return (entry.dialect_name if isinstance(entry, Admitted)
            else "live" if isinstance(entry, Listen) else "relay")


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
