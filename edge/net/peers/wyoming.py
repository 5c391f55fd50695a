"""Home Assistant's Wyoming protocol on a TCP port of its own (``[wyoming]``).

Each connection is served in two phases (the protocol is in :mod:`edge.protocols.wyoming`):
its *opening* is answered here, without a session (``describe`` gets ``info`` at once:
Home Assistant gives it one second, and a describe-only connection leaves no trace in
the journal); the first ``audio-start`` hands the connection to the session core through
:meth:`~edge.net.server.Server.serve_channel`, which admits, journals and runs it like any
other session. The protocol has no authentication: only peers in
``[wyoming] trusted_networks`` are served; any other gets an ``error`` event and the
connection is closed before anything is read.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time

import trio

from edge.core.config import Config
from edge.core.errors import Refusal
from edge.core.model_table import installed_models
from edge.core.networks import TrustedNetworks, network_claims, network_lifetime
from edge.core.phrases import read_phrases_file
from edge.net.channel import ChannelClosed
from edge.net.peers import PeerContext
from edge.net.routes import Admitted
from edge.net.server import Server
from edge.protocols.wyoming import (
    Answer,
    Begin,
    Opening,
    Refuse,
    Service,
    WyomingDialect,
    model_languages,
)
from edge.protocols.wyoming_wire import EventReader, Limits, Malformed, WyomingEvent, error_event

logger = logging.getLogger(__name__)

_RECEIVE_BYTES = 65536
_LINGER = 5.0  # seconds a closing connection waits for the peer's own close


class WyomingChannel:
    """A TCP stream of Wyoming events as a :class:`~edge.net.channel.Channel`: frames in
    are :class:`WyomingEvent` (or :class:`Malformed`, after which nothing more is read),
    frames out are encoded events. The caller owns ``stream``; :meth:`close` closes it."""

    def __init__(self, stream: trio.abc.HalfCloseableStream, reader: EventReader) -> None:
        self.stream = stream
        self._reader = reader
        self._pending: collections.deque[WyomingEvent] = collections.deque()

    def push_back(self, event: WyomingEvent) -> None:
        """``event`` is the next one :meth:`receive` returns."""
        self._pending.appendleft(event)

    async def receive(self) -> WyomingEvent | Malformed:
        """The next event; raises :class:`ChannelClosed` at EOF (an event cut short
        included) or when the stream breaks."""
        if self._pending:
            return self._pending.popleft()
        while True:
            event = self._reader.next_event()
            if event is not None:
                return event
            try:
                data = await self.stream.receive_some(_RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ChannelClosed() from exc
            if not data:
                raise ChannelClosed()
            self._reader.feed(data)

    async def send(self, frame: bytes) -> None:
        try:
            await self.stream.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ChannelClosed() from exc

    async def close(self, code: int, reason: str) -> None:
        """Close after a lingering half-close (TCP has no close codes): our side is shut
        first and what the peer still sends is read and dropped, until its own close or
        for ``_LINGER`` seconds, so that the last events are not lost to a reset (a
        socket closed with unread bytes resets the connection)."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                 trio.BusyResourceError):
            await self.stream.send_eof()
            with trio.move_on_after(_LINGER):
                while await self.stream.receive_some(_RECEIVE_BYTES):
                    pass
        await self.stream.aclose()

    async def ping(self) -> None:
        return  # Wyoming's ping is the client's to send


