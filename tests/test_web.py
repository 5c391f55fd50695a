"""The web pages over plain HTTP on a real socket: files, types, caching, security
headers, no traversal, and the transcript listing's scopes (the browser tests are in
test_web_browser.py)."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from edge.core.auth import SCOPE_READ, SCOPE_TRANSCRIPTS, SCOPE_WRITE
from edge.journal.db import Journal
from edge.net import web
from edge.net.server import Server
from helpers import TEST_KEY, make_token

WEB = Path(web.__file__).resolve().parent.parent / "web"


async def get(port: int, target: str, *, token: str | None = None, method: str = "GET",
              headers: str = "") -> tuple[int, dict[str, str], bytes]:
    """One raw request (the target sent exactly as given): status, headers, body."""
    sock = await trio.open_tcp_stream("127.0.0.1", port)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    await sock.send_all(f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}{headers}"
                        "\r\n".encode())
    data = b""
    with trio.fail_after(10):
        while chunk := await sock.receive_some(65536):
            data += chunk
    await sock.aclose()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), fields, body


@pytest.fixture
async def server(start_server: Any) -> Server:
    started: Server = await start_server()
    return started


def assert_secure(headers: dict[str, str]) -> None:
    csp = headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in csp and "data:" not in csp and "*" not in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize(("path", "kind"), [
    ("/", "text/html"), ("/mic", "text/html"), ("/transcripts", "text/html"),
    ("/static/style.css", "text/css"), ("/static/live.js", "text/javascript"),
    ("/static/room.js", "text/javascript"), ("/static/pcm-worklet.js", "text/javascript"),
])
async def test_pages_and_files_with_types_caching_and_security_headers(
        server: Server, path: str, kind: str) -> None:
    assert server.port is not None
    status, headers, body = await get(server.port, path)
    assert status == 200
    assert headers["content-type"] == f"{kind}; charset=utf-8"
    assert int(headers["content-length"]) == len(body) > 0
    assert headers["cache-control"] == "no-cache"
    assert_secure(headers)
    etag = headers["etag"]
    # Revalidation: unchanged files answer 304 without a body; HEAD has none either.
    status, again, body = await get(server.port, path, headers=f"If-None-Match: {etag}\r\n")
    assert (status, again["etag"], body) == (304, etag, b"")
    status, again, body = await get(server.port, path, method="HEAD")
    assert (status, body) == (200, b"") and again["etag"] == etag
    status, _, body = await get(server.port, path, headers='If-None-Match: "other"\r\n')
    assert status == 200 and body


def test_the_pages_have_no_inline_script_or_style_and_load_nothing_from_outside() -> None:
    for page in sorted(WEB.glob("*.html")):
        html = page.read_text()
        for script in re.findall(r"<script\b[^>]*>", html):
            assert 'src="/static/' in script and 'type="module"' in script, (page, script)
        assert not re.search(r"<script\b[^>]*>\s*[^<\s]", html), page  # no inline body
        assert not re.search(r"\son\w+\s*=", html), page  # no inline handlers
        assert " style=" not in html and "<style" not in html, page
        for url in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert url.startswith("/"), (page, url)
            if url.startswith("/static/"):
                assert (WEB / url.removeprefix("/static/")).is_file(), (page, url)
    for script in sorted(WEB.glob("*.js")):
        js = script.read_text()
        # Text from the network goes in as text: nothing here parses HTML.
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(",
                             js), script
        # Modules and worklets come from this origin only.
        assert all(m.startswith("./") for m in re.findall(r'from "([^"]+)"', js)), script
        assert all(m.startswith("/static/") for m in re.findall(r'addModule\("([^"]+)"', js))
        assert not re.search(r"(fetch|WebSocket)\([\"'`]https?:", js), script


@pytest.mark.parametrize("target", [
    "/static/..%2fweb.py", "/static/..%2F..%2Fnet%2Fweb.py", "/static/%2e%2e/__init__.py",
    "/static/../net/web.py", "/..%2f..%2fetc%2fpasswd", "/%2e%2e%2f%2e%2e%2fetc/passwd",
    "/static/", "/static", "/static//style.css", "/static/style.css/", "/static/STYLE.CSS",
    "/static/__init__.py", "/static/index.html", "/static/style.css%00", "/mic/",
    "/index.html", "/static/./style.css", "/static/%73tyle.css", "/static/..%5cweb.py",
    "//static/style.css", "/static/%2fstyle.css",
])
async def test_unknown_paths_and_traversal_are_404(server: Server, target: str) -> None:
    assert server.port is not None
    status, _, body = await get(server.port, target)
    assert status in (400, 404), (target, status)
    assert b"import" not in body and b"root:" not in body


async def test_methods_other_than_get_are_refused(server: Server) -> None:
    assert server.port is not None
    status, headers, _ = await get(server.port, "/", method="POST",
                                   headers="Content-Length: 0\r\n")
    assert status == 405 and headers["allow"] == "GET, HEAD"


def journal_sessions(path: Path, device_id: str) -> dict[str, str]:
    """Sessions of three subjects, one still open; their ids by name."""
    ids = {name: str(uuid.uuid4()) for name in ("a1", "a2", "b1", "a_open", "room")}
    now = time.time()
    with Journal.open(path, key=TEST_KEY, device_id=device_id) as journal:
        for i, (name, sid) in enumerate(ids.items()):
            sub = None if name == "room" else name[0]
            journal.start_session(sid, source="room" if sub is None else "client", sub=sub,
                                  started_at=now - 100 + i)
            journal.append_final(sid, {"type": "transcription", "session_id": sid, "seq": 1,
                                       "is_final": True, "text": name, "start_ms": 0,
                                       "end_ms": 500})
            if name != "a_open":
                journal.end_session(sid, reason="end", ended_at=now - 50 + i)
    return ids


async def test_the_listing_has_the_scopes_of_a_transcript(server: Server) -> None:
    assert server.port is not None and server.journal is not None
    ids = await trio.to_thread.run_sync(journal_sessions, server.journal.journal.path,
                                        server.journal.journal.device_id)

    async def listing(token: str | None, query: str = "") -> tuple[int, dict[str, str], Any]:
        assert server.port is not None
        status, headers, body = await get(server.port, web.LISTING_PATH + query, token=token)
        return status, headers, json.loads(body)

    status, headers, body = await listing(make_token(sub="a", scope=SCOPE_READ))
    assert status == 200 and headers["cache-control"] == "no-store"
    assert_secure(headers)
    # Own finished sessions only, newest first; the open one is not listed.
    assert [s["session_id"] for s in body["sessions"]] == [ids["a2"], ids["a1"]]
    assert body["sessions"][0]["finals"] == 1 and body["sessions"][0]["sub"] == "a"

    _, _, body = await listing(make_token(sub="clerk", scope=SCOPE_TRANSCRIPTS))
    assert [s["session_id"] for s in body["sessions"]] == [
        ids["room"], ids["b1"], ids["a2"], ids["a1"]]
    _, _, body = await listing(make_token(sub="clerk", scope=SCOPE_TRANSCRIPTS), "?limit=2")
    assert [s["session_id"] for s in body["sessions"]] == [ids["room"], ids["b1"]]
    since = body["sessions"][1]["started_at"]
    _, _, body = await listing(make_token(sub="clerk", scope=SCOPE_TRANSCRIPTS),
                               f"?since={since}")
    assert [s["session_id"] for s in body["sessions"]] == [ids["room"], ids["b1"]]
    # The token may come in the query, as for /transcripts/<id>.
    status, _, body = await listing(None, f"?token={make_token(sub='b', scope=SCOPE_READ)}")
    assert status == 200 and [s["session_id"] for s in body["sessions"]] == [ids["b1"]]

    status, headers, body = await listing(None)
    assert (status, body["code"]) == (401, "missing_token")
    assert headers["www-authenticate"].startswith("Bearer")
    status, _, body = await listing(make_token(sub="a", scope=SCOPE_READ, ttl=-60))
    assert (status, body["code"]) == (401, "token_expired")
    status, _, body = await listing(make_token(sub="a", scope=SCOPE_WRITE))
    assert (status, body["code"]) == (403, "insufficient_scope")
    for query in ("?limit=0", "?limit=1001", "?limit=x", "?since=nan", "?since=-1",
                  "?limit=1&limit=2"):
        status, _, body = await listing(make_token(sub="a", scope=SCOPE_READ), query)
        assert (status, body["code"]) == (400, "invalid_parameter"), query


async def test_without_a_journal_the_listing_says_so(start_server: Any) -> None:
    server: Server = await start_server(journal={"enabled": False})
    assert server.port is not None
    status, _, body = await get(server.port, web.LISTING_PATH,
                                token=make_token(scope=SCOPE_READ))
    assert (status, json.loads(body)["code"]) == (404, "no_journal")
