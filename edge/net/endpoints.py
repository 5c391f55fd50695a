"""The daemon's own endpoints, and :func:`front_door`: the one table of every endpoint
the main port answers (the peers' rows come from :mod:`edge.net.peers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from edge.core.auth import SCOPE_ENROLL, SCOPE_READ, SCOPE_RELAY, SCOPE_TRANSCRIPTS, SCOPE_WRITE
from edge.core.close_codes import CLOSE_POLICY, CLOSE_TRY_AGAIN_LATER
from edge.core.config import Config
from edge.core.errors import Refusal
from edge.core.model_table import ModelTable, installed_models
from edge.core.tokens import extract_token
from edge.journal import transcripts
from edge.journal.service import JournalService
from edge.net import web
from edge.net.http import RequestHead
from edge.net.routes import (
    Admitted,
    Answer,
    Entry,
    HttpRequest,
    HttpResponse,
    HttpRoute,
    Listen,
    Relayed,
    Route,
    Verify,
)
from edge.protocols import live as protocol
from edge.protocols.live import LiveDialect
from edge.protocols.query import bad_request
from edge.protocols.text import Limits
from edge.speakers import SpeakerIdentification

if TYPE_CHECKING:
    from edge.net.server import Server

RELAY_PATH = "/ws/relay"
TRANSCRIPTS_PATH = "/transcripts/"
TRANSCRIPT_TYPES = {"json": "application/json; charset=utf-8",
                    "text": "text/plain; charset=utf-8", "vtt": "text/vtt; charset=utf-8"}
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def front_door(server: Server, peers: Sequence[Route | HttpRoute] = ()
               ) -> list[Route | HttpRoute]:
    """Every endpoint of the main port, one row each."""
    config, journal = server.config, server.journal
    return [
        Route(config.server.path, LiveAdmitter(config, server), action="session.start"),
        Route(RELAY_PATH, RelayAdmitter(config, journal), action="relay.ingest"),
        HttpRoute(TRANSCRIPTS_PATH, Transcript(journal), action="transcript.read",
                  need=web.NEED, prefix=True),
        HttpRoute(web.LISTING_PATH, web.Listing(journal), action="transcript.list",
                  need=web.NEED, headers=web.SECURITY_HEADERS),
        HttpRoute("/healthz", server.health_endpoint),
        HttpRoute("/metrics", server.metrics_endpoint),
        *(HttpRoute(path, web.page) for path in web.PAGES),
        HttpRoute(web.STATIC_PREFIX, web.static, prefix=True),
        *peers,
    ]


class LiveAdmitter:
    """The Live API (``server.path``): a client session, or with ``?source=room`` a
    listener to the room microphone (audited as ``room.listen``)."""

    def __init__(self, config: Config, server: Server) -> None:
        self.limits = Limits(max_phrases=config.recognizer.max_phrases)
        self.server = server
        self.models = installed_models(config)

    def admit(self, head: RequestHead, verify: Verify, peer: str) -> Entry:
        with bad_request(CLOSE_POLICY):
            params = protocol.parse_connect_params(head.query)
        try:
            return self._admit(head, verify, params)
        except Refusal as exc:
            exc.in_band = params.errors_in_band
            raise

    def _admit(self, head: RequestHead, verify: Verify, params: protocol.ConnectParams
               ) -> Entry:
        token = extract_token(head.target, head.headers)
        in_band = params.errors_in_band
        if params.source == "room":
            claims = verify(token, SCOPE_READ)
            if self.server.room is None:
                raise Refusal("no_room", "this device has no room microphone "
                              "(microphone.enabled is false)", status=404)
            return Listen(claims, params.since_seq, in_band=in_band)
        if params.enroll is None:
            claims = verify(token, SCOPE_WRITE)
        else:
            claims = verify(token, SCOPE_WRITE, SCOPE_ENROLL)
            check_enrollment(self.server.speakers)
        return Admitted(claims, LiveDialect(self.limits), "live",
                        declared_rate=params.sample_rate, in_band=in_band,
                        enroll=None if params.enroll is None else (params.enroll, params.role),
                        language=choose_language(self.models, params.language))


def choose_language(models: ModelTable, asked: str | None) -> str:
    """The installed language for a client's tag; 400 ``unsupported_language`` when this
    device has no model for it."""
    language = models.choose(asked)
    if language is None:
        raise Refusal("unsupported_language", f"this device has no model for {asked!r} "
                      f"(installed: {', '.join(models.languages)})")
    return language


def check_enrollment(speakers: SpeakerIdentification | None) -> None:
    """``?enroll=``: refused at the handshake when it could not succeed at the end."""
    if speakers is None:
        raise Refusal("no_speaker_model", "this device has no speaker model "
                      "(recognizer.speaker_model is empty): nothing can be enrolled",
                      status=404)
    if speakers.error is not None:
        raise Refusal("voiceprints_unavailable", "the voiceprint store is damaged; "
                      "enrolment is off until an administrator repairs it",
                      status=503, close_code=CLOSE_TRY_AGAIN_LATER)


class RelayAdmitter:
    """``/ws/relay``: a downstream device pushing its journal into ours."""

    def __init__(self, config: Config, journal: JournalService | None) -> None:
        self.accepts = journal is not None and config.relay.accept_ingest

    def admit(self, head: RequestHead, verify: Verify, peer: str) -> Entry:
        if not self.accepts:
            raise Refusal("not_found", "this server does not accept relayed journals",
                          status=404)
        return Relayed(verify(extract_token(head.target, head.headers), SCOPE_RELAY))


class Transcript:
    """``GET /transcripts/<session_id>?format=json|text|vtt``: a finished session.

    Same tokens as the WebSocket (header or ``?token=``; the row's need):
    ``transcription:read`` for one's own sessions (same ``sub``), ``transcripts:read``
    for any session.
    """

    def __init__(self, journal: JournalService | None) -> None:
        self.journal = journal

    async def __call__(self, request: HttpRequest) -> Answer:
        claims, head = request.claims, request.head
        assert claims is not None  # the row's need, checked by the server
        session_id = head.path[len(TRANSCRIPTS_PATH):]
        fmt = (head.query.get("format") or ["json"])[-1]
        if fmt not in transcripts.FORMATS:
            return _error(400, "invalid_parameter", "format must be json, text or vtt")
        journal = self.journal
        if journal is None:
            return _error(404, "no_journal", "this device keeps no journal")
        row = await journal.call(journal.journal.session, session_id)
        if row is None or not (claims.has_scope(SCOPE_TRANSCRIPTS) or row.sub == claims.sub):
            # The same answer for "absent" and "not yours": ids are not probed.
            return _error(404, "not_found", "no such session")
        if row.ended_at is None:
            return _error(409, "in_progress", "the session has not ended yet")
        finals = await journal.call(journal.journal.finals, session_id, row.device_id)
        return HttpResponse(200, transcripts.render(fmt, row, finals),
                            content_type=TRANSCRIPT_TYPES[fmt])


def _error(status: int, code: str, message: str) -> HttpResponse:
    return HttpResponse(status, protocol.error(code, message))
