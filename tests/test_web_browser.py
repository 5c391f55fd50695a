"""The device's web pages in a real Chromium (Debian's, driven by Playwright), against a
real daemon process with the real model: the room microphone through a file-backed
ALSA device, the browser's microphone from a WAV file, the journal in SQLite.

Every test saves a screenshot under bench/results/ (git-ignored). Playwright's
``expect`` retries until its timeout, so nothing here sleeps to synchronise; each test
also has pytest-timeout's deadline.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alsa_file_device import FileDevice, child_env, make_home
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, expect, sync_playwright
from speaker_audio import SPEAKERS, SPK_MODEL, conversation

from edge.core.auth import SCOPE_READ, SCOPE_TRANSCRIPTS, SCOPE_WRITE, mint
from edge.journal.db import Journal
from helpers import FIXTURES, READ_WRITE, SECRET, chromium_args, make_token
from tools.daemon import ROOT, Daemon

CHROMIUM = Path("/usr/bin/chromium")
RESULTS = ROOT / "bench" / "results"
SPEECH_WAV = FIXTURES / "speech_ko.wav"
ENROLLED = "kim"
# The conversation's first seven turns (kim, park, kim, visitor, park, park, kim: about
# 23 s at real time), then silence: the room hears it once per capture run.
ROOM_AUDIO = conversation()[0][:23_500 * 32]

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="ALSA and Debian's chromium")


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    assert CHROMIUM.exists(), "Debian's chromium is missing: run .ci/setup"
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Chromium with a fake microphone that beeps (no file)."""
    b = playwright.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args())
    yield b
    b.close()


