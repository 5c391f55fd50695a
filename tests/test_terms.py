"""Medical terms in finals: the matcher (table tests), term lists and their errors, the
file reread without a restart, the starter list, the WebVTT export, and real sessions
(real model, phrase list, real sockets, the journal) whose finals carry the terms."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from edge.cli import main
from edge.core.errors import ConfigError
from edge.core.terms import (
    KOREAN_PARTICLES,
    Term,
    TermFile,
    TermListError,
    TermMatcher,
    builtin_terms,
    parse_csv,
    parse_json,
    parse_terms,
)
from edge.journal.db import Journal, SessionRow
from edge.journal.transcripts import to_vtt
from edge.protocols.events import Word
from helpers import (
    FIXTURES,
    TEST_KEY,
    connect,
    http_get,
    make_token,
    receive_json,
    receive_until_closed,
    stream,
)

TERMS_AUDIO = FIXTURES / "terms" / "terms_ko.wav"
GRAMMAR: dict[str, list[str]] = json.loads(
    (FIXTURES / "terms" / "grammar.json").read_text(encoding="utf-8"))


def ko(term: str, category: str = "symptom", code: str | None = None,
       exceptions: Sequence[str] = ()) -> Term:
    return Term(term, "ko", category, code, tuple(exceptions))


def en(term: str, category: str = "symptom") -> Term:
    return Term(term, "en", category)


LIST = TermMatcher([
    ko("두통", code="R51"), ko("가슴 통증", code="R07.4"), ko("가슴", "anatomy"),
    ko("통증"), ko("간", "anatomy", exceptions=["간이"]), ko("하루 세 번", "dose"),
    ko("밀리그램", "dose"), ko("아세트아미노펜", "drug", "N02BE01"), ko("머리", "anatomy"),
    en("headache"), en("chest pain"), en("allergy"), en("tooth", "anatomy"),
    en("blood pressure", "procedure"), en("ibuprofen", "drug"),
])


def said(text: str) -> list[Word]:
    return [Word(w, 100 * i, 100 * i + 90, 0.9) for i, w in enumerate(text.split())]


def found(text: str, language: str | None = "ko") -> list[tuple[str, str]]:
    return [(t.text, t.term) for t in LIST.match(said(text), language)]


@pytest.mark.parametrize(("text", "expected"), [
    # a particle attached, or the copula
    ("두통", [("두통", "두통")]),
    ("두통이 있어요", [("두통이", "두통")]),
    ("두통은 없어요", [("두통은", "두통")]),
    ("두통을 느껴요", [("두통을", "두통")]),
    ("두통에는", [("두통에는", "두통")]),
    ("두통이에요", [("두통이에요", "두통")]),
    ("두통입니다", [("두통입니다", "두통")]),
    # any other ending is another word
    ("두통약 주세요", []),
    ("두통약이", []),
    ("편두통", []),
    # never inside another word; an exception of the list is another word
    ("시간 이 없어요", []),
    ("간 수치가", [("간", "간")]),
    ("간에서", [("간에서", "간")]),
    ("간이 식당", []),
    # several words, however the recogniser spaced them; the longest term wins
    ("가슴 통증 이 있어요", [("가슴 통증 이", "가슴 통증")]),
    ("가슴통증", [("가슴통증", "가슴 통증")]),
    ("가슴 이 답답하고 통증 도", [("가슴 이", "가슴"), ("통증 도", "통증")]),
    ("하루 세 번", [("하루 세 번", "하루 세 번")]),
    ("하루 세번 드세요", [("하루 세번", "하루 세 번")]),
    ("하루 에 세 번", []),
    ("아세트아미노펜 오백 밀리그램 하루 세 번",
     [("아세트아미노펜", "아세트아미노펜"), ("밀리그램", "밀리그램"),
      ("하루 세 번", "하루 세 번")]),
    # the recogniser's own split of a particle belongs to the term
    ("머리 가 아프고", [("머리 가", "머리")]),
    ("", []),
])
def test_korean_terms(text: str, expected: list[tuple[str, str]]) -> None:
    assert found(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("headache", [("headache", "headache")]),
    ("Headaches since Monday", [("Headaches", "headache")]),
    ("HEADACHE", [("HEADACHE", "headache")]),
    ("some chest pains", [("chest pains", "chest pain")]),
    ("Chest Pain", [("Chest Pain", "chest pain")]),
    ("allergies", [("allergies", "allergy")]),
    ("two teeth", [("teeth", "tooth")]),
    ("blood pressures", [("blood pressures", "blood pressure")]),
    ("headachey", []),
    ("migraineheadache", []),
    ("chest", []),
    ("pain in the chest", []),
    ("ibuprofens", [("ibuprofens", "ibuprofen")]),
])
def test_english_terms(text: str, expected: list[tuple[str, str]]) -> None:
    assert found(text, "en-US") == expected


def test_times_and_codes_are_the_matched_words() -> None:
    words = said("어제 부터 가슴 통증 이 있고 두통 도")
    terms = LIST.match(words, "ko")
    assert [(t.term, t.start_ms, t.end_ms, t.category, t.code) for t in terms] == [
        ("가슴 통증", 200, 490, "symptom", "R07.4"), ("두통", 600, 790, "symptom", "R51")]


def test_the_language_chooses_the_list() -> None:
    words = said("두통 headache")
    assert [t.term for t in LIST.match(words, "ko")] == ["두통"]
    assert [t.term for t in LIST.match(words, "en")] == ["headache"]
    assert [t.term for t in LIST.match(words, None)] == ["두통", "headache"]
    assert LIST.match(words, "de") == ()


def test_particles_are_a_closed_list() -> None:
    assert {"이", "가", "은", "는", "을", "를", "에", "에서", "에는", "에서는", "으로",
            "이에요", "입니다"} <= KOREAN_PARTICLES
    assert not {"약", "님", "들", "적", "증", "하다", "했어요"} & KOREAN_PARTICLES


def test_decomposed_hangul_in_a_list_still_matches() -> None:
    import unicodedata

    terms = parse_json(json.dumps([{"term": unicodedata.normalize("NFD", "두통"),
                                    "language": "ko", "category": "symptom"}]))
    assert [t.term for t in TermMatcher(terms).match(said("두통이"))] == ["두통"]


# --- lists -----------------------------------------------------------------------------

def test_json_and_csv_lists() -> None:
    from_json = parse_json(json.dumps([
        {"term": "두통", "language": "ko", "category": "Symptom", "code": "R51"},
        {"term": "간", "language": "ko-KR", "category": "anatomy", "except": ["간이"]},
        {"term": "Chest  pain", "language": "en", "category": "symptom", "code": None},
    ], ensure_ascii=False))
    from_csv = parse_csv("term,language,category,code,except\n"
                         "두통,ko,Symptom,R51,\n"
                         "# a comment row\n"
                         "간,ko-KR,anatomy,,간이\n\n"
                         "Chest  pain,en,symptom,,\n")
    expected = (Term("두통", "ko", "symptom", "R51"),
                Term("간", "ko", "anatomy", None, ("간이",)),
                Term("chest pain", "en", "symptom"))
    assert from_json == from_csv == expected
    assert parse_terms("\ufeff" + json.dumps([{"term": "x", "language": "en",
                                                "category": "drug"}])) == (
        Term("x", "en", "drug"),)


@pytest.mark.parametrize(("text", "names"), [
    ("{}", "expected a JSON list"),
    ("[1, 2]", "entry 1: expected an object"),
    ('[{"term": "두통", "language": "ko"}]', "entry 1: 'category' is missing"),
    ('[{"term": "a", "language": "ko", "category": "x"}, {"term": "b", "language": "ko", '
     '"category": "x", "colour": "red"}]', "entry 2: unknown key 'colour'"),
    ('[{"term": "a", "language": "ko", "category": "x"}, {"language": "ko", '
     '"category": "x"}]', "entry 2: 'term' is missing"),
    ('[{"term": "", "language": "ko", "category": "x"}]', "'term' must be a non-empty"),
    ('[{"term": 5, "language": "ko", "category": "x"}]', "'term' must be a non-empty"),
    ('[{"term": "a", "language": "korean!", "category": "x"}]', "'language' must be"),
    ('[{"term": "a", "language": "ko", "category": "sym ptom"}]', "'category' must be"),
    ('[{"term": "a", "language": "ko", "category": "x", "code": 51}]',
     "'code' must be a non-empty string"),
    ('[{"term": "a", "language": "ko", "category": "x", "except": "b"}]',
     "'except' must be a list"),
    ('[{"term": "a", "language": "ko", "category": "x"},]', "not valid JSON (line 1"),
    ("", "empty; expected a header row"),
    ("term,language\n두통,ko\n", "line 1: no 'category' column"),
    ("term,language,category,colour\n", "line 1: unknown column 'colour'"),
    ("term,language,category\n두통,ko,symptom\n간,ko\n", "line 3: 'category' is missing"),
    ("term,language,category\n두통,ko,symptom,R51\n", "line 2: 4 cells for 3 columns"),
])
def test_a_malformed_list_names_the_entry_and_the_key(text: str, names: str) -> None:
    with pytest.raises(TermListError) as raised:
        parse_terms(text, "/etc/edge/terms.json")
    assert str(raised.value).startswith("/etc/edge/terms.json: ")
    assert names in str(raised.value), str(raised.value)


def test_the_starter_list() -> None:
    terms = builtin_terms()
    by_category: dict[str, list[Term]] = {}
    for term in terms:
        by_category.setdefault(term.category, []).append(term)
    assert {t.language for t in terms} == {"ko"}
    assert set(by_category) == {"symptom", "condition", "anatomy", "drug", "dose", "procedure"}
    assert len(by_category["drug"]) >= 50
    assert all(t.code and t.code.startswith("ATC:") for t in by_category["drug"]
               if t.code is not None)
    assert len({t.term for t in terms}) == len(terms)
    matcher = TermMatcher(terms)
    got = [(t.term, t.category) for t in matcher.match(
        said("어제 부터 두통 이 있고 배가 아파서 아세트아미노펜 오백 밀리그램 먹었 어요"), "ko")]
    assert got == [("두통", "symptom"), ("배", "anatomy"), ("아세트아미노펜", "drug"),
                   ("밀리그램", "dose")]
    assert matcher.match(said("시간 이 정도 간이 위에"), "ko") == ()


# --- the file, reread --------------------------------------------------------------------

def write(path: Path, terms: list[dict[str, Any]] | str) -> None:
    text = terms if isinstance(terms, str) else json.dumps(terms, ensure_ascii=False)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # as an editor or a config manager replaces a file


def test_a_term_file_is_reread_when_it_changes_and_kept_when_broken(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "terms.json"
    write(path, [{"term": "두통", "language": "ko", "category": "symptom"}])
    terms = TermFile(path)
    assert [t.term for t in terms.current.terms] == ["두통"]
    assert terms.reload_if_changed() is False  # unchanged
    write(path, [{"term": "복통", "language": "ko", "category": "symptom"}])
    assert terms.reload_if_changed() is True
    assert [t.term for t in terms.current.match(said("복통 이"))] == ["복통"]
    with caplog.at_level(logging.WARNING, logger="edge.core.terms"):
        write(path, '[{"term": "기침", "language": "ko"}]')
        assert terms.reload_if_changed() is False
        assert terms.reload_if_changed() is False  # said once
        path.unlink()
        assert terms.reload_if_changed() is False
    assert [t.term for t in terms.current.terms] == ["복통"]  # the last good list
    problems = [r.getMessage() for r in caplog.records]
    assert len(problems) == 2, problems
    assert "keeping the 1 terms in force" in problems[0]
    assert "entry 1: 'category' is missing" in problems[0]
    assert "No such file" in problems[1] or "no such file" in problems[1]
    write(path, "term,language,category\n기침,ko,symptom\n")
    assert terms.reload_if_changed() is True
    assert [t.term for t in terms.current.terms] == ["기침"]


def test_a_missing_or_broken_term_file_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(TermListError, match="no such file"):
        TermFile(tmp_path / "missing.json")
    path = tmp_path / "terms.csv"
    path.write_bytes(b"term,language,category\n\xff\xfe,ko,symptom\n")
    with pytest.raises(TermListError, match="not UTF-8"):
        TermFile(path)


def test_serve_with_a_malformed_term_file_is_exit_2_naming_the_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    terms = tmp_path / "terms.json"
    terms.write_text('[{"term": "두통", "language": "ko", "category": "symptom", '
                     '"colour": "red"}]', encoding="utf-8")
    config = tmp_path / "edge.toml"
    config.write_text('[server]\nhost = "127.0.0.1"\nport = 0\n'
                      '[auth]\nsecret = "a-secret-that-is-long-enough-for-hs256!"\n'
                      '[journal]\nenabled = false\n'
                      f'[terms]\nfile = "{terms}"\n')
    code = main(["serve", "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"config: terms.file: {terms}: entry 1: unknown key 'colour'" in err, err


# --- WebVTT --------------------------------------------------------------------------------

ROW = SessionRow(session_id="s", device_id="d", source="client", sub=None,
                 organization=None, department=None, model="m", started_at=0.0,
                 ended_at=1.0, end_reason="end", finals=1)


def vtt_final(text: str, terms: list[dict[str, Any]]) -> dict[str, Any]:
    words = [{"word": w, "start_ms": 100 * i, "end_ms": 100 * i + 90, "confidence": 1.0}
             for i, w in enumerate(text.split())]
    return {"type": "transcription", "text": text, "start_ms": 0, "end_ms": 900,
            "words": words, "terms": terms, "speaker": None}


def test_webvtt_keeps_the_terms_as_classes() -> None:
    final = vtt_final("어제 부터 가슴 통증 이 & 두통 도", [
        {"text": "가슴 통증 이", "term": "가슴 통증", "start_ms": 200, "end_ms": 490,
         "category": "symptom", "code": "R07.4"},
        {"text": "두통 도", "term": "두통", "start_ms": 600, "end_ms": 790,
         "category": "Dr<ug>", "code": None}])
    cue = to_vtt(ROW, [final]).splitlines()[-1]
    assert cue == ("어제 부터 <c.term.symptom>가슴 통증 이</c> &amp; "
                   "<c.term.drug>두통 도</c>")
    # Terms that do not fit the words (a relayed record, say) leave the text plain.
    odd = vtt_final("두통 이", [{"start_ms": "0", "end_ms": 90, "category": "symptom"}])
    assert to_vtt(ROW, [odd]).splitlines()[-1] == "두통 이"
    mismatch = {**vtt_final("두통 이", [{"start_ms": 0, "end_ms": 90,
                                        "category": "symptom"}]), "text": "<b>두통</b>"}
    assert to_vtt(ROW, [mismatch]).splitlines()[-1] == "&lt;b&gt;두통&lt;/b&gt;"


# --- real sessions ----------------------------------------------------------------------------

async def terms_session(server: Any, query: str = "") -> tuple[str, list[dict[str, Any]]]:
    """The terms recording with its phrase list; the session id and its finals."""
    async with connect(server, make_token(sub="dr-lee"), query) as ws:
        session_id = (await receive_json(ws))["session_id"]
        await ws.send_message(json.dumps({"type": "config", "phrases": GRAMMAR["phrases"]}))
        await stream(ws, TERMS_AUDIO.read_bytes())
        await ws.send_message(json.dumps({"type": "end"}))
        messages = await receive_until_closed(ws)
    return session_id, [m for m in messages if m["type"] == "transcription"
                        and m["is_final"]]


def check_terms(final: dict[str, Any], matcher: TermMatcher) -> None:
    """``final``'s terms are its words' terms, with the words' own times."""
    words = [Word(w["word"], w["start_ms"], w["end_ms"], w["confidence"])
             for w in final["words"]]
    expected = [{"text": t.text, "term": t.term, "start_ms": t.start_ms, "end_ms": t.end_ms,
                 "category": t.category, "code": t.code} for t in matcher.match(words, "ko")]
    assert final["terms"] == expected
    starts = {w["start_ms"] for w in final["words"]}
    ends = {w["end_ms"] for w in final["words"]}
    assert all(t["start_ms"] in starts and t["end_ms"] in ends for t in final["terms"])


