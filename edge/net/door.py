"""How an admitted client is let in or turned away, whatever it came through: a
WebSocket handshake still to be answered (:class:`WebSocketDoor`) or a connection a
peer protocol's listener already holds (:class:`ChannelDoor`); and the
:class:`Handle` by which a revocation or a shutdown reaches a connection.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Protocol

import trio
from trio_websocket import WebSocketRequest

from edge.core.errors import Refusal
from edge.core.stats import Stats
from edge.net.channel import Channel, WebSocketChannel
from edge.net.connection import Connection
from edge.net.gate import refusal_headers
from edge.protocols import live as protocol

logger = logging.getLogger(__name__)

ACCEPT_GRACE = 1.0  # past the handshake deadline, to send the accept or the refusal


class Handle:
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


class Door(Protocol):
    async def open(self) -> Channel | None:
        """The admitted client's channel; None if it went away meanwhile."""
        ...

    async def refuse(self, exc: Refusal) -> None:
        """Turn the client away with ``exc``'s status, close code and message."""
        ...


class WebSocketDoor:
    """A WebSocket handshake, answered by ``deadline`` (plus a grace to send it): a
    client that stops reading cannot hold the server."""

    def __init__(self, request: WebSocketRequest, deadline: float, stats: Stats) -> None:
        self.request = request
        self.deadline = deadline
        self.stats = stats

    async def open(self) -> Channel | None:
        with trio.move_on_at(self.deadline + ACCEPT_GRACE):
            return WebSocketChannel(await self.request.accept())
        return None

    async def refuse(self, exc: Refusal) -> None:
        """An HTTP status, or (``exc.in_band``) an error message and a close code."""
        self.stats.refused[exc.code] += 1
        logger.info("handshake refused: %s (%d)", exc.code, exc.status)
        with trio.move_on_at(self.deadline + ACCEPT_GRACE):
            await self._refuse(exc)

    async def _refuse(self, exc: Refusal) -> None:
        body = protocol.error(exc.code, exc.message)
        if exc.in_band:
            ws = await self.request.accept()
            await ws.send_message(protocol.encode(body))
            await ws.aclose(exc.close_code, exc.code)
            return
        headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
        headers += [(name.lower().encode(), value.encode())
                    for name, value in refusal_headers(exc)]
        await self.request.reject(exc.status, extra_headers=headers,
                                  body=json.dumps(body).encode())


class ChannelDoor:
    """A connection a peer protocol's listener holds: it is open already, and a refusal
    goes back to that listener (raised), which answers in its own protocol."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    async def open(self) -> Channel | None:
        return self.channel

    async def refuse(self, exc: Refusal) -> None:
        raise exc
