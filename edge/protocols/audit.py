"""An audit record as it is chained, stored and relayed.

Pure (no trio, no SQLite). The journal turns each :class:`~edge.core.audit.Access` into
an :class:`AuditRecord`: numbered by ``seq`` (1, 2, ... without gaps on a device),
dated, and chained: ``prev`` is the previous record's ``hash`` (:data:`GENESIS` for the
first), and ``hash`` is the SHA-256 of the record's canonical encoding
(:func:`canonical`), which covers ``prev``. Changing, removing or inserting a record
breaks the chain at that point, which :func:`verify_chain` finds; the relay carries the
records with their hashes, so an upstream checks them the same way.

The canonical encoding is the UTF-8 of a JSON object with sorted keys, no spaces and
non-ASCII characters as they are: ``seq``, ``time_ms`` (the time in whole milliseconds,
so that no float formatting enters the hash), ``sub``, ``organization``, ``department``,
``action``, ``object``, ``outcome``, ``reason``, ``peer`` (null when absent),
``detail`` (an object of strings and integers) and ``prev``. docs/audit.md shows how to
recompute it.

A record never holds transcript text or a token (an ``Access`` cannot carry them).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge.core.audit import Access

GENESIS = "0" * 64  # the ``prev`` of a device's first record
MAX_TEXT = 200  # characters of a record's text fields (sub, object, peer, ...)
MAX_DETAIL = 16  # entries in ``detail``
_HASH = re.compile(r"[0-9a-f]{64}")
_ACTION = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")
_TEXT_FIELDS = ("sub", "organization", "department", "object", "reason", "peer")
_MAX_SEQ = 2**63 - 1


class AuditRecordError(ValueError):
    """A record (from a peer, or read back) that is not well formed. The message names
    the field, never its content."""


@dataclass(frozen=True)
class AuditRecord:
    """One chained record. Build from an :class:`Access` with :func:`chain`, from
    untrusted data with :meth:`from_wire`."""

    seq: int
    time: float
    action: str
    outcome: str
    prev: str
    hash: str
    sub: str | None = None
    organization: str | None = None
    department: str | None = None
    object: str | None = None
    reason: str | None = None
    peer: str | None = None
    detail: Mapping[str, str | int] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        """What the hash covers (see the module doc)."""
        return {"seq": self.seq, "time_ms": round(self.time * 1000), "sub": self.sub,
                "organization": self.organization, "department": self.department,
                "action": self.action, "object": self.object, "outcome": self.outcome,
                "reason": self.reason, "peer": self.peer, "detail": dict(self.detail),
                "prev": self.prev}

    def computed_hash(self) -> str:
        return hashlib.sha256(canonical(self.body())).hexdigest()

    def to_wire(self) -> dict[str, Any]:
        """As relayed and as ``edge audit list --json`` prints it."""
        return {"seq": self.seq, "time": self.time, "sub": self.sub,
                "organization": self.organization, "department": self.department,
                "action": self.action, "object": self.object, "outcome": self.outcome,
                "reason": self.reason, "peer": self.peer, "detail": dict(self.detail),
                "prev": self.prev, "hash": self.hash}

    @classmethod
    def from_wire(cls, data: Any) -> AuditRecord:
        """Validate and build a record from decoded JSON; raises
        :class:`AuditRecordError`. Whether its hash and chain hold is
        :func:`verify_chain`'s business (a relayed broken record is still stored)."""
        if not isinstance(data, Mapping):
            raise AuditRecordError("audit record: expected a JSON object")
        seq, when = data.get("seq"), data.get("time")
        if not (isinstance(seq, int) and not isinstance(seq, bool) and 1 <= seq <= _MAX_SEQ):
            raise AuditRecordError("audit record: seq: expected a positive integer")
        if not (isinstance(when, int | float) and not isinstance(when, bool)
                and 0 <= when < 1e11):
            raise AuditRecordError("audit record: time: expected a Unix time")
        for name in ("action", "outcome"):
            value = data.get(name)
            if not isinstance(value, str) or not _ACTION.fullmatch(value) or len(value) > 64:
                raise AuditRecordError(f"audit record: {name}: expected a short dotted "
                                       "lower-case name")
        for name in ("prev", "hash"):
            if not isinstance(data.get(name), str) or not _HASH.fullmatch(data[name]):
                raise AuditRecordError(f"audit record: {name}: expected 64 hex digits")
        texts: dict[str, str | None] = {}
        for name in _TEXT_FIELDS:
            value = data.get(name)
            if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT):
                raise AuditRecordError(f"audit record: {name}: expected null or a string "
                                       f"of at most {MAX_TEXT} characters")
            texts[name] = value
        return cls(seq=seq, time=float(when), action=data["action"],
                   outcome=data["outcome"], prev=data["prev"], hash=data["hash"],
                   detail=check_detail(data.get("detail", {})), **texts)


def canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, sort_keys=True,
                      separators=(",", ":")).encode()


def check_detail(detail: Any) -> dict[str, str | int]:
    """``detail`` if it is a small object of short strings and integers."""
    if not isinstance(detail, Mapping) or len(detail) > MAX_DETAIL:
        raise AuditRecordError(f"audit record: detail: expected an object of at most "
                               f"{MAX_DETAIL} entries")
    for key, value in detail.items():
        if not isinstance(key, str) or len(key) > 64:
            raise AuditRecordError("audit record: detail: keys must be short strings")
        ok_int = isinstance(value, int) and not isinstance(value, bool)
        if not ok_int and not (isinstance(value, str) and len(value) <= MAX_TEXT):
            raise AuditRecordError(f"audit record: detail.{key}: expected an integer or a "
                                   f"string of at most {MAX_TEXT} characters")
    return dict(detail)


def _clip(value: str | None) -> str | None:
    return None if value is None else value[:MAX_TEXT]


def chain(access: Access, *, seq: int, time: float, prev: str) -> AuditRecord:
    """The record of ``access`` following the record whose hash is ``prev``. Text
    fields are clipped to :data:`MAX_TEXT` characters; ``time`` to milliseconds."""
    detail = {str(k)[:64]: (v if isinstance(v, int) and not isinstance(v, bool)
                            else str(v)[:MAX_TEXT])
              for k, v in list(access.detail.items())[:MAX_DETAIL]}
    draft = AuditRecord(
        seq=seq, time=round(time, 3), action=access.action, outcome=access.outcome,
        prev=prev, hash="", sub=_clip(access.sub), organization=_clip(access.organization),
        department=_clip(access.department), object=_clip(access.object),
        reason=_clip(access.reason), peer=_clip(access.peer), detail=detail)
    return _with_hash(draft)


def _with_hash(record: AuditRecord) -> AuditRecord:
    return AuditRecord(**{**record.__dict__, "hash": record.computed_hash()})


@dataclass(frozen=True)
class Anchor:
    """Where a chain starts: the last purged record's ``seq`` and ``hash`` (0 and
    :data:`GENESIS` when nothing was purged)."""

    seq: int = 0
    hash: str = GENESIS


def verify_chain(records: Iterable[AuditRecord], anchor: Anchor = Anchor(),
                 head: int | None = None) -> str | None:
    """The first fault in ``records`` (in ``seq`` order) following ``anchor``, in words
    naming the record, or None when the chain holds. ``head`` (the last ``seq`` the
    store says it wrote) also finds a deleted tail."""
    expected_seq, expected_prev = anchor.seq + 1, anchor.hash
    for record in records:
        if record.seq != expected_seq:
            missing = (f"record {expected_seq} is missing" if record.seq > expected_seq
                       else f"record {record.seq} is out of order")
            return missing
        if record.computed_hash() != record.hash:
            return f"record {record.seq} was altered (its hash does not match its content)"
        if record.prev != expected_prev:
            return (f"record {record.seq} does not follow record {record.seq - 1} "
                    "(its prev is not that record's hash)")
        expected_seq, expected_prev = record.seq + 1, record.hash
    if head is not None and head >= expected_seq:
        return f"record {expected_seq} is missing (the trail was written up to {head})"
    return None


# --- relayed ----------------------------------------------------------------------------

AUDIT_BATCH = "relay_audit"  # the message's type on /ws/relay
MAX_BATCH_RECORDS = 1000