async def test_a_real_sessions_finals_carry_the_terms_it_said(
        start_server: Any, tmp_path: Path) -> None:
    server = await start_server()  # the starter list
    session_id, finals = await terms_session(server)
    assert len(finals) == 2, [f["text"] for f in finals]
    starter = TermMatcher(builtin_terms())
    for final in finals:
        check_terms(final, starter)
    terms = [(t["term"], t["category"], t["code"]) for f in finals for t in f["terms"]]
    # What the phrase list makes the model say, whatever it makes of the last words.
    assert terms[:2] == [("머리", "anatomy", None), ("기침", "symptom", "ICD-10:R05")]
    assert ("아세트아미노펜", "drug", "ATC:N02BE01") in terms
    assert ("밀리그램", "dose", None) in terms
    assert finals[0]["terms"][0]["text"] == "머리가"
    # The journal, and the transcripts API that reads it, keep them (once the session's
    # end is journaled, just after its close: 409 in_progress until then).
    with trio.fail_after(30):
        while True:
            status, _, body = await http_get(
                server.port, f"/transcripts/{session_id}?format=json", make_token(sub="dr-lee"))
            if status != 409:
                break
            await trio.sleep(0.05)
    assert status == 200
    assert [f["terms"] for f in json.loads(body)["finals"]] == [f["terms"] for f in finals]
    status, _, body = await http_get(server.port, f"/transcripts/{session_id}?format=vtt",
                                     make_token(sub="dr-lee"))
    assert status == 200 and "<c.term.drug>아세트아미노펜</c>" in body.decode()

    def journaled() -> list[dict[str, Any]]:
        with Journal.open(tmp_path / "state" / "journal.db", key=TEST_KEY,
                          device_id="reader", readonly=True) as journal:
            return journal.finals(session_id)

    assert [f["terms"] for f in await trio.to_thread.run_sync(journaled)] == [
        f["terms"] for f in finals]


