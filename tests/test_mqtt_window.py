"""The MQTT relay's go-back-N window as a table: PUBACKs, receipts and the clock in,
what to publish, set aside, mark relayed or send again out. Pure and synchronous: no
broker, no paho, no journal."""

from __future__ import annotations

import pytest

from edge.protocols.mqtt_relay import EventsMessage, Receipt, idempotency_key
from edge.protocols.mqtt_window import Step, Window
from edge.protocols.relay import RelayEvent

DEVICE = "room-a"
EPOCH = "e1"
TIMEOUT = 30.0
IDLE = 1.0


def message(first: int, last: int) -> EventsMessage:
    events = tuple(RelayEvent(i, DEVICE, "s1", i, "final", 1.0e9 + i, {"text": "x"})
                   for i in range(first, last + 1))
    return EventsMessage(DEVICE, EPOCH, events, tag="1")


# The window's messages: events 1-2, 3, 4-5, 6.
MESSAGES = [message(1, 2), message(3, 3), message(4, 5), message(6, 6)]

# Each row: a name, the window's cap and acknowledgement (receipts, or broker PUBACKs),
# then what happens, in order, with what the window answers ("" for inputs).
#   publish @T        publish what there is room for at time T: "published <indices>"
#   puback MID        a successful PUBACK; too_large MID: a PUBACK refusing it as too large
#   receipt A-B [refused ID]   a receipt for events A-B (window tag "1")
#   gap A-B [tag X]   a gap receipt for A-B, from this window or window X
#   step @T           the window's step at T; deadline @T: when to look again
ROWS: list[tuple[str, int, bool, list[tuple[str, str]]]] = [
    ("receipts in order relay the prefix", 2, False, [
        ("publish @0", "published 0 1"),
        ("puback 1", ""), ("puback 2", ""),
        ("receipt 1-2", ""),
        ("step @1", "relayed 1-2"),
        ("publish @1", "published 2"),
        ("receipt 3-3", ""), ("receipt 4-5", ""), ("receipt 6-6", ""),
        ("step @2", "relayed 3-3 4-5 6-6; finished"),
    ]),
    ("a receipt out of order waits for the prefix", 4, False, [
        ("publish @0", "published 0 1 2 3"),
        ("receipt 3-3", ""),
        ("step @1", "-"),
        ("receipt 1-2", ""),
        ("step @1", "relayed 1-2 3-3"),
    ]),
    ("with broker acks a PUBACK is enough", 2, True, [
        ("publish @0", "published 0 1"),
        ("puback 2", ""),
        ("step @1", "-"),
        ("puback 1", ""),
        ("step @1", "relayed 1-2 3-3"),
        ("publish @1", "published 2 3"),
    ]),
    ("no receipt in time: send again from there", 3, False, [
        ("publish @0", "published 0 1 2"),
        ("puback 1", ""), ("puback 2", ""), ("puback 3", ""),
        ("receipt 1-2", ""),
        ("step @29", "relayed 1-2"),
        ("step @30", "overdue 3-3; go back from 3, 2 abandoned"),
    ]),
    ("no PUBACK in time: the link failed", 2, False, [
        ("publish @0", "published 0 1"),
        ("puback 1", ""),
        ("receipt 1-2", ""),
        ("step @31", "unacknowledged"),
    ]),
    ("a gap for this window goes back at once", 3, False, [
        ("publish @0", "published 0 1 2"),
        ("receipt 1-2", ""),
        ("gap 4-5", ""),
        ("step @1", "gap; relayed 1-2; go back from 3, 2 abandoned"),
    ]),
    ("a gap answering an abandoned window is ignored", 3, False, [
        ("publish @0", "published 0 1 2"),
        ("gap 1-2 tag 0", ""),
        ("step @1", "-"),
    ]),
    ("a gap for a message the window does not have is ignored", 3, False, [
        ("publish @0", "published 0 1 2"),
        ("gap 1-3", ""),
        ("step @1", "-"),
    ]),
    ("events a consumer refuses are set aside", 2, False, [
        ("publish @0", "published 0 1"),
        ("receipt 1-2 refused 2", ""),
        ("step @1", "set aside 2:invalid; relayed 1-2"),
    ]),
    ("an event the broker refuses as too large is set aside", 2, False, [
        ("publish @0", "published 0 1"),
        ("too_large 2", ""),
        ("step @1", "set aside 3:too_large"),
        ("publish @1", "published 2"),
        ("receipt 1-2", ""),
        ("step @1", "relayed 1-2 3-3"),
    ]),
    ("a receipt from an earlier connection spares a publish", 1, False, [
        ("publish @0", "published 0"),
        ("receipt 3-3", ""),
        ("receipt 1-2", ""),
        ("step @1", "relayed 1-2 3-3"),
        ("publish @1", "published 2"),
    ]),
    ("a receipt covering the whole window finishes it", 2, False, [
        ("publish @0", "published 0 1"),
        ("receipt 1-6", ""),
        ("step @1", "relayed 1-2 3-3 4-5 6-6; finished"),
        ("publish @1", "published"),
    ]),
    ("the deadline is the earliest flight's timeout", 2, False, [
        ("deadline @0", "1"),
        ("publish @5", "published 0 1"),
        ("deadline @6", "35"),
        ("receipt 1-2", ""),
        ("receipt 3-3", ""),
        ("deadline @7", "8"),
    ]),
]


