"""The device's own web pages: room captions (``/``), my microphone (``/mic``), records
(``/transcripts``), their static files (``/static/<name>``) and the transcript listing
they read (``GET /api/transcripts``).

The files are the package data of :mod:`edge.web`, read once when this module is
imported (before the event loop serves anything) into a fixed table of name -> bytes.
A request path is only ever looked up in that table, never joined to a filesystem
path, so there is nothing to traverse and no directory to list: ``/static/..%2f...``,
``/static/`` and anything else not in the table answer 404.

Every answer here carries the same security headers (:data:`SECURITY_HEADERS`): a
Content-Security-Policy that allows scripts, styles and connections to this origin
only (no inline script, no framing), ``nosniff``, and no referrer. Static files are
revalidated on every load (``Cache-Control: no-cache`` with an ``ETag``; 304 when
unchanged), so an upgraded daemon's pages take effect at once; the listing, which
holds patient data, is ``no-store``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources

from edge.core.auth import SCOPE_READ, SCOPE_TRANSCRIPTS
from edge.core.errors import ProtocolError
from edge.journal.service import JournalService
from edge.net import http
from edge.net.routes import Answer, HttpRequest, HttpResponse, Need
from edge.protocols import live as protocol
from edge.protocols.query import single

logger = logging.getLogger(__name__)

LISTING_PATH = "/api/transcripts"
STATIC_PREFIX = "/static/"
PAGES = {"/": "index.html", "/mic": "mic.html", "/transcripts": "transcripts.html"}

MAX_LISTING = 1000
DEFAULT_LISTING = 200

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",  # fetch, and ws:/wss: to this host (CSP Level 3)
    "media-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),  # frame-ancestors for browsers that predate it
    ("Referrer-Policy", "no-referrer"),
    ("Permissions-Policy", "microphone=(self), camera=(), geolocation=()"),
)

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

#: Who may read transcripts (one's own with ``transcription:read``, any with
#: ``transcripts:read``): the listing's and ``/transcripts/<id>``'s rows.
NEED = Need(SCOPE_READ, instead=SCOPE_TRANSCRIPTS)


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def load_files(package: str = "edge.web") -> dict[str, StaticFile]:
    """Every servable file of ``package`` (top level only, known types only), by name."""
    files: dict[str, StaticFile] = {}
    for entry in resources.files(package).iterdir():
        suffix = entry.name[entry.name.rfind("."):] if "." in entry.name else ""
        if not entry.is_file() or suffix not in _TYPES:
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        files[entry.name] = StaticFile(body, _TYPES[suffix], etag)
    return files


FILES = load_files()


@dataclass(frozen=True)
class StaticAnswer:
    """A page or static file: cached, revalidated on every load (its ETag)."""

    status: int
    file: StaticFile

    def render(self, *, head_only: bool = False) -> bytes:
        if self.status == 304:
            return static_response(304, b"", None, etag=self.file.etag, head_only=True)
        return static_response(self.status, self.file.body, self.file.content_type,
                               etag=self.file.etag, head_only=head_only)


async def page(request: HttpRequest) -> Answer:
    """A page (``/``, ``/mic``, ``/transcripts``)."""
    return _file(request.head, PAGES[request.head.path])


async def static(request: HttpRequest) -> Answer:
    """``/static/<name>``: a file of the package, never an HTML page."""
    name = request.head.path[len(STATIC_PREFIX):]
    if name.endswith(".html"):
        return NOT_FOUND
    return _file(request.head, name)


def _file(head: http.RequestHead, name: str) -> Answer:
    file = FILES.get(name)
    if file is None:
        return NOT_FOUND
    if _matches(head.header(b"if-none-match"), file.etag):
        return StaticAnswer(304, file)
    return StaticAnswer(200, file)


NOT_FOUND = HttpResponse(404, protocol.error("not_found", "no such page"),
                         headers=SECURITY_HEADERS)


def static_response(status: int, body: bytes, content_type: str | None, *, etag: str,
                    head_only: bool = False) -> bytes:
    """A ``Connection: close`` response that may be cached and must be revalidated
    (:func:`edge.net.http.response` always says ``no-store``)."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    if status != 304:
        lines.append(f"Content-Length: {len(body)}")
    lines += ["Connection: close", "Cache-Control: no-cache", f"ETag: {etag}"]
    lines += [f"{k}: {v}" for k, v in SECURITY_HEADERS]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)


def _matches(if_none_match: bytes | None, etag: str) -> bool:
    if if_none_match is None:
        return False
    tags = {t.strip().removeprefix(b"W/") for t in if_none_match.split(b",")}
    return b"*" in tags or etag.encode() in tags


class Listing:
    """``GET /api/transcripts[?since=UNIX_SECONDS][&limit=N]``: the finished sessions
    the token may read, newest first, as ``{"sessions": [...]}`` (the fields of
    ``/transcripts/<id>``'s ``session``).

    The scopes are ``/transcripts/<id>``'s (the row's :data:`NEED`, checked by the
    server): ``transcripts:read`` lists every session, ``transcription:read`` only the
    token's own (same ``sub``). Of the most recent :data:`MAX_LISTING` sessions, at most
    ``limit`` (default :data:`DEFAULT_LISTING`) are listed. Only the journal read
    awaits (in the bulk lane's worker thread).
    """

    def __init__(self, journal: JournalService | None) -> None:
        self.journal = journal

    async def __call__(self, request: HttpRequest) -> Answer:
        claims = request.claims
        assert claims is not None  # the row's need, checked by the server
        try:
            since, limit = _listing_params(request.head.query)
        except (ValueError, ProtocolError) as exc:
            return HttpResponse(400, protocol.error("invalid_parameter", str(exc)))
        journal = self.journal
        if journal is None:
            return HttpResponse(404, protocol.error("no_journal",
                                                    "this device keeps no journal"))
        rows = await journal.call(journal.journal.sessions, since, limit=MAX_LISTING)
        everyone = claims.has_scope(SCOPE_TRANSCRIPTS)
        mine = [row for row in reversed(rows)
                if row.ended_at is not None and (everyone or row.sub == claims.sub)]
        return HttpResponse(200, {"sessions": [dataclasses.asdict(row)
                                               for row in mine[:limit]]})


def _listing_params(query: Mapping[str, Sequence[str]]) -> tuple[float | None, int]:
    since: float | None = None
    limit = DEFAULT_LISTING
    if "since" in query:
        raw = single(query, "since")
        try:
            since = float(raw)
        except ValueError:
            raise ValueError("since must be a time in Unix seconds") from None
        if not math.isfinite(since) or not 0 <= since <= time.time() + 86400 * 365 * 100:
            raise ValueError("since must be a time in Unix seconds")
    if "limit" in query:
        raw = single(query, "limit")
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 4
                and 1 <= int(raw) <= MAX_LISTING):
            raise ValueError(f"limit must be an integer from 1 to {MAX_LISTING}")
        limit = int(raw)
    return since, limit
