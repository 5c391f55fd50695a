"""The network front: TCP/TLS listener, request heads, routing, handshakes, the
connection boundary.

The server reads each request head itself, once, with h11 (bounded by
``server.handshake_timeout`` and the head size limit; :mod:`edge.net.http`), answers
plain HTTP requests (``/healthz``, ``/metrics``, ``/transcripts/<id>``) on the same port,
and hands WebSocket upgrades, already parsed, to trio-websocket (:mod:`edge.net.ws`).
It verifies tokens, admits sessions against the admission books, and runs each one
inside a boundary that catches exceptions, so one client can never take the server
down. It builds nothing long-lived itself: :mod:`edge.app` hands it every part.
:meth:`Server.shutdown` starts a graceful stop.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import ssl
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import trio
from trio_websocket import WebSocketConnection, WebSocketRequest

from edge import __version__
from edge.asr.memory import MemoryBudget
from edge.asr.recognizer import RecognizerFactory, RecognizerPool
from edge.core.admission import Admissions
from edge.core.auth import (
    SCOPE_ENROLL,
    SCOPE_READ,
    SCOPE_RELAY,
    SCOPE_TRANSCRIPTS,
    SCOPE_WRITE,
    AuthSettings,
    Claims,
    RevocationFile,
    extract_token,
    require_scope,
    verify,
)
from edge.core.close_codes import CLOSE_POLICY, CLOSE_SERVICE_RESTART, CLOSE_TRY_AGAIN_LATER
from edge.core.config import Config
from edge.core.errors import AuthError
from edge.core.jwks import token_kids
from edge.core.stats import Stats
from edge.journal import transcripts
from edge.journal.service import JournalService
from edge.net import http, web, ws
from edge.net.channel import Channel, WebSocketChannel
from edge.net.connection import Connection, SessionInfo
from edge.net.listener import RoomListener
from edge.net.room import Room
from edge.net.routes import Admitted, HttpRoute, Route
from edge.net.session import Session
from edge.ops import health
from edge.ops.supervisor import Supervisor
from edge.protocols import live as protocol
from edge.protocols.live import LiveDialect
from edge.protocols.query import bad_request
from edge.protocols.text import Limits
from edge.relay.ingest import RelayIngest
from edge.relay.outbox import OutboxRelay as Relay
from edge.speakers import UNAVAILABLE, SpeakerIdentification, SpeakerStatus

if TYPE_CHECKING:
    from edge.net.jwks import JwksRefresher
    from edge.relay.mqtt_ingest import MqttIngest

logger = logging.getLogger(__name__)

TRANSCRIPTS_PATH = "/transcripts/"
RELAY_PATH = "/ws/relay"
TRANSCRIPT_TYPES = {"json": "application/json; charset=utf-8",
                    "text": "text/plain; charset=utf-8", "vtt": "text/vtt; charset=utf-8"}

_WS_MESSAGE_QUEUE = 4  # frames trio-websocket buffers before TCP pushes back
_ACCEPT_GRACE = 1.0  # past the handshake deadline, to send the accept or the refusal
_INTERNAL_CLOSE_TIMEOUT = 2.0


class _Handle:
    """A live connection from admission on: a revocation or a shutdown that lands while
    the handshake is still being accepted is applied as soon as the connection exists."""

    def __init__(self) -> None:
        self._connection: Connection | None = None
        self._pending: list[Callable[[Connection], None]] = []

    def revoke(self) -> None:
        self._apply(lambda connection: connection.revoke())

    def shutdown(self) -> None:
        self._apply(lambda connection: connection.shutdown())

    def _apply(self, action: Callable[[Connection], None]) -> None:
        if self._connection is None:
            self._pending.append(action)
        else:
            action(self._connection)

    def attach(self, connection: Connection) -> None:
        self._connection = connection
        for action in self._pending:
            action(connection)


class Server:
    """The listener and the connection boundary; start with ``await nursery.start(server.run)``.

    The composition root (:mod:`edge.app`) builds every part it uses and hands them in:
    ``recognizer_factory`` (the recogniser pool, or a stand-in), ``limiter`` (every
    Vosk call), the admission books, the journal, speaker identification, the room, the
    relay and the supervisor (for ``/healthz``). :meth:`shutdown` starts a graceful stop.
    """

    def __init__(
        self,
        config: Config,
        auth: AuthSettings,
        *,
        model_name: str,
        stats: Stats,
        limiter: trio.CapacityLimiter,
        recognizer_factory: RecognizerFactory,
        admissions: Admissions,
        revocations: RevocationFile | None = None,
        journal: JournalService | None = None,
        speakers: SpeakerIdentification | None = None,
        room: Room | None = None,
        relay: Relay | None = None,
        supervisor: Supervisor | None = None,
        ingest: MqttIngest | None = None,
        routes: Mapping[str, Route] | None = None,
        http_routes: Mapping[str, HttpRoute] | None = None,
        memory: MemoryBudget | None = None,
        jwks: JwksRefresher | None = None,
    ) -> None:
        self.config = config
        self.model_name = model_name
        self.auth = auth
        self.revocations = revocations
        self.recognizer_factory = recognizer_factory
        # Sessions' recognisers are counted against the memory budget and recycled.
        self.memory = memory
        self._session_recognizers = (memory.factory(recognizer_factory) if memory
                                     else recognizer_factory)
        self.stats = stats
        self.limiter = limiter
        self.admissions = admissions
        self.admission = admissions.sessions
        self.listeners = admissions.listeners
        self.relays = admissions.relays
        self.room = room
        self.journal = journal
        self.speakers = speakers  # None: no speaker model
        self.relay = relay  # None: not relaying upstream
        self.ingest = ingest  # None: not consuming from an MQTT broker
        self.supervisor = supervisor
        self.jwks = jwks  # None: no identity provider key set (auth.jwks_url)
        # Peer protocols' WebSocket paths; a key ending in "/" covers every path under it.
        self.routes = dict(routes or {})
        self.http_routes = dict(http_routes or {})
        self.peer_ports: dict[str, int] = {}  # peer protocols' own ports, once bound
        self.port: int | None = None
        self.stopping = False
        self._live: set[_Handle] = set()
        self._idle = trio.Event()

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
        if self.jwks is not None:  # a token naming a new key: fetch the key set first
            await self.jwks.wait_for(token_kids(head.target, head.headers), deadline)
        if not head.is_websocket_upgrade:
            await self._http(stream, head)
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

    async def _http(self, stream: trio.abc.Stream, head: http.RequestHead) -> None:
        if head.method not in ("GET", "HEAD"):
            await stream.send_all(http.response(405, {"type": "error", "code": "method",
                                                      "message": "only GET is served"},
                                                headers=[("Allow", "GET, HEAD")]))
            return
        head_only = head.method == "HEAD"
        if head.path == "/healthz":
            status, body = self.health()
            await stream.send_all(http.response(status, body, head_only=head_only))
        elif head.path == "/metrics":
            await stream.send_all(http.response(
                200, self.metrics(), content_type="text/plain; version=0.0.4; charset=utf-8",
                head_only=head_only))
        elif head.path.startswith(TRANSCRIPTS_PATH):
            status, body, content_type, headers = await self._transcript(head)
            await stream.send_all(http.response(status, body, headers=headers,
                                                content_type=content_type,
                                                head_only=head_only))
        elif (http_route := route_for(self.http_routes, head.path)) is not None:
            answer = await http_route(head, self._verify)
            await stream.send_all(http.response(answer.status, answer.body,
                                                headers=answer.headers, head_only=head_only))
        elif (head.path == self.config.server.path
              or route_for(self.routes, head.path) is not None):
            await stream.send_all(http.response(
                426, protocol.error("upgrade_required", "this endpoint speaks WebSocket"),
                headers=[("Upgrade", "websocket")], head_only=head_only))
        elif web.serves(head.path):  # the pages, their static files, the listing
            await stream.send_all(await web.answer(head, verify=self._verify,
                                                   journal=self.journal, stats=self.stats))
        else:
            await stream.send_all(http.response(
                404, protocol.error("not_found", "no such endpoint"), head_only=head_only))

    async def _transcript(self, head: http.RequestHead
                          ) -> tuple[int, Any, str | None, list[tuple[str, str]]]:
        """``GET /transcripts/<session_id>?format=json|text|vtt``: a finished session.

        Same tokens as the WebSocket (header or ``?token=``): ``transcription:read`` for
        one's own sessions (same ``sub``), ``transcripts:read`` for any session.
        """
        session_id = head.path[len(TRANSCRIPTS_PATH):]
        fmt = (head.query.get("format") or ["json"])[-1]
        try:
            token = extract_token(head.target, head.headers)
            revoked = self.revocations.current if self.revocations else None
            claims = verify(token, self.auth, now=time.time(), revoked=revoked)
            if not claims.has_scope(SCOPE_TRANSCRIPTS):
                require_scope(claims, SCOPE_READ)
        except AuthError as exc:
            self.stats.refused[exc.code] += 1
            headers = [("WWW-Authenticate", 'Bearer realm="edge", error="invalid_token"')]
            return (exc.status, protocol.error(exc.code, exc.message), None,
                    headers if exc.status == 401 else [])
        if fmt not in transcripts.FORMATS:
            return 400, protocol.error("invalid_parameter", "format must be json, text or "
                                       "vtt"), None, []
        if self.journal is None:
            return 404, protocol.error("no_journal", "this device keeps no journal"), None, []
        row = await self.journal.call(self.journal.journal.session, session_id)
        allowed = row is not None and (claims.has_scope(SCOPE_TRANSCRIPTS)
                                       or row.sub == claims.sub)
        if row is None or not allowed:
            # The same answer for "absent" and "not yours": ids are not probed.
            return 404, protocol.error("not_found", "no such session"), None, []
        if row.ended_at is None:
            return 409, protocol.error("in_progress", "the session has not ended yet"), None, []
        finals = await self.journal.call(self.journal.journal.finals, session_id,
                                         row.device_id)
        text = transcripts.render(fmt, row, finals)
        return 200, text, TRANSCRIPT_TYPES[fmt], []

    def health(self) -> tuple[int, dict[str, Any]]:
        """``/healthz``: 200 when serving, 503 with reasons when degraded or stopping."""
        return health.health(
            version=__version__, model=self.model_name, sessions=self.admission.current,
            max_sessions=self.config.server.max_sessions, clock=health.clock_status(),
            microphone=self.room.status() if self.room else None,
            relay=self.relay.status() if self.relay else None,
            services=self.supervisor.status() if self.supervisor else {},
            stopping=self.stopping, recognizers=self._pool_status(),
            ingest=self.ingest.status() if self.ingest else None,
            journal=self.journal.status() if self.journal else None,
            min_free_bytes=self._min_free_bytes,
            memory=self.memory.snapshot().status() if self.memory else None,
            jwks=self.jwks.store.status() if self.jwks else None)

    def metrics(self) -> str:
        """``/metrics`` in the Prometheus text format."""
        return health.render_metrics(
            self.stats, version=__version__, model=self.model_name,
            sessions_current=self.admission.current,
            max_sessions=self.config.server.max_sessions, clock=health.clock_status(),
            microphone_state=self.room.state if self.room else "not_configured",
            listeners=self.listeners.current,
            relay_backlog=self.relay.backlog.events if self.relay else 0,
            relay_circuit_open=bool(self.relay and self.relay.circuit_open),
            relay_shed=self.relay.shed_events if self.relay else 0,
            relay_set_aside=getattr(self.relay, "set_aside_events", 0),
            ingest=self.ingest.status() if self.ingest else None,
            recognizers=self._pool_status(),
            memory=self.memory.snapshot().status() if self.memory else None,
            service_restarts=({name: s.restarts for name, s in self.supervisor.services.items()}
                              if self.supervisor else None),
            journal=self.journal.status() if self.journal else None,
            min_free_bytes=self._min_free_bytes,
            jwks=self.jwks.store if self.jwks else None)

    @property
    def _min_free_bytes(self) -> int:
        return self.config.journal.min_free_mb * 1048576

    def _pool_status(self) -> dict[str, int | str] | None:
        pool = self.recognizer_factory
        return pool.status() if isinstance(pool, RecognizerPool) else None

    # --- WebSocket handshake ---------------------------------------------------------

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
                await self._serve_request(request, head, deadline, _peer_host(stream), route)
            finally:
                nursery.cancel_scope.cancel()

    def _verify(self, token: str) -> Claims:
        revoked = self.revocations.current if self.revocations else None
        return verify(token, self.auth, now=time.time(), revoked=revoked)

    async def _serve_request(self, request: WebSocketRequest, head: http.RequestHead,
                             deadline: float, peer: str, route: Route | None = None) -> None:
        """Route one WebSocket handshake: ``route`` (a peer protocol's own port) takes
        every path; on the main port, ``/ws/relay``, the peer protocols' paths, and the
        Live API's."""
        in_band = False
        try:
            if head.path == RELAY_PATH:
                await self._relay_ingest(request, head, deadline)
                return
            route = route or route_for(self.routes, head.path)
            if route is not None:
                admitted = route.admit(head, self._verify, peer)
                require_scope(admitted.claims, SCOPE_WRITE)
                await self._admit_and_run(request, admitted, deadline)
                return
            if head.path != self.config.server.path:
                raise AuthError("not_found", "no such endpoint", status=404,
                                close_code=CLOSE_POLICY)
            with bad_request(CLOSE_POLICY):
                params = protocol.parse_connect_params(head.query)
            in_band = params.errors_in_band
            claims = self._verify(extract_token(request.path, request.headers))
            if params.source == "room":
                require_scope(claims, SCOPE_READ)
                if self.room is None:
                    raise AuthError("no_room", "this device has no room microphone "
                                    "(microphone.enabled is false)", status=404,
                                    close_code=CLOSE_POLICY)
            else:
                require_scope(claims, SCOPE_WRITE)
                if params.enroll is not None:
                    require_scope(claims, SCOPE_ENROLL)
                    self._check_enrollment()
        except AuthError as exc:
            await self._refuse_by(request, exc, in_band, deadline)
            return
        if params.source == "room":
            await self._listen_to_room(request, claims, params, deadline)
            return
        dialect = LiveDialect(Limits(max_phrases=self.config.recognizer.max_phrases))
        enroll = (params.enroll, params.role) if params.enroll else None
        await self._admit_and_run(request, Admitted(claims, dialect, "live",
                                                    declared_rate=params.sample_rate),
                                  deadline, in_band=in_band, enroll=enroll)

    async def _relay_ingest(self, request: WebSocketRequest, head: http.RequestHead,
                            deadline: float) -> None:
        """``/ws/relay``: a downstream device pushing its journal into ours."""
        try:
            if self.journal is None or not self.config.relay.accept_ingest:
                raise AuthError("not_found", "this server does not accept relayed journals",
                                status=404, close_code=CLOSE_POLICY)
            claims = self._verify(extract_token(request.path, request.headers))
            require_scope(claims, SCOPE_RELAY)
            self._check_running()
            handle = _Handle()
            ticket = self.relays.admit(str(uuid.uuid4()), claims, handle.revoke)
        except AuthError as exc:
            await self._refuse_by(request, exc, False, deadline)
            return
        with ticket, self._live_while(handle):
            ws = await self._accept_by(request, deadline)
            if ws is None:
                return
            info = SessionInfo(session_id=ticket.session_id, claims=claims,
                               model_name=self.model_name,
                               default_rate=self.config.recognizer.sample_rate)
            ingest = RelayIngest(WebSocketChannel(ws), info, self.config, self.stats,
                                 self.journal)
            handle.attach(ingest)
            await self._run_session(ingest, claims, "relay")

    async def _listen_to_room(self, request: WebSocketRequest, claims: Claims,
                              params: protocol.ConnectParams, deadline: float) -> None:
        assert self.room is not None
        handle = _Handle()
        try:
            self._check_running()
            ticket = self.listeners.admit(str(uuid.uuid4()), claims, handle.revoke)
        except AuthError as exc:
            await self._refuse_by(request, exc, params.errors_in_band, deadline)
            return
        with ticket, self._live_while(handle):
            ws = await self._accept_by(request, deadline)
            if ws is None:
                return
            info = await self._session_info(ticket.session_id, claims, None)
            listener = RoomListener(WebSocketChannel(ws), info, self.config, self.stats,
                                    self.room, params.since_seq)
            handle.attach(listener)
            await self._run_session(listener, claims, "live")

    async def _admit_and_run(self, request: WebSocketRequest, admitted: Admitted,
                             deadline: float, *, in_band: bool = False,
                             enroll: tuple[str, str | None] | None = None) -> None:
        """A client session in ``admitted.dialect``, from admission to its end."""
        handle = _Handle()
        try:
            self._check_running()
            self._check_memory()
            ticket = self.admission.admit(str(uuid.uuid4()), admitted.claims, handle.revoke)
        except AuthError as exc:
            await self._refuse_by(request, exc, in_band, deadline)
            return
        with ticket, self._live_while(handle):
            ws = await self._accept_by(request, deadline)
            if ws is None:
                return
            await self._run_client(WebSocketChannel(ws), ticket.session_id, admitted, handle,
                                   enroll=enroll)

    async def serve_channel(self, channel: Channel, admitted: Admitted) -> None:
        """Run a client session that arrived on a port of its own (a peer protocol's
        listener), through the same admission, core and boundary as the main port's.
        Raises :class:`AuthError` (the caller answers in its protocol) when the daemon
        is stopping or full."""
        handle = _Handle()
        self._check_running()
        self._check_memory()
        ticket = self.admission.admit(str(uuid.uuid4()), admitted.claims, handle.revoke)
        with ticket, self._live_while(handle):
            await self._run_client(channel, ticket.session_id, admitted, handle)

    async def _run_client(self, channel: Channel, session_id: str, admitted: Admitted,
                          handle: _Handle, *,
                          enroll: tuple[str, str | None] | None = None) -> None:
        info = await self._session_info(session_id, admitted.claims, admitted.declared_rate)
        session = Session(channel, info, self.config, self._session_recognizers, self.limiter,
                          self.stats, self.journal, speakers=self.speakers, enroll=enroll,
                          dialect=admitted.dialect, dialect_name=admitted.dialect_name,
                          phrases=admitted.phrases, configure=admitted.configure)
        handle.attach(session)
        await self._run_session(session, admitted.claims, admitted.dialect_name)

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
            raise AuthError("server_shutdown", "the server is restarting; retry shortly",
                            status=503, close_code=CLOSE_SERVICE_RESTART,
                            retry_after=self.config.server.retry_after)

    def _check_memory(self) -> None:
        """A live session needs a recogniser: refused (503) when the memory budget
        cannot hold one more (:meth:`MemoryBudget.refuses`)."""
        why = self.memory.refuses(self.admission.current) if self.memory else None
        if why is not None:
            raise AuthError("memory_budget", why, status=503,
                            close_code=protocol.CLOSE_TRY_AGAIN_LATER,
                            retry_after=self.config.server.retry_after)

    @contextlib.contextmanager
    def _live_while(self, handle: _Handle) -> Iterator[None]:
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

    def _check_enrollment(self) -> None:
        """``?enroll=``: refused at the handshake when it could not succeed at the end."""
        if self.speakers is None:
            raise AuthError("no_speaker_model", "this device has no speaker model "
                            "(recognizer.speaker_model is empty): nothing can be enrolled",
                            status=404, close_code=CLOSE_POLICY)
        if self.speakers.error is not None:
            raise AuthError("voiceprints_unavailable", "the voiceprint store is damaged; "
                            "enrolment is off until an administrator repairs it",
                            status=503, close_code=CLOSE_TRY_AGAIN_LATER)

    async def _run_session(self, session: Connection, claims: Claims, dialect: str) -> None:
        self.stats.count_session(dialect)
        self.stats.sessions_current += 1
        kind = ("room listener" if isinstance(session, RoomListener)
                else "relay from device" if isinstance(session, RelayIngest)
                else f"{dialect} session")
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
            return
        finally:
            self.stats.sessions_current -= 1
        self.stats.closes[stop.reason] += 1
        if stop.notify:
            logger.info("session %s ended: %s (close %d)", session.id, stop.reason,
                        stop.close_code)
        else:
            logger.info("session %s ended: %s", session.id, stop.reason)

    async def _accept_by(self, request: WebSocketRequest, deadline: float
                         ) -> WebSocketConnection | None:
        """Accept the handshake, or None if the client is too slow to complete it."""
        with trio.move_on_at(deadline + _ACCEPT_GRACE):
            return await request.accept()
        return None

    async def _refuse_by(self, request: WebSocketRequest, exc: AuthError, in_band: bool,
                         deadline: float) -> None:
        """:meth:`_refuse`, bounded: a client that stops reading cannot hold us."""
        with trio.move_on_at(deadline + _ACCEPT_GRACE):
            await self._refuse(request, exc, in_band)

    async def _refuse(self, request: WebSocketRequest, exc: AuthError, in_band: bool) -> None:
        """Refuse a handshake: an HTTP status, or (opt-in) an error message and a close code."""
        self.stats.refused[exc.code] += 1
        logger.info("handshake refused: %s (%d)", exc.code, exc.status)
        body = protocol.error(exc.code, exc.message)
        if in_band:
            ws = await request.accept()
            await ws.send_message(protocol.encode(body))
            await ws.aclose(exc.close_code, exc.code)
            return
        headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
        if exc.status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="edge", error="invalid_token"'))
        elif exc.status == 403:
            scope = (exc.scope or SCOPE_WRITE).encode()
            headers.append((b"www-authenticate", b'Bearer realm="edge", '
                            b'error="insufficient_scope", scope="' + scope + b'"'))
        elif exc.status == 400 and exc.code == "invalid_request":
            headers.append((b"www-authenticate", b'Bearer realm="edge", error="invalid_request"'))
        if exc.retry_after is not None:
            headers.append((b"retry-after", str(exc.retry_after).encode()))
        await request.reject(exc.status, extra_headers=headers,
                             body=json.dumps(body).encode())


_T = TypeVar("_T")


def route_for(table: Mapping[str, _T], path: str) -> _T | None:
    """``table``'s entry for ``path``: its own, or the longest key ending in "/" that
    ``path`` starts with (a path parameter such as a token in the path)."""
    if path in table:
        return table[path]
    prefixes = [key for key in table if key.endswith("/") and path.startswith(key)]
    return table[max(prefixes, key=len)] if prefixes else None


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


def _peer(stream: trio.abc.Stream) -> str:
    address = _peer_address(stream)
    return "?" if address is None else f"{address[0]}:{address[1]}"


def _peer_host(stream: trio.abc.Stream) -> str:
    address = _peer_address(stream)
    return "" if address is None else address[0]