def receipt(words: list[str]) -> tuple[Receipt, str]:
    first, last = (int(x) for x in words[1].split("-"))
    options = dict(zip(words[2::2], words[3::2], strict=True))
    if words[0] == "gap":
        return Receipt(DEVICE, EPOCH, first, last, gap=0), options.get("tag", "1")
    refused = tuple((idempotency_key(DEVICE, EPOCH, int(options["refused"])), "invalid")
                    for _ in [0] if "refused" in options)
    return Receipt(DEVICE, EPOCH, first, last, 1, refused), "1"


def describe(step: Step, window: Window) -> str:
    said = []
    if step.gap:
        said.append("gap")
    if step.unacknowledged:
        said.append("unacknowledged")
    if step.overdue is not None:
        said.append(f"overdue {step.overdue.first}-{step.overdue.last}")
    if step.refused:
        said.append("set aside " + " ".join(f"{k}:{v}" for k, v in sorted(step.refused.items())))
    if step.relayed:
        said.append("relayed " + " ".join(f"{x.first}-{x.last}" for x in step.relayed))
    if step.go_back:
        said.append(f"go back from {step.resend_from}, {step.republished} abandoned")
    if window.finished:
        said.append("finished")
    return "; ".join(said) or "-"


def run(window: Window, action: str, mids: list[int]) -> str:
    words = action.split()
    at = float(words[-1][1:]) if words[-1].startswith("@") else 0.0
    if words[0] == "publish":
        published = []
        while (index := window.next_to_publish()) is not None:
            mids.append(len(mids) + 1)
            window.published(index, mids[-1], at)
            published.append(str(index))
        return " ".join(["published", *published])
    if words[0] == "puback":
        window.acknowledged(int(words[1]))
    elif words[0] == "too_large":
        window.refused_by_broker(int(words[1]))
    elif words[0] in ("receipt", "gap"):
        window.received(*receipt(words))
    elif words[0] == "step":
        return describe(window.step(at), window)
    elif words[0] == "deadline":
        return f"{window.deadline(at, IDLE):g}"
    else:
        raise AssertionError(f"no such action: {action}")
    return ""


@pytest.mark.parametrize(("cap", "broker_acks", "script"),
                         [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_the_window(cap: int, broker_acks: bool, script: list[tuple[str, str]]) -> None:
    window = Window(MESSAGES, tag="1", cap=cap, receipt_timeout=TIMEOUT,
                    broker_acks=broker_acks)
    mids: list[int] = []
    got = [(action, run(window, action, mids)) for action, _ in script]
    assert got == script
