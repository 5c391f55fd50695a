"""A handshake's query parameters, read the same way by every dialect (pure).

A parameter is given once or not at all: a repeated one is a :class:`ProtocolError`
(``invalid_parameter``) naming it, never echoing its values. :func:`bad_request` turns
such errors, raised while a handshake is read, into the refusal of that handshake.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

from edge.core.close_codes import CLOSE_POLICY
from edge.core.errors import ProtocolError, Refusal

Query = Mapping[str, Sequence[str]]


def optional(query: Query, name: str, *, close_code: int = CLOSE_POLICY) -> str | None:
    """The one value of ``name``; None when it is absent (or has no value at all)."""
    values = query.get(name)
    if not values:
        return None
    if len(values) != 1:
        raise ProtocolError("invalid_parameter", f"{name} given more than once",
                            close_code=close_code)
    return values[0]


def single(query: Query, name: str, *, close_code: int = CLOSE_POLICY) -> str:
    """The one value of ``name``, a parameter the caller knows is there."""
    value = optional(query, name, close_code=close_code)
    if value is None:
        raise KeyError(name)
    return value


@contextlib.contextmanager
def bad_request(close_code: int) -> Iterator[None]:
    """Refuse the handshake whose parameters the block reads: a :class:`ProtocolError`
    raised inside becomes a :class:`Refusal` with HTTP status 400 (and
    ``close_code`` for a client that takes its errors in-band), same code and message."""
    try:
        yield
    except ProtocolError as exc:
        raise Refusal(exc.code, exc.message, status=400, close_code=close_code) from None
