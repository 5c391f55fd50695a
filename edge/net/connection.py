"""What every accepted WebSocket has in common, whatever it streams.

A :class:`Connection` owns the sending side (one sender task; each send bounded by
``server.send_timeout``), the ways a connection ends (:meth:`Connection.stop`, the
first reason wins), and the watchdogs every client gets: token expiry (a warning,
then a close with 1002) and keepalive pings. :class:`~edge.net.session.Session` (a client
streaming its own audio) and :class:`~edge.net.listener.RoomListener` (a client listening
to the room microphone) build on it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import trio

from edge.core.auth import Claims
from edge.core.close_codes import (
    CLOSE_AUTH,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY,
    CLOSE_SERVICE_RESTART,
)
from edge.core.config import Config
from edge.core.stats import Stats
from edge.net.channel import Channel, ChannelClosed
from edge.protocols import live as protocol
from edge.protocols.events import CoreEvent, Dialect, Ended, Notice
from edge.protocols.live import LiveDialect

logger = logging.getLogger(__name__)

_OUTBOX_MESSAGES = 64
_CLOSE_TIMEOUT = 5.0


@dataclass
class Stop:
    """Why a connection ends, and what the client is told."""

    close_code: int
    reason: str
    error: tuple[str, str] | None = None  # (code, message) of the final ``error`` message
    flush: bool = True  # finish the work in hand (decode queued audio) first
    notify: bool = True  # the socket is still usable


def shutdown_stop() -> Stop:
    """How every connection ends when the daemon stops: close 1012 (Service Restart),
    after the work in hand is finished."""
    return Stop(CLOSE_SERVICE_RESTART, "shutdown", (
        "server_shutdown", "the server is restarting; reconnect in a few seconds"))


@dataclass
class SessionInfo:
    session_id: str
    claims: Claims
    model_name: str
    default_rate: int
    declared_rate: int | None = None
    speaker_identification: bool = False
    speaker_reason: str | None = None  # why speaker labels (or names) are off
    language: str = ""  # the installed language the session's model serves


class Connection:
    """Base of the per-client handlers; subclasses implement :meth:`run`.

    The caller owns ``ws`` (it accepted it) and keeps ownership; the sender sends the
    close frame when the connection ends. ``_on_stop`` lets a subclass react to the
    first :meth:`stop` (close its input, cancel its work). What goes on the wire is the
    ``dialect``'s business (the Live API unless another is given): the connection hands
    it core events and sends the frames it returns.
    """

    def __init__(self, channel: Channel, info: SessionInfo, config: Config,
                 stats: Stats, dialect: Dialect | None = None) -> None:
        self.channel = channel
        self.info = info
        self.id = info.session_id
        self.dialect: Dialect = dialect or LiveDialect()
        self._cfg = config
        self._stats = stats
        self._stop: Stop | None = None
        self._out_send, self._out_recv = trio.open_memory_channel[str | bytes](
            _OUTBOX_MESSAGES)
        self._started = trio.current_time()
        self._last_client_message = self._started

    async def run(self) -> Stop:  # pragma: no cover - abstract
        raise NotImplementedError

    def stop(self, stop: Stop) -> None:
        """End the connection for ``stop``'s reason (idempotent: the first reason wins)."""
        if self._stop is not None:
            if not stop.notify:
                self._stop.notify = False
            return
        self._stop = stop
        self._on_stop(stop)

    def _on_stop(self, stop: Stop) -> None:
        """Hook: the first stop happened."""

    def revoke(self) -> None:
        """The token was revoked: close at once, send nothing more but the error."""
        self.stop(Stop(CLOSE_AUTH, "revoked", ("token_revoked", "the token was revoked"),
                       flush=False))

    def shutdown(self) -> None:
        """The daemon is stopping: finish the work in hand (the final of the utterance
        in progress), then tell the client and close with 1012 (Service Restart)."""
        self.stop(shutdown_stop())

    async def fail(self) -> None:
        """The server failed this connection (an exception at the boundary): tell the
        client, in its dialect, and close with 1011. Unbounded: the caller bounds it."""
        ended = Ended(self.id, "internal_error", CLOSE_INTERNAL_ERROR, (
            "internal_error", "the server failed this session; please reconnect"))
        with contextlib.suppress(ChannelClosed):
            for frame in self.dialect.encode(ended):
                await self.channel.send(frame)
            await self.channel.close(self.dialect.close_code(ended), "internal error")

    def _finish(self) -> None:
        """Queue the closing message for the stop reason and let the sender close."""
        stop = self._stop
        assert stop is not None
        if stop.notify:
            self._send(self._end_event(stop))
        self._out_send.close()

    def _end_event(self, stop: Stop) -> Ended:
        return Ended(self.id, stop.reason, stop.close_code, stop.error, self._summary(stop))

    def _summary(self, stop: Stop) -> dict[str, Any]:
        return {"duration_ms": round(1000 * (trio.current_time() - self._started))}

    # --- watchdogs -----------------------------------------------------------------

    async def _token_expiry(self) -> None:
        a = self._cfg.auth
        claims = self.info.claims
        end = trio.current_time() + claims.expires_at + a.leeway - time.time()
        warn_at = end - a.expiry_warning
        if a.expiry_warning > 0:
            await trio.sleep_until(warn_at)
            self._warn("token_expiring", "the token expires soon; the session will end "
                       "then. Reconnect with a fresh token to continue.",
                       expires_at=int(claims.expires_at))
        await trio.sleep_until(end)
        self.stop(Stop(CLOSE_AUTH, "token_expired", ("token_expired", "the token expired")))

    async def _keepalive(self) -> None:
        s = self._cfg.server
        while True:
            await trio.sleep(s.ping_interval)
            sent_at = trio.current_time()
            with trio.move_on_after(s.ping_timeout):
                try:
                    await self.channel.ping()
                except ChannelClosed:
                    return
                continue
            # A client busy sending (its frames queued behind a slow recogniser) may not
            # get to answer a ping: only silence in both directions counts as dead.
            if self._last_client_message < sent_at:
                logger.info("session %s: no pong within %gs, closing", self.id, s.ping_timeout)
                self.stop(Stop(CLOSE_GOING_AWAY, "dead_peer", notify=False))
                return

    # --- sending -------------------------------------------------------------------

    def _send(self, event: CoreEvent) -> None:
        """Queue the dialect's frames for ``event`` without blocking (see :meth:`_put`)."""
        for frame in self.dialect.encode(event):
            self._put(frame)

    def _queue(self, message: Mapping[str, Any]) -> None:
        """Queue a JSON message as it is (for connections that speak no dialect)."""
        self._put(protocol.encode(message))

    def _put(self, frame: str | bytes) -> None:
        """Queue a frame for the sender without blocking.

        A full outbox means the client has not read ``_OUTBOX_MESSAGES`` messages:
        it is stalled, and the connection ends rather than buffer without bound.
        """
        try:
            self._out_send.send_nowait(frame)
        except trio.WouldBlock:
            logger.warning("session %s: client is not reading; closing", self.id)
            self.stop(Stop(CLOSE_POLICY, "client_stalled", notify=False))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the sender is gone; the socket is closing

    async def _put_wait(self, frame: str | bytes) -> None:
        """Queue a frame, waiting for room: back-pressure for a forwarding loop."""
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            await self._out_send.send(frame)

    def _warn(self, code: str, message: str, **details: Any) -> None:
        self._stats.count_warning(code)
        self._send(Notice(self.id, code, message, details))

    async def _sender(self) -> None:
        timeout = self._cfg.server.send_timeout
        async with self._out_recv:
            async for text in self._out_recv:
                if self._stop is not None and not self._stop.notify:
                    break
                try:
                    with trio.fail_after(timeout):
                        await self.channel.send(text)
                except ChannelClosed:
                    self.stop(Stop(CLOSE_GOING_AWAY, "client_closed", notify=False))
                    break
                except trio.TooSlowError:
                    logger.warning("session %s: a send took over %gs; closing", self.id, timeout)
                    self.stop(Stop(CLOSE_POLICY, "client_stalled", notify=False))
                    break
        stop = self._stop
        if stop is not None and stop.notify:
            code = self.dialect.close_code(self._end_event(stop))
            with trio.move_on_after(_CLOSE_TIMEOUT):
                await self.channel.close(code, stop.reason)
