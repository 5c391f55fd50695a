"""Fan-out of one event stream (the room microphone's results, warnings and state) to
many listeners.

One producer calls :meth:`Hub.publish` with core events (:data:`RoomEvent`: typed
values, no wire format); any number of consumers hold a :class:`Listener` from
:meth:`Hub.subscribe` and iterate over :class:`Published` items, each encoding them in
its own dialect. The rules:

* ``publish`` is synchronous and never blocks: it numbers the event, keeps it for
  replay if it is worth replaying, and offers it to every listener with
  ``send_nowait``. A listener whose queue is full is dropped on the spot (its stream
  ends, ``dropped_reason == "slow_listener"``); the publisher and the other listeners
  never wait for anyone.
* Every published event gets ``seq`` 1, 2, 3, ... (the same frozen :class:`Published`
  goes to every listener).
* The replay buffer keeps the last ``replay_size`` *replayable* events: everything
  except partial results. Partials are superseded by the final that follows them, so
  replaying them would only show a reconnecting client stale text; keeping them out
  also makes the buffer cover minutes of conversation rather than seconds.
  ``publish(..., replay=...)`` overrides the rule for one event.
* ``subscribe(since_seq=N)`` first yields the buffered messages with ``seq > N``, then
  the live stream, with no gap and no duplicate at the boundary (the snapshot and the
  registration happen in one synchronous step). If replayable messages after ``N``
  were already evicted, a ``missed_messages`` warning with the number ``lost`` comes
  first. Events the hub makes up for one listener (these warnings) carry no ``seq``.

Pure trio, no I/O: the WebSocket side (encoding, send timeouts) belongs to the caller.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType

import trio

from edge.protocols.events import Notice, RoomEvent, Utterance

#: Why a listener's stream ended (``Listener.dropped_reason``).
SLOW_LISTENER = "slow_listener"
HUB_CLOSED = "hub_closed"
UNSUBSCRIBED = "unsubscribed"



@dataclass(frozen=True)
class Published:
    """An event as a listener gets it: ``seq`` is its number in the stream (None for a
    warning the hub made up for this one listener)."""

    seq: int | None
    event: RoomEvent




def is_replayable(event: RoomEvent) -> bool:
    """The default replay rule: everything but partial results."""
    return not (isinstance(event, Utterance) and not event.is_final)


def _warning(code: str, message: str, lost: int) -> Published:
    return Published(None, Notice("", code, message, {"lost": lost}))


@dataclass(frozen=True)
class HubStatistics:
    listeners: int  # currently subscribed
    published: int  # messages published so far
    dropped_slow: int  # listeners dropped because their queue was full
    buffer_len: int  # messages in the replay buffer
    last_seq: int  # seq of the last published message, 0 before the first
    replay_size: int  # capacity of the replay buffer
    evicted: int  # replayable messages pushed out of the buffer so far


class Listener:
    """One consumer's view of the stream: an async iterator of :class:`Published`.

    Use it as ``with hub.subscribe() as listener: async for message in listener:``.
    Leaving the ``with`` block (or :meth:`close`) unsubscribes at once. Iteration ends
    when the listener is dropped or the hub is closed, after the messages already
    queued for it; :attr:`dropped_reason` then says why (it is set the moment the
    listener is dropped, so a consumer may also stop early).
    """

    def __init__(self, hub: Hub, replay: Iterable[Published], queue_size: int) -> None:
        self._hub = hub
        self._replay: deque[Published] = deque(replay)
        self._send, self._receive = trio.open_memory_channel[Published](queue_size)
        self.dropped_reason: str | None = None

    # --- consumer side -------------------------------------------------------------

    async def receive(self) -> Published:
        """The next message; raises :exc:`trio.EndOfChannel` when the stream has ended
        (dropped or hub closed, after what was queued), :exc:`trio.ClosedResourceError`
        after :meth:`close`. Blocks until a message is published; cancelling it loses
        nothing.
        """
        if self._replay:
            await trio.lowlevel.checkpoint()
            if self._replay:  # close() may have run during the checkpoint
                return self._replay.popleft()
        return await self._receive.receive()

    def __aiter__(self) -> Listener:
        return self

    async def __anext__(self) -> Published:
        try:
            return await self.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Unsubscribe and discard what is queued (idempotent, never blocks)."""
        self._end(UNSUBSCRIBED)
        self._replay.clear()
        self._receive.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def queued(self) -> int:
        """Messages waiting to be received (replay plus live queue)."""
        return len(self._replay) + self._receive.statistics().current_buffer_used

    # --- hub side ------------------------------------------------------------------

    def _offer(self, message: Published) -> bool:
        """Queue ``message`` without blocking; False if the listener had to be dropped."""
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            self._end(SLOW_LISTENER)
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._end(UNSUBSCRIBED)  # the consumer closed its end
            return False
        return True

    def _end(self, reason: str) -> None:
        if self.dropped_reason is None:
            self.dropped_reason = reason
        self._hub._listeners.discard(self)
        self._send.close()


