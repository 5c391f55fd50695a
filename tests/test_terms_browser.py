"""Listed terms highlighted on the device's pages, in a real Chromium against a real
daemon (real model; the room microphone through a file-backed ALSA device, the
browser's microphone from a WAV file; the journal behind the transcripts page).

Without a phrase list the small Korean model makes little of espeak's speech, but it
reliably hears 엄마, 너무 and often 머리 in ``speech_ko.wav``: the term list here names
those words, so that the test is about what the pages do with terms, not about what
the model hears.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alsa_file_device import FileDevice, child_env, make_home
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from edge.core.auth import SCOPE_READ
from helpers import FIXTURES, READ_WRITE, SECRET, chromium_args, make_token
from tools.daemon import ROOT, Daemon

CHROMIUM = Path("/usr/bin/chromium")
RESULTS = ROOT / "bench" / "results"
SPEECH_WAV = FIXTURES / "speech_ko.wav"
TERMS = [
    {"term": "엄마", "language": "ko", "category": "symptom", "code": "TEST-1"},
    {"term": "너무", "language": "ko", "category": "drug", "code": "TEST-2"},
    {"term": "머리", "language": "ko", "category": "anatomy"},
]
# What each category looks like: colour (style.css), underline style and mark.
LOOKS = {"symptom": ("rgb(255, 138, 128)", "wavy", "▲"),
         "drug": ("rgb(128, 216, 255)", "double", "●"),
         "anatomy": ("rgb(255, 241, 118)", "dotted", "◆")}

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="ALSA and Debian's chromium")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """Its room microphone plays speech_ko.wav once, then silence; its term list is
    TERMS."""
    directory = tmp_path_factory.mktemp("terms-web")
    infile = directory / "mic.raw"
    infile.write_bytes((FIXTURES / "speech_ko.raw").read_bytes())
    terms = directory / "terms.json"
    terms.write_text(json.dumps(TERMS, ensure_ascii=False), encoding="utf-8")
    home = make_home(directory / "home", [FileDevice("edgemic", infile)])
    d = Daemon(directory, "edge", secret=SECRET, env=child_env(home), sections={
        "server": {"ping_interval": 600.0},
        "microphone": {"enabled": True, "device": "edgemic", "retry_max": 0.5},
        "audio": {"silence_seconds": 600.0},
        "terms": {"file": str(terms)},
    })
    d.start()
    yield d
    assert d.stop() == 0


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    assert CHROMIUM.exists(), "Debian's chromium is missing: run .ci/setup"
    with sync_playwright() as p:
        yield p.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(
            f"--use-file-for-fake-audio-capture={SPEECH_WAV}%noloop"))


def open_page(browser: Browser, url: str) -> tuple[Page, list[str]]:
    page = browser.new_context(viewport={"width": 1280, "height": 720}).new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    return page, errors


def check_marks(lines: Locator) -> list[dict[str, Any]]:
    """Every term mark under ``lines``: its category by colour, underline and mark, and
    in words in its title; the line's text still reads as the final's text."""
    marks: list[dict[str, Any]] = lines.locator("mark.term").evaluate_all("""marks =>
        marks.map(m => ({text: m.textContent, category: m.dataset.category,
            term: m.dataset.term, code: m.dataset.code || null, title: m.title,
            cls: m.className, color: getComputedStyle(m).color,
            underline: getComputedStyle(m).textDecorationLine,
            style: getComputedStyle(m).textDecorationStyle,
            after: getComputedStyle(m, '::after').content,
            line: m.closest('.text').textContent}))""")
    listed = {t["term"]: t for t in TERMS}
    for mark in marks:
        term = listed[mark["term"]]
        assert mark["category"] == term["category"]
        assert mark["cls"] == f"term term-{term['category']}"
        assert mark["text"].startswith(mark["term"])  # as said, maybe with a particle
        code = term.get("code")
        assert mark["title"] == f"{term['category']}: {term['term']}" + (
            f" ({code})" if code else "")
        colour, style, sign = LOOKS[term["category"]]
        assert (mark["color"], mark["underline"], mark["style"]) == (colour, "underline",
                                                                     style)
        assert sign in mark["after"]
        assert re.search(rf"(^| ){re.escape(mark['text'])}( |$)", mark["line"])
    return marks


@pytest.mark.timeout(150)
def test_room_mic_and_transcript_pages_highlight_the_terms(
        daemon: Daemon, chromium: Browser) -> None:
    base = f"http://127.0.0.1:{daemon.port}"
    room, room_errors = open_page(chromium, f"{base}/#token={make_token(scope=SCOPE_READ)}")
    mic, mic_errors = open_page(
        chromium, f"{base}/mic#token={make_token(sub='dr-lee', scope=READ_WRITE)}")
    mic.get_by_role("button", name="Start").click()
    # The browser's microphone: three finals; 엄마 and 너무 among their words.
    expect(mic.locator("#captions .final")).to_have_count(3, timeout=60_000)
    expect(mic.locator('#captions mark.term-symptom[data-term="엄마"]')).to_have_count(1)
    expect(mic.locator('#captions mark.term-drug[data-term="너무"]')).to_have_count(1)
    marks = check_marks(mic.locator("#captions"))
    assert {m["term"] for m in marks} >= {"엄마", "너무"}
    mic.screenshot(path=str(RESULTS / "web-terms-mic.png"))
    mic.locator("#mic-button").click()
    link = mic.get_by_role("link", name="Open this session's transcript")
    expect(link).to_be_visible(timeout=30_000)
    # The same words in the room's captions (what the room's recogniser made of them).
    expect(room.locator("#captions mark.term").first).to_be_visible(timeout=60_000)
    check_marks(room.locator("#captions"))
    room.screenshot(path=str(RESULTS / "web-terms-room.png"))
    # The journaled session on the transcripts page keeps them.
    link.click()
    lines = mic.locator("#transcript-lines")
    expect(lines.locator(".final")).to_have_count(3)
    expect(lines.locator('mark.term-symptom[data-term="엄마"]')).to_have_count(1)
    assert [(m["term"], m["text"]) for m in check_marks(lines)] == [
        (m["term"], m["text"]) for m in marks]
    mic.screenshot(path=str(RESULTS / "web-terms-transcript.png"))
    # The legend says what each mark means, in words.
    legend = room.locator(".term-legend mark.term")
    assert legend.all_text_contents() == ["symptom", "condition", "drug", "dose", "anatomy",
                                          "procedure"]
    assert room_errors == [] and mic_errors == []
