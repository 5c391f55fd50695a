"""What ``edge transcripts list`` and ``edge transcripts show`` print.

Pure: takes :class:`~edge.journal.db.SessionRow` values and final ``transcription``
messages (as :meth:`Journal.finals <edge.journal.db.Journal.finals>` returns them) and
returns text. Times of day are shown in UTC; times within a session are the messages'
``start_ms``/``end_ms`` (from the start of the session's audio).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from edge.journal.db import SessionRow

Final = Mapping[str, Any]


def to_json(session: SessionRow, finals: Sequence[Final]) -> str:
    """``{"session": {...}, "finals": [...]}``, the finals exactly as journaled."""
    body = {"session": dataclasses.asdict(session), "finals": list(finals)}
    return json.dumps(body, ensure_ascii=False, indent=2) + "\n"


def to_text(session: SessionRow, finals: Sequence[Final]) -> str:
    """One line per final: ``[00:00:01.230] Speaker 1: text`` (no speaker when unknown).
    Finals without text are left out."""
    lines = []
    for final in _spoken(finals):
        speaker = _speaker(final)
        prefix = f"[{_clock(final['start_ms'])}] "
        if speaker is not None:
            prefix += f"{speaker}: "
        lines.append(prefix + _one_line(final["text"]))
    return "".join(line + "\n" for line in lines)


def to_vtt(session: SessionRow, finals: Sequence[Final]) -> str:
    """WebVTT: one cue per final, in order of start time, with a ``<v Speaker>`` voice
    span when the speaker is known and each listed term said in a class span,
    ``<c.term.symptom>두통이</c>`` (its category). Finals without text are left out."""
    blocks = ["WEBVTT\n"]
    for final in sorted(_spoken(finals), key=lambda f: f["start_ms"]):
        start = max(0, int(final["start_ms"]))
        end = max(start + 1, int(final["end_ms"]))  # a cue must end after it starts
        text = _vtt_text(final)
        speaker = _speaker(final)
        if speaker is not None:
            text = f"<v {_vtt_escape(_one_line(speaker))}>{text}</v>"
        blocks.append(f"{_clock(start)} --> {_clock(end)}\n{text}\n")
    return "\n".join(blocks)


FORMATS: dict[str, Callable[[SessionRow, Sequence[Final]], str]] = {
    "json": to_json, "text": to_text, "vtt": to_vtt,
}


def render(fmt: str, session: SessionRow, finals: Sequence[Final]) -> str:
    """``fmt`` is one of :data:`FORMATS`; ValueError otherwise."""
    try:
        formatter = FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r} (json, text or vtt)") from None
    return formatter(session, finals)


_COLUMNS = ("SESSION", "DEVICE", "SOURCE", "DIALECT", "LANG", "STARTED (UTC)", "DURATION",
            "FINALS", "END", "SUB")


def list_table(rows: Sequence[SessionRow]) -> str:
    """A fixed-width table, one session a line under a header; an open session's
    duration and end read ``-`` and ``open``, a session without a dialect (the room's)
    or a known language ``-`` for it."""
    table = [_COLUMNS]
    for r in rows:
        duration = "-" if r.ended_at is None else _duration(r.ended_at - r.started_at)
        table.append((
            r.session_id, r.device_id, r.source, r.dialect or "-", r.language or "-",
            _utc(r.started_at),
            duration, str(r.finals),
            "open" if r.ended_at is None else (r.end_reason or "-"), r.sub or "-",
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(_COLUMNS))]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n"
        for row in table
    )


_SINCE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: a duration back from ``now`` (``90s``, ``30m``, ``12h``, ``7d``,
    ``2w``) or an ISO 8601 date or time (UTC unless it has an offset). Returns a Unix
    time; ValueError with the accepted forms otherwise."""
    text = text.strip()
    match = _SINCE.fullmatch(text)
    if match:
        now = time.time() if now is None else now
        return now - float(match[1]) * _UNITS[match[2]]
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since: expected a duration like 30m, 12h or 7d, or an ISO "
                         f"date like 2026-05-01 or 2026-05-01T08:30, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


# --- helpers ---------------------------------------------------------------------------

def _spoken(finals: Sequence[Final]) -> list[Final]:
    return [f for f in finals if str(f.get("text", "")).strip()]


def _speaker(final: Final) -> str | None:
    speaker = final.get("speaker")
    return speaker if isinstance(speaker, str) and speaker.strip() else None


def _one_line(text: str) -> str:
    # A newline would split a text line, and a blank line would end a WebVTT cue.
    return " ".join(text.split())


def _clock(ms: int) -> str:
    ms = max(0, int(ms))
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def term_spans(final: Final) -> list[tuple[int, int, str]]:
    """The words of ``final`` that are terms: (first word, last word, category), in
    order, from its ``terms`` (word times); none when its ``words`` do not spell its
    ``text`` or anything is malformed (a relayed record is checked, not trusted)."""
    words, terms = final.get("words"), final.get("terms")
    if not isinstance(words, list) or not isinstance(terms, list) or not terms:
        return []
    times = []
    for word in words:
        if not (isinstance(word, dict) and isinstance(word.get("word"), str)
                and _is_ms(word.get("start_ms")) and _is_ms(word.get("end_ms"))):
            return []
        times.append((word["start_ms"], word["end_ms"]))
    if " ".join(w["word"] for w in words) != _one_line(str(final.get("text", ""))):
        return []
    spans: list[tuple[int, int, str]] = []
    for term in terms:
        if not (isinstance(term, dict) and _is_ms(term.get("start_ms"))
                and _is_ms(term.get("end_ms")) and isinstance(term.get("category"), str)):
            continue
        inside = [i for i, (start, end) in enumerate(times)
                  if start >= term["start_ms"] and end <= term["end_ms"]]
        category = "".join(ch for ch in term["category"].lower() if ch in _CLASS_CHARS)
        if inside and category and (not spans or inside[0] > spans[-1][1]):
            spans.append((inside[0], inside[-1], category))
    return spans


_CLASS_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


def _is_ms(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _vtt_text(final: Final) -> str:
    spans = term_spans(final)
    if not spans:
        return _vtt_escape(_one_line(final["text"]))
    words = [w["word"] for w in final["words"]]
    out: list[str] = []
    at = 0
    for first, last, category in spans:
        out.extend(_vtt_escape(w) for w in words[at:first])
        out.append(f"<c.term.{category}>{_vtt_escape(' '.join(words[first:last + 1]))}</c>")
        at = last + 1
    out.extend(_vtt_escape(w) for w in words[at:])
    return " ".join(out)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float) -> str:
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