class WyomingListener:
    """The ``[wyoming]`` service: binds, reports its port in ``server.peer_ports``, and
    serves every connection inside its own boundary (one connection's failure is
    logged and closes that connection only).

    Raises :class:`ConfigError` on construction when ``phrases_file`` cannot be read
    (a small file, read once at startup)."""

    def __init__(self, config: Config, context: PeerContext, server: Server) -> None:
        w = config.wyoming
        self.config = config
        self.server = server
        self.trusted = TrustedNetworks("wyoming.trusted_networks", w.trusted_networks)
        languages = (w.language,) if w.language else model_languages(context.model_name)
        # Several models (recognizer.models): info lists them all, transcribe chooses.
        table = installed_models(config)
        self.models = table if len(table.languages) > 1 else None
        if self.models is not None:
            languages = self.models.languages
        if not languages:
            logger.warning("wyoming: the model's name (%s) says no language and "
                           "wyoming.language is empty: info lists none and transcribe's "
                           "language is not checked", context.model_name)
        self.service = Service(context.model_name, languages)
        self.phrases = (read_phrases_file("wyoming.phrases_file", w.phrases_file,
                                          config.recognizer.max_phrases)
                        if w.phrases_file else None)
        self.limits = Limits(max_payload_bytes=config.server.max_frame_bytes)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        w = self.config.wyoming
        listeners = await trio.open_tcp_listeners(w.port, host=w.host or None)
        port: int = listeners[0].socket.getsockname()[1]
        self.server.peer_ports["wyoming"] = port
        logger.info("wyoming: listening on tcp://%s:%d (model %s, languages %s)", w.host,
                    port, self.service.model_name, ", ".join(self.service.languages) or "-")
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        host = _peer_host(stream)
        try:
            await self._serve(stream, host)
        except Exception:
            logger.exception("wyoming connection from %s failed", host)
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.SocketStream, host: str) -> None:
        channel = WyomingChannel(stream, EventReader(self.limits))
        try:
            self.trusted.check("wyoming", host)
        except Refusal as exc:
            self.server.boundary.refused(exc, "session.start", host)
            await self._refuse(channel, host, Refuse(exc.code, exc.message))
            return
        begin = await self._opening(channel, host)
        if begin is None:
            return
        if begin.replay is not None:
            channel.push_back(begin.replay)
        now = time.time()
        lifetime = network_lifetime(self.config.server.max_session_seconds,
                                    self.config.auth.expiry_warning)
        admitted = Admitted(
            claims=network_claims("wyoming", host, now=now, lifetime=lifetime),
            dialect=WyomingDialect(self.service, begin.request), dialect_name="wyoming",
            declared_rate=begin.request.rate, phrases=self.phrases,
            language=self.models.choose(begin.request.language) if self.models else None)
        try:
            await self.server.serve_channel(channel, admitted, host)
        except Refusal as exc:  # stopping, or at capacity
            await self._refuse(channel, host, Refuse(exc.code, exc.message))

    async def _opening(self, channel: WyomingChannel, host: str) -> Begin | None:
        """Answer events until one begins a session; None once the connection is done
        with (closed by the peer, refused, or idle for ``server.idle_timeout``)."""
        opening = Opening(self.service)
        idle = self.config.server.idle_timeout
        while True:
            with trio.move_on_after(idle):
                try:
                    event = await channel.receive()
                except ChannelClosed:
                    return None
                step = opening.step(event)
                if isinstance(step, Begin):
                    return step
                if isinstance(step, Refuse):
                    await self._refuse(channel, host, step)
                    return None
                if not await self._send(channel, step):
                    return None
                continue
            await self._refuse(channel, host, Refuse(
                "idle_timeout", f"no event for {idle:g} seconds"))
            return None

    async def _send(self, channel: WyomingChannel, answer: Answer) -> bool:
        with trio.move_on_after(self.config.server.send_timeout):
            try:
                for frame in answer.frames:
                    await channel.send(frame)
            except ChannelClosed:
                return False
            return True
        return False

    async def _refuse(self, channel: WyomingChannel, host: str, refuse: Refuse) -> None:
        self.server.stats.refused[refuse.code] += 1
        logger.info("wyoming connection from %s refused: %s", host, refuse.code)
        with trio.move_on_after(self.config.server.send_timeout):
            with contextlib.suppress(ChannelClosed):
                await channel.send(error_event(refuse.code, refuse.message))
        await channel.close(0, refuse.code)


def _peer_host(stream: trio.SocketStream) -> str:
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return ""
