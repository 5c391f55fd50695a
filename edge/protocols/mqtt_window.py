"""The MQTT relay's go-back-N window as a state machine: events in, actions out.

Pure: no paho, no trio, no journal, no clock (the caller passes ``now``). The relay
(:mod:`edge.relay.mqtt`) publishes what :meth:`Window.next_to_publish` names, feeds
in what comes back (:meth:`Window.published`, :meth:`Window.acknowledged`,
:meth:`Window.refused_by_broker`, :meth:`Window.received`), and applies each
:class:`Step` that :meth:`Window.step` returns, in its order: set the refused events
aside, mark the newly acknowledged prefix relayed, then, if told to, end the window.

Go-back-N: the window holds one read of the outbox, split into messages (in event
order). At most ``cap`` are unacknowledged at once. A message is acknowledged by a
receipt covering it (or, with ``broker_acks``, by a successful PUBACK); the
acknowledged prefix grows in order. When a message goes without a receipt past
``receipt_timeout``, or a consumer answers one of this window's messages with a gap,
everything in flight after the prefix is abandoned and the window ends; the relay
starts the next one from the earliest unacknowledged event. A message without even a
PUBACK past the timeout is a failure of the link.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from edge.protocols.mqtt_relay import EventsMessage, Receipt


@dataclass
class Flight:
    """A published message waiting for its acknowledgement."""

    index: int  # in the window's messages
    message: EventsMessage
    mid: int  # the MQTT packet id its PUBACK names
    sent_at: float
    puback: bool = False


@dataclass(frozen=True)
class Step:
    """What the relay does after one round of answers, in this order."""

    gap: bool = False  # a consumer answered a message of this window with a gap
    unacknowledged: bool = False  # no PUBACK within the timeout: the link failed
    overdue: EventsMessage | None = None  # PUBACKed, no receipt in time: sent again
    refused: dict[int, str] = field(default_factory=dict)  # event id -> reason: set aside
    relayed: tuple[EventsMessage, ...] = ()  # the prefix acknowledged now: mark relayed
    go_back: bool = False  # end the window; the next starts from the prefix
    resend_from: int | None = None  # with go_back: the first event sent again
    republished: int = 0  # with go_back: messages abandoned unacknowledged


class Window:
    """One window of messages; see the module's docstring."""

    def __init__(self, messages: Sequence[EventsMessage], *, tag: str, cap: int,
                 receipt_timeout: float, broker_acks: bool) -> None:
        self.messages = list(messages)
        self.tag = tag  # the window's mark in correlation data, echoed by receipts
        self._cap = cap
        self._timeout = receipt_timeout
        self._broker_acks = broker_acks
        self._done = [False] * len(self.messages)
        self.flights: dict[int, Flight] = {}  # by mid
        self._marked = 0  # messages[:_marked] are acknowledged and reported relayed
        self._next = 0  # the next message to publish
        self._gap = False
        self._refused: dict[int, str] = {}

    @property
    def finished(self) -> bool:
        """Every message acknowledged and reported."""
        return self._marked >= len(self.messages)

    # --- events in ----------------------------------------------------------------------

    def next_to_publish(self) -> int | None:
        """The index of the next message to publish, or None while ``cap`` are in flight
        or none is left. Messages a receipt already covers are skipped."""
        while self._next < len(self.messages) and len(self.flights) < self._cap:
            if not self._done[self._next]:
                return self._next
            self._next += 1
        return None

    def published(self, index: int, mid: int, now: float) -> None:
        """Message ``index`` went out as packet ``mid`` at ``now``."""
        self.flights[mid] = Flight(index, self.messages[index], mid, now)
        self._next = index + 1

    def acknowledged(self, mid: int) -> None:
        """A successful PUBACK for packet ``mid`` (in flight)."""
        flight = self.flights[mid]
        flight.puback = True
        if self._broker_acks:
            self._done[flight.index] = True
            del self.flights[mid]

    def refused_by_broker(self, mid: int) -> None:
        """The broker refused packet ``mid`` as too large, and it cannot be split: its
        event is to be set aside, and the message counts as answered."""
        flight = self.flights.pop(mid)
        self._refused[flight.message.first] = "too_large"
        self._done[flight.index] = True

    def received(self, receipt: Receipt, tag: str) -> None:
        """A receipt, with the window tag its correlation data carried. A gap counts
        only if it answers one of this window's messages (older ones were abandoned);
        a covering receipt from an earlier connection (queued in the persistent
        session) acknowledges the same events published again now."""
        if receipt.gap is not None:
            if tag == self.tag and any(receipt.first == x.first and receipt.last == x.last
                                       for x in self.messages):
                self._gap = True
            return
        for index, message in enumerate(self.messages):
            if not self._done[index] and receipt.covers(message):
                self._done[index] = True
                self._refused.update(receipt.refused_ids(message))
        for mid, flight in list(self.flights.items()):
            if self._done[flight.index]:
                del self.flights[mid]

    # --- actions out --------------------------------------------------------------------

    def deadline(self, now: float, idle: float) -> float:
        """When the earliest message in flight times out (``now + idle`` if none)."""
        return min((f.sent_at + self._timeout for f in self.flights.values()),
                   default=now + idle)

    def step(self, now: float) -> Step:
        """What the answers so far mean at ``now``; they are consumed."""
        gap, self._gap = self._gap, False
        go_back = gap
        overdue = None
        for flight in sorted(self.flights.values(), key=lambda f: f.index):
            if now < flight.sent_at + self._timeout:
                continue
            if not flight.puback:
                return Step(gap=gap, unacknowledged=True)
            if not go_back:
                overdue = flight.message
            go_back = True
            break
        refused, self._refused = self._refused, {}
        prefix = self._marked
        while prefix < len(self.messages) and self._done[prefix]:
            prefix += 1
        relayed = tuple(self.messages[self._marked:prefix])
        self._marked = prefix
        if not go_back or self.finished:
            return Step(gap=gap, overdue=overdue, refused=refused, relayed=relayed)
        republished = sum(1 for i in range(self._marked, self._next) if not self._done[i])
        return Step(gap=gap, overdue=overdue, refused=refused, relayed=relayed,
                    go_back=True, resend_from=self.messages[self._marked].first,
                    republished=republished)
