"""The MQTT relay's pure protocol: topics, keys, messages, receipts, splitting."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge.core.mqtt_topics import check_template
from edge.protocols.mqtt_relay import (
    DEFAULT_RECEIPT_TOPIC,
    DEFAULT_TOPIC,
    KEY_PROPERTY,
    EventsMessage,
    MqttRelayError,
    Receipt,
    decode_events,
    decode_receipt,
    idempotency_key,
    packet_size,
    split,
    topic,
)
from edge.protocols.relay import RelayEvent
from helpers import TEST_KEY

EPOCH = "0a1b2c3d4e5f6071"


def event(id_: int, text: str = "hello", device: str = "room-a") -> RelayEvent:
    return RelayEvent(id_, device, "s1", id_, "final", 1.0e9 + id_,
                      {"text": text, "start_ms": 0, "end_ms": 10, "speaker": None})


@pytest.mark.parametrize(("template", "site", "device", "expected"), [
    (DEFAULT_TOPIC, "clinic", "room-a", "edge/v1/clinic/room-a/events"),
    (DEFAULT_RECEIPT_TOPIC, "clinic", "room-a", "edge/v1/clinic/room-a/receipts"),
    ("devices/{device}/messages/events/", "x", "dev1", None),  # Azure: trailing empty level
    ("fleet/{device}", "x", "dev1", "fleet/dev1"),
])
def test_topics(template: str, site: str, device: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(ValueError):
            topic(template, site=site, device=device)
    else:
        assert topic(template, site=site, device=device) == expected


@pytest.mark.parametrize("template", ["a/+/b", "a/#", "$SYS/x", "a//b", "a/{room}", "a/{"])
def test_bad_templates(template: str) -> None:
    with pytest.raises(ValueError):
        check_template(template)


@pytest.mark.parametrize("device", ["a/b", "a+", "#", ""])
def test_ids_that_would_break_a_topic(device: str) -> None:
    with pytest.raises(ValueError):
        topic(DEFAULT_TOPIC, site="s", device=device)


def test_message_round_trip_and_keys() -> None:
    message = EventsMessage("room-a", EPOCH, (event(3), event(7, "안녕하세요")))
    decoded = decode_events(message.encode())
    assert decoded == message
    assert message.correlation == b"3-7"
    keys = [v for k, v in message.user_properties() if k == KEY_PROPERTY]
    assert keys == [f"room-a/{EPOCH}/3", f"room-a/{EPOCH}/7"]
    wire = json.loads(message.encode())
    assert [e["key"] for e in wire["events"]] == keys
    assert idempotency_key("room-a", EPOCH, 3) == keys[0]


def _wire(**change: Any) -> bytes:
    data: dict[str, Any] = json.loads(EventsMessage("room-a", EPOCH,
                                                    (event(1), event(2))).encode())
    data.update(change)
    return json.dumps(data).encode()


def _events_wire(mutate: Any) -> bytes:
    data: dict[str, Any] = json.loads(EventsMessage("room-a", EPOCH,
                                                    (event(1), event(2))).encode())
    mutate(data["events"])
    return json.dumps(data).encode()


@pytest.mark.parametrize(("payload", "says"), [
    (b"\xff", "not UTF-8 JSON"),
    (b"[]", "JSON object"),
    (_wire(schema="edge.events/2"), "schema"),
    (_wire(device_id=7), "device_id"),
    (_wire(epoch="a b"), "epoch"),
    (_wire(events=[]), "events"),
    (_events_wire(lambda e: e.reverse()), "increasing"),
    (_events_wire(lambda e: e[0].update(key="room-a/x/1")), "key"),
    (_events_wire(lambda e: e[0].update(seq=True)), "seq"),
])
def test_bad_events_messages(payload: bytes, says: str) -> None:
    with pytest.raises(MqttRelayError) as info:
        decode_events(payload)
    assert says in info.value.message
    assert info.value.code == "bad_message"
    assert "hello" not in info.value.message  # never the content


def test_a_tier_passes_on_events_of_other_devices_under_its_own_keys() -> None:
    message = EventsMessage("clinic", EPOCH, (event(3, device="room-b"),))
    assert decode_events(message.encode()) == message
    assert message.keys() == [f"clinic/{EPOCH}/3"]


def test_receipts() -> None:
    message = EventsMessage("room-a", EPOCH, (event(3), event(7)))
    receipt = message.receipt(2)
    assert decode_receipt(receipt.encode()) == receipt
    assert receipt.covers(message)
    assert Receipt("room-a", EPOCH, 1, 9).covers(message)
    assert not Receipt("room-a", EPOCH, 4, 9).covers(message)
    assert not Receipt("room-a", "other", 3, 7).covers(message)
    assert not Receipt("room-b", EPOCH, 3, 7).covers(message)


@pytest.mark.parametrize("payload", [
    b'{"schema": "edge.receipt/1", "device_id": "a", "epoch": "e", "first": 5, "last": 4}',
    b'{"schema": "edge.receipt/1", "device_id": "a", "epoch": "e", "first": 0, "last": 4}',
    b'{"schema": "edge.receipt/1", "device_id": "a", "epoch": "e", "first": true, "last": 4}',
    b'{"schema": "edge.receipt/1", "device_id": "a", "epoch": "e", "first": 1, "last": 4,'
    b' "stored": -1}',
    b'{"schema": "edge.events/1", "device_id": "a", "epoch": "e", "first": 1, "last": 4}',
    b'"receipt"',
])
def test_bad_receipts(payload: bytes) -> None:
    with pytest.raises(MqttRelayError) as info:
        decode_receipt(payload)
    assert info.value.code == "bad_receipt"


@pytest.mark.parametrize(("sizes", "max_bytes", "max_events", "expected"), [
    ([10] * 10, 100_000, 200, [10]),
    ([10] * 10, 100_000, 3, [3, 3, 3, 1]),
    ([3000] * 10, 8000, 200, [2, 2, 2, 2, 2]),
    ([100, 20000, 100], 8000, 200, [1, 1, 1]),  # the big one alone, marked oversized
    ([], 8000, 200, []),
])
def test_split_keeps_order_and_the_cap(sizes: list[int], max_bytes: int, max_events: int,
                                       expected: list[int]) -> None:
    events = [event(i + 1, "x" * n) for i, n in enumerate(sizes)]
    result = split("room-a", EPOCH, events, max_bytes=max_bytes, max_events=max_events,
                   topic_name="edge/v1/s/room-a/events",
                   response_topic="edge/v1/s/room-a/receipts")
    assert [len(m.events) for m in result.messages] == expected
    assert [e for m in result.messages for e in m.events] == events
    for m in result.messages:
        size = packet_size("edge/v1/s/room-a/events", "edge/v1/s/room-a/receipts", m)
        assert (size <= max_bytes) == (m not in result.oversized)
    assert [len(m.events[0].payload["text"]) for m in result.oversized] == [
        n for n in sizes if n > max_bytes]


def test_journal_epoch_is_set_once_and_survives_reopening(tmp_path: Any) -> None:
    from edge.journal.db import Journal

    with Journal.open(tmp_path / "a.db", key=TEST_KEY, device_id="room-a") as journal:
        epoch = journal.epoch
    assert len(epoch) == 16 and int(epoch, 16) >= 0
    with Journal.open(tmp_path / "a.db", key=TEST_KEY, device_id="room-a") as journal:
        assert journal.epoch == epoch
    with Journal.open(tmp_path / "b.db", key=TEST_KEY, device_id="room-a") as journal:
        assert journal.epoch != epoch


def test_journal_epoch_added_to_a_version_2_file(tmp_path: Any) -> None:
    from edge.journal.db import Journal
    from edge.journal.db import connect as connect_journal

    with Journal.open(tmp_path / "a.db", key=TEST_KEY, device_id="room-a"):
        pass
    conn = connect_journal(tmp_path / "a.db", TEST_KEY)
    conn.execute("DROP TABLE meta")
    conn.execute("DROP TABLE set_aside")  # schema 4's, after the epoch
    conn.execute("DROP TABLE audit")  # schema 5's
    conn.execute("DROP TABLE audit_ingested")
    conn.execute("ALTER TABLE sessions DROP COLUMN language")  # schema 6's
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    with Journal.open(tmp_path / "a.db", key=TEST_KEY,
                      device_id="room-a", readonly=True) as journal:
        assert journal.epoch == ""
    with Journal.open(tmp_path / "a.db", key=TEST_KEY, device_id="room-a") as journal:
        assert len(journal.epoch) == 16


def test_chained_messages_name_the_one_before_and_carry_the_window() -> None:
    events = [event(i, "x" * 3000) for i in (2, 3, 5, 8, 9)] + [event(11, "x" * 20000)]
    events.append(event(12))
    result = split("room-a", EPOCH, events, max_bytes=8000, max_events=200,
                   topic_name="t", response_topic="r", chain=True, tag="7")
    afters = [(m.first, m.last, m.after) for m in result.messages]
    # The first starts the stream; the oversized one (not sent) is not an ``after``.
    assert afters == [(2, 3, None), (5, 8, 3), (9, 9, 8), (11, 11, 9), (12, 12, 9)]
    assert [m.first for m in result.oversized] == [11]
    for m in result.messages:
        assert m.correlation == f"{m.first}-{m.last}/7".encode()
        decoded = decode_events(m.encode())
        assert decoded.after == m.after and decoded.events == m.events
        if m not in result.oversized:
            assert packet_size("t", "r", m) <= 8000
    plain = split("room-a", EPOCH, events[:2], max_bytes=8000, max_events=200)
    assert plain.messages[0].after is None and b'"after"' not in plain.messages[0].encode()


@pytest.mark.parametrize("after", [0, 5, 7, True, "3"])
def test_after_must_name_an_earlier_id(after: Any) -> None:
    data = json.loads(EventsMessage("room-a", EPOCH, (event(5), event(7))).encode())
    data["after"] = after
    with pytest.raises(MqttRelayError) as info:
        decode_events(json.dumps(data).encode())
    assert "after" in info.value.message


def test_refusal_and_gap_receipts() -> None:
    message = EventsMessage("room-a", EPOCH, (event(3), event(7)))
    refused = message.receipt(0, refused="device_not_allowed")
    decoded = decode_receipt(refused.encode())
    assert decoded == refused and decoded.covers(message)
    assert decoded.refused_ids(message) == {3: "device_not_allowed", 7: "device_not_allowed"}
    wire = json.loads(refused.encode())
    assert wire["refused"][0] == {"key": f"room-a/{EPOCH}/3", "reason": "device_not_allowed"}
    other = EventsMessage("room-a", EPOCH, (event(4),))
    assert decoded.refused_ids(other) == {}  # keys of other events are not this one's
    gap = message.receipt(gap=2)
    assert decode_receipt(gap.encode()) == gap and not gap.covers(message)
    assert json.loads(gap.encode())["gap"] == 2


@pytest.mark.parametrize("refused", [
    "x", [{"key": "room-a/e/1"}], [{"key": "nokey", "reason": "invalid"}],
    [{"key": f"room-a/{EPOCH}/1", "reason": "Not A Code"}], ["room-a/e/1"],
    [{"key": f"room-a/{EPOCH}/0", "reason": "invalid"}],
])
def test_bad_refusals(refused: Any) -> None:
    wire = {"schema": "edge.receipt/1", "device_id": "a", "epoch": EPOCH, "first": 1,
            "last": 4, "refused": refused}
    with pytest.raises(MqttRelayError) as info:
        decode_receipt(json.dumps(wire).encode())
    assert info.value.code == "bad_receipt" and "refused" in info.value.message


def test_keys_from_user_properties() -> None:
    from edge.protocols.mqtt_relay import keys_of, parse_key

    message = EventsMessage("room/a", EPOCH, (event(9), event(3)))
    assert keys_of(message.user_properties()) == ("room/a", EPOCH, [3, 9])
    assert parse_key(f"room-a/{EPOCH}/12") == ("room-a", EPOCH, 12)
    for bad in ("room-a/12", f"/{EPOCH}/1", f"room-a/{EPOCH}/-1", f"room-a/{EPOCH}/1e3",
                f"room-a/{EPOCH}/" + "9" * 20, "room-a/bad epoch/1"):
        assert parse_key(bad) is None
    assert keys_of([("schema", "edge.events/1")]) is None
    assert keys_of([(KEY_PROPERTY, f"a/{EPOCH}/1"), (KEY_PROPERTY, f"b/{EPOCH}/2")]) is None
    assert keys_of([(KEY_PROPERTY, "junk")]) is None
