"""What a connection needs of its transport: frames in, frames out, a close, a ping.

The session core and the room listener speak to a :class:`Channel`, not to a socket:
a WebSocket (:class:`WebSocketChannel`, every dialect on the main port and vosk-server's)
or a TCP stream of framed events (Wyoming's). A channel's frames are whatever its
dialect parses: ``str`` or ``bytes`` for a WebSocket, typed events for a TCP protocol.
"""

from __future__ import annotations

from typing import Any, Protocol

from trio_websocket import ConnectionClosed, WebSocketConnection


class ChannelClosed(Exception):
    """The peer closed (or the transport broke). ``code``: the WebSocket close code the
    peer sent, when there was one."""

    def __init__(self, code: int | None = None) -> None:
        super().__init__(f"closed ({code})" if code is not None else "closed")
        self.code = code


class Channel(Protocol):
    async def receive(self) -> Any:
        """The next frame; raises :class:`ChannelClosed` once the peer has gone."""
        ...

    async def send(self, frame: Any) -> None:
        """Send one frame (unbounded in time: callers bound it). Raises
        :class:`ChannelClosed` if the peer has gone."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code`` (a transport without close codes just closes)."""
        ...

    async def ping(self) -> None:
        """Return when the peer has shown it is alive (a pong); a transport without
        pings returns at once. Raises :class:`ChannelClosed`."""
        ...


class WebSocketChannel:
    """A trio-websocket connection as a channel (the caller owns and closes ``ws``)."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws

    async def receive(self) -> str | bytes:
        try:
            return await self.ws.get_message()
        except ConnectionClosed as exc:
            raise ChannelClosed(exc.reason.code if exc.reason else None) from exc

    async def send(self, frame: str | bytes) -> None:
        try:
            await self.ws.send_message(frame)
        except ConnectionClosed as exc:
            raise ChannelClosed(exc.reason.code if exc.reason else None) from exc

    async def close(self, code: int, reason: str) -> None:
        await self.ws.aclose(code, reason)

    async def ping(self) -> None:
        try:
            await self.ws.ping()
        except ConnectionClosed as exc:
            raise ChannelClosed(exc.reason.code if exc.reason else None) from exc
