"""Scriptix realtime on the main port: ``/v2/realtime`` with the device's own tokens,
and a refusal for every ``/v2/client/...`` path (stream mode: the device never fetches
URLs).

The language a client may ask for is the model's (``scriptix.language``, or read from
the model's name, e.g. ``vosk-model-small-ko-0.22``); when neither says, any language
is accepted and the client is warned after ``listening``.
"""

from __future__ import annotations

import logging

from edge.core.auth import SCOPE_WRITE
from edge.core.close_codes import CLOSE_POLICY
from edge.core.config import Config
from edge.core.errors import ProtocolError, Refusal
from edge.core.languages import primary_language
from edge.core.model_table import ModelTable, installed_models
from edge.core.phrases import read_phrases_file
from edge.net.http import RequestHead
from edge.net.peers import PeerContext
from edge.net.routes import Admitted, Answer, HttpRequest, HttpResponse, HttpRoute, Route, Verify
from edge.protocols import scriptix
from edge.protocols.query import bad_request
from edge.protocols.scriptix import ScriptixDialect

logger = logging.getLogger(__name__)

DIALECT = "scriptix"
_STREAM_STATUS = 400


class RealtimeAdmitter:
    """``/v2/realtime?language=&type=&token=``: the token is verified first, so that a
    client without one learns nothing about the device (not even its language)."""

    def __init__(self, device_language: str | None,
                 phrases: tuple[str, ...] | None = None,
                 models: ModelTable | None = None) -> None:
        self.device_language = device_language
        self.phrases = phrases
        # Several models (recognizer.models): ``language`` chooses one of them.
        self.models = models if models is not None and len(models.languages) > 1 else None

    def admit(self, head: RequestHead, verify: Verify, peer: str) -> Admitted:
        claims = verify(scriptix.extract_token(head.target, head.headers))
        language = None
        with bad_request(CLOSE_POLICY):
            if self.models is None:
                params = scriptix.parse_connect_params(head.query, self.device_language)
            else:
                params = scriptix.parse_connect_params(head.query, None)
                language = self._choose(self.models, params.language)
        told = primary_language(language) if language else self.device_language
        return Admitted(claims, ScriptixDialect(params, told), DIALECT,
                        declared_rate=scriptix.SAMPLE_RATE, phrases=self.phrases,
                        language=language)

    @staticmethod
    def _choose(models: ModelTable, asked: str | None) -> str:
        language = models.choose(asked)
        if language is None:
            raise ProtocolError("unsupported_language", f"this device has no model for "
                                f"{asked!r} (installed: {', '.join(models.languages)})")
        return language


class StreamModeAdmitter:
    """``/v2/client/{token}?url=`` as a WebSocket: refused before any token is read."""

    def admit(self, head: RequestHead, verify: Verify, peer: str) -> Admitted:
        raise Refusal("stream_mode_refused", scriptix.STREAM_MODE_REFUSED,
                        status=_STREAM_STATUS, close_code=CLOSE_POLICY)


async def stream_mode_http(request: HttpRequest) -> Answer:
    """``/v2/client/...`` as a plain request: the same refusal, in Scriptix's shape."""
    return HttpResponse(_STREAM_STATUS, scriptix.error("stream_mode_refused",
                                                       scriptix.STREAM_MODE_REFUSED))


def device_language(config: Config, context: PeerContext) -> str | None:
    configured = config.scriptix.language.strip()
    if configured:
        return primary_language(configured)
    return scriptix.model_language(context.model_name)


def routes(config: Config, context: PeerContext) -> list[Route | HttpRoute]:
    """The rows of Scriptix realtime on the main port. Reads ``scriptix.phrases_file``."""
    language = device_language(config, context)
    path = config.scriptix.phrases_file
    phrases = (read_phrases_file("scriptix.phrases_file", path, config.recognizer.max_phrases)
               if path else None)
    if language is None:
        logger.warning("scriptix: the model's language is not in its name (%s) and "
                       "scriptix.language is not set: any language is accepted",
                       context.model_name)
    admitter = RealtimeAdmitter(language, phrases, installed_models(config))
    return [Route(scriptix.PATH, admitter, action="session.start",
                  scope=SCOPE_WRITE),
            Route(scriptix.STREAM_PREFIX, StreamModeAdmitter(), action=None, prefix=True),
            HttpRoute(scriptix.STREAM_PREFIX, stream_mode_http, prefix=True)]