class Watched:
    """A page whose script errors and CSP violations are collected."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        # Expected console noise: failed WebSocket connections to a stopped daemon, and
        # the refusals (401, 403) of fetch() calls, which the page puts in words.
        if message.type == "error" and "WebSocket" not in message.text and not re.search(
                r"Failed to load resource: .* status of 40[13]\b", message.text):
            self.errors.append(message.text)

    def screenshot(self, name: str) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(RESULTS / f"web-{name}.png"))


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Any]:
    contexts = []
    watched: list[Watched] = []

    def open_(url: str, *, browser_: Browser | None = None) -> Watched:
        context = (browser_ or browser).new_context(
            viewport={"width": 1280, "height": 720}, accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        w = Watched(page)
        watched.append(w)
        page.goto(url)
        return w

    yield open_
    for context in contexts:
        context.close()
    for w in watched:
        assert w.errors == [], w.errors


def room_daemon(directory: Path, audio: bytes, *, enroll: bool = True) -> Daemon:
    """A daemon whose room microphone plays ``audio`` (then silence), with the test
    speaker model and ``kim`` enrolled from her own clips."""
    infile = directory / "mic.raw"
    infile.write_bytes(audio)
    home = make_home(directory / "home", [FileDevice("edgemic", infile)])
    daemon = Daemon(directory, "edge", secret=SECRET, env=child_env(home), sections={
        "server": {"ping_interval": 600.0},
        "microphone": {"enabled": True, "device": "edgemic", "retry_max": 0.5},
        "recognizer": {"speaker_model": str(SPK_MODEL)},
        "audio": {"silence_seconds": 600.0},
    })
    if enroll:
        clips = sorted(str(p) for p in (SPEAKERS / "clips" / ENROLLED).glob("*.wav"))
        subprocess.run([sys.executable, "-m", "edge", "speakers", "enroll", "--config",
                        str(daemon.config_path), "--name", ENROLLED, *clips],
                       env=daemon.env, cwd=ROOT, check=True, capture_output=True, timeout=120)
    return daemon


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = room_daemon(tmp_path_factory.mktemp("web-room"), ROOM_AUDIO)
    daemon.start()
    yield daemon
    assert daemon.stop() == 0


def base(daemon: Daemon) -> str:
    return f"http://127.0.0.1:{daemon.port}"


def finals_on(page: Page) -> list[dict[str, str]]:
    result: list[dict[str, str]] = page.eval_on_selector_all(
        "#captions .final", """lines => lines.map(line => ({
            text: line.querySelector('.text').textContent,
            speaker: line.dataset.speaker, room: line.dataset.room || '',
            seq: line.dataset.seq || '', cls: line.className}))""")
    return result


def room_finals_in_journal(daemon: Daemon) -> list[str]:
    with Journal.open(daemon.state / "journal.db", key=daemon.data_key,
                      device_id=socket.gethostname(),
                      readonly=True) as journal:
        rows = [r for r in journal.sessions() if r.source == "room"]
        return [f["text"] for r in rows for f in journal.finals(r.session_id)
                if f["text"].strip()]


@pytest.mark.timeout(150)
def test_room_captions_appear_with_speaker_labels(room: Daemon, open_page: Any) -> None:
    w = open_page(f"{base(room)}/#token={make_token(scope=SCOPE_READ)}")
    page = w.page
    log = page.locator("#captions")
    expect(log).to_have_attribute("role", "log")
    expect(log).to_have_attribute("aria-live", "polite")
    expect(page.get_by_role("status")).to_contain_text("Listening to the room")
    # The fragment never reaches the server; the page keeps the token in this tab only.
    assert "token" not in page.url
    assert page.evaluate("sessionStorage.getItem('edge.token')")
    # Kim (enrolled) by name, the others as "Speaker N": five finals cover both.
    expect(page.locator(f'#captions .final[data-speaker="{ENROLLED}"]').first).to_be_visible(
        timeout=60_000)
    expect(page.locator('#captions .final[data-speaker^="Speaker "]').first).to_be_visible(
        timeout=60_000)
    # The utterance in progress, apart from the finals (at most one, always last).
    expect(page.locator("#captions .partial:last-child")).to_have_count(1, timeout=30_000)
    # At least three finals (how many of the recording's turns are heard by now depends
    # on the machine's load: the microphone drops audio rather than wait).
    expect(page.locator("#captions .final").nth(2)).to_be_visible(timeout=60_000)
    assert page.locator("#captions .partial").count() <= 1
    w.screenshot("room")
    lines = finals_on(page)
    assert all(line["text"].strip() for line in lines)
    assert len({line["seq"] for line in lines}) == len(lines)  # each final once
    # A stable colour per speaker: one colour class per label, a different one for each.
    colours: dict[str, set[str]] = {}
    for line in lines:
        if line["speaker"]:
            colours.setdefault(line["speaker"], set()).update(
                c for c in line["cls"].split() if c.startswith("speaker-"))
    assert all(len(c) == 1 for c in colours.values()), colours
    assert len({next(iter(c)) for c in colours.values()}) == len(colours), colours
    # The page shows what the room journaled, in order.
    shown = [line["text"] for line in lines]
    assert room_finals_in_journal(room)[:len(shown)] == shown


@pytest.mark.timeout(240)
def test_after_a_daemon_restart_the_page_reconnects_and_shows_each_final_once(
        tmp_path: Path, open_page: Any) -> None:
    daemon = room_daemon(tmp_path, ROOM_AUDIO, enroll=False)
    try:
        daemon.start()
        w = open_page(f"{base(daemon)}/#token={make_token(scope=SCOPE_READ, ttl=3600)}")
        page = w.page
        expect(page.locator("#captions .final")).to_have_count(2, timeout=60_000)
        first_room = finals_on(page)[0]["room"]
        # Mid-stream (more speech follows): SIGTERM publishes the utterance in progress
        # as a final and closes the listeners with 1012; the page reconnects.
        assert daemon.stop() == 0
        expect(page.get_by_role("status")).to_contain_text("Reconnecting in")
        w.screenshot("room-restarting")
        daemon.start()
        new_room = page.locator(f'#captions .final:not([data-room="{first_room}"])')
        expect(new_room).to_have_count(2, timeout=90_000)
        expect(page.get_by_role("status")).to_contain_text("Listening to the room")
        w.screenshot("room-restarted")
        assert daemon.stop() == 0
        # Whatever the page got before the daemon went away is all there is: compare
        # it, line for line, with the journal of both capture runs.
        expect(page.get_by_role("status")).to_contain_text("Reconnecting in")
        lines = finals_on(page)
        assert len({line["room"] for line in lines}) == 2
        pairs = [(line["room"], line["seq"]) for line in lines]
        assert len(set(pairs)) == len(pairs)
        assert [line["text"] for line in lines] == room_finals_in_journal(daemon)
    finally:
        daemon.stop()


@pytest.mark.timeout(150)
def test_my_microphone_shows_the_recordings_words(
        playwright: Playwright, room: Daemon, open_page: Any) -> None:
    fake_mic = playwright.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(
        f"--use-file-for-fake-audio-capture={SPEECH_WAV}%noloop"))
    try:
        w = open_page(f"{base(room)}/mic#token={make_token(sub='dr-lee', scope=READ_WRITE)}",
                      browser_=fake_mic)
        page = w.page
        button = page.get_by_role("button", name="Start")
        expect(button).to_be_enabled()
        button.click()
        expect(page.locator("#mic-button")).to_have_text("Stop")
        expect(page.get_by_role("status")).to_contain_text("Listening to your microphone")
        # The recording's three phrases (what the model hears in them: see `edge
        # transcribe tests/fixtures/speech_ko.wav`), as three finals.
        expect(page.locator("#captions .final")).to_have_count(3, timeout=60_000)
        expect(page.locator("#captions")).to_contain_text("엄마")
        expect(page.locator("#captions")).to_contain_text("너무")
        w.screenshot("mic")
        page.locator("#mic-button").click()
        expect(page.locator("#mic-button")).to_have_text("Start", timeout=30_000)
        expect(page.get_by_role("status")).to_contain_text("Stopped: 3 lines transcribed")
        link = page.get_by_role("link", name="Open this session's transcript")
        expect(link).to_have_attribute("href", re.compile(r"^/transcripts#session=[0-9a-f-]{36}$"))
        w.screenshot("mic-stopped")
    finally:
        fake_mic.close()


def expired_token() -> str:
    return mint(algorithm="HS256", key=SECRET, sub="user-1", scope=READ_WRITE,
                user_type="doctor", ttl=600, now=time.time() - 3600)


@pytest.mark.timeout(120)
def test_bad_expired_and_read_only_tokens_each_say_what_is_wrong(
        room: Daemon, open_page: Any) -> None:
    cases = [
        ("/", "not-a-jwt", "refused the token", "bad"),
        ("/", expired_token(), "The token has expired", "expired"),
        ("/", make_token(scope=SCOPE_WRITE), "needs the transcription:read scope", "write-only"),
        ("/transcripts", make_token(scope=SCOPE_WRITE),
         "needs transcription:read (its own sessions)", "records-write-only"),
        ("/transcripts", expired_token(), "The token has expired", "records-expired"),
    ]
    for path, token, words, name in cases:
        w = open_page(f"{base(room)}{path}#token={token}")
        expect(w.page.get_by_role("status")).to_contain_text(words)
        expect(w.page.locator("#token-panel")).to_have_attribute("open", "")
        w.screenshot(f"token-{name}")
    # A read-only token may listen to the room but not dictate.
    w = open_page(f"{base(room)}/mic#token={make_token(scope=SCOPE_READ)}")
    w.page.get_by_role("button", name="Start").click()
    expect(w.page.get_by_role("status")).to_contain_text(
        "This token may not stream audio: it needs the transcription:write scope")
    expect(w.page.locator("#mic-button")).to_have_text("Start")
    w.screenshot("token-read-only")
    # No token at all, and then one pasted into the field.
    w = open_page(f"{base(room)}/")
    expect(w.page.get_by_role("status")).to_contain_text("No token yet")
    w.page.locator("#token-input").fill(make_token(scope=SCOPE_READ))
    w.page.get_by_role("button", name="Use this token").click()
    expect(w.page.get_by_role("status")).to_contain_text("Listening to the room")


def client_session(daemon: Daemon, token: str) -> str:
    """A client session streamed by ``edge client --fast``; its session id."""
    done = subprocess.run(
        [sys.executable, "-m", "edge", "client", daemon.url, str(SPEECH_WAV), "--fast",
         "--token", token], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    messages = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert messages[-1]["type"] == "session_end", messages[-1]
    session_id: str = messages[0]["session_id"]
    return session_id


@pytest.mark.timeout(150)
def test_records_list_the_sessions_just_made_and_download_webvtt(
        room: Daemon, open_page: Any, tmp_path: Path) -> None:
    token = make_token(sub="dr-park", scope=READ_WRITE)
    made = [client_session(room, token) for _ in range(2)]
    other = client_session(room, make_token(sub="someone-else", scope=READ_WRITE))
    w = open_page(f"{base(room)}/transcripts#token={token}")
    page = w.page
    expect(page.get_by_role("status")).to_contain_text("2 sessions")
    listed = page.eval_on_selector_all("#sessions tbody tr",
                                       "rows => rows.map(r => r.dataset.session)")
    assert listed == made[::-1] and other not in listed  # own sessions, newest first
    # Each session's language, as a reader knows it (the tag too).
    expect(page.locator("#sessions thead th").nth(3)).to_have_text("Language")
    expect(page.locator(f'tr[data-session="{made[0]}"] td').nth(3)).to_have_text(
        "Korean (ko)")
    page.locator(f'tr[data-session="{made[0]}"]').get_by_role("button", name="Show").click()
    lines = page.locator("#transcript-lines .final")
    expect(lines).to_have_count(3)
    expect(page.locator("#transcript-lines")).to_have_attribute("lang", "ko")
    expect(page.locator("#transcript-title")).to_contain_text("Korean (ko)")
    expect(page.locator("#transcript-lines")).to_contain_text("엄마")
    assert f"session={made[0]}" in page.url
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download as WebVTT").click()
    download = download_info.value
    assert download.suggested_filename == f"transcript-{made[0]}.vtt"
    path = tmp_path / "t.vtt"
    download.save_as(path)
    vtt = path.read_text(encoding="utf-8")
    assert vtt.startswith("WEBVTT\n") and vtt.count(" --> ") == 3
    plain = re.sub(r"</?c[.a-z0-9_-]*>", "", vtt)  # listed terms are in class spans
    for text in page.locator("#transcript-lines .final .text").all_text_contents():
        assert text in plain
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download as text").click()
    assert download_info.value.suggested_filename == f"transcript-{made[0]}.txt"
    w.screenshot("records")


HOSTILE = '<img src=x onerror="document.title=\'owned\'">'


def insert_hostile_session(daemon: Daemon) -> str:
    """A finished session whose text, speaker and subject are HTML, written through the
    journal (as a relayed or tampered record could carry them)."""
    sid = str(uuid.uuid4())
    now = time.time()
    with Journal.open(daemon.state / "journal.db", key=daemon.data_key,
                      device_id=socket.gethostname()) as journal:
        journal.start_session(sid, source="client", sub="<b>clerk</b>", started_at=now - 5)
        journal.append_final(sid, {
            "type": "transcription", "session_id": sid, "seq": 1, "is_final": True,
            "text": HOSTILE, "start_ms": 0, "end_ms": 900, "words": [],
            "speaker": "<i>Dr. X</i>", "speaker_id": "enrolled:<i>Dr. X</i>",
            "speaker_confidence": 0.9, "speaker_role": None})
        journal.end_session(sid, reason="end", ended_at=now)
    return sid


@pytest.mark.timeout(120)
def test_a_transcript_holding_html_renders_as_text(room: Daemon, open_page: Any) -> None:
    sid = insert_hostile_session(room)
    w = open_page(f"{base(room)}/transcripts#token={make_token(scope=SCOPE_TRANSCRIPTS)}"
                  f"&session={sid}")
    page = w.page
    line = page.locator("#transcript-lines .final")
    expect(line).to_have_count(1)
    expect(line.locator(".text")).to_have_text(HOSTILE)
    expect(line.locator(".speaker")).to_have_text("<i>Dr. X</i>")
    expect(line).to_have_attribute("data-speaker", "<i>Dr. X</i>")
    expect(page.locator(f'tr[data-session="{sid}"]')).to_contain_text("<b>clerk</b>")
    assert page.locator("main img, main i, main b").count() == 0
    assert page.title() != "owned"
    w.screenshot("records-html-as-text")


@pytest.mark.timeout(120)
def test_without_a_room_microphone_or_a_secure_context_the_pages_say_so(
        playwright: Playwright, tmp_path: Path, open_page: Any) -> None:
    daemon = Daemon(tmp_path, "edge", secret=SECRET)  # microphone.enabled is false
    # The same daemon under a LAN-style name: plain http:// to a host that is not
    # this machine's loopback is not a secure context, and has no microphone API.
    lan = playwright.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(
        "--host-resolver-rules=MAP clinic-room-7 127.0.0.1"))
    try:
        daemon.start()
        w = open_page(f"{base(daemon)}/#token={make_token(scope=SCOPE_READ)}")
        expect(w.page.get_by_role("status")).to_contain_text(
            "The room microphone is off: this device has none configured")
        w.screenshot("room-no-microphone")
        w = open_page(f"http://clinic-room-7:{daemon.port}/mic", browser_=lan)
        assert w.page.evaluate("window.isSecureContext") is False
        expect(w.page.get_by_role("status")).to_contain_text(
            f"set server.tls_cert and server.tls_key on the device and open "
            f"https://clinic-room-7:{daemon.port}/mic")
        expect(w.page.locator("#mic-button")).to_be_disabled()
        w.screenshot("mic-insecure")
    finally:
        lan.close()
        daemon.stop()
