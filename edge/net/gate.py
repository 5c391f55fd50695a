"""The one token-and-scope check of the front door, and the one place a refusal's
``WWW-Authenticate`` challenge is written.

Every route that needs a token goes through a :class:`Gate`: the server checks an
:class:`~edge.net.routes.HttpRoute`'s :class:`~edge.net.routes.Need` with it before the
endpoint runs, and hands it to every :class:`~edge.net.routes.Admitter` as ``verify``.
"""

from __future__ import annotations

import time

from edge.core.auth import SCOPE_WRITE, AuthSettings, Claims, require_scope, verify
from edge.core.errors import Refusal
from edge.core.revocations import RevocationFile
from edge.core.tokens import BEARER, TokenPlaces, extract_token
from edge.net.http import RequestHead
from edge.net.routes import Need


class Gate:
    """Verifies tokens against ``auth`` and the revocation list as it is now."""

    def __init__(self, auth: AuthSettings, revocations: RevocationFile | None = None
                 ) -> None:
        self.auth = auth
        self.revocations = revocations

    def __call__(self, token: str, *scopes: str) -> Claims:
        """The claims of ``token`` if it is valid now and holds every one of ``scopes``
        (checked in order); raises :class:`~edge.core.errors.AuthError` (401, or 403
        naming the first scope missing)."""
        revoked = self.revocations.current if self.revocations else None
        claims = verify(token, self.auth, now=time.time(), revoked=revoked)
        for scope in scopes:
            require_scope(claims, scope)
        return claims

    def claims(self, head: RequestHead, need: Need, places: TokenPlaces = BEARER) -> Claims:
        """The claims of the token in ``head`` (``places``), if it meets ``need``."""
        claims = self(extract_token(head.target, head.headers, places))
        self.require(claims, need)
        return claims

    @staticmethod
    def require(claims: Claims, need: Need) -> None:
        if need.instead is None or not claims.has_scope(need.instead):
            require_scope(claims, need.scope)


def challenge(exc: Refusal) -> str | None:
    """The ``WWW-Authenticate`` value (RFC 6750) for a refusal, or None."""
    if exc.status == 401:
        return 'Bearer realm="edge", error="invalid_token"'
    if exc.status == 403:
        return ('Bearer realm="edge", error="insufficient_scope", '
                f'scope="{exc.scope or SCOPE_WRITE}"')
    if exc.status == 400 and exc.code == "invalid_request":
        return 'Bearer realm="edge", error="invalid_request"'
    return None


def refusal_headers(exc: Refusal) -> list[tuple[str, str]]:
    """The headers every refused handshake or request carries besides its body."""
    headers = []
    if (value := challenge(exc)) is not None:
        headers.append(("WWW-Authenticate", value))
    if exc.retry_after is not None:
        headers.append(("Retry-After", str(exc.retry_after)))
    return headers
