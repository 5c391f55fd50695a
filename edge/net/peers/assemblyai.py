"""AssemblyAI Universal-Streaming v3 on the main port: ``/v3/ws`` and ``/v3/token``.

Clients authenticate with this device's own JWTs (the same claims and scopes as the
Live API's): ``Authorization: <jwt>`` as AssemblyAI's SDKs send an API key (no Bearer
word; ``Bearer <jwt>`` works too) or ``?token=<jwt>`` as they send a temporary token.
``GET /v3/token?expires_in_seconds=N`` answers ``{"token": ...}``, a shorter-lived
token for the caller's subject and scopes, for AssemblyAI's browser flow.

The wire protocol is :mod:`edge.protocols.assemblyai`; this module admits handshakes.
"""

from __future__ import annotations

import logging
import time

from edge.core.auth import SCOPE_WRITE, AuthSettings, Claims, mint
from edge.core.config import Config
from edge.core.errors import Refusal
from edge.core.model_table import installed_models
from edge.core.tokens import extract_token
from edge.net.http import RequestHead
from edge.net.peers import PeerContext
from edge.net.routes import Admitted, Answer, HttpRequest, HttpResponse, HttpRoute, Route, Verify
from edge.protocols.assemblyai import (
    CLOSE_INPUT_ERROR,
    TOKEN_PLACES,
    AssemblyAIDialect,
    parse_connect_params,
)
from edge.protocols.assemblyai_params import session_language
from edge.protocols.events import Configure
from edge.protocols.query import bad_request

logger = logging.getLogger(__name__)

WS_PATH = "/v3/ws"
TOKEN_PATH = "/v3/token"
MAX_EXPIRES_IN = 600  # AssemblyAI's own bound for expires_in_seconds


def routes(config: Config, context: PeerContext) -> list[Route | HttpRoute]:
    """The WebSocket route ``/v3/ws`` and the HTTP route ``/v3/token`` (a token for the
    caller, checked in AssemblyAI's places by the endpoint itself: no patient data)."""
    return [Route(WS_PATH, StreamingAdmitter(config), action="session.start",
                  scope=SCOPE_WRITE),
            HttpRoute(TOKEN_PATH, TokenRoute(config, context.auth))]


class StreamingAdmitter:
    """``/v3/ws``: verifies the token, validates the v3 parameters, and opens the
    session in :class:`AssemblyAIDialect` with the parameters' settings, on the model of
    the language they ask for (``language_codes``; 400 ``unsupported_language`` when no
    installed model serves it; a model that cannot load or fit ends the session after
    Begin, with an Error and 1013)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.models = installed_models(config)

    def admit(self, head: RequestHead, verify: Verify, peer: str) -> Admitted:
        query = head.query
        claims = verify(extract_token(head.target, head.headers, TOKEN_PLACES))
        with bad_request(CLOSE_INPUT_ERROR):
            params = parse_connect_params(query)
            language = session_language(params, self.models)
        s = self.config.server
        expires_at = min(claims.expires_at, time.time() + s.max_session_seconds)
        idle = None
        if params.inactivity_timeout_s is not None:
            # The device's idle timeout stays the longest: it frees the recogniser.
            idle = min(float(params.inactivity_timeout_s), s.idle_timeout)
        dialect = AssemblyAIDialect(params, expires_at=int(expires_at),
                                    max_text_chars=min(65536, s.max_frame_bytes),
                                    language=language)
        # The SDKs give the whole handshake 1 s, less than a model takes to load: the
        # session opens on the default model and moves to its own before any audio.
        configure = Configure(max_turn_silence_ms=params.turn_silence_ms,
                              idle_timeout_s=idle,
                              language=None if language == self.models.default else language)
        return Admitted(claims, dialect, "assemblyai", declared_rate=params.sample_rate,
                        configure=None if configure == Configure() else configure)


class TokenRoute:
    """``GET /v3/token?expires_in_seconds=N``: a temporary token for the caller.

    The new token has the caller's subject, user type, scopes and limits, and its
    ``jti`` (so revoking the caller's token revokes it too); it lives
    ``expires_in_seconds``, at most ``assemblyai.max_token_seconds``, and never past
    the caller's own ``exp``. Only an HS256 device can sign one: an RS256 device holds a
    public key, no private one, and answers 501.
    """

    def __init__(self, config: Config, auth: AuthSettings) -> None:
        self.max_seconds = config.assemblyai.max_token_seconds
        self.auth = auth

    async def __call__(self, request: HttpRequest) -> Answer:
        if not self.auth.can_mint:
            return _refusal(501, "this device verifies its token issuer's signatures "
                            "(RS256 or a JWKS) and holds no signing key, so it cannot issue "
                            "temporary tokens: get them from your token issuer")
        head = request.head
        query = head.query
        try:
            claims = request.verify(extract_token(head.target, head.headers, TOKEN_PLACES),
                                    SCOPE_WRITE)
        except Refusal as exc:
            return _refusal(exc.status, exc.message)
        raw = query.get("expires_in_seconds", [])
        if len(raw) != 1 or not (raw[0].isascii() and raw[0].isdigit() and len(raw[0]) <= 6
                                 and 1 <= int(raw[0]) <= MAX_EXPIRES_IN):
            return _refusal(400, f"expires_in_seconds must be an integer from 1 to "
                            f"{MAX_EXPIRES_IN}")
        now = time.time()
        ttl = min(float(raw[0]), float(self.max_seconds), claims.expires_at - now)
        if ttl < 1:
            return _refusal(401, "the token expires too soon to issue another")
        token = self._mint(claims, ttl, now)
        logger.info("issued a temporary token for sub=%s lasting %ds", claims.sub, int(ttl))
        return HttpResponse(200, {"token": token})

    def _mint(self, claims: Claims, ttl: float, now: float) -> str:
        extra: dict[str, object] = {}
        if claims.jti is not None:
            extra["jti"] = claims.jti
        for name in ("organization", "department", "session_limit", "rate_limit"):
            value = getattr(claims, name)
            if value is not None:
                extra[name] = value
        assert self.auth.key is not None  # can_mint, checked first
        token = mint(algorithm="HS256", key=self.auth.key, sub=claims.sub,
                     scope=" ".join(sorted(claims.scopes)), user_type=claims.user_type,
                     ttl=ttl, now=now, issuer=self.auth.issuer, audience=self.auth.audience,
                     extra=extra)
        return token


def _refusal(status: int, message: str) -> HttpResponse:
    # {"error": ...}: what AssemblyAI answers, and what its JS SDK reads from a failure.
    return HttpResponse(status, {"error": message})