async def test_a_new_term_list_applies_without_a_restart(
        start_server: Any, tmp_path: Path) -> None:
    path = tmp_path / "terms.json"
    write(path, [{"term": "기침", "language": "ko", "category": "symptom", "code": "R05"}])
    server = await start_server(terms={"file": str(path)})
    _, finals = await terms_session(server)
    assert [t["term"] for f in finals for t in f["terms"]] == ["기침"]
    write(path, [{"term": "머리", "language": "ko", "category": "anatomy"},
                 {"term": "오백 밀리그램", "language": "ko", "category": "dose"}])
    with trio.fail_after(30):
        while True:  # the watcher polls the file's stat every 2 s
            _, finals = await terms_session(server)
            got = [(t["term"], t["text"]) for f in finals for t in f["terms"]]
            if ("기침", "기침 이") not in got:  # a whole session after the reload
                break
            await trio.sleep(0.5)
    assert got == [("머리", "머리가"), ("오백 밀리그램", "오백 밀리그램")]


async def test_with_terms_off_finals_carry_none(start_server: Any) -> None:
    server = await start_server(terms={"enabled": False})
    _, finals = await terms_session(server)
    assert finals and all(f["terms"] == [] for f in finals)


async def test_a_malformed_term_file_stops_the_daemon_naming_the_key(
        start_server: Any, tmp_path: Path) -> None:
    path = tmp_path / "terms.csv"
    path.write_text("term,language,category\n두통,ko,\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        await start_server(terms={"file": str(path)})
    assert raised.value.key == "terms.file"
    assert "line 2: 'category' must be a non-empty string" in str(raised.value)
