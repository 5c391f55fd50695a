"""A client listening to the room microphone (``/ws/transcribe?source=room``).

It receives the room's messages from its own bounded :class:`~edge.net.hub.Listener`
queue, re-addressed to its own ``session_id`` (the room's id is ``room_id``). A client
that stops reading backs up its own queue only; the hub drops it when the queue is
full, and it is told so (``slow_listener``) if it can still be reached. Clients whose
token has ``transcription:write`` may pause and resume the room's capture.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from edge.core.auth import SCOPE_WRITE
from edge.core.close_codes import CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_POLICY
from edge.core.config import Config
from edge.core.errors import ProtocolError
from edge.core.stats import Stats
from edge.net.channel import Channel, ChannelClosed
from edge.net.connection import Connection, SessionInfo, Stop, shutdown_stop
from edge.net.hub import SLOW_LISTENER
from edge.net.room import Room
from edge.protocols import live as protocol
from edge.protocols.events import Audio, End, KeepAlive, Pause, Resume, RoomDescription, Started

logger = logging.getLogger(__name__)

_SLOW_NOTICE_TIMEOUT = 1.0


class RoomListener(Connection):
    def __init__(self, channel: Channel, info: SessionInfo, config: Config,
                 stats: Stats, room: Room, since_seq: int | None) -> None:
        super().__init__(channel, info, config, stats)
        self._room = room
        self._since = since_seq
        self._forwarded = 0
        self._cancel = trio.CancelScope()

    async def run(self) -> Stop:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sender)
            self._send(Started(self.id, self._description()))
            with self._cancel, self._room.hub.subscribe(
                    self._since, queue_size=self._cfg.microphone.listener_queue) as listener:
                async with trio.open_nursery() as inner:
                    inner.start_soon(self._receiver)
                    inner.start_soon(self._token_expiry)
                    inner.start_soon(self._keepalive)
                    inner.start_soon(self._max_length)
                    async for published in listener:
                        self._forwarded += 1
                        await self._put_wait(protocol.encode(protocol.room_message(
                            self.id, self._room.id, published.seq, published.event)))
                    self._ended(listener.dropped_reason)
                    inner.cancel_scope.cancel()
            self._finish()
        assert self._stop is not None
        return self._stop

    def _on_stop(self, stop: Stop) -> None:
        self._cancel.cancel()

    def shutdown(self) -> None:
        """The daemon is stopping: keep forwarding until the room has published its
        last final and closed its hub; the listener then ends with 1012."""

    def _ended(self, reason: str | None) -> None:
        if reason == SLOW_LISTENER:
            logger.warning("session %s: room listener fell %d messages behind; dropped",
                           self.id, self._cfg.microphone.listener_queue)
            self._warn("slow_listener", "this client fell too far behind the room stream "
                       "and was dropped; reconnect with since_seq to catch up")
            self.stop(Stop(CLOSE_POLICY, "slow_listener"))
        else:  # the hub closes only when the daemon stops, after the room's last final
            self.stop(shutdown_stop())

    async def _receiver(self) -> None:
        while True:
            try:
                text = await self.channel.receive()
            except ChannelClosed:
                self.stop(Stop(CLOSE_GOING_AWAY, "client_closed", notify=False))
                return
            self._last_client_message = trio.current_time()
            try:
                message = self.dialect.parse(text)
            except ProtocolError as exc:
                self._warn("bad_message", exc.message)
                continue
            if isinstance(message, Audio):
                self._warn("bad_message", "room listeners do not send audio; ignored")
                continue
            if isinstance(message, End):
                self.stop(Stop(CLOSE_NORMAL, "end"))
                return
            if isinstance(message, Pause | Resume):
                self._control(message)
            elif not isinstance(message, KeepAlive):
                self._warn("bad_message", "room listeners accept end, pause, resume and "
                           "keepalive")

    def _control(self, message: Pause | Resume) -> None:
        if not self.info.claims.has_scope(SCOPE_WRITE):
            self._warn("insufficient_scope", f"pausing or resuming the room needs the "
                       f"{SCOPE_WRITE} scope")
            return
        verb = "paused" if isinstance(message, Pause) else "resumed"
        logger.info("session %s (sub=%s) %s the room", self.id, self.info.claims.sub, verb)
        if isinstance(message, Pause):
            self._room.pause()
        else:
            self._room.resume()

    async def _max_length(self) -> None:
        limit = self._cfg.server.max_session_seconds
        await trio.sleep_until(self._started + limit)
        self.stop(Stop(CLOSE_POLICY, "max_session_length", (
            "session_too_long", f"sessions are limited to {limit:g} seconds; reconnect with "
            "since_seq to continue")))

    def _description(self) -> RoomDescription:
        claims = self.info.claims
        hub = self._room.hub.statistics()
        return RoomDescription(
            room_id=self._room.id, state=self._room.state, last_seq=hub.last_seq,
            replay_size=hub.replay_size, model=self.info.model_name,
            can_pause=claims.has_scope(SCOPE_WRITE), expires_at=int(claims.expires_at),
            speaker_identification=self.info.speaker_identification,
            speaker_identification_reason=self.info.speaker_reason)

    def _summary(self, stop: Stop) -> dict[str, Any]:
        return {**super()._summary(stop), "room_id": self._room.id,
                "last_seq": self._room.hub.statistics().last_seq}
