"""A session's audio on its way from the receiver to the recogniser loop.

Bounded (:data:`FRAMES` items): when the recogniser falls behind, the receiver waits for
room, stops reading, and TCP pushes back on the client; nothing is dropped. Each item
is ``(pcm, received)``, the time the audio arrived, so that latency is measured from
then. ``pcm`` may also be :data:`FORCE_ENDPOINT` (finalise what came before it) or
``b""`` (a frame without samples, answered in its turn).
"""

from __future__ import annotations

from types import TracebackType

import trio

FRAMES = 16
FORCE_ENDPOINT = None  # an item's pcm: finalise what came before it

Item = tuple[bytes | None, float]


class AudioQueue:
    """The queue between one session's receiver (:meth:`put`, :meth:`close`) and its
    recogniser loop (``async with`` it, :meth:`get`, :meth:`take_more`); leaving the
    ``async with`` closes the receiving side."""

    def __init__(self, frames: int = FRAMES) -> None:
        self._send, self._recv = trio.open_memory_channel[Item](frames)
        self._held: Item | None = None  # taken out of turn by take_more

    async def put(self, pcm: bytes | None, received: float) -> None:
        """Queue an item, waiting for room. Raises :class:`trio.ClosedResourceError`
        once :meth:`close` was called."""
        await self._send.send((pcm, received))

    def close(self) -> None:
        """No more items: :meth:`get` raises :class:`trio.EndOfChannel` once the items
        queued are taken."""
        self._send.close()

    async def get(self) -> Item:
        """The next item (raises :class:`trio.EndOfChannel` when closed and empty)."""
        if self._held is not None:
            item, self._held = self._held, None
            return item
        return await self._recv.receive()

    def take_more(self, pcm: bytes, limit: int) -> list[bytes]:
        """``pcm`` and the audio already waiting behind it, up to ``limit`` bytes: when
        recognition is behind, one worker-thread hop per batch instead of per chunk. A
        marker or an empty frame stops the batch; it is the next :meth:`get`."""
        parts = [pcm]
        size = len(pcm)
        while size < limit:
            try:
                item = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            more = item[0]
            if not more:
                self._held = item
                break
            parts.append(more)
            size += len(more)
        return parts

    @property
    def drained(self) -> bool:
        """Nothing is waiting to be taken."""
        return self._recv.statistics().current_buffer_used == 0 and self._held is None

    async def __aenter__(self) -> AudioQueue:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._recv.close()
