"""Where a request carries its token: ``?token=``, ``Authorization`` and a protocol's
own headers (:class:`TokenPlaces`), read by :func:`extract_token`. Pure; messages never
quote a token."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from edge.core.close_codes import CLOSE_AUTH
from edge.core.errors import AuthError


@dataclass(frozen=True)
class TokenPlaces:
    """Where a protocol's clients may put their token. Every client may use ``?token=``
    and ``Authorization: Bearer <token>``; ``headers`` are more headers that carry the
    bare token (Scriptix's ``x-api-key``, ...); with ``bare_authorization``,
    ``Authorization: <token>`` without the Bearer word is read too (AssemblyAI's SDKs
    send their key so).

    A token in two places is refused (400), unless ``repeats_agree``: then the same
    token in several places is one token and only different ones are refused
    (Scriptix's clients may send it in a header and in the URL). ``close_code`` goes
    with every refusal, for clients that take their errors in-band.
    """

    headers: tuple[bytes, ...] = ()
    bare_authorization: bool = False
    repeats_agree: bool = False
    close_code: int = CLOSE_AUTH

    def describe(self) -> str:
        """Where a token may be, in words, for the refusal of a request without one."""
        names = ["?token=", "the Authorization header" if self.bare_authorization
                 else "Authorization: Bearer", *(f"the {h.decode()} header" for h in self.headers)]
        return f"{', '.join(names[:-1])} or {names[-1]}"


#: The Live API's places, and those of every endpoint that is not a peer's.
BEARER = TokenPlaces()

_AUTHORIZATION = "the Authorization header"


def extract_token(target: str, headers: Iterable[tuple[bytes, bytes]],
                  places: TokenPlaces = BEARER) -> str:
    """Return the token of a handshake request.

    ``target`` is the request target including the query string; ``headers`` are
    ``(name, value)`` byte pairs. The token comes from ``?token=``, ``Authorization``
    (scheme case-insensitive) or another of ``places``'s headers.

    Raises ``AuthError`` with ``places.close_code``: ``invalid_request`` (400) when the
    token is given in more than one place (or, where ``places.repeats_agree``, when
    they differ), ``missing_token`` (401) when it is given nowhere, ``invalid_token``
    (401) for another authorization scheme or an empty or malformed token. Messages
    never quote a token.
    """
    found: list[tuple[str, str]] = []  # (where, the value as sent)
    for key, value in parse_qsl(urlsplit(target).query, keep_blank_values=True):
        if key == "token":
            found.append(("?token=", value))
    for name, raw in headers:
        lname = name.lower()
        if lname == b"authorization":
            found.append((_AUTHORIZATION, raw.decode("latin-1")))
        elif lname in places.headers:
            found.append((f"the {lname.decode('latin-1')} header", raw.decode("latin-1")))
    if not found:
        raise AuthError("missing_token", f"a token is required: {places.describe()}",
                        status=401, close_code=places.close_code)
    places_used = ", ".join(sorted({where for where, _ in found}))
    if len(found) > 1 and not places.repeats_agree:
        raise AuthError("invalid_request", f"the token is given more than once "
                        f"({places_used}); give it once", status=400,
                        close_code=places.close_code)
    tokens = {_token_in(where, value, places) for where, value in found}
    if len(tokens) > 1:
        raise AuthError("invalid_request", f"different tokens ({places_used}); give one",
                        status=400, close_code=places.close_code)
    return tokens.pop()


def _token_in(where: str, value: str, places: TokenPlaces) -> str:
    token = value.strip()
    if where == _AUTHORIZATION:
        scheme, _, credentials = token.partition(" ")
        if scheme.lower() == "bearer":
            token = credentials.strip()
        elif not places.bare_authorization:
            raise AuthError("invalid_token", "the Authorization header must be "
                            "\"Bearer <token>\"", status=401, close_code=places.close_code)
    if not token:
        raise AuthError("invalid_token", f"empty token in {where}", status=401,
                        close_code=places.close_code)
    if any(c.isspace() for c in token):
        raise AuthError("invalid_token", f"malformed token in {where}", status=401,
                        close_code=places.close_code)
    return token
