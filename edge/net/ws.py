"""The WebSocket hand-off: an upgrade request, parsed once by :mod:`edge.net.http`,
becomes a trio-websocket :class:`~trio_websocket.WebSocketRequest`, with two guards
that trio-websocket 0.12 and wsproto 1.3 lack at the frame level.

:func:`wrap_server_request` does what ``trio_websocket.wrap_server_stream`` does
(a :class:`~trio_websocket.WebSocketConnection` and its reader task), except that
wsproto is handed the already-parsed request (``initiate_upgrade_connection``) instead
of the raw bytes, and that the bytes read past the head reach wsproto's frame decoder.
"""

from __future__ import annotations

import contextlib
import logging

import h11
import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
)
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, CloseConnection, Event, RejectConnection
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason as Code
from wsproto.frame_protocol import FrameDecoder, FrameProtocol, Opcode, RsvBits
from wsproto.utilities import RemoteProtocolError

from edge.net import http

logger = logging.getLogger(__name__)

_FAIL_CLOSE_TIMEOUT = 2.0  # to send the close frame of a failed connection


class FrameLimit(Extension):
    """Refuses, with 1009, a frame whose header announces more than ``max_bytes``.

    wsproto has no frame size limit, and trio-websocket counts a message only as its
    payload arrives, so a header announcing 2**62 bytes held a session open until the
    idle timeout. wsproto's extension hook is the one public place that sees each frame
    header; the extension is local only: its name is never offered by a client, so it
    is never negotiated or sent, and it leaves frames and reserved bits as they are.
    """

    name = "x-edge-frame-limit"

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.refusal: str | None = None  # the close reason, once a frame was refused

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool:
        return False

    def frame_inbound_header(self, proto: FrameDecoder | FrameProtocol, opcode: Opcode,
                             rsv: RsvBits, payload_length: int) -> Code | RsvBits:
        if payload_length > self.max_bytes:
            self.refusal = (f"frame of {payload_length} bytes is over the limit of "
                            f"{self.max_bytes}")
            return Code.MESSAGE_TOO_BIG
        return RsvBits(False, False, False)


class _ServerHandshake(WSConnection):
    """wsproto's server connection, accepting with :class:`FrameLimit` in place."""

    def __init__(self, limit: FrameLimit) -> None:
        super().__init__(ConnectionType.SERVER)
        self._limit = limit

    def send(self, event: Event) -> bytes:
        if isinstance(event, AcceptConnection):
            event = AcceptConnection(subprotocol=event.subprotocol,
                                     extensions=[*event.extensions, self._limit],
                                     extra_headers=event.extra_headers)
        return super().send(event)


class _HeldStream(trio.abc.Stream):
    """The transport, with ``held`` (bytes read past the head) given to the first
    receive only once the handshake was accepted.

    wsproto 1.3's server starts its frame decoder at the accept with nothing in it:
    bytes fed to it before (a client that pipelines its first frame after the head)
    are lost. Holding them back until the 101 is sent delivers them to the decoder.
    On a refusal they are never delivered; the reader is cancelled with the connection.
    """

    def __init__(self, stream: trio.abc.Stream, held: bytes, wsproto: WSConnection) -> None:
        self.transport_stream = stream
        self._held = held
        self._wsproto = wsproto
        self._accepted = trio.Event()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._held:
            await self._accepted.wait()
            n = len(self._held) if max_bytes is None else max_bytes
            chunk, self._held = self._held[:n], self._held[n:]
            return chunk
        return await self.transport_stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport_stream.send_all(data)
        if self._wsproto.state is ConnectionState.OPEN:
            self._accepted.set()

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


class _ServerWebSocket(WebSocketConnection):
    """A server connection that sends a close frame before dropping a client that
    broke RFC 6455.

    On a frame it cannot accept (unmasked, reserved opcode or bits, invalid UTF-8, a
    fragmented control frame, or one over :class:`FrameLimit`) wsproto yields a
    ``CloseConnection`` with the code (1002, 1007, 1009) while the connection is still
    OPEN, and trio-websocket then closes TCP without a close frame. RFC 6455 section
    7.1.7 asks for one first; this sends it (bounded: a client that does not read
    cannot hold the reader), then lets trio-websocket close as before.
    """

    def __init__(self, stream: trio.abc.Stream, wsproto: WSConnection, limit: FrameLimit,
                 *, message_queue_size: int, max_message_size: int) -> None:
        super().__init__(stream, wsproto, message_queue_size=message_queue_size,
                         max_message_size=max_message_size)
        self._limit = limit

    async def _handle_close_connection_event(self, event: CloseConnection) -> None:
        if self._wsproto.state is ConnectionState.OPEN:  # wsproto failed the connection
            reason = self._limit.refusal or event.reason
            event = CloseConnection(code=event.code, reason=reason)
            logger.info("websocket %d failed: %s (close %d)", self._id, reason, event.code)
            # Closed from here on, as trio-websocket does before its own 1009: a
            # send_message racing this close then raises ConnectionClosed.
            self._close_reason = CloseReason(event.code, reason)
            with trio.move_on_after(_FAIL_CLOSE_TIMEOUT), contextlib.suppress(ConnectionClosed):
                await self._send(event)
        await super()._handle_close_connection_event(event)


async def wrap_server_request(
    nursery: trio.Nursery, stream: trio.abc.Stream, head: http.RequestHead,
    trailing: bytes = b"", *, max_frame_bytes: int, message_queue_size: int,
) -> WebSocketRequest | None:
    """The WebSocket request for ``head`` (an upgrade), or None when wsproto refuses
    the upgrade (missing key or version, ...): then the refusal has been sent.

    ``trailing`` are the bytes read past the head. The connection's reader task runs
    in ``nursery`` until the connection closes or the nursery is cancelled; the caller
    closes ``stream``. Blocks only to send a refusal.
    """
    limit = FrameLimit(max_frame_bytes)
    wsproto = _ServerHandshake(limit)
    try:
        wsproto.initiate_upgrade_connection(list(head.headers), head.target)
    except (RemoteProtocolError, h11.LocalProtocolError) as exc:
        hint = getattr(exc, "event_hint", None)
        refusal = hint if isinstance(hint, RejectConnection) else RejectConnection()
        logger.info("websocket upgrade refused (%d): %s", refusal.status_code, exc)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in refusal.headers]
        await stream.send_all(http.response(refusal.status_code, str(exc), headers=headers))
        return None
    if trailing:
        stream = _HeldStream(stream, trailing, wsproto)
    connection = _ServerWebSocket(stream, wsproto, limit,
                                  message_queue_size=message_queue_size,
                                  max_message_size=max_frame_bytes)
    nursery.start_soon(connection._reader_task)
    return await connection._get_request()