class Hub:
    """Fan-out of one message stream with a bounded replay buffer.

    ``replay_size`` bounds the replay buffer (messages); each listener's live queue is
    bounded by the ``queue_size`` it subscribes with. Memory is therefore bounded by
    ``replay_size + listeners * queue_size`` messages, whatever the consumers do.
    """

    def __init__(self, *, replay_size: int = 256) -> None:
        if replay_size < 0:
            raise ValueError("replay_size must be >= 0")
        self._replay_size = replay_size
        self._buffer: deque[Published] = deque()
        self._listeners: set[Listener] = set()
        self._seq = 0
        self._dropped_slow = 0
        self._closed = False
        # Seqs of evicted replayable messages, to count exactly what a resuming client
        # lost. Bounded: beyond it only the total is known (see _lost_after).
        self._evicted_seqs: list[int] = []
        self._evicted_log_max = max(1024, 8 * replay_size)
        self._evicted_total = 0

    def publish(self, event: RoomEvent, *, replay: bool | None = None) -> int:
        """Number ``event``, buffer it, offer it to everyone.

        Never blocks and never awaits. ``replay`` overrides :func:`is_replayable`.
        Listeners whose queue is full are dropped (``slow_listener``). Returns the seq.
        Raises :exc:`trio.ClosedResourceError` after :meth:`close`.
        """
        if self._closed:
            raise trio.ClosedResourceError("the hub is closed")
        self._seq += 1
        message = Published(self._seq, event)
        if replay if replay is not None else is_replayable(event):
            self._remember(message)
        for listener in list(self._listeners):
            if not listener._offer(message) and listener.dropped_reason == SLOW_LISTENER:
                self._dropped_slow += 1
        return self._seq

    def subscribe(self, since_seq: int | None = None, queue_size: int = 256) -> Listener:
        """A new listener, registered before this returns.

        ``since_seq=None``: live messages only. ``since_seq=N``: first the buffered
        messages with ``seq > N`` (preceded by a ``missed_messages`` warning with
        ``lost`` when some were already evicted), then the live stream. ``N`` greater
        than the last seq (a client of a previous run of the daemon) replays the whole
        buffer after a ``stream_reset`` warning. Raises :exc:`trio.ClosedResourceError`
        after :meth:`close`.
        """
        if self._closed:
            raise trio.ClosedResourceError("the hub is closed")
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        replay: list[Published] = []
        if since_seq is not None:
            if since_seq > self._seq:
                replay.append(_warning(
                    "stream_reset",
                    f"since_seq {since_seq} is ahead of this stream (last seq {self._seq}): "
                    "the stream was restarted; replaying what is buffered",
                    self._evicted_total))
                since_seq = 0
            elif lost := self._lost_after(since_seq):
                replay.append(_warning(
                    "missed_messages",
                    f"{lost} message(s) after seq {since_seq} are no longer buffered", lost))
            start = bisect.bisect_right(self._buffer, since_seq, key=_seq_of)
            replay.extend(list(self._buffer)[start:])
        listener = Listener(self, replay, queue_size)
        self._listeners.add(listener)
        return listener

    def close(self) -> None:
        """End every listener's stream (``hub_closed``) after what is queued for it.

        Idempotent; never blocks. Later ``publish``/``subscribe`` calls raise.
        """
        self._closed = True
        for listener in list(self._listeners):
            listener._end(HUB_CLOSED)

    def statistics(self) -> HubStatistics:
        return HubStatistics(
            listeners=len(self._listeners),
            published=self._seq,
            dropped_slow=self._dropped_slow,
            buffer_len=len(self._buffer),
            last_seq=self._seq,
            replay_size=self._replay_size,
            evicted=self._evicted_total,
        )

    # --- replay buffer -------------------------------------------------------------

    def _remember(self, message: Published) -> None:
        self._buffer.append(message)
        while len(self._buffer) > self._replay_size:
            evicted = self._buffer.popleft()
            self._evicted_total += 1
            self._evicted_seqs.append(_seq_of(evicted))
            if len(self._evicted_seqs) > self._evicted_log_max:
                # Amortised O(1): forget the older half of the log at once.
                del self._evicted_seqs[: self._evicted_log_max // 2]

    def _lost_after(self, since_seq: int) -> int:
        """How many replayable messages with seq > ``since_seq`` were evicted.

        Exact while ``since_seq`` is within the eviction log (the last
        ``max(1024, 8 * replay_size)`` evictions); older than that, every eviction is
        counted, which is exact for ``since_seq=0`` and an upper bound otherwise.
        """
        log = self._evicted_seqs
        if not log or since_seq >= log[-1]:
            return 0
        forgotten = self._evicted_total - len(log)
        if forgotten and since_seq < log[0]:
            return self._evicted_total
        return len(log) - bisect.bisect_right(log, since_seq)


def _seq_of(message: Published) -> int:
    return message.seq or 0  # buffered events are all numbered