@dataclass(frozen=True)
class AuditBatch:
    """A device's audit records for its upstream, in ``seq`` order: on ``/ws/relay``
    ``{"type": "relay_audit", "batch": N, "device_id": ..., "records": [...]}``,
    acknowledged by a ``relay_ack`` whose ``up_to`` is the last record's ``seq``. A
    device sends it only to an upstream whose ``relay_init`` says ``"audit": true``."""

    batch: int
    device_id: str
    records: tuple[AuditRecord, ...]

    @property
    def up_to(self) -> int:
        return self.records[-1].seq

    def to_wire(self) -> dict[str, Any]:
        return {"type": AUDIT_BATCH, "batch": self.batch, "device_id": self.device_id,
                "records": [r.to_wire() for r in self.records]}


def records_from_wire(raw: Any, max_records: int = MAX_BATCH_RECORDS
                      ) -> tuple[AuditRecord, ...]:
    """1 to ``max_records`` records in strictly increasing ``seq`` order, or
    :class:`AuditRecordError`."""
    if not isinstance(raw, list) or not 1 <= len(raw) <= max_records:
        raise AuditRecordError(f"records: expected a list of 1 to {max_records} records")
    records = tuple(AuditRecord.from_wire(item) for item in raw)
    if any(a.seq >= b.seq for a, b in itertools.pairwise(records)):
        raise AuditRecordError("records: expected strictly increasing seq")
    return records


# --- over MQTT --------------------------------------------------------------------------

AUDIT_SCHEMA = "edge.audit/1"
AUDIT_RECEIPT_SCHEMA = "edge.audit-receipt/1"


def _json_object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise AuditRecordError(f"{what}: not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise AuditRecordError(f"{what}: expected a JSON object")
    return data


def _device(data: Mapping[str, Any], what: str) -> str:
    device = data.get("device_id")
    if not isinstance(device, str) or not device or len(device) > MAX_TEXT:
        raise AuditRecordError(f"{what}: device_id: expected a non-empty string")
    return device


@dataclass(frozen=True)
class AuditMessage:
    """A device's audit records published on its events topic (with the MQTT 5 user
    property ``schema`` = :data:`AUDIT_SCHEMA`, so a consumer tells it from events
    without parsing): ``{"schema": "edge.audit/1", "device_id": ..., "records": [...]}``.
    A consumer stores them, then publishes an :class:`AuditReceipt` to the response
    topic with the same correlation data, then acknowledges the message."""

    device_id: str
    records: tuple[AuditRecord, ...]

    @property
    def last(self) -> int:
        return self.records[-1].seq

    @property
    def correlation(self) -> bytes:
        return f"audit-{self.records[0].seq}-{self.last}".encode()

    def encode(self) -> bytes:
        return canonical({"schema": AUDIT_SCHEMA, "device_id": self.device_id,
                          "records": [r.to_wire() for r in self.records]})


def is_audit(payload: bytes) -> bool:
    """Whether an MQTT payload is a JSON object whose ``schema`` is :data:`AUDIT_SCHEMA`
    (a consumer asks after an events message failed to decode)."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("schema") == AUDIT_SCHEMA


def decode_audit(payload: bytes) -> AuditMessage:
    """An :class:`AuditMessage`, or :class:`AuditRecordError` naming what is wrong."""
    data = _json_object(payload, "audit message")
    if data.get("schema") != AUDIT_SCHEMA:
        raise AuditRecordError(f"audit message: schema: expected {AUDIT_SCHEMA}")
    return AuditMessage(_device(data, "audit message"),
                        records_from_wire(data.get("records")))


@dataclass(frozen=True)
class AuditReceipt:
    """``{"schema": "edge.audit-receipt/1", "device_id": ..., "last": N, "stored": K}``:
    the consumer holds the device's records up to ``last``."""

    device_id: str
    last: int
    stored: int

    def encode(self) -> bytes:
        return canonical({"schema": AUDIT_RECEIPT_SCHEMA, "device_id": self.device_id,
                          "last": self.last, "stored": self.stored})


def decode_audit_receipt(payload: bytes) -> AuditReceipt:
    data = _json_object(payload, "audit receipt")
    if data.get("schema") != AUDIT_RECEIPT_SCHEMA:
        raise AuditRecordError(f"audit receipt: schema: expected {AUDIT_RECEIPT_SCHEMA}")
    values = []
    for name in ("last", "stored"):
        value = data.get(name)
        if not (isinstance(value, int) and not isinstance(value, bool)
                and 0 <= value <= _MAX_SEQ):
            raise AuditRecordError(f"audit receipt: {name}: expected a non-negative integer")
        values.append(value)
    return AuditReceipt(_device(data, "audit receipt"), values[0], values[1])
