"""Admitting vosk-server's clients on a port of their own (``[vosk_server]``).

Their protocol has no authentication, so a client is admitted either from an address
in ``vosk_server.trusted_networks`` (loopback by default), journaled under the subject
``vosk_server@<address>``, or from anywhere with a device token: ``?token=<jwt>`` in the
URL (or an ``Authorization: Bearer`` header), which needs both transcription scopes
(the protocol's replies are the transcript). Anyone else gets HTTP 403 at the
handshake. Every path is accepted, as vosk-server accepts any.
"""

from __future__ import annotations

import logging
import time

from edge.core.auth import SCOPE_READ, Claims
from edge.core.config import Config
from edge.core.networks import TrustedNetworks, network_claims, network_lifetime
from edge.core.tokens import extract_token
from edge.net.http import RequestHead
from edge.net.peers import PeerContext
from edge.net.routes import Admitted, Admitter, Verify
from edge.protocols.text import Limits
from edge.protocols.vosk_server import VoskServerDialect

logger = logging.getLogger(__name__)

DIALECT = "vosk_server"


class VoskServerAdmitter:
    """An :class:`~edge.net.routes.Admitter` for vosk-server's clients (any path)."""

    def __init__(self, config: Config) -> None:
        v = config.vosk_server
        self.networks = TrustedNetworks(f"{DIALECT}.trusted_networks", v.trusted_networks)
        self.sample_rate = v.sample_rate
        self.limits = Limits(max_phrases=config.recognizer.max_phrases)
        self.lifetime = network_lifetime(config.server.max_session_seconds,
                                         config.auth.expiry_warning)

    def admit(self, head: RequestHead, verify: Verify, peer: str) -> Admitted:
        return Admitted(self._claims(head, verify, peer), VoskServerDialect(self.limits),
                        DIALECT, declared_rate=self.sample_rate)

    def _claims(self, head: RequestHead, verify: Verify, peer: str) -> Claims:
        if "token" in head.query or head.header(b"authorization") is not None:
            # The route requires the write scope too: the replies are the transcript.
            return verify(extract_token(head.target, head.headers), SCOPE_READ)
        self.networks.check(DIALECT, peer)
        return network_claims(DIALECT, peer, now=time.time(), lifetime=self.lifetime)


def route(config: Config, context: PeerContext) -> Admitter:
    """The route :func:`edge.net.peers.start_listeners` serves on ``vosk_server.port``."""
    r = VoskServerAdmitter(config)
    v = config.vosk_server
    logger.info("vosk-server protocol on %s:%d admits %s (vosk_server.trusted_networks) "
                "and clients with a device token; audio at %d Hz unless a client's config says "
                "otherwise", v.host or "*", v.port,
                ", ".join(map(str, r.networks.networks)) or "no network", v.sample_rate)
    return r
